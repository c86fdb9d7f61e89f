"""lgd_ray.core.data: digits split, class lists, image folders, seeded subsets, PNG and Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lgd_ray.core import data
from lgd_ray.core.errors import UserError

# --------------------------------------------------------------------------- digits


def test_digits_split_stratified_disjoint_deterministic():
    train, val = data.load_digits_split("train"), data.load_digits_split("val")
    assert train.class_ids == [str(d) for d in range(10)]
    assert len(train) + len(val) == 1797
    for s in (train, val):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 8, 8)
        assert (s.in_channels, s.image_size, s.num_classes) == (1, 8, 10)
        assert int(s.images.min()) == 0 and int(s.images.max()) == 255
    # stratified: each class split in the same proportion (within rounding)
    tc, vc = np.array(train.per_class_counts()), np.array(val.per_class_counts())
    assert np.all(np.abs(vc - np.rint((tc + vc) * 0.2)) == 0)
    # disjoint and covering: the union is exactly the 1797 raw images, with their labels
    raw = np.rint(data._digits_raw()[0] * 255 / 16).astype(np.uint8).reshape(1797, -1)
    both = data.ImageSet.concat([train, val])
    rows = {(r.tobytes(), int(y)) for r, y in zip(both.images.reshape(1797, -1).numpy(), both.labels)}
    raw_rows = {(r.tobytes(), int(y)) for r, y in zip(raw, data._digits_raw()[1])}
    assert rows == raw_rows
    # deterministic; a different seed gives a different split
    again = data.load_digits_split("val")
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    other = data.load_digits_split("val", split_seed=1)
    assert not torch.equal(other.images, val.images)
    assert len(data.digits_hash()) == 64 and data.digits_hash() == data.digits_hash()
    x, y = val[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int)


def test_digits_bad_split():
    with pytest.raises(UserError, match="data.split"):
        data.load_digits_split("test")
    with pytest.raises(UserError, match="data.val_fraction"):
        data.load_digits_split("val", val_fraction=1.5)


def test_selection_split_carves_train_per_class_seeded_and_never_touches_test():
    """train + select partition data.train_split (per class round(n·f), ≥ 1 each side); test = data.val_split;
    the carve of a class depends only on that class's images; the same for every run seed."""
    from lgd_ray.core.config import load_config

    cfg = load_config(None, ["data.select_fraction=0.25"])
    classes = [str(d) for d in range(10)]
    full = data.load_digits_split("train")
    train_idx, select_idx = data.selection_split(full.labels, 0.25, 10)
    assert set(train_idx).isdisjoint(select_idx) and sorted(train_idx + select_idx) == list(range(len(full)))
    counts = np.bincount(full.labels.numpy(), minlength=10)
    assert np.bincount(full.labels[select_idx].numpy(), minlength=10).tolist() == np.rint(counts * 0.25).astype(int).tolist()
    train, select, test = (data.load_part(cfg.data, p, classes) for p in ("train", "select", "test"))
    assert torch.equal(select.images, full.images[select_idx]) and torch.equal(train.images, full.images[train_idx])
    assert torch.equal(test.images, data.load_digits_split("val").images)
    assert len(train) + len(select) == len(full)
    # a class's carve is its own: dropping 50 of class 0's images leaves every other class's selection as it was
    keep = np.ones(len(full), bool)
    keep[np.flatnonzero(full.labels.numpy() == 0)[:50]] = False
    _, sel_kept = data.selection_split(full.labels[keep], 0.25, 10)
    back = np.flatnonzero(keep)[sel_kept]
    others = [i for i in select_idx if int(full.labels[i]) != 0]
    assert [int(i) for i in back if int(full.labels[i]) != 0] == others
    with pytest.raises(UserError, match="data.select_fraction"):
        data.selection_split(torch.tensor([0, 0, 1]), 0.5, 2)  # class 1 has one image: nothing to carve
    with pytest.raises(UserError, match="data.select_fraction"):
        load_config(None, ["data.select_fraction=0"])


def test_a_selection_split_of_its_own_is_read_whole_and_train_is_then_used_whole(tmp_path):
    """data.select_split names a split of the source (here lgd-ray photos' select/ band): "select" is it,
    "train" all of data.train_split, "test" still data.val_split; unset, the carve from train as before,
    with the config hash of outputs made before the key."""
    from lgd_ray.apps.photos import write_photo_regions
    from lgd_ray.core.config import load_config

    write_photo_regions(tmp_path, size=8, train_per_class=4, val_per_class=2, select_per_class=3)
    root = ["data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=8"]
    own = load_config(None, root + ["data.select_split=select"])
    carved = load_config(None, root)
    classes = data.image_folder_classes(str(tmp_path), "train")
    parts = {p: data.materialize(data.load_part(own.data, p, classes)) for p in data.PARTS}
    split = {s: data.materialize(data.load_source("imagefolder", str(tmp_path), s, classes, 8))
             for s in ("train", "select", "val")}
    assert torch.equal(parts["select"].images, split["select"].images) and len(parts["select"]) == 30
    assert torch.equal(parts["train"].images, split["train"].images) and len(parts["train"]) == 40
    assert torch.equal(parts["test"].images, split["val"].images)
    assert len(data.load_part(carved.data, "train", classes)) == 30  # unset: 10% of 4 per class (one) carved from train
    assert own.hash() != carved.hash()
    assert carved.hash() == load_config(None, root + ["data.select_fraction=0.1"]).hash()
    for bad in ("train", "val"):  # train itself, or the test split
        with pytest.raises(UserError, match="data.select_split"):
            load_config(None, root + [f"data.select_split={bad}"])


def test_imageset_helpers():
    s = data.load_digits_split("val")
    sub = s.subset([0, 2, 4])
    assert len(sub) == 3 and torch.equal(sub.images[1], s.images[2])
    with pytest.raises(ValueError):
        data.ImageSet.concat([s, data.ImageSet(s.images, s.labels, list("abcdefghij"))])
    sel = s.select_classes(["7", "3"])
    assert sel.class_ids == ["7", "3"] and sel.per_class_counts() == [
        s.per_class_counts()[7], s.per_class_counts()[3]]
    big = s.resized(16)
    assert big.images.shape[1:] == (1, 16, 16) and big.images.dtype == torch.uint8


# --------------------------------------------------------------------------- class lists


def test_class_presets_and_generator_index():
    wnids = data.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    nette = data.resolve_classes("imagenette", wnids)
    assert nette == data.IMAGENETTE and len(nette) == 10 and set(nette) <= set(wnids)
    woof = data.resolve_classes("ImageWoof", wnids)
    assert len(woof) == 10 and set(woof) <= set(wnids)
    assert data.resolve_classes("imagenet1k", None) == wnids
    assert data.resolve_classes("digits", None) == [str(d) for d in range(10)]
    assert data.resolve_classes([0, 1], data.DIGITS) == ["0", "1"]
    idx = data.generator_class_index(nette, wnids)
    assert idx[:2] == [0, 217] and len(set(idx)) == 10


def test_class_errors_name_field_and_id():
    wnids = data.imagenet_wnids()
    with pytest.raises(UserError, match="data.classes.*imagenetto"):
        data.resolve_classes("imagenetto", wnids)
    with pytest.raises(UserError, match="data.classes.*n99999999"):
        data.resolve_classes(["n01440764", "n99999999"], wnids)
    with pytest.raises(UserError, match="data.classes"):
        data.resolve_classes(["n01440764", "n01440764"], wnids)
    with pytest.raises(UserError, match="generator.class_map.*n99999999"):
        data.generator_class_index(["n99999999"], wnids)


# --------------------------------------------------------------------------- image folders


def _make_folder(root, classes, n=3, split="train"):
    rng = np.random.default_rng(0)
    for ci, wnid in enumerate(classes):
        d = root / split / wnid if split else root / wnid
        d.mkdir(parents=True)
        for k in range(n):
            h, w = (10 + 3 * k, 14) if k % 2 else (14, 10 + 3 * k)  # portrait and landscape
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            ext, mode = (".JPEG", "RGB") if k % 2 == 0 else (".png", "L")
            img = Image.fromarray(arr, "RGB").convert(mode)
            img.save(d / f"{wnid}_{k:02d}{ext}")
        (d / "notes.txt").write_text("not an image")


def test_image_folder_labels_and_size(tmp_path):
    classes = data.IMAGENETTE[:3]
    _make_folder(tmp_path, classes)
    order = [classes[2], classes[0], classes[1]]  # labels follow the given list, not the listing
    ds = data.load_image_folder(tmp_path, "train", order, 8)
    assert len(ds) == 9 and ds.per_class_counts() == [3, 3, 3]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
        assert ds.paths[i].split("/")[-2] == order[y]
    names = [p.split("/")[-1] for p in ds.paths if order[0] in p]
    assert names == sorted(names)
    mem = data.materialize(ds)
    assert mem.images.shape == (9, 3, 8, 8) and mem.class_ids == order
    assert torch.equal(mem.labels, ds.labels)
    # no split folder: root/<wnid>/*
    flat = tmp_path / "flat"
    _make_folder(flat, classes, n=2, split=None)
    assert len(data.load_source("imagefolder", str(flat), "val", classes, 6)) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        data.load_image_folder(tmp_path / "nope", "train", data.IMAGENETTE, 8)
    _make_folder(tmp_path, data.IMAGENETTE[:2])
    with pytest.raises(UserError, match=f"data.classes.*{data.IMAGENETTE[2]}"):
        data.load_image_folder(tmp_path, "train", data.IMAGENETTE[:3], 8)


# --------------------------------------------------------------------------- random subsets


def test_random_subset_per_class():
    labels = torch.arange(10).repeat_interleave(40)  # class c holds indices 40c..40c+39
    a = data.random_subset_per_class(labels, 5, seed=0)
    assert a == data.random_subset_per_class(labels, 5, seed=0)
    assert a != data.random_subset_per_class(labels, 5, seed=1)
    assert np.bincount(labels[a].numpy(), minlength=10).tolist() == [5] * 10
    assert len(set(a)) == 50
    first_n = [40 * c + k for c in range(10) for k in range(5)]
    assert a != first_n
    with pytest.raises(UserError, match="data.ipc"):
        data.random_subset_per_class(labels, 41, seed=0)
    with pytest.raises(UserError, match="class 10"):
        data.random_subset_per_class(labels, 5, seed=0, num_classes=11)


# --------------------------------------------------------------------------- PNG and Parquet


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_exact(channels):
    img = torch.from_numpy(np.random.default_rng(channels).integers(0, 256, (channels, 7, 9), dtype=np.uint8))
    b = data.encode_png(img)
    assert b == data.encode_png(img.numpy()) and b[:8] == b"\x89PNG\r\n\x1a\n"
    out = data.decode_png(b)
    assert out.dtype == np.uint8 and out.shape == (channels, 7, 9)
    assert np.array_equal(out, img.numpy())


def _write_parquet(path, images, labels, class_ids):
    blobs = [data.encode_png(x) for x in images]
    image = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array([f"{i}.png" for i in range(len(blobs))], pa.string())],
        names=["bytes", "path"])
    table = pa.table({
        "image": image,
        "label": pa.array(labels, pa.int64()),
        "class_id": pa.array(class_ids, pa.string()),
        "stage": pa.array([0] * len(blobs), pa.int32()),  # extra columns are ignored
    })
    pq.write_table(table, path)


def test_parquet_round_trip(tmp_path):
    src = data.load_digits_split("val").subset(range(30))
    d = tmp_path / "stage=000"
    d.mkdir()
    _write_parquet(d / "part-0000.parquet", list(src.images[:20]), src.labels[:20].tolist(),
                   [src.class_ids[y] for y in src.labels[:20].tolist()])
    _write_parquet(d / "part-0001.parquet", list(src.images[20:]), src.labels[20:].tolist(),
                   [src.class_ids[y] for y in src.labels[20:].tolist()])
    (d / "_manifest.json").write_text("{}")
    got = data.read_parquet_images(str(d), src.class_ids)
    assert torch.equal(got.images, src.images) and torch.equal(got.labels, src.labels)
    files = [str(d / "part-0000.parquet"), str(d / "part-0001.parquet")]
    assert torch.equal(data.read_parquet_images(files, src.class_ids).images, src.images)
    # class list from the data: labels 0..K-1 with one class_id each
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8))
    _write_parquet(tmp_path / "rgb.parquet", list(rgb), [0, 1, 1, 0], ["n01", "n02", "n02", "n01"])
    got = data.read_parquet_images(str(tmp_path / "rgb.parquet"))
    assert got.class_ids == ["n01", "n02"] and torch.equal(got.images, rgb)
    # with an explicit class list, class_id decides the label
    got = data.read_parquet_images(str(tmp_path / "rgb.parquet"), ["n02", "n01"])
    assert got.labels.tolist() == [1, 0, 0, 1]
    ds = data.load_source("parquet", str(tmp_path / "rgb.parquet"), "train", None, None)
    assert len(ds) == 4
    with pytest.raises(UserError, match="data.root"):
        data.read_parquet_images(str(tmp_path / "missing.parquet"))
    with pytest.raises(UserError, match="data.classes.*n02"):
        data.read_parquet_images(str(tmp_path / "rgb.parquet"), ["n01"])


def test_streamed_parquet_set_equals_the_set_in_memory(tmp_path):
    """ParquetImageSet (what a Train worker reads) yields the images of read_parquet_images + resized, in
    the same order, with the same labels, decoding one image at a time; it holds no images itself."""
    rgb = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 3, 12, 12), dtype=np.uint8))
    cids = ["n02", "n01", "n02", "n01", "n01", "n02", "n01"]
    _write_parquet(tmp_path / "a.parquet", list(rgb[:4]), [0] * 4, cids[:4])
    _write_parquet(tmp_path / "b.parquet", list(rgb[4:]), [0] * 3, cids[4:])
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    want = data.read_parquet_images(files, ["n01", "n02"]).resized(8)
    streamed = data.ParquetImageSet(files, ["n01", "n02"], image_size=8)
    assert len(streamed) == 7 and (streamed.image_size, streamed.in_channels, streamed.num_classes) == (8, 3, 2)
    got = torch.stack([streamed[i][0] for i in range(7)])
    assert torch.equal(got, want.images) and [streamed[i][1] for i in range(7)] == want.labels.tolist()
    assert torch.equal(streamed.labels, want.labels) and streamed.per_class_counts() == [4, 3]
    assert not any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in vars(streamed).values())
    with pytest.raises(UserError, match="data.classes"):
        data.ParquetImageSet(files, ["n01"])


def test_parquet_inconsistent_class_ids(tmp_path):
    img = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    _write_parquet(tmp_path / "bad.parquet", list(img), [0, 0], ["a", "b"])
    with pytest.raises(UserError, match="data.root"):
        data.read_parquet_images(str(tmp_path / "bad.parquet"))
    pq.write_table(pa.table({"label": pa.array([0], pa.int64())}), tmp_path / "nocol.parquet")
    with pytest.raises(UserError, match="data.root.*contract"):
        data.read_parquet_images(str(tmp_path / "nocol.parquet"))


# --------------------------------------------------------------------------- dispatch


def test_load_source_dispatch():
    ds = data.load_source("digits", None, "train", ["1", "2"], 16)
    assert ds.class_ids == ["1", "2"] and ds.images.shape[1:] == (1, 16, 16)
    with pytest.raises(UserError, match="data.name"):
        data.load_source("cifar", None, "train", None, None)

