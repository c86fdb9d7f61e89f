"""`lgd-ray photos`: the second natural-image set, from the photographs scikit-learn ships."""

from __future__ import annotations

import hashlib

from lgd_ray.apps.photos import REGIONS, _parts, write_photo_regions
from lgd_ray.cli import main
from lgd_ray.core.data import image_folder_classes, load_source


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _area(b) -> int:
    return (b[2] - b[0]) * (b[3] - b[1])


def test_train_select_and_val_never_share_a_pixel():
    boxes = {name: (photo, tuple(box)) for name, (photo, *box) in REGIONS.items()}
    for name, (photo, box) in boxes.items():
        parts = _parts(box)
        assert set(parts) == {"train", "select", "val"}
        for a, b in (("train", "val"), ("train", "select"), ("select", "val")):
            assert not _overlap(parts[a], parts[b]), (name, a, b)  # so no crop of one overlaps a crop of another
        for part in parts.values():  # inside the region, and together they tile it
            assert box[0] <= part[0] < part[2] <= box[2] and box[1] <= part[1] < part[3] <= box[3]
        assert sum(_area(p) for p in parts.values()) == _area(box)
        # the select band lies between train and val, so it is as far from train as val is near it
        long = 0 if box[2] - box[0] >= box[3] - box[1] else 1
        assert parts["train"][2 + long] == parts["select"][long] and parts["select"][2 + long] == parts["val"][long]
        assert _parts(box, 0.0) == {"train": (*box[:2 + long], parts["val"][long], *box[3 + long:]),
                                    "val": parts["val"]}  # select_share 0: the two-part layout, the same val part
        for other, (p2, b2) in boxes.items():  # and no two classes show the same pixels
            assert other == name or p2 != photo or not _overlap(box, b2), (name, other)


def test_the_folder_reads_as_an_image_folder_and_is_the_same_every_time(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        write_photo_regions(out, size=32, train_per_class=3, val_per_class=2)
    digest = [hashlib.sha256(b"".join(p.read_bytes() for p in sorted(d.rglob("*.png")))).hexdigest() for d in (a, b)]
    assert digest[0] == digest[1]
    classes = image_folder_classes(str(a), "train")
    assert sorted(classes) == sorted(REGIONS) and len(classes) == 10
    train = load_source("imagefolder", str(a), "train", classes, 16)
    val = load_source("imagefolder", str(a), "val", classes, 16)
    assert (len(train), len(val), len(load_source("imagefolder", str(a), "select", classes, 16))) == (30, 20, 400)
    x, y = train[0]
    assert tuple(x.shape) == (3, 16, 16) and 0 <= int(y) < 10


def test_the_val_crops_do_not_move_with_the_select_band(tmp_path):
    """Val's crops draw from their own stream and part, so a set with a select/ split and one without
    share a test split byte for byte, and only train (a shorter part) differs."""
    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.png")))).hexdigest()

    write_photo_regions(tmp_path / "two", size=16, train_per_class=2, val_per_class=2, select_share=0.0)
    write_photo_regions(tmp_path / "three", size=16, train_per_class=2, val_per_class=2, select_per_class=2)
    assert not (tmp_path / "two" / "select").exists() and (tmp_path / "three" / "select").is_dir()
    assert digest(tmp_path / "two" / "val") == digest(tmp_path / "three" / "val")
    assert digest(tmp_path / "two" / "train") != digest(tmp_path / "three" / "train")


def test_the_command_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("mine")
    assert main(["photos", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "old.txt").read_text() == "mine"
