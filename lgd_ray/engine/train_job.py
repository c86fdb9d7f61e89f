"""Student and reference training with Ray Train (TorchTrainer, DDP over `ray.train_workers` workers).

Workers read their data themselves (the stage's Parquet parts, or the real data source) from the
shared output path, so nothing large passes through the driver. `batch_size` is global: each of the
W workers trains on a disjoint shard of the set per epoch with batch_size // W images a step. Rank 0
reports the weights as a safetensors checkpoint; the driver copies them to `<out>/checkpoints/...`
(or `<out>/reference/`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import tempfile
import time

import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.torch.config import _TorchBackend
from safetensors.torch import load_file

from ..core.config import Config, from_dict
from ..core.data import ImageSet, ParquetImageSet, load_part
from ..core.students import build_student
from ..core.train import (
    TrainSettings,
    evaluate_accuracy,
    shard_sampler,
    train_classifier,
    worker_batch_size,
)
from .run import localize_paths, report_failure
from .store import OutputDir, weights_bytes


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, so it starts afresh at
    exec; ru_maxrss (the fallback off Linux) keeps the peak of the image the process was exec'd from."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_device() -> torch.device:
    """This Train worker's device, decided here, where the model runs: its assigned GPU when torch sees
    one, else the CPU (a GPU that is only declared, as in the two-node rehearsal, must not break the run)."""
    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")


class _BackendChosenOnTheWorkers(_TorchBackend):
    """Ray's torch backend, with the collective backend chosen where training runs: NCCL when the
    workers' torch sees CUDA, else gloo. Ray's default picks NCCL whenever GPUs are requested, which a
    GPU that is only declared (the two-node rehearsal) cannot start."""

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        if backend_config.backend == ON_THE_WORKERS:
            cuda = worker_group.execute_single(0, torch.cuda.is_available)
            backend_config = dataclasses.replace(backend_config, backend="nccl" if cuda else "gloo")
        super().on_start(worker_group, backend_config)


# A backend name TorchTrainer leaves alone (it fills in "nccl" for an empty one when GPUs are requested,
# in the driver); the workers replace it with nccl or gloo.
ON_THE_WORKERS = "chosen-on-the-workers"


@dataclasses.dataclass
class WorkerTorchConfig(TorchConfig):
    """TorchConfig whose backend is decided on the workers (Ray's backend_cls hook, as TorchftConfig uses)."""

    backend: str = ON_THE_WORKERS

    @property
    def backend_cls(self):
        return _BackendChosenOnTheWorkers


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: its shard of the set, batch_size // workers images a step."""
    # Ray Train runs this in a folder of its own: relative paths (data.root, ...) are the driver's
    cfg = from_dict(localize_paths(config["cfg"], config["cwd"]))
    class_ids = config["class_ids"]
    # Both sources stream: decoded per image (resized once, to the student's size) by the worker's loader
    # processes, so a worker's memory is its batches in flight, not the set.
    if config["stages"] is None:  # θ*: real train images, the selection split held out
        train_set = load_part(cfg.data, "train", class_ids)
    else:
        out = OutputDir(config["out"])
        train_set = ParquetImageSet(out.stage_files(config["stages"]), class_ids, cfg.data.image_size, filesystem=out.fs)
    select_set = load_part(cfg.data, "select", class_ids)  # θ's accuracy chooses (ASHA): never the test split
    role = config["role"]
    section = cfg.reference if role == "reference" else cfg.student
    device = worker_device()
    model = build_student(section.arch, len(class_ids), cfg.data.image_size, config["in_channels"], seed=config["seed"])
    if config["init"] is not None:
        model.load_state_dict(config["init"], strict=True)
    # A worker group restarted after a lost worker (FailureConfig), or a rerun of a killed driver (the
    # same run name), finds the last epoch checkpoint here and continues from it, bit for bit on a CPU.
    resume = read_epoch_checkpoint(model, ray.train.get_checkpoint())
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    net = model.module if hasattr(model, "module") else model
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    sampler = shard_sampler(train_set, world, rank, config["seed"])
    settings = TrainSettings.from_section(section, config["seed"])
    settings.batch_size = worker_batch_size(section.batch_size, world, f"{role}.batch_size")
    settings.loader_workers = cfg.ray.cpus_per_train_worker - 1  # the worker's other CPUs decode

    def report_epoch(state: dict) -> None:  # every rank reports (Ray Train's rule); rank 0 holds the files
        metrics = {"epoch": state["epoch"], "train_loss": state["history"][-1]["train_loss"]}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            write_epoch_checkpoint(d, net.state_dict(), state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    t0 = time.perf_counter()
    if not (resume and resume.get("finished")):  # a group lost after the final report has nothing to redo
        train_classifier(model, train_set, settings, device=device, sampler=sampler, progress=False,
                         checkpoint_every=cfg.ray.checkpoint_every, on_checkpoint=report_epoch, resume=resume)
    loop_s = time.perf_counter() - t0  # the part that scales with epochs × images (`lgd-ray plan` fits it)
    acc, loss = evaluate_accuracy(net, select_set, device=device, loader_workers=settings.loader_workers)
    metrics = {"select_acc": acc, "select_loss": loss, "train_images": len(train_set),
               "global_batch": settings.batch_size * world, "epochs": settings.epochs, "loop_s": loop_s,
               # where it ran, decided here (a CPU-only driver knows nothing of the worker's GPU), and what
               # it held: the rank's peak resident memory (bounded by batches in flight, not by the set)
               "device": device.type, "dtype": "bf16-autocast" if settings.amp and device.type == "cuda" else "fp32",
               "peak_rss_mib": peak_rss_mib(),
               "gpus": len(ray.get_gpu_ids()), "streamed": not isinstance(train_set, ImageSet),
               "resumed_from_epoch": resume["epoch"] if resume else 0}
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            write_epoch_checkpoint(d, net.state_dict(), {"epoch": settings.epochs, "finished": True})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


TRAIN_STATE = "train_state.pt"


def write_epoch_checkpoint(folder: str, weights: dict[str, torch.Tensor], state: dict) -> None:
    """An epoch checkpoint: the weights as safetensors, the rest of the state (optimizer, generators,
    history: tensors and plain values only) as a torch file read back with weights_only=True."""
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(weights_bytes(weights))
    torch.save(state, os.path.join(folder, TRAIN_STATE))


def read_epoch_checkpoint(model: torch.nn.Module, checkpoint: Checkpoint | None) -> dict | None:
    """Load an epoch checkpoint's weights into `model`; return the state to resume from (None: start)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        model.load_state_dict(load_file(os.path.join(d, "model.safetensors")), strict=True)
        return torch.load(os.path.join(d, TRAIN_STATE), weights_only=True)


def run_name(cfg: Config, name: str) -> str:
    """Ray Train's run name: the same for the same (config, role, stage), so a rerun of a killed driver
    finds the run's epoch checkpoints under `<out>/_ray_train/<name>` and resumes from them. A finished
    run's folder is removed, so the name never resumes a run that completed."""
    return f"{name}-{cfg.hash()[:12]}"


def train_with_ray(cfg: Config, out: OutputDir, *, role: str, name: str, class_ids: list[str], in_channels: int,
                   stages: list[int] | None, init: dict | None, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Train θ (role "student" on the given stages, or "reference" on real data); returns (weights, metrics)."""
    gpus = cfg.ray.gpus_per_train_worker
    loop_config = {"cfg": cfg.to_dict(), "out": out.uri, "class_ids": class_ids, "in_channels": in_channels,
                   "stages": stages, "init": init, "seed": seed, "role": role, "cwd": os.getcwd()}
    storage = out.path("_ray_train") if out.local else f"{out.uri}/_ray_train"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        torch_config=WorkerTorchConfig(),
        scaling_config=ScalingConfig(num_workers=cfg.ray.train_workers, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_train_worker, "GPU": gpus}
                                     if gpus > 0 else {"CPU": cfg.ray.cpus_per_train_worker}),
        run_config=RunConfig(name=run_name(cfg, name), storage_path=storage,
                             # a lost worker: the group restarts and resumes from the last epoch checkpoint
                             failure_config=FailureConfig(max_failures=cfg.ray.train_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if metrics.get("resumed_from_epoch"):
        e, total = metrics["resumed_from_epoch"], metrics.get("epochs")
        report_failure(out, {"kind": "train_resumed", "run": name, "resumed_from_epoch": e, "epochs": total,
                             "wall_s": time.perf_counter() - t0},
                       f"{name}: a Train worker or the driver was lost; training resumed from the epoch-{e} "
                       f"checkpoint (epochs {e + 1}..{total} trained again, 1..{e} kept)")
    with result.checkpoint.as_directory() as d:
        weights = load_file(os.path.join(d, "model.safetensors"))
    # the weights now live in <out>/checkpoints; Ray's copy is scratch, and a kept folder would make the
    # next run of this name resume a finished run
    try:
        result.filesystem.delete_dir(result.path)
    except OSError:
        pass
    return weights, metrics


def write_classifier(out: OutputDir, state: dict[str, torch.Tensor], *, arch: str, class_ids: list[str],
                     image_size: int, in_channels: int, metrics: dict | None = None) -> None:
    """model.safetensors + metrics.json, the output of `lgd-ray train-reference`: a θ* for
    `reference.path` and a teacher for `eval.teacher`, whose loader rebuilds the net from the arch,
    the classes (in output order) and the input size recorded here."""
    out.write_bytes("model.safetensors", weights_bytes(state))
    meta = {**(metrics or {}), "arch": arch, "classes": list(class_ids), "image_size": image_size,
            "in_channels": in_channels}
    out.write_text("metrics.json", json.dumps(meta, indent=1))
