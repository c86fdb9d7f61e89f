"""`lgd-ray photos`: the second natural-image set, from the photographs scikit-learn ships."""

from __future__ import annotations

import hashlib

from lgd_ray.apps.photos import REGIONS, _parts, write_photo_regions
from lgd_ray.cli import main
from lgd_ray.core.data import image_folder_classes, load_source


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_train_and_val_never_share_a_pixel():
    boxes = {name: (photo, tuple(box)) for name, (photo, *box) in REGIONS.items()}
    for name, (photo, box) in boxes.items():
        parts = _parts(box)
        assert not _overlap(parts["train"], parts["val"])  # so no val crop overlaps a train crop
        for part in parts.values():  # the parts tile the region
            assert box[0] <= part[0] < part[2] <= box[2] and box[1] <= part[1] < part[3] <= box[3]
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
    assert (len(train), len(val)) == (30, 20)
    x, y = train[0]
    assert tuple(x.shape) == (3, 16, 16) and 0 <= int(y) < 10


def test_the_command_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("mine")
    assert main(["photos", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "old.txt").read_text() == "mine"
