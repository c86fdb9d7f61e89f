"""Redundancy and cartography measure what they claim; the Ray layer writes its reports; plots are PNGs."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lgd_ray.core.analysis import (
    Regions,
    cartography,
    cross_increment_matrix,
    summarize_matrix,
)
from lgd_ray.core.config import EvalConfig
from lgd_ray.core.data import ImageSet
from lgd_ray.core.students import build_student
from lgd_ray.core.train import TrainSettings

torch.set_num_threads(1)

FAST = EvalConfig(arch="convnet2-w8", seeds=[0], epochs=10, batch_size=16, lr=0.05, augment="none", eval_every=0)


def separable(num_classes: int, per_class: int, noise_seed: int) -> ImageSet:
    """Fixed random binary 8×8 prototypes (one per class) plus Gaussian pixel noise: easy to learn,
    and two draws with different `noise_seed` are disjoint samples of one distribution."""
    protos = (torch.rand(num_classes, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float() * 200 + 25
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = protos[y] + torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(noise_seed)) * 30
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), y, [str(c) for c in range(num_classes)])


def is_png(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        return img.format == "PNG"


# --------------------------------------------------------------------------- matrix summary


def test_summary_excludes_the_diagonal():
    acc = np.array([[1.0, 0.5, 0.7], [0.3, 0.9, 0.1], [0.2, 0.4, 0.8]])
    loss = np.array([[0.0, 2.0, 4.0], [6.0, 0.5, 8.0], [10.0, 12.0, 1.0]])
    s = summarize_matrix(acc, loss)
    assert s["cross_acc_mean"] == pytest.approx((0.5 + 0.7 + 0.3 + 0.1 + 0.2 + 0.4) / 6)
    assert s["cross_loss_mean"] == pytest.approx(42 / 6)
    assert s["self_acc_mean"] == pytest.approx(0.9)
    assert s["cross_acc_by_train"] == pytest.approx([0.6, 0.2, 0.3])
    one = summarize_matrix(np.ones((1, 1)), np.zeros((1, 1)))
    assert one["cross_acc_mean"] is None and one["self_acc_mean"] == 1.0
    with pytest.raises(ValueError):
        summarize_matrix(np.ones((2, 3)), np.ones((2, 3)))


# --------------------------------------------------------------------------- transfer


def test_identical_increments_transfer_exactly():
    a = separable(4, 6, noise_seed=1)
    r = cross_increment_matrix([a, a], FAST, [0, 1], num_classes=4, image_size=8, in_channels=1)
    # Same images and same seed: the two nets are the same net, so every cell of a seed agrees.
    for per_seed in r["per_seed_accuracy"]:
        assert np.all(per_seed == per_seed[0, 0])
    assert r["cross_acc_mean"] == r["self_acc_mean"]
    assert r["cross_loss_mean"] == pytest.approx(r["self_loss_mean"])


def test_transfer_is_high_between_draws_and_zero_under_permuted_labels():
    a, b = separable(4, 10, noise_seed=1), separable(4, 10, noise_seed=2)
    shifted = ImageSet(b.images, (b.labels + 1) % 4, b.class_ids)  # a derangement of the classes
    r = cross_increment_matrix([a, b, shifted], FAST, [0], num_classes=4, image_size=8, in_channels=1)
    acc = r["accuracy"]
    assert acc[0, 1] >= 0.9 and acc[1, 0] >= 0.9  # disjoint draws of one easy distribution
    assert acc[0, 2] <= 0.1 and acc[2, 0] <= 0.1  # same pixels, other labels: nothing transfers
    assert r["loss"][0, 2] > 3 * r["loss"][0, 1]


# --------------------------------------------------------------------------- cartography


def test_cartography_puts_random_labels_in_low_confidence():
    k = 8
    data = separable(k, 16, noise_seed=3)
    noisy = (torch.arange(len(data)) % 2 == 1)
    labels = data.labels.clone()
    offset = torch.randint(1, k, (int(noisy.sum()),), generator=torch.Generator().manual_seed(5))
    labels[noisy] = (labels[noisy] + offset) % k  # always a wrong label
    data = ImageSet(data.images, labels, data.class_ids)
    settings = TrainSettings(epochs=20, batch_size=16, lr=0.05, augment="shift")
    m = cartography(lambda: build_student("convnet2-w8", k, 8, 1, seed=0), data, settings,
                    stage=noisy.long().numpy())
    assert m["epochs"] == 20 and m["confidence"].shape == (len(data),)
    clean, flipped = m["per_stage"][0], m["per_stage"][1]
    assert flipped["mean_confidence"] < clean["mean_confidence"] - 0.15
    assert flipped["hard"] >= 0.8 and clean["hard"] == 0.0
    assert m["confidence"][noisy.numpy()].max() < np.median(m["confidence"][~noisy.numpy()])
    for s in (clean, flipped):
        assert s["easy"] + s["ambiguous"] + s["hard"] == pytest.approx(1.0)


def test_cartography_calls_clean_easy_data_easy():
    data = separable(4, 8, noise_seed=4)
    # Long enough that the climb out of chance (the first epochs) no longer dominates the std,
    # as in the eval protocol's hundreds of epochs.
    m = cartography(lambda: build_student("convnet2-w8", 4, 8, 1, seed=0), data,
                    TrainSettings(epochs=60, batch_size=16, lr=0.05))
    assert m["overall"]["easy"] >= 0.9 and m["overall"]["hard"] == 0.0
    assert m["correctness"].mean() >= 0.9


def test_regions_partition_the_map():
    conf = np.array([0.9, 0.1, 0.5, 0.9])
    var = np.array([0.05, 0.05, 0.05, 0.3])
    assert Regions().classify(conf, var).tolist() == ["easy", "hard", "ambiguous", "ambiguous"]


# --------------------------------------------------------------------------- plots


def test_plots_are_pngs(tmp_path):
    from lgd_ray.apps.diagnostics import progression_plot
    from lgd_ray.engine import figures as plots
    from lgd_ray.engine.store import OutputDir

    assert is_png(plots.heatmap(np.array([[1.0, 0.5], [0.25, np.nan]]), ["a", "b"], ["a", "b"], title="t"))
    assert is_png(plots.scatter([0.1, 0.2, 0.3], [0.9, 0.5, 0.1], [0, 1, 1], hlines=(0.5,), vlines=(0.2,)))
    curves = {"LGD": [(0, 0.7), (2, 0.8), (1, 0.75)], "DiT": [(0, 0.7), (1, 0.72)]}
    png = progression_plot(curves, OutputDir(str(tmp_path)), rel="plots/prog.png")
    assert is_png(png) and (tmp_path / "plots" / "prog.png").read_bytes() == png
    progression_plot(curves, str(tmp_path / "direct.png"))
    assert is_png((tmp_path / "direct.png").read_bytes())


# --------------------------------------------------------------------------- the Ray layer


@pytest.fixture(scope="module")
def fake_run(tiny_generator_dir, tmp_path_factory) -> str:
    """An output folder as `distill` leaves it: config.json and digits images as stages 0-2 (stage 2
    holds stage 1's images again), plus a stage 3 without a manifest (incomplete)."""
    from lgd_ray.core.config import Config
    from lgd_ray.core.data import load_digits_split
    from lgd_ray.core.sampler import Sample
    from lgd_ray.core.work import WorkItem, stage_items
    from lgd_ray.engine.distill import prepare_output
    from lgd_ray.engine.store import OutputDir, StageParams

    cfg = Config()
    cfg.generator.path = tiny_generator_dir
    cfg.eval.arch, cfg.eval.epochs, cfg.eval.seeds, cfg.eval.lr = "convnet2-w8", 4, [0, 1], 0.05
    out = OutputDir(str(tmp_path_factory.mktemp("runs") / "fake"))
    prepare_output(out, cfg, overwrite=False)
    digits = load_digits_split("train")
    by_class = {c: torch.nonzero(digits.labels == c).flatten().tolist() for c in range(10)}
    params = StageParams(digits.class_ids, list(range(10)), 1, 0.0, 0.5, 0.0)

    def samples(stage: int, ipc: int, offset: int) -> list[Sample]:
        return [Sample(WorkItem(stage, it.label, it.slot), 0, -1,
                       digits.images[by_class[it.label][offset + it.slot]].numpy(), np.zeros(0, np.float16),
                       math.nan, math.nan, math.nan)
                for it in stage_items(stage, 10, ipc)]

    for stage, ipc, offset in ((0, 2, 0), (1, 3, 2), (2, 3, 2), (3, 3, 5)):
        info = out.write_part(stage, 0, samples(stage, ipc, offset), params)
        if stage < 3:
            out.write_manifest(stage, [info], {"config_hash": cfg.hash()})
    return out.uri


def test_redundancy_report(ray_session, fake_run):
    from lgd_ray.apps.diagnostics import redundancy
    from lgd_ray.engine.run import load_run_config
    from lgd_ray.engine.store import OutputDir

    r = redundancy(fake_run, progress=False)
    out = OutputDir(fake_run)
    assert json.loads(out.read_bytes("redundancy.json")) == json.loads(json.dumps(r))
    assert is_png(out.read_bytes("redundancy.png"))
    assert r["stages"] == [0, 1, 2] and r["ipc"] == [2, 3, 3] and r["equal_ipc"] is False
    assert r["seeds"] == [0, 1] and r["epochs"] == [4, 4, 4]
    assert r["config_hash"] == load_run_config(fake_run).hash()
    acc = np.array(r["accuracy"])
    per_seed = np.array(r["per_seed"]["accuracy"])
    assert acc.shape == (3, 3) and per_seed.shape == (2, 3, 3)
    np.testing.assert_allclose(acc, per_seed.mean(0))
    off = acc[~np.eye(3, dtype=bool)]
    assert r["cross_acc_mean"] == pytest.approx(off.mean())
    # Stages 1 and 2 are the same images: same nets, same scores, in rows and columns alike.
    np.testing.assert_array_equal(per_seed[:, 1, :], per_seed[:, 2, :])
    np.testing.assert_array_equal(per_seed[:, :, 1], per_seed[:, :, 2])
    assert r["guided"]["cross_acc_mean"] == pytest.approx(acc[1, 2])


def test_cartography_report(ray_session, fake_run):
    from lgd_ray.apps.diagnostics import cartography_report
    from lgd_ray.engine.store import OutputDir

    r = cartography_report(fake_run, epochs=3, progress=False)
    out = OutputDir(fake_run)
    assert json.loads(out.read_bytes("cartography.json")) == json.loads(json.dumps(r))
    assert is_png(out.read_bytes("cartography.png"))
    assert r["epochs"] == 3 and r["seed"] == 0 and set(r["per_stage"]) == {"stage=000", "stage=001", "stage=002"}
    assert [r["per_stage"][f"stage=00{s}"]["n"] for s in range(3)] == [20, 30, 30]
    assert r["samples"]["stage"] == [0] * 20 + [1] * 30 + [2] * 30
    for s in r["per_stage"].values():
        assert s["easy"] + s["ambiguous"] + s["hard"] == pytest.approx(1.0)
    # One net scored both copies of stage 1's images: their maps coincide.
    conf = np.array(r["samples"]["confidence"])
    np.testing.assert_array_equal(conf[20:50], conf[50:80])
