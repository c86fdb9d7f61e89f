"""Shared fixtures: one private Ray session per test run, tiny generators and students."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory) -> str:
    """A random-weight class-conditional UNet on 8×8×1, saved in the pipeline layout."""
    from lgd_ray.core.generator import create_generator

    path = tmp_path_factory.mktemp("gen") / "unet-micro"
    create_generator("unet-micro", 10, 8, 1, seed=0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reference_file(tmp_path_factory) -> str:
    """A quickly trained θ* (in-process), so each run spends its Ray Train time on the students."""
    from lgd_ray.core.data import load_digits_split
    from lgd_ray.core.students import build_student
    from lgd_ray.core.train import TrainSettings, train_classifier

    model = build_student("convnet2-w8", 10, 8, 1, seed=0)
    train_classifier(model, load_digits_split("train"), TrainSettings(epochs=2, augment="shift"))
    path = tmp_path_factory.mktemp("ref") / "reference.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def baseline(ray_session, tiny_generator_dir, reference_file, tmp_path_factory) -> str:
    """A finished output of the tiny pipeline (2 stages × 10 classes, one sampler actor): what the pipeline,
    export and dataset-card tests read; tests copy it before changing anything."""
    from lgd_ray.core.config import load_config
    from lgd_ray.engine.distill import distill

    from helpers import tiny_overrides

    out = str(tmp_path_factory.mktemp("runs") / "one-sampler")
    cfg = load_config(None, tiny_overrides(tiny_generator_dir, reference_file))
    summary = distill(cfg, out, progress=False)
    assert summary["images"] == 20 and not summary["resumed"]
    return out
