"""Student and reference training with Ray Train (TorchTrainer, DDP over `ray.train_workers` workers).

Workers read their data themselves (the stage's Parquet parts, or the real data source) from the
shared output path, so nothing large passes through the driver. `batch_size` is global: each of the
W workers trains on a disjoint shard of the set per epoch with batch_size // W images a step. Rank 0
reports the weights as a safetensors checkpoint; the driver copies them to `<out>/checkpoints/...`
(or `<out>/reference/`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import ray.train
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file

from ..core.config import Config, from_dict
from ..core.data import load_part
from ..core.students import build_student
from ..core.train import (
    TrainSettings,
    evaluate_accuracy,
    shard_sampler,
    train_classifier,
    worker_batch_size,
)
from .store import OutputDir, weights_bytes


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: its shard of the set, batch_size // workers images a step."""
    cfg = from_dict(config["cfg"])
    class_ids = config["class_ids"]
    if config["stages"] is None:  # θ*: real train images, the selection split held out
        train_set = load_part(cfg.data, "train", class_ids)
    else:
        train_set = OutputDir(config["out"]).read_stages(config["stages"], class_ids=class_ids).resized(cfg.data.image_size)
    select_set = load_part(cfg.data, "select", class_ids)  # θ's accuracy chooses (ASHA): never the test split
    role = config["role"]
    section = cfg.reference if role == "reference" else cfg.student
    device = ray.train.torch.get_device()
    model = build_student(section.arch, len(class_ids), cfg.data.image_size, config["in_channels"], seed=config["seed"])
    if config["init"] is not None:
        model.load_state_dict(config["init"], strict=True)
    model = ray.train.torch.prepare_model(model)
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    sampler = shard_sampler(train_set, world, rank, config["seed"])
    settings = TrainSettings.from_section(section, config["seed"])
    settings.batch_size = worker_batch_size(section.batch_size, world, f"{role}.batch_size")
    t0 = time.perf_counter()
    train_classifier(model, train_set, settings, device=device, sampler=sampler, progress=False)
    loop_s = time.perf_counter() - t0  # the part that scales with epochs × images (`lgd-ray plan` fits it)
    net = model.module if hasattr(model, "module") else model
    acc, loss = evaluate_accuracy(net, select_set, device=device)
    metrics = {"select_acc": acc, "select_loss": loss, "train_images": len(train_set),
               "global_batch": settings.batch_size * world, "epochs": settings.epochs, "loop_s": loop_s}
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.safetensors"), "wb") as f:
                f.write(weights_bytes(net.state_dict()))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


def train_with_ray(cfg: Config, out: OutputDir, *, role: str, name: str, class_ids: list[str], in_channels: int,
                   stages: list[int] | None, init: dict | None, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Train θ (role "student" on the given stages, or "reference" on real data); returns (weights, metrics)."""
    gpus = cfg.ray.gpus_per_train_worker
    loop_config = {"cfg": cfg.to_dict(), "out": out.uri, "class_ids": class_ids, "in_channels": in_channels,
                   "stages": stages, "init": init, "seed": seed, "role": role}
    storage = out.path("_ray_train") if out.local else f"{out.uri}/_ray_train"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.ray.train_workers, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": 1, "GPU": gpus} if gpus > 0 else {"CPU": 1}),
        # A fresh run name each time: reusing one under the same storage would resume the old run.
        run_config=RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=storage),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        weights = load_file(os.path.join(d, "model.safetensors"))
    if out.local:  # the weights now live in <out>/checkpoints; Ray's copy is scratch
        shutil.rmtree(result.path, ignore_errors=True)
    return weights, dict(result.metrics or {})


def write_classifier(out: OutputDir, state: dict[str, torch.Tensor], *, arch: str, class_ids: list[str],
                     image_size: int, in_channels: int, metrics: dict | None = None) -> None:
    """model.safetensors + metrics.json, the output of `lgd-ray train-reference`: a θ* for
    `reference.path` and a teacher for `eval.teacher`, whose loader rebuilds the net from the arch,
    the classes (in output order) and the input size recorded here."""
    out.write_bytes("model.safetensors", weights_bytes(state))
    meta = {**(metrics or {}), "arch": arch, "classes": list(class_ids), "image_size": image_size,
            "in_channels": in_channels}
    out.write_text("metrics.json", json.dumps(meta, indent=1))
