"""Evaluation tasks on Ray: the protocol (one task per set and seed), the cross-increment runs and the
data map, each a task run wherever there is a free CPU/GPU.

With `eval.protocol=soft` the driver loads the teacher once (`load_teacher`, before Ray starts when
called from the CLI, so a bad `eval.teacher` costs nothing) and puts it in the object store once;
every task gets that one copy.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence

import numpy as np
import ray
import torch
from safetensors.torch import load as load_safetensors

from ..core.analysis import cartography, train_on_increment_and_test
from ..core.config import EvalConfig
from ..core.data import ImageSet
from ..core.errors import UserError
from ..core.evaluate import evaluate_seed, summarize
from ..core.progress import progress_bar
from ..core.students import build_student
from ..core.teacher import (
    FIELD,
    checkpoint_files,
    parse_teacher,
    teacher_from_checkpoint,
    teacher_from_timm,
)
from ..core.train import TrainSettings, evaluate_accuracy
from .store import OutputDir


def _read(path: str) -> bytes:
    folder, name = path.rsplit("/", 1) if "/" in path else (".", path)
    src = OutputDir(folder)
    if not src.exists(name):
        raise UserError(FIELD, f"{path} not found",
                        "give the --out folder of `lgd-ray train-reference`, or timm:<name> (e.g. timm:resnet18)")
    return src.read_bytes(name)


def load_teacher(e: EvalConfig, class_ids: Sequence[str], image_size: int, in_channels: int) -> torch.nn.Module | None:
    """The soft protocol's frozen teacher over the run's classes (None for hard); local, s3:// or gs://
    checkpoints of `lgd-ray train-reference`, or timm:<name>. Every problem is a UserError on eval.teacher."""
    if e.protocol != "soft":
        return None
    kind, name = parse_teacher(e.teacher or "")
    if kind == "timm":
        return teacher_from_timm(name, class_ids, in_channels=in_channels)
    weights, meta = checkpoint_files(name)
    try:
        meta_dict = json.loads(_read(meta))
    except json.JSONDecodeError:
        raise UserError(FIELD, f"{meta} is not JSON", "give the --out folder of `lgd-ray train-reference`") from None
    return teacher_from_checkpoint(load_safetensors(_read(weights)), meta_dict, class_ids, image_size=image_size,
                                   in_channels=in_channels, source=name)


def task_device() -> str:
    """The device a task trains on: inside a task Ray hides every GPU it did not assign
    (CUDA_VISIBLE_DEVICES), so a visible GPU is the task's own."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def placement() -> dict:
    """Where this task ran: the device torch used and the resources Ray assigned (recorded in every
    report, so a CPU-only evaluation on a GPU cluster shows)."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    return {"device": task_device(), "gpus": float(assigned.get("GPU", 0.0)), "cpus": float(assigned.get("CPU", 0.0))}


def placements(results) -> dict:
    """One summary of many tasks' `placement()`: the devices seen and the GPUs each task held."""
    where = [r["placement"] for r in results]
    return {"devices": sorted({w["device"] for w in where}), "gpus_per_task": sorted({w["gpus"] for w in where})}


@ray.remote(num_cpus=1)
def _seed_task(train_set: ImageSet, val_set: ImageSet, settings: EvalConfig, seed: int, num_classes: int,
               teacher: torch.nn.Module | None) -> dict:
    torch.set_num_threads(1)
    return {**evaluate_seed(train_set, val_set, settings, seed, num_classes=num_classes, image_size=val_set.image_size,
                            in_channels=val_set.in_channels, device=task_device(), teacher=teacher),
            "placement": placement()}


def evaluate_sets(sets: dict[str, ImageSet], val_set: ImageSet, e: EvalConfig, *, teacher: torch.nn.Module | None = None,
                  progress: bool = True, gpus_per_task: float = 0.0,
                  seeds_of: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """Train-from-scratch evaluation of every set over every seed, in parallel; summaries by set name.
    The soft protocol's teacher is loaded here unless given (`load_teacher`). `gpus_per_task`: what each
    seed's task asks Ray for (the config's `ray.task_gpus()`). `seeds_of`: other seeds for some sets."""
    if teacher is None:
        teacher = load_teacher(e, val_set.class_ids, val_set.image_size, val_set.in_channels)
    val_ref, teacher_ref = ray.put(val_set), ray.put(teacher)
    task = _seed_task.options(num_gpus=gpus_per_task) if gpus_per_task else _seed_task
    refs = {}
    for name, s in sets.items():
        set_ref = ray.put(s.resized(val_set.image_size))
        for seed in (seeds_of or {}).get(name, e.seeds):
            refs[task.remote(set_ref, val_ref, e, seed, val_set.num_classes, teacher_ref)] = (name, seed)
    per: dict[str, list[dict]] = {name: [] for name in sets}
    for (name, _), result in wait_all(refs, progress, "evaluate").items():
        per[name].append(result)
    protocol = {"protocol": e.protocol, **({"temperature": e.temperature, "teacher": e.teacher}
                                           if e.protocol == "soft" else {})}
    return {name: {**summarize(sorted(rs, key=lambda r: r["seed"])), **protocol, "placement": placements(rs)}
            for name, rs in per.items()}


def reference_fidelity(reference: torch.nn.Module, s: ImageSet, image_size: int) -> float:
    """θ*'s accuracy on a distilled set: label fidelity (guidance can buy S with invalid samples)."""
    acc, _ = evaluate_accuracy(reference, s.resized(image_size))
    return acc


def wait_all(refs: dict, progress: bool, desc: str) -> dict:
    """ray.get every ref, as they finish; returns {key: result}."""
    bar = None
    if progress:

        bar = progress_bar(total=len(refs), desc=desc, unit="run", file=sys.stderr)
    done, pending = {}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done[refs[ready[0]]] = ray.get(ready[0])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return done


@ray.remote(num_cpus=1)
def increment_task(increments: list[ImageSet], train_index: int, settings: EvalConfig, seed: int,
                    num_classes: int) -> dict:
    torch.set_num_threads(1)
    first = increments[0]
    return {**train_on_increment_and_test(increments[train_index], increments, settings, seed, num_classes=num_classes,
                                          image_size=first.image_size, in_channels=first.in_channels, device=task_device()),
            "placement": placement()}


@ray.remote(num_cpus=1)
def cartography_task(data: ImageSet, stage: np.ndarray, settings: EvalConfig, seed: int, epochs: int) -> dict:
    torch.set_num_threads(1)
    factory = functools.partial(build_student, settings.arch, data.num_classes, data.image_size, data.in_channels,
                                seed=seed, field="eval.arch")
    train_settings = TrainSettings.from_section(settings, seed, epochs)
    train_settings.validate("eval")
    return {**cartography(factory, data, train_settings, device=task_device(), stage=stage), "placement": placement()}


def evaluate_on_selection(cfg, out_uri: str, *, progress: bool = False) -> dict:
    """The evaluation protocol on a finished distill, scored on the selection split, and θ*'s accuracy
    on the set: what a sweep chooses by (`lgd-ray tune` with metric eval_acc). The test split is not read.

    Returns {"acc_mean", "acc_std", "accs" (final accuracy per eval seed), "fidelity", "images"}."""
    from ..core.data import load_part, materialize
    from .distill import ensure_reference
    from .run import resolve_run
    from .sampler_actors import load_state

    run = resolve_run(cfg)
    out = OutputDir(out_uri)
    distilled = out.read_stages(list(range(cfg.distill.stages + 1)), run.class_ids)
    select = materialize(load_part(cfg.data, "select", run.class_ids))
    teacher = load_teacher(cfg.eval, run.class_ids, cfg.data.image_size, run.in_channels)
    summary = evaluate_sets({"set": distilled}, select, cfg.eval, teacher=teacher, progress=progress,
                            gpus_per_task=cfg.ray.task_gpus())["set"]
    reference = load_state(build_student(cfg.reference.arch, len(run.class_ids), cfg.data.image_size, run.in_channels),
                           ensure_reference(cfg, out, run))
    return {"acc_mean": summary["final_acc_mean"], "acc_std": summary["final_acc_std"], "accs": summary["final_acc"],
            "fidelity": reference_fidelity(reference, distilled, cfg.data.image_size), "images": len(distilled)}
