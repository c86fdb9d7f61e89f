"""`lgd-ray demo` on a user's ImageNet-layout folder: a generator is trained on it first (slow)."""

from __future__ import annotations

import json

import pytest

from lgd_ray.core.config import load_config

from helpers import write_class_folder


def make_folder(root, classes=("n01440764", "n02102040"), per_split=(12, 6), size=8):
    return write_class_folder(root, classes, per_split, size)


@pytest.mark.slow
def test_demo_on_an_image_folder(tmp_path, ray_session):
    from lgd_ray.apps.demo import run_demo

    make_folder(tmp_path / "data")
    cfg = load_config(None, [
        "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.classes=[n01440764, n02102040]",
        "generator.num_steps=4", "distill.window=[0,3]", "distill.stages=1", "distill.ipc_seed=1",
        "distill.ipc_per_stage=1", "distill.chunk_size=2", "student.epochs=2", "reference.epochs=2",
        "eval.epochs=5", "eval.seeds=[0,1]", "eval.eval_every=5", "student.arch=convnet2-w8",
        "reference.arch=convnet2-w8", "eval.arch=convnet2-w8"])
    result = run_demo(cfg, str(tmp_path / "out"), progress=False, generator_steps=20, full_epochs=2)
    assert (tmp_path / "out" / "generator" / "lgd_ray.json").exists()  # trained on the folder
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["results"]) == set(result["results"])
    assert len(saved["results"]) == 6 and (tmp_path / "out" / "progression.png").exists()
    for name in ("unguided generator", "rank selection only (λ=0, κ=3)", "LGD κ=1 (no rank selection)"):
        assert 0 <= saved["results"][name]["cross_increment_acc"] <= 1
