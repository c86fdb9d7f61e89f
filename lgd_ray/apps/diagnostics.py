"""Diagnostics of a finished (or partial) run: redundancy between increments, data cartography, and
accuracy-versus-stage plots. Reports go into the output folder as JSON + PNG.

Each training run is one Ray task (engine/eval_tasks.py: num_cpus=1, one torch thread, the GPU when
the node has one), so
the K × seeds redundancy runs spread over whatever cluster the driver is attached to. Both train on
the set's own labels whatever `eval.protocol` says: they measure what the images' labels teach.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import ray

from ..core.analysis import assemble, summarize_matrix
from ..core.config import Config, EvalConfig
from ..core.data import ImageSet
from ..core.errors import UserError
from ..core.evaluate import epochs_for_ipc
from ..engine import figures
from ..engine.eval_tasks import cartography_task, increment_task, placements, wait_all
from ..engine.run import load_run_config, resolve_run
from ..engine.store import OutputDir, stage_name


@dataclasses.dataclass
class _Run:
    out: OutputDir
    cfg: Config
    class_ids: list[str]
    stages: list[int]
    increments: list[ImageSet]  # one per complete stage, at the students' image size

    @property
    def ipc(self) -> list[int]:
        return [math.ceil(len(s) / len(self.class_ids)) for s in self.increments]


def _load_run(out_uri: str, min_stages: int) -> _Run:
    cfg = load_run_config(out_uri)
    run = resolve_run(cfg)
    out = OutputDir(out_uri)
    stages = [s for s in out.stages_on_disk() if out.manifest(s) is not None]
    if len(stages) < min_stages:
        raise UserError("out", f"{out_uri} has {len(stages)} complete stage(s), this needs {min_stages}",
                        "finish the run with `lgd-ray distill`")
    size = cfg.data.image_size
    increments = [out.read_stages([s], run.class_ids).resized(size) for s in stages]
    return _Run(out, cfg, run.class_ids, stages, increments)


def _settings(run: _Run, seeds: list[int] | None, epochs: int | None) -> tuple[EvalConfig, list[int]]:
    settings = run.cfg.eval
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=int(epochs))
    return settings, list(seeds) if seeds is not None else list(settings.seeds)


def redundancy(out_uri: str, *, seeds: list[int] | None = None, epochs: int | None = None, progress: bool = True,
               gpus_per_task: float | None = None) -> dict:
    """Cross-increment transfer of a run: for every complete stage I_i and seed, train the eval
    net on I_i alone and test it on every I_j. Writes `redundancy.json` and `redundancy.png` into
    the output; returns the JSON's dict. `cross_acc_mean` is the paper's redundancy figure
    (DiT 94.7%, LGD 57.7% at 10 IPC per increment). Assumes Ray is initialised."""
    run = _load_run(out_uri, min_stages=2)
    settings, seeds = _settings(run, seeds, epochs)
    num_classes = len(run.class_ids)
    gpus = run.cfg.ray.task_gpus() if gpus_per_task is None else gpus_per_task
    task = increment_task.options(num_gpus=gpus) if gpus else increment_task
    incs_ref = ray.put(run.increments)
    refs = {task.remote(incs_ref, i, settings, seed, num_classes): (i, seed)
            for seed in seeds for i in range(len(run.increments))}
    results = wait_all(refs, progress, "redundancy")
    acc, loss = assemble(results, len(run.increments), seeds)
    mean_acc, mean_loss = acc.mean(0), loss.mean(0)
    ipc = run.ipc
    report = {
        "stages": run.stages,
        "ipc": ipc,
        # The paper compares increments of one size; a seed increment of another IPC is kept but
        # makes its row and column not comparable with the rest.
        "equal_ipc": len(set(ipc)) == 1,
        "seeds": seeds,
        "epochs": [results[(i, seeds[0])]["epochs"] for i in range(len(run.increments))],
        "arch": settings.arch,
        "config_hash": run.cfg.hash(),
        "placement": placements(results.values()),
        "accuracy": mean_acc.tolist(),
        "loss": mean_loss.tolist(),
        "per_seed": {"accuracy": acc.tolist(), "loss": loss.tolist()},
        **summarize_matrix(mean_acc, mean_loss),
        # The guided increments alone (stage 0 is the unguided or user-given seed set).
        "guided": (summarize_matrix(mean_acc[1:, 1:], mean_loss[1:, 1:])
                   if run.stages[0] == 0 and len(run.stages) >= 3 else None),
    }
    run.out.write_text("redundancy.json", json.dumps(report, indent=1))
    labels = [f"{stage_name(s)} ({n} ipc)" for s, n in zip(run.stages, ipc)]
    title = f"cross-increment accuracy, {settings.arch}; off-diagonal mean {report['cross_acc_mean']:.1%}"
    run.out.write_bytes("redundancy.png", figures.heatmap(mean_acc, labels, labels, title=title,
                                                         xlabel="tested on", ylabel="trained on"))
    return report


def cartography_report(out_uri: str, *, seed: int | None = None, epochs: int | None = None, progress: bool = True,
                       gpus_per_task: float | None = None) -> dict:
    """Data map of the run's full distilled set (all complete stages) trained once with the eval
    settings: per-stage fractions of easy / ambiguous / hard samples. Writes `cartography.json`
    (summaries and the per-sample map) and `cartography.png`; returns the JSON's dict. Assumes Ray
    is initialised."""
    run = _load_run(out_uri, min_stages=1)
    settings, seeds = _settings(run, [seed] if seed is not None else None, epochs)
    seed = seeds[0]
    data = ImageSet.concat(run.increments)
    stage = np.concatenate([np.full(len(inc), s, dtype=np.int64) for s, inc in zip(run.stages, run.increments)])
    n_epochs = settings.epochs or epochs_for_ipc(math.ceil(len(data) / len(run.class_ids)))
    gpus = run.cfg.ray.task_gpus() if gpus_per_task is None else gpus_per_task
    task = cartography_task.options(num_gpus=gpus) if gpus else cartography_task
    result = wait_all({task.remote(data, stage, settings, seed, n_epochs): "map"}, progress, "cartography")["map"]
    report = {
        "stages": run.stages,
        "ipc": run.ipc,
        "seed": seed,
        "epochs": n_epochs,
        "arch": settings.arch,
        "augment": settings.augment,
        "config_hash": run.cfg.hash(),
        "placement": placements([result]),
        "regions": result["regions"],
        "overall": result["overall"],
        "per_stage": {stage_name(s): v for s, v in result["per_stage"].items()},
        "samples": {k: result[k].tolist()
                    for k in ("stage", "label", "confidence", "variability", "correctness", "region")},
    }
    run.out.write_text("cartography.json", json.dumps(report, indent=1))
    r = result["regions"]
    run.out.write_bytes("cartography.png", figures.scatter(
        result["variability"], result["confidence"], result["stage"], group_name="stage ",
        title=f"data map ({settings.arch}, {n_epochs} epochs)", xlabel="variability (std of p(y|x))",
        ylabel="confidence (mean p(y|x))", hlines=(r["easy_confidence"], r["hard_confidence"]),
        vlines=(r["high_variability"],), xlim=(0.0, 0.5), ylim=(0.0, 1.0)))  # std of a probability is <= 0.5
    return report


def progression_plot(curves: dict[str, list[tuple[int, float]]], dest: OutputDir | str | None = None, *,
                     rel: str = "progression.png", xlabel: str = "stage", ylabel: str = "test-split accuracy",
                     title: str = "") -> bytes:
    """Accuracy against stage (or IPC) for several methods, e.g. {"LGD": [(0, .71), (1, .78)], ...}.
    `dest`: an OutputDir (written at `rel`), a PNG file path or URI, or None (bytes only)."""
    png = figures.lines(curves, title=title, xlabel=xlabel, ylabel=ylabel)
    if isinstance(dest, OutputDir):
        dest.write_bytes(rel, png)
    elif dest is not None:
        folder, _, name = str(dest).rpartition("/")
        OutputDir(folder or ".").write_bytes(name, png)
    return png
