"""Image folders as torchvision's ImageFolder reads them: with `data.classes` unset every class folder is
a class, in sorted order, whatever its name; only a generator conditioned on ImageNet asks for wnids. And
the demo's generator training on such a folder says how long it will take before it starts."""

from __future__ import annotations

import json

import pytest

from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError

from helpers import assert_refused, write_class_folder


def make_folder(root, classes=("dog", "cat"), n=(6, 3), size=8):
    return write_class_folder(root, classes, n, size)


def test_unset_classes_take_every_class_folder_like_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    from lgd_ray.core.data import load_source, materialize
    from lgd_ray.engine.run import resolve_classes_only

    root = make_folder(tmp_path / "pets")
    ds = load_source("imagefolder", str(root), "train", None, 8)
    tv = ImageFolder(str(root / "train"))
    assert ds.class_ids == ["cat", "dog"] == tv.classes
    assert ds.paths == [p for p, _ in tv.samples] and ds.labels.tolist() == tv.targets
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class (torchvision would take it)
    assert load_source("imagefolder", str(root), "train", None, 8).class_ids == ["cat", "dog"]
    data = materialize(ds)
    assert data.images.shape == (12, 3, 8, 8)
    assert data.images[ds.labels == 0, 1].float().mean() > 150  # cat (green channel): label 0, sorted
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.image_size=8"])
    assert resolve_classes_only(cfg) == ["cat", "dog"]
    listed = load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.classes=[dog, cat]"])
    assert resolve_classes_only(listed) == ["dog", "cat"]  # a given list still sets the label order
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        load_source("imagefolder", str(tmp_path / "empty"), "train", None, 8)
    assert e.value.field == "data.root" and "no class folders" in str(e.value)


def test_only_an_imagenet_generator_asks_for_wnids(tmp_path, capsys, monkeypatch):
    from lgd_ray.core.classes import imagenet_wnids
    from lgd_ray.core.generator import create_generator
    from lgd_ray.engine.run import resolve_run

    pets = make_folder(tmp_path / "pets")
    wnids = imagenet_wnids()
    imagenet_gen = tmp_path / "dit-like"
    create_generator("unet-micro", 1000, 8, 3, class_ids=wnids).save_pretrained(imagenet_gen)
    # an ImageNet generator and folders named cat/ dog/: refused, and the message says why wnids are needed
    assert_refused("distill", ["data.name=imagefolder", f"data.root={pets}", f"generator.path={imagenet_gen}"],
                   "generator.class_map", tmp_path, capsys, monkeypatch)
    # what the message says
    with pytest.raises(UserError) as e:
        resolve_run(load_config(None, ["data.name=imagefolder", f"data.root={pets}", f"generator.path={imagenet_gen}"]))
    assert "'cat' is not an ImageNet wnid" in str(e.value) and "generator.class_map" in str(e.value)
    # another generator that lacks the classes: the plain message, no talk of wnids
    with pytest.raises(UserError) as e:
        resolve_run(load_config(None, ["data.name=imagefolder", f"data.root={pets}"]))
    assert "wnid" not in str(e.value) and "'cat'" in str(e.value)
    # wnid folders with classes unset: sorted, and mapped to the generator's classes by wnid
    named = make_folder(tmp_path / "named", classes=("n02102040", "n01440764"))
    run = resolve_run(load_config(None, ["data.name=imagefolder", f"data.root={named}",
                                         f"generator.path={imagenet_gen}"]))
    assert run.class_ids == ["n01440764", "n02102040"]
    assert run.class_map == [wnids.index("n01440764"), wnids.index("n02102040")]


def test_demo_prints_the_generator_training_estimate_even_when_quiet(ray_session, tmp_path, capsys, monkeypatch):
    import functools

    import lgd_ray.core.train_generator as tg
    from lgd_ray.apps.demo import duration, ensure_generator

    # the demo's own generator settings, on a micro UNet and small batches: seconds, not minutes, on 2 cores
    monkeypatch.setattr(tg, "GeneratorTrainSettings", functools.partial(tg.GeneratorTrainSettings, arch="unet-micro",
                                                                        batch_size=8))
    root = make_folder(tmp_path / "pets")
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.image_size=8"])
    out = tmp_path / "demo"
    got = ensure_generator(cfg, str(out), steps=3, progress=False)
    err = capsys.readouterr().err
    assert "training a generator on" in err and "3 steps at" in err and "s/step" in err and "about " in err
    assert "--generator-steps" in err and "--generator-minutes" in err  # how to shorten it
    meta = json.loads((out / "generator" / "lgd_ray.json").read_text())
    assert got.generator.path == str(out / "generator") and meta["train"]["steps_done"] == 3
    # the estimate is a measurement: per step within a wide margin of the real training's
    per_step = float(err.split(" s/step")[0].rsplit(" ", 1)[1])
    real = meta["train"]["seconds"] / 3
    assert per_step > 0 and real / 10 < per_step < real * 10, (per_step, real)
    assert ensure_generator(cfg, str(out), steps=3, progress=False).generator.path == str(out / "generator")
    assert capsys.readouterr().err == ""  # trained already: nothing to estimate
    assert [duration(40), duration(12 * 60), duration(2 * 3600 + 5 * 60)] == ["40 s", "12 min", "2 h 05 min"]
    for kwargs, field in (({"steps": 2}, "--generator-steps"), ({"steps": 3, "minutes": 0}, "--generator-minutes")):
        with pytest.raises(UserError) as e:
            ensure_generator(cfg, str(tmp_path / "other"), progress=False, **kwargs)
        assert e.value.field == field
    assert not (tmp_path / "other").exists()
