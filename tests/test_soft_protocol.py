"""The soft-label protocol as config keys: eval.protocol / eval.teacher / eval.temperature parse and
fail as one line; teachers load from a train-reference folder (or timm) restricted to the run's
classes; `lgd-ray evaluate` trains on the teacher's labels, not the set's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lgd_ray.cli import main
from lgd_ray.core.config import Config, load_config
from lgd_ray.core.errors import UserError
from lgd_ray.core.students import build_student
from lgd_ray.core.teacher import (
    checkpoint_files,
    parse_teacher,
    teacher_from_checkpoint,
    teacher_from_timm,
)

from helpers import assert_refused

RUN_CLASSES = [1, 4, 7, 9]  # a subset of the digits: the 10-way teacher is restricted to these
# Output j of the "liar" teacher is claimed to be class LIAR[j]: 1 -> 4 -> 7 -> 9 -> 1 within the run's classes.
LIAR = ["0", "4", "2", "3", "7", "5", "6", "9", "8", "1"]
EVAL = ["eval.arch=convnet2-w8", "eval.epochs=30", "eval.lr=0.05", "eval.seeds=[0]", "eval.eval_every=0"]


# --------------------------------------------------------------------------- config


def test_defaults_are_hard_and_keep_the_hash():
    e = Config().eval
    assert (e.protocol, e.teacher, e.temperature) == ("hard", None, 20.0)
    base = load_config(None).hash()
    # unused under hard: the hash (and so resuming an output made before these keys) is unchanged
    assert load_config(None, ["eval.teacher=timm:resnet18", "eval.temperature=4"]).hash() == base
    soft = load_config(None, ["eval.protocol=soft", "eval.teacher=timm:resnet18"])
    assert soft.hash() != base
    assert load_config(None, ["eval.protocol=soft", "eval.teacher=timm:resnet18", "eval.temperature=4"]).hash() != soft.hash()


def test_teacher_specs_parse():
    cfg = load_config(None, ["eval.protocol=soft", "eval.teacher=timm:resnet18.tv_in1k", "eval.temperature=4"])
    assert (cfg.eval.protocol, cfg.eval.temperature) == ("soft", 4.0)
    assert parse_teacher(cfg.eval.teacher) == ("timm", "resnet18.tv_in1k")
    assert parse_teacher("runs/teacher") == ("checkpoint", "runs/teacher")
    assert checkpoint_files("runs/teacher/") == ("runs/teacher/model.safetensors", "runs/teacher/metrics.json")
    assert checkpoint_files("s3://b/t/model.safetensors") == ("s3://b/t/model.safetensors", "s3://b/t/metrics.json")


@pytest.mark.parametrize("args, field", [
    (["eval.protocol=soft"], "eval.teacher"),
    (["eval.protocol=soft_label", "eval.teacher=timm:resnet18"], "eval.protocol"),
    (["eval.protocol=soft", "eval.teacher=timm:resnet18", "eval.temperature=0"], "eval.temperature"),
    (["eval.temperature=-1"], "eval.temperature"),
    (["eval.temperature=warm"], "eval.temperature"),
    (["eval.protocol=soft", "eval.teacher=timm:"], "eval.teacher"),
    (["eval.protocol=soft", "eval.teacher=no/such/teacher"], "eval.teacher"),  # checked before Ray starts
])
def test_bad_eval_keys_exit_2_with_one_line(args, field, tmp_path, capsys, monkeypatch):
    assert_refused("demo", args, field, tmp_path, capsys, monkeypatch)


# --------------------------------------------------------------------------- teachers


def _tiny(num_classes: int, size: int = 8, seed: int = 0) -> torch.nn.Module:
    return build_student("convnet2-w8", num_classes, size, 1, seed=seed).eval()


def test_checkpoint_teacher_is_restricted_to_the_run_classes_and_resized():
    net = _tiny(10)
    meta = {"arch": "convnet2-w8", "classes": [str(c) for c in range(10)], "image_size": 8, "in_channels": 1}
    teacher = teacher_from_checkpoint(net.state_dict(), meta, ["9", "1", "4"], image_size=16, in_channels=1)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), net(x)[:, [9, 1, 4]])  # the run's label order, not the teacher's
        big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # the run is at 16 px
        torch.testing.assert_close(teacher(big), net(torch.nn.functional.interpolate(
            big, size=(8, 8), mode="bilinear", align_corners=False, antialias=True))[:, [9, 1, 4]])
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_checkpoint_teacher_mistakes_name_the_field():
    net = _tiny(5)
    meta = {"arch": "convnet2-w8", "classes": ["0", "1", "2", "3", "4"], "image_size": 8, "in_channels": 1}
    cases = [
        (net.state_dict(), meta, ["1", "7"], 1),  # class 7 unknown to the teacher
        (net.state_dict(), meta, ["1", "2"], 3),  # grey teacher, RGB run
        (net.state_dict(), {**meta, "classes": [str(c) for c in range(10)]}, ["1"], 1),  # weights of 5 classes
        (net.state_dict(), {"classes": meta["classes"]}, ["1"], 1),  # no arch: not a train-reference output
    ]
    for state, m, ids, channels in cases:
        with pytest.raises(UserError) as e:
            teacher_from_checkpoint(state, m, ids, image_size=8, in_channels=channels)
        assert e.value.field == "eval.teacher" and "\n" not in str(e.value)


class _FakeImageNet(torch.nn.Module):
    """What timm.create_model returns, minus the weights: 1000 outputs and a pretrained_cfg."""

    num_classes = 1000
    pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 16, 16)}

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16 * 16, 1000)

    def forward(self, x):
        assert x.shape[-2:] == (16, 16)
        return self.fc(x.flatten(1))


def test_timm_teacher_loads_pretrained_imagenet_and_restricts_to_imagenette(monkeypatch):
    import timm

    from lgd_ray.core.classes import IMAGENETTE, imagenet_wnids

    calls = []
    fake = _FakeImageNet()
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: calls.append((name, kw)) or fake)
    teacher = teacher_from_timm("resnet18.tv_in1k", IMAGENETTE, in_channels=3)
    assert calls == [("resnet18.tv_in1k", {"pretrained": True})]
    positions = [imagenet_wnids().index(w) for w in IMAGENETTE]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), fake((x - 0.5) / 0.25)[:, positions])  # its own normalisation
    assert teacher(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # fed at its pretraining size

    def offline(name, **kw):
        raise RuntimeError("could not reach huggingface.co\nlong trace")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError) as e:
        teacher_from_timm("resnet18", IMAGENETTE, in_channels=3)
    assert e.value.field == "eval.teacher" and "huggingface.co" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        teacher_from_timm("resnet18", ["0", "1"], in_channels=1)  # the digits are not ImageNet


# --------------------------------------------------------------------------- through `lgd-ray evaluate`


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, str]:
    """A convnet trained in-process on all ten real digits, written as `lgd-ray train-reference` writes
    it; and the same weights under a lying metrics.json whose class order is permuted (LIAR)."""
    from lgd_ray.core.data import load_digits_split
    from lgd_ray.core.train import TrainSettings, train_classifier
    from lgd_ray.engine.store import OutputDir
    from lgd_ray.engine.train_job import write_classifier

    net = build_student("convnet2-w8", 10, 8, 1, seed=0)
    train_classifier(net, load_digits_split("train"), TrainSettings(epochs=12, lr=0.05, augment="none", seed=0))
    root = tmp_path_factory.mktemp("teachers")
    ids = [str(c) for c in range(10)]
    for name, classes in (("honest", ids), ("liar", LIAR)):
        write_classifier(OutputDir(str(root / name)), net.state_dict(), arch="convnet2-w8", class_ids=classes,
                         image_size=8, in_channels=1)
    return {"honest": str(root / "honest"), "liar": str(root / "liar")}


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory) -> str:
    """An output folder as `distill` leaves it: 10 real digits of each of the run's 4 classes as stage 0."""
    from lgd_ray.core.data import load_digits_split
    from lgd_ray.core.sampler import Sample
    from lgd_ray.core.work import WorkItem, stage_items
    from lgd_ray.engine.distill import prepare_output
    from lgd_ray.engine.store import OutputDir, StageParams

    cfg = load_config(None, [f"data.classes={RUN_CLASSES}"])
    out = OutputDir(str(tmp_path_factory.mktemp("runs") / "subset"))
    prepare_output(out, cfg, overwrite=False)
    digits = load_digits_split("train")
    by_class = {i: torch.nonzero(digits.labels == c).flatten().tolist() for i, c in enumerate(RUN_CLASSES)}
    samples = [Sample(WorkItem(0, it.label, it.slot), 0, -1, digits.images[by_class[it.label][it.slot]].numpy(),
                      np.zeros(0, np.float16), math.nan, math.nan, math.nan)
               for it in stage_items(0, len(RUN_CLASSES), 10)]
    params = StageParams([str(c) for c in RUN_CLASSES], list(RUN_CLASSES), 1, 0.0, 0.5, 0.0)
    out.write_manifest(0, [out.write_part(0, 0, samples, params)], {"config_hash": cfg.hash()})
    return out.uri


def _evaluate(run: str, out: Path, *overrides: str) -> dict:
    assert main(["evaluate", run, *EVAL, *overrides, "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "evaluation.json").read_text())
    return {**next(iter(saved["results"].values())), "eval": saved["eval"]}


def test_evaluate_learns_the_teachers_labels(ray_session, subset_run, teachers, tmp_path):
    hard = _evaluate(subset_run, tmp_path / "hard")
    honest = _evaluate(subset_run, tmp_path / "honest", "eval.protocol=soft", f"eval.teacher={teachers['honest']}")
    liar = _evaluate(subset_run, tmp_path / "liar", "eval.protocol=soft", f"eval.teacher={teachers['liar']}")
    assert hard["protocol"] == "hard" and honest["protocol"] == "soft" and honest["temperature"] == 20.0
    assert honest["eval"]["teacher"] == teachers["honest"]
    # The 10-way teacher restricted to the 4 run classes teaches as well as the labels do ...
    assert hard["final_acc_mean"] > 0.75 and honest["final_acc_mean"] > 0.75, (hard, honest)
    # ... and a teacher that calls every 1 a 4 (and so on round the cycle) makes a student that does too:
    # the set's own labels are not what it learns from.
    assert liar["final_acc_mean"] < 0.2, liar


def test_liar_teacher_student_predicts_the_permuted_class(teachers):
    """The same run in-process: the liar's student is right about the permuted labels."""
    from lgd_ray.core.data import ImageSet, load_digits_split
    from lgd_ray.core.evaluate import evaluate_seed
    from lgd_ray.engine.eval_tasks import load_teacher

    def subset(split: str, relabel: dict[int, int], per_class: int | None = None) -> ImageSet:
        d = load_digits_split(split)
        idx = [i for c in RUN_CLASSES for i in torch.nonzero(d.labels == c).flatten().tolist()[:per_class]]
        labels = [RUN_CLASSES.index(relabel.get(int(d.labels[i]), int(d.labels[i]))) for i in idx]
        return ImageSet(d.images[idx], torch.tensor(labels), [str(c) for c in RUN_CLASSES])

    cfg = load_config(None, [*EVAL, "eval.protocol=soft", f"eval.teacher={teachers['liar']}"])
    ids = [str(c) for c in RUN_CLASSES]
    teacher = load_teacher(cfg.eval, ids, 8, 1)
    permuted_val = subset("val", {c: int(LIAR[c]) for c in RUN_CLASSES})  # each image labelled as the liar calls it
    r = evaluate_seed(subset("train", {}, 10), permuted_val, cfg.eval, 0, num_classes=4, image_size=8, in_channels=1,
                      teacher=teacher)
    assert r["final_acc"] > 0.75, r["final_acc"]


def test_evaluate_refuses_a_missing_teacher_before_writing(subset_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")
    out = tmp_path / "eval"
    code = main(["evaluate", subset_run, "eval.protocol=soft", f"eval.teacher={tmp_path / 'none'}", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("lgd-ray: error: eval.teacher: ") and err.count("\n") == 0
    assert not out.exists()
