"""Real image data: the embedded digits set, ImageNet-layout folders, Parquet sets (class lists: classes.py).

The reference model θ* and the evaluation protocol train and test on real images; the distilled
sets come back as Parquet. Everything here is pure torch/numpy/PIL/pyarrow (never ray), returns
uint8 C×H×W images with int64 labels, and turns user mistakes into `UserError` naming the field.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lgd_ray.core.classes import (  # noqa: F401
    DIGITS,
    IMAGENETTE,
    IMAGEWOOF,
    PRESETS,
    generator_class_index,
    imagenet_wnids,
    resolve_classes,
)
from lgd_ray.core.errors import UserError
from lgd_ray.core.progress import progress_bar

SOURCES = ("digits", "imagefolder", "parquet")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
PNG_COMPRESS_LEVEL = 6  # fixed, so the same pixels always give the same bytes


# --------------------------------------------------------------------------- in-memory sets


class ImageSet(Dataset):
    """Labelled uint8 images held in memory: the common currency of training and evaluation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[str]):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        class_ids = [str(c) for c in class_ids]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_ids)):
            raise ValueError(f"labels must lie in [0, {len(class_ids)})")
        self.images, self.labels, self.class_ids = images, labels, class_ids

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"ImageSet(n={len(self)}, shape={c}×{h}×{w}, classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def image_size(self) -> int:
        """Side length (images are square everywhere in this project; height is returned)."""
        return int(self.images.shape[2])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSet(self.images[idx], self.labels[idx], self.class_ids)

    def per_class_counts(self) -> list[int]:
        """Images per label index, zeros included, so a missing class is visible."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def select_classes(self, class_ids: Sequence[str]) -> ImageSet:
        """Keep only `class_ids` (in that order) and relabel to their positions in it."""
        pos = generator_class_index(list(class_ids), self.class_ids, field="data.classes")
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[torch.tensor(pos, dtype=torch.int64)] = torch.arange(len(pos))
        new = remap[self.labels]
        keep = new >= 0
        return ImageSet(self.images[keep], new[keep], list(class_ids))

    def resized(self, image_size: int) -> ImageSet:
        """Same set at another square size (bilinear, antialiased, rounded back to uint8)."""
        if image_size == self.image_size and self.images.shape[3] == image_size:
            return self
        return ImageSet(resize_uint8(self.images, image_size), self.labels, self.class_ids)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        """Join sets over the same class list (e.g. the cumulative D_i = I_0 ∪ … ∪ I_i)."""
        if not sets:
            raise ValueError("concat needs at least one ImageSet")
        first = sets[0]
        for s in sets[1:]:
            if s.class_ids != first.class_ids:
                raise ValueError("concat needs the same class_ids in every set")
            if s.images.shape[1:] != first.images.shape[1:]:
                raise ValueError(f"concat needs one image shape, got {tuple(first.images.shape[1:])} "
                                 f"and {tuple(s.images.shape[1:])}")
        return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                        first.class_ids)


def resize_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 N×C×H×W at image_size² (bilinear, antialiased, rounded): per image, so one image resized
    alone equals the same image resized in a batch."""
    if tuple(images.shape[2:]) == (image_size, image_size):
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return x.round().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- embedded digits


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.ascontiguousarray(d.images, dtype=np.float64), np.ascontiguousarray(d.target, dtype=np.int64)


def digits_hash() -> str:
    """sha256 of the raw digits pixels (float64, 1797×8×8) and targets (int64), for provenance."""
    images, target = _digits_raw()
    h = hashlib.sha256()
    h.update(images.tobytes())
    h.update(target.tobytes())
    return h.hexdigest()


def load_digits_split(split: str, *, val_fraction: float = 0.2, split_seed: int = 0) -> ImageSet:
    """scikit-learn's digits as a fixed stratified train/val split, 1×8×8 uint8 (0..16 → 0..255).

    Per class c, the class's indices are shuffled by `np.random.default_rng([split_seed, c])` and
    the first round(n_c · val_fraction) go to "val", the rest to "train"; each side is returned
    in original index order. The split depends only on (val_fraction, split_seed), never on
    call order, so every call returns the same images.
    """
    if split not in ("train", "val"):
        raise UserError("data.split", f"unknown split {split!r} for digits", "use train or val")
    if not 0.0 < val_fraction < 1.0:
        raise UserError("data.val_fraction", f"{val_fraction} is outside (0, 1)", "use e.g. 0.2")
    raw, target = _digits_raw()
    chosen: list[np.ndarray] = []
    for c in range(len(DIGITS)):
        idx = np.flatnonzero(target == c)
        perm = np.random.default_rng([split_seed, c]).permutation(idx)
        n_val = int(round(len(idx) * val_fraction))
        chosen.append(perm[:n_val] if split == "val" else perm[n_val:])
    sel = np.sort(np.concatenate(chosen))
    pixels = np.rint(raw[sel] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ImageSet(torch.from_numpy(pixels[:, None]), torch.from_numpy(target[sel]), DIGITS)


# --------------------------------------------------------------------------- image folders


def _center_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and center-crop size×size (the ImageNet eval transform)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def image_folder_classes(root: str | os.PathLike, split: str | None = None) -> list[str]:
    """Every class subfolder of an image folder (`root/<split>/` when it exists, else `root/`), sorted by
    name: what torchvision's `ImageFolder` takes (hidden `.name` folders aside), for `data.classes` unset.
    The names may be anything (`cat/`, `dog/`); only a generator conditioned on ImageNet needs wnids."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserError("data.root", f"image folder {root!r} does not exist", "point data.root at it")
    base = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) else root
    names = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError("data.root", f"no class folders under {base!r}",
                        "give an ImageNet-layout folder: root/train/<class>/<image>")
    return names


class ImageFolderSet(Dataset):
    """ImageNet-layout folder (`root/<split>/<class>/*` or `root/<class>/*`), decoded lazily.

    Files are sorted by name for a stable index; a file's label is the position of its class folder in
    `class_ids`, so the label order is the user's class list, not the folder listing; with `class_ids`
    None, every class folder in sorted order (torchvision's `ImageFolder`).
    """

    def __init__(self, root: str | os.PathLike, split: str | None, class_ids: Sequence[str] | None, image_size: int):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise UserError("data.root", f"image folder {root!r} does not exist", "point data.root at it")
        if int(image_size) <= 0:
            raise UserError("data.image_size", f"{image_size} is not a positive size", "use e.g. 32")
        base = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) else root
        self.root, self.base, self.image_size = root, base, int(image_size)
        self.class_ids = [str(c) for c in (image_folder_classes(root, split) if class_ids is None else class_ids)]
        paths: list[str] = []
        labels: list[int] = []
        for label, wnid in enumerate(self.class_ids):
            d = os.path.join(base, wnid)
            if not os.path.isdir(d):
                raise UserError("data.classes", f"class folder {wnid!r} not found under {base!r}",
                                "fix the class list or the data root")
            files = sorted(e.name for e in os.scandir(d)
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise UserError("data.classes", f"class folder {d!r} holds no images",
                                "fill it or drop the class")
            paths += [os.path.join(d, f) for f in files]
            labels += [label] * len(files)
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            # JPEG only: decode at a reduced DCT scale that still keeps both sides >= image_size.
            img.draft("RGB", (self.image_size, self.image_size))
            img = _center_square(img.convert("RGB"), self.image_size)
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
        return torch.from_numpy(arr), int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def in_channels(self) -> int:
        return 3

    def per_class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageFolderSet:
        """The same folder restricted to `indices` (still decoded lazily)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        part = copy.copy(self)
        part.paths, part.labels = [self.paths[i] for i in idx.tolist()], self.labels[idx]
        return part


def load_image_folder(root: str | os.PathLike, split: str | None, class_ids: Sequence[str] | None,
                      image_size: int) -> ImageFolderSet:
    return ImageFolderSet(root, split, class_ids, image_size)


def materialize(dataset: Dataset, progress: bool = False, class_ids: Sequence[str] | None = None) -> ImageSet:
    """Decode a whole (small) dataset into memory, e.g. a 10-class folder subset for training."""
    if isinstance(dataset, ImageSet):
        return dataset
    class_ids = class_ids if class_ids is not None else getattr(dataset, "class_ids", None)
    if class_ids is None:
        raise ValueError("materialize needs class_ids (the dataset has no class_ids attribute)")
    n = len(dataset)
    if n == 0:
        raise UserError("data.root", "the dataset holds no images", "check data.root and data.classes")

    images, labels = [], []
    for i in progress_bar(range(n), desc="decoding", disable=not progress, unit="img"):
        x, y = dataset[i]
        images.append(torch.as_tensor(x))
        labels.append(int(y))
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.int64), class_ids)


def random_subset_per_class(dataset_labels: torch.Tensor | Sequence[int], ipc: int, seed: int,
                            num_classes: int | None = None) -> list[int]:
    """A seeded random choice of `ipc` indices per class: the honest "Random" baseline.

    Taking the first N files in name order (as the field's code does) is biased; here class c
    draws from `np.random.default_rng([seed, c])`, so one class's choice does not depend on the
    others. Classes are 0..num_classes-1 (default: max label + 1), each must have >= ipc images.
    Returns indices grouped by class, ascending within a class.
    """
    labels = torch.as_tensor(dataset_labels, dtype=torch.int64).cpu().numpy()
    if ipc <= 0:
        raise UserError("data.ipc", f"images per class must be positive, got {ipc}", "use e.g. 10")
    if seed < 0:
        raise UserError("seed", f"seed must be non-negative, got {seed}", "use e.g. 0")
    k = num_classes if num_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
    out: list[int] = []
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if len(idx) < ipc:
            raise UserError("data.ipc", f"class {c} has only {len(idx)} images, fewer than ipc={ipc}",
                            "lower the ipc or add images")
        pick = np.random.default_rng([seed, c]).choice(idx, size=ipc, replace=False)
        out += np.sort(pick).tolist()
    return out


# --------------------------------------------------------------------------- PNG and Parquet


def encode_png(img_uint8_CHW: torch.Tensor | np.ndarray) -> bytes:
    """Lossless PNG of a 1- or 3-channel uint8 C×H×W image; same pixels give the same bytes."""
    arr = img_uint8_CHW.detach().cpu().numpy() if isinstance(img_uint8_CHW, torch.Tensor) else np.asarray(img_uint8_CHW)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"encode_png needs uint8 C×H×W with C in (1, 3), got {arr.dtype} {arr.shape}")
    img = (Image.fromarray(np.ascontiguousarray(arr[0]), mode="L") if arr.shape[0] == 1
           else Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)), mode="RGB"))
    buf = io.BytesIO()
    # No pnginfo is passed, so PIL writes no text/time chunks: bytes depend on pixels only.
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def decode_png(b: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes → uint8 C×H×W; grayscale stays 1 channel, else RGB."""
    with Image.open(io.BytesIO(b)) as img:
        if img.mode != "L":
            img = img.convert("L" if img.mode in ("1", "LA", "I", "I;16") else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy()


def _resolve_fs(path: str, filesystem):
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, path
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _parquet_files(paths: str | Sequence[str], filesystem) -> list[tuple[object, str]]:
    """Expand files and directories (recursively, skipping _manifest/.hidden) into sorted files."""
    import pyarrow.fs as pafs

    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
        fs, path = _resolve_fs(os.fspath(p), filesystem)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserError("data.root", f"Parquet path {os.fspath(p)!r} does not exist", "fix the path")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                           and not any(part.startswith(("_", ".")) for part in i.path[len(path):].split("/")))
            if not files:
                raise UserError("data.root", f"no .parquet files under {os.fspath(p)!r}", "fix the path")
            out += [(fs, f) for f in files]
        else:
            out.append((fs, path))
    return out


class ParquetImageSet(Dataset):
    """Contract-schema Parquet parts (a distilled set) decoded one image at a time, at `image_size`.

    Memory holds the labels and a (part, row) index, never the images: a training worker's footprint is
    the batches in flight (DataLoader workers decode in parallel), not the set, and each image is resized
    once, to the size the student trains at. Rows keep the order of `files`; labels come from
    `class_id` (positions in `class_ids`), as `read_parquet_images` gives them.
    """

    def __init__(self, files: Sequence[str], class_ids: Sequence[str], image_size: int | None = None,
                 filesystem=None):
        import pyarrow.parquet as pq

        self.class_ids = [str(c) for c in class_ids]
        pos = {c: i for i, c in enumerate(self.class_ids)}
        self.fs, self.files, self.size = filesystem, list(files), image_size
        index: list[tuple[int, int]] = []
        labels: list[int] = []
        for f, path in enumerate(self.files):
            fs, p = _resolve_fs(path, filesystem)
            cids = pq.read_table(p, columns=["class_id"], filesystem=fs).column("class_id").to_pylist()
            for r, c in enumerate(cids):
                if str(c) not in pos:
                    raise UserError("data.classes", f"class {c!r} in {path!r} is not in the class list",
                                    "add it to data.classes or filter the data")
                index.append((f, r))
                labels.append(pos[str(c)])
        if not index:
            raise UserError("data.root", "no rows in the Parquet parts", "point at a non-empty Parquet set")
        self.index, self.labels = index, torch.tensor(labels, dtype=torch.int64)
        self._part: tuple[int, list] | None = None  # the last part read (parts are small: one chunk)
        first = self[0][0]
        self._shape = tuple(first.shape)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import pyarrow.parquet as pq

        f, r = self.index[i]
        if self._part is None or self._part[0] != f:
            fs, p = _resolve_fs(self.files[f], self.fs)
            blobs = pq.read_table(p, columns=["image"], filesystem=fs).column("image").combine_chunks()
            self._part = (f, blobs.field("bytes").to_pylist())
        img = torch.from_numpy(decode_png(self._part[1][r]))
        if self.size:
            img = resize_uint8(img[None], self.size)[0]
        return img, int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def image_size(self) -> int:
        return int(self._shape[1])

    @property
    def in_channels(self) -> int:
        return int(self._shape[0])

    def per_class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def read_parquet_images(paths: str | Sequence[str], class_ids: Sequence[str] | None = None,
                        filesystem=None) -> ImageSet:
    """Read contract-schema Parquet (`image` struct<bytes,path>, `label`, `class_id`) into memory.

    With `class_ids` given, `class_id` is authoritative: each row's label becomes the position of
    its class_id in that list (so sets written under another class order still line up). With
    None, the class list comes from the data, and label ↔ class_id must be one-to-one over 0..K-1.
    """
    import pyarrow.parquet as pq

    images: list[np.ndarray] = []
    labels: list[int] = []
    cids: list[str] = []
    for fs, f in _parquet_files(paths, filesystem):
        try:
            table = pq.read_table(f, columns=["image", "label", "class_id"], filesystem=fs)
        except (KeyError, ValueError) as e:  # pyarrow reports a missing column as one of these
            raise UserError("data.root", f"{f!r} lacks the contract columns image/label/class_id ({e})",
                            "write it with the project's Parquet schema") from e
        img_col = table.column("image").combine_chunks()
        blobs = img_col.field("bytes").to_pylist()
        for j, b in enumerate(blobs):
            if b is None:
                raise UserError("data.root", f"{f!r} row {j} has no image bytes", "rewrite the file")
            images.append(decode_png(b))
        labels += table.column("label").to_pylist()
        cids += [str(c) if c is not None else None for c in table.column("class_id").to_pylist()]
    if not images:
        raise UserError("data.root", f"no rows in {paths!r}", "point at a non-empty Parquet set")
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise UserError("data.root", f"images of different shapes {sorted(shapes)}", "use one image size per set")

    if class_ids is not None:
        class_ids = [str(c) for c in class_ids]
        pos = {c: i for i, c in enumerate(class_ids)}
        for c in cids:
            if c not in pos:
                raise UserError("data.classes", f"class {c!r} in the Parquet data is not in the class list",
                                "add it to data.classes or filter the data")
        label_t = torch.tensor([pos[c] for c in cids], dtype=torch.int64)
    else:
        by_label: dict[int, str] = {}
        for y, c in zip(labels, cids):
            if y is None or c is None:
                raise UserError("data.root", "a row has no label or class_id", "rewrite the file")
            if by_label.setdefault(int(y), c) != c:
                raise UserError("data.root", f"label {y} maps to both {by_label[int(y)]!r} and {c!r}",
                                "give data.classes explicitly or fix the data")
        k = max(by_label) + 1
        if min(by_label) < 0 or len(by_label) != k:
            missing = sorted(set(range(k)) - set(by_label))
            raise UserError("data.root", f"labels are not 0..{k - 1} (missing {missing[:5]})",
                            "give data.classes explicitly")
        class_ids = [by_label[i] for i in range(k)]
        if len(set(class_ids)) != k:
            raise UserError("data.root", "one class_id appears under two labels", "fix the data")
        label_t = torch.tensor(labels, dtype=torch.int64)
    return ImageSet(torch.from_numpy(np.stack(images)), label_t, class_ids)


# --------------------------------------------------------------------------- dispatch


def load_source(kind: str, root: str | None, split: str, class_ids: str | Sequence[str] | None,
                image_size: int | None) -> Dataset:
    """Open a real data source by name: "digits" | "imagefolder" | "parquet".

    digits: `root` is ignored; `class_ids` may pick a subset of "0".."9"; `image_size` other
    than 8 resizes. imagefolder: needs root and image_size; class_ids None = every class folder, sorted
    (torchvision's ImageFolder); decodes lazily.
    parquet: root is a file or directory (a `<root>/<split>` sub-directory is used when it exists);
    `image_size`, when given, resizes.
    """
    if kind == "digits":
        ds = load_digits_split(split)
        classes = resolve_classes(class_ids, DIGITS)
        if classes != DIGITS:
            ds = ds.select_classes(classes)
        return ds.resized(int(image_size)) if image_size else ds
    if kind == "imagefolder":
        if not root:
            raise UserError("data.root", "an image folder source needs a root", "set data.root")
        if not image_size:
            raise UserError("data.image_size", "an image folder source needs an image size", "set e.g. 64")
        classes = None if class_ids is None else resolve_classes(class_ids, None)  # None: every class folder
        return load_image_folder(root, split, classes, int(image_size))
    if kind == "parquet":
        if not root:
            raise UserError("data.root", "a Parquet source needs a root", "set data.root")
        import pyarrow.fs as pafs

        fs, path = _resolve_fs(root, None)
        sub = path.rstrip("/") + "/" + split if split else None
        if sub and fs.get_file_info(sub).type == pafs.FileType.Directory:
            path = sub
        classes = resolve_classes(class_ids, None) if class_ids is not None else None
        ds = read_parquet_images(path, classes, filesystem=fs)
        return ds.resized(int(image_size)) if image_size else ds
    raise UserError("data.name", f"unknown data source {kind!r}", f"use one of {', '.join(SOURCES)}")


def load_split(data_cfg, split: str, class_ids: Sequence[str]) -> Dataset:
    """The configured real source's split (`data_cfg` is the config's `data` section)."""
    return load_source(data_cfg.name, data_cfg.root, split, class_ids, data_cfg.image_size)


# --------------------------------------------------------------------------- train / select / test

# The three parts every run reads. "train" and "select" are carved from `data.train_split`; "test" is
# `data.val_split`, the split the field reports. Whatever chooses (θ_i's accuracy, ASHA, best.yaml,
# calibration) reads "select"; only the final protocol reads "test".
PARTS = ("train", "select", "test")
SELECT_SEED = 7  # the carve's own seed: one selection split for every run seed, so trials compare alike


def selection_split(labels: torch.Tensor | Sequence[int], fraction: float, num_classes: int) -> tuple[list[int], list[int]]:
    """(train, select) indices of a train split: per class c, round(n_c · fraction) images (at least one,
    and at least one left to train on) drawn by `np.random.default_rng([SELECT_SEED, c])`, so a class's
    carve depends on its own images only. Both lists ascending."""
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu().numpy()
    train: list[int] = []
    select: list[int] = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise UserError("data.select_fraction", f"class {c} has {len(idx)} training image(s): none to carve a "
                            "selection split from", "add images (at least 2 per class)")
        n = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        chosen = np.random.default_rng([SELECT_SEED, c]).choice(idx, size=n, replace=False)
        select += chosen.tolist()
        train += np.setdiff1d(idx, chosen).tolist()
    return sorted(train), sorted(select)


def load_part(data_cfg, part: str, class_ids: Sequence[str]) -> Dataset:
    """One of PARTS of the configured source: "train" = data.train_split less the selection split,
    "select" = data.select_fraction of each class of data.train_split, "test" = data.val_split. With
    data.select_split set, "select" is that split whole and "train" all of data.train_split."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part == "test":
        return load_split(data_cfg, data_cfg.val_split, class_ids)
    if data_cfg.select_split:
        return load_split(data_cfg, data_cfg.train_split if part == "train" else data_cfg.select_split, class_ids)
    full = load_split(data_cfg, data_cfg.train_split, class_ids)
    train, select = selection_split(full.labels, data_cfg.select_fraction, len(class_ids))
    return full.subset(train if part == "train" else select)
