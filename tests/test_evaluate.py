"""lgd_ray.core.evaluate: the field's epochs by IPC, mean ± std, seeded per-seed evaluation."""

from __future__ import annotations

import math

import pytest

from lgd_ray.core import evaluate
from lgd_ray.core.config import EvalConfig
from lgd_ray.core.errors import UserError
from lgd_ray.core.evaluate import epochs_for_ipc, evaluate_seed, evaluate_set, summarize

from helpers import quadrant_set

TINY = dict(arch="convnet2-w8", epochs=6, batch_size=8, lr=0.05, schedule="constant", augment="shift", eval_every=2)
SHAPE = dict(num_classes=4, image_size=8, in_channels=1)


def test_epochs_for_ipc_thresholds():
    assert [epochs_for_ipc(i) for i in (1, 10, 11, 50, 51, 200, 201, 1000)] == [2000, 2000, 1500, 1500,
                                                                                1000, 1000, 500, 500]


def test_summarize_known_numbers():
    runs = [{"seed": s, "final_acc": f, "best_acc": b} for s, f, b in ((0, 0.5, 0.8), (1, 0.6, 0.8), (2, 0.7, 0.8))]
    s = summarize(runs)
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["final_acc_mean"] == pytest.approx(0.6) and s["final_acc_std"] == pytest.approx(0.1)  # ddof=1
    assert s["best_acc_mean"] == pytest.approx(0.8) and s["best_acc_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["final_acc"] == [0.5, 0.6, 0.7] and s["best_acc"] == [0.8] * 3
    two = summarize([{"final_acc": 0.0, "best_acc": 0.0}, {"final_acc": 1.0, "best_acc": 1.0}])
    assert two["final_acc_std"] == pytest.approx(math.sqrt(0.5))
    one = summarize([{"seed": 4, "final_acc": 0.3, "best_acc": 0.4}])
    assert (one["final_acc_mean"], one["final_acc_std"], one["best_acc_std"]) == (0.3, 0.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])


def test_evaluate_seed_trains_tests_and_is_seeded():
    train, val = quadrant_set(8, 0), quadrant_set(8, 1)
    settings = EvalConfig(**TINY)
    r = evaluate_seed(train, val, settings, 3, **SHAPE)
    assert r["seed"] == 3 and r["epochs"] == 6
    tested = [h for h in r["history"] if "val_acc" in h]
    assert [h["epoch"] for h in tested] == [2, 4, 6]
    assert r["best_acc"] == max(h["val_acc"] for h in tested) >= r["final_acc"] == tested[-1]["val_acc"]
    assert r["final_loss"] == tested[-1]["val_loss"]
    assert r["final_acc"] >= 0.9
    again = evaluate_seed(train, val, settings, 3, **SHAPE)
    assert again["history"] == r["history"]
    other = evaluate_seed(train, val, settings, 4, **SHAPE)
    assert other["history"] != r["history"]


def test_evaluate_set_loops_seeds_and_summarizes(monkeypatch):
    seen_ipc = []

    def fake_epochs(ipc):
        seen_ipc.append(ipc)
        return 2

    monkeypatch.setattr(evaluate, "epochs_for_ipc", fake_epochs)
    train, val = quadrant_set(5, 0), quadrant_set(2, 1)  # 20 images of 4 classes: IPC 5
    out = evaluate_set(train, val, EvalConfig(**{**TINY, "epochs": None, "eval_every": 0}, seeds=[0, 1]), **SHAPE)
    assert seen_ipc == [5, 5]
    assert out["n"] == 2 and [r["seed"] for r in out["per_seed"]] == [0, 1]
    assert all(r["epochs"] == 2 and len(r["history"]) == 2 for r in out["per_seed"])
    assert "val_acc" not in out["per_seed"][0]["history"][0]  # eval_every=0: tested only at the end
    assert out["final_acc_mean"] == pytest.approx(sum(r["final_acc"] for r in out["per_seed"]) / 2)
    assert out["settings"]["seeds"] == [0, 1]


def test_unknown_eval_arch_names_eval_field():
    with pytest.raises(UserError) as e:
        evaluate_seed(quadrant_set(1, 0), quadrant_set(1, 1), EvalConfig(arch="nope"), 0, **SHAPE)
    assert e.value.field == "eval.arch"



def test_evaluate_sets_gives_some_sets_fewer_seeds_with_the_same_results(ray_session):
    """The demo's accuracy curve evaluates its earlier points on the first 2 seeds: those runs are the
    very runs the full protocol would make for those seeds (each seed's task is a pure function)."""
    from lgd_ray.engine.eval_tasks import evaluate_sets

    e = EvalConfig(arch="convnet2-w8", epochs=3, seeds=[0, 1, 2], batch_size=16)
    train, val = quadrant_set(6, seed=0), quadrant_set(4, seed=1)
    out = evaluate_sets({"all": train, "curve": train}, val, e, progress=False, seeds_of={"curve": [0, 1]})
    assert out["all"]["seeds"] == [0, 1, 2] and out["curve"]["seeds"] == [0, 1]
    assert out["curve"]["final_acc"] == out["all"]["final_acc"][:2]
