"""`lgd-ray photos`: a second, natural-image data set that ships inside a registry package.

scikit-learn bundles two photographs (`sklearn.datasets.load_sample_images`: a pagoda above a lake,
and a dahlia), so this set needs no download. Classes are regions of content, six of the first photo
(sky, the distant shore, lake, roof tiles, the pagoda's red walls, trees) and four of the second
(petals, the flower's heart, the dark background, the bud below). An image is a random square crop of
a region, resized.

Why this is a fair test: a class is what a region shows, not where it is, and the classes of one
photo share its light and colour, so telling them apart takes texture and shape (tiles from walls,
petals from the heart). Train and val never share a pixel: each region is cut across its longer side,
train crops lie wholly in the first 75% and val crops in the rest, so no val crop overlaps a train
crop. Written as an ImageNet-layout folder (`root/train/<class>/*.png`, `root/val/<class>/*.png`),
for `data.name=imagefolder data.root=DIR` like any user's folder.

The selection split needs the same care. Carved at random from train, its crops overlap train crops
and it measures how well a set fits the train part, not the shift to an unseen part that the test
split measures (on this set it ranked LGD above rank selection alone; the test split, the other way
round). So a band of each region between the train and val parts (`select_share` of its longer side)
becomes a third split, `root/select/`, for `data.select_split=select`: as disjoint from train as val is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# (photo, x0, y0, x1, y1) in the 640 × 427 photographs; disjoint within each photo
REGIONS: dict[str, tuple[int, int, int, int, int]] = {
    "sky": (0, 380, 0, 640, 120),
    "lake": (0, 360, 236, 545, 296),
    "roof": (0, 80, 250, 345, 282),
    "walls": (0, 100, 190, 320, 232),
    "trees": (0, 360, 310, 640, 427),
    "petals": (1, 190, 110, 430, 165),
    "heart": (1, 270, 175, 350, 245),
    "shore": (0, 330, 198, 560, 234),
    "background": (1, 0, 0, 160, 300),
    "bud": (1, 295, 372, 460, 427),
}
TRAIN_SHARE = 0.75  # of each region's longer side: train (and select) before it, val after
SELECT_SHARE = 0.15  # the select band, the last 15% before the val part: train keeps the first 60%
CROP = (24, 48)  # crop side in pixels of the photograph, before the resize
SPLIT_STREAM = {"train": 0, "val": 1, "select": 2}  # the seed rule's third word: val's crops do not move with select_share


def _parts(box: tuple[int, int, int, int], select_share: float = SELECT_SHARE) -> dict[str, tuple[int, int, int, int]]:
    """The region cut across its longer side at 0 | 0.75 − select_share | 0.75 | 1: train, select, val
    (no select part when select_share is 0)."""
    x0, y0, x1, y1 = box
    wide = x1 - x0 >= y1 - y0
    lo, hi = (x0, x1) if wide else (y0, y1)
    cuts = [lo, lo + round((TRAIN_SHARE - select_share) * (hi - lo)), lo + round(TRAIN_SHARE * (hi - lo)), hi]
    spans = {"train": (cuts[0], cuts[1]), "select": (cuts[1], cuts[2]), "val": (cuts[2], cuts[3])}
    if select_share == 0:
        del spans["select"]
    return {k: (a, y0, b, y1) if wide else (x0, a, x1, b) for k, (a, b) in spans.items()}


def crops(photo: np.ndarray, box: tuple[int, int, int, int], n: int, size: int, rng: np.random.Generator) -> list:
    """n random square crops wholly inside box (x0, y0, x1, y1), each resized to size × size (PIL images)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    out = []
    for _ in range(n):
        side = int(rng.integers(CROP[0], CROP[1] + 1))
        side = min(side, x1 - x0, y1 - y0)
        x = int(rng.integers(x0, x1 - side + 1))
        y = int(rng.integers(y0, y1 - side + 1))
        out.append(Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.LANCZOS))
    return out


def write_photo_regions(out: str | Path, *, size: int = 32, train_per_class: int = 150, val_per_class: int = 40,
                        select_per_class: int = 40, select_share: float = SELECT_SHARE, seed: int = 0) -> dict:
    """Write the set into `out` (train/, select/ and val/, one folder per class, PNGs; no select/ when
    select_share is 0, the layout before it); returns its summary.
    Seed rule: class c's split s draws from np.random.default_rng([seed, c, SPLIT_STREAM[s]])."""
    from sklearn.datasets import load_sample_images

    if not 0 <= select_share < TRAIN_SHARE:
        raise ValueError(f"select_share must be in [0, {TRAIN_SHARE}), got {select_share}")
    photos = load_sample_images().images
    out = Path(out)
    counts = {}
    sizes = {"train": train_per_class, "select": select_per_class, "val": val_per_class}
    for c, (name, (photo, *box)) in enumerate(REGIONS.items()):
        for split, part in _parts(tuple(box), select_share).items():
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, c, SPLIT_STREAM[split]])
            for i, img in enumerate(crops(photos[photo], part, sizes[split], size, rng)):
                img.save(folder / f"{name}_{i:04d}.png")
            counts[f"{split}/{name}"] = sizes[split]
    summary = {"source": "sklearn.datasets.load_sample_images (china.jpg, flower.jpg)", "size": size, "seed": seed,
               "classes": list(REGIONS), "regions": {k: list(v) for k, v in REGIONS.items()}, "train_share": TRAIN_SHARE,
               "select_share": select_share, "crop": list(CROP), "counts": counts}
    (out / "photos.json").write_text(json.dumps(summary, indent=1))
    return summary


def preview(out: str | Path, path: str | Path, per_class: int = 8) -> None:
    """A PNG grid: one row per class, the first `per_class` train crops."""
    from PIL import Image

    out = Path(out)
    rows = []
    for name in REGIONS:
        files = sorted((out / "train" / name).glob("*.png"))[:per_class]
        rows.append([Image.open(f).convert("RGB") for f in files])
    s = rows[0][0].size[0]
    grid = Image.new("RGB", (per_class * (s + 2), len(rows) * (s + 2)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img, (c * (s + 2), r * (s + 2)))
    grid.resize((grid.width * 3, grid.height * 3), Image.Resampling.NEAREST).save(path)
