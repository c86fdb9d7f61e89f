"""The LGD loop on Ray: seed increment, then K stages of (train θ_{i-1} → guided sampling of I_i).

One orchestration path: a laptop's `ray.init()` starts a local cluster, `ray job submit` runs the
same driver on a cluster. The driver holds no math; it plans chunks, hands them to the sampler pool,
trains students with Ray Train, writes manifests, and resumes whatever a killed run left.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors.torch import load

from .. import __version__
from ..core.batching import CPU_BATCH_SIZE
from ..core.config import Config, dump_yaml
from ..core.data import load_source, materialize, random_subset_per_class
from ..core.errors import UserError
from ..core.guidance import ClassMemory
from ..core.progress import progress_bar
from ..core.sampler import Sample, SampleSettings
from ..core.work import WorkItem, chunk, stage_ipc, stage_items
from .run import RunInfo, log, report_failure, resolve_run, with_named_sampler
from .store import (
    OutputDir,
    StageParams,
    load_weights,
    sha256,
    stage_dir,
    stage_name,
    weights_bytes,
)

OUTPUT_ENTRIES = ("checkpoints", "reference", "preview", "metrics.jsonl", "results.json", "report.md", "_ray_train",
                  "README.md", "evaluation.json")  # the card would show the replaced run's evaluation


def prepare_output(out: OutputDir, cfg: Config, overwrite: bool) -> bool:
    """Refuse a different config in the same folder unless overwrite; returns True when resuming."""
    saved = out.read_json("config.json")
    if saved is not None and saved["hash"] != cfg.hash():
        if not overwrite:
            raise UserError("out", f"{out.uri} holds a run with another config (hash {saved['hash']})",
                            "choose another --out, or pass --overwrite to replace it")
        for s in out.stages_on_disk():
            out.delete(stage_dir(s))
        for e in OUTPUT_ENTRIES:
            out.delete(e)
    versions = {"lgd_ray": __version__, "torch": torch.__version__, "python": platform.python_version()}
    resumed = saved is not None and saved["hash"] == cfg.hash()
    # the samplers' precision, recorded at the first sampling (check_precision), stays with the run
    kept = {"precision": saved["precision"]} if resumed and saved.get("precision") else {}
    out.write_text("config.yaml", f"# config hash {cfg.hash()}\n" + dump_yaml(cfg))
    out.write_text("config.json", json.dumps({"hash": cfg.hash(), "config": cfg.to_dict(), "versions": versions,
                                              **kept}, indent=1))
    return resumed


def ensure_reference(cfg: Config, out: OutputDir, run: RunInfo, progress: bool = False) -> dict[str, torch.Tensor]:
    """θ*: the given file, the one this output already trained, or a new one trained on real data."""
    if cfg.reference.path:
        folder, name = cfg.reference.path.rsplit("/", 1) if "/" in cfg.reference.path else (".", cfg.reference.path)
        return load(OutputDir(folder).read_bytes(name))
    rel = "reference/model.safetensors"
    state = load_weights(out, rel)
    if state is None:
        from .train_job import train_with_ray

        log(progress, f"training the reference θ* ({cfg.reference.arch}, {cfg.reference.epochs} epochs, Ray Train)")
        t0 = time.perf_counter()
        state, metrics = train_with_ray(cfg, out, role="reference", name="reference", class_ids=run.class_ids,
                                        in_channels=run.in_channels, stages=None, init=None, seed=cfg.seed)
        out.write_bytes(rel, weights_bytes(state))
        out.append_jsonl("metrics.jsonl", {"event": "reference", **metrics, "wall_s": time.perf_counter() - t0})
        log(progress, f"reference: selection-split acc {metrics.get('select_acc', float('nan')):.3f}")
    return state


def stage_settings(cfg: Config, stage: int) -> SampleSettings:
    d, g = cfg.distill, cfg.generator
    guided = stage > 0
    return SampleSettings(
        run_seed=cfg.seed, num_steps=g.num_steps, cfg_scale=g.cfg_scale,
        lam=d.lam if guided else 0.0, omega=d.omega, gamma=d.gamma if guided else 0.0, k=d.k if guided else 1,
        window=tuple(d.window), batch_size=CPU_BATCH_SIZE if g.batch_size == "auto" else g.batch_size,
        auto_batch=g.batch_size == "auto", student_size=cfg.data.image_size,
        # `auto` is resolved by each sampler actor on its own device (sampler_actors.resolve_precision)
        autocast=g.dtype == "bf16", vae_checkpointing=g.vae_checkpointing,
        grad_space=d.grad_space, views=d.views, grad_blur=d.grad_blur, gate=d.gate, prune_at=d.prune_at,
        prune_keep=d.prune_keep, clip_x0=g.clip_x0, unguided_candidates=d.unguided_candidates if guided else 0,
        time_travel=d.time_travel,
    )


def stage_params(cfg: Config, run: RunInfo, s: SampleSettings) -> StageParams:
    return StageParams(run.class_ids, run.class_map, s.k, s.lam, s.omega, s.gamma, s.unguided_candidates)


def needs_student(cfg: Config) -> bool:
    """Guidance or rank selection uses θ_{i-1}; plain incremental sampling needs no student."""
    return cfg.distill.lam > 0 or cfg.distill.k > 1


def stage_memory(out: OutputDir, stages: list[int], size: int) -> dict[int, torch.Tensor]:
    """The class memory for deviation guidance: the latents selected in the earlier stages."""
    mem = ClassMemory(size)
    if not stages:
        return {}
    t = out.read_rows(stages, columns=["label", "latent"])
    for label, blob in zip(t.column("label").to_pylist(), t.column("latent").to_pylist()):
        if blob:  # rows copied from a seed source carry no latent
            mem.add(label, torch.from_numpy(np.frombuffer(blob, dtype=np.float16).astype(np.float32))[None])
    return mem.as_dict()


def seed_images(cfg: Config, run: RunInfo) -> dict[int, list[np.ndarray]]:
    """Stage 0 from a user's images (Parquet or ImageNet-layout folder): a seeded random ipc_seed per class."""
    src = cfg.distill.seed_source
    kind = "parquet" if src.endswith(".parquet") or _has_parquet(src) else "imagefolder"
    try:
        data = materialize(load_source(kind, src, "", run.class_ids, None if kind == "parquet" else cfg.data.image_size))
    except UserError as e:
        raise UserError("distill.seed_source", e.problem, e.fix) from None
    pick = random_subset_per_class(data.labels, cfg.distill.ipc_seed, cfg.seed, num_classes=len(run.class_ids))
    by_class: dict[int, list[np.ndarray]] = {}
    for i in pick:
        by_class.setdefault(int(data.labels[i]), []).append(data.images[i].numpy())
    return by_class


def copied_samples(images: dict[int, list[np.ndarray]], items: list[WorkItem]) -> list[Sample]:
    """Rows for copied images: seed -1, no latent, no scores (nothing was sampled)."""
    nan = float("nan")
    return [Sample(it, 0, -1, images[it.label][it.slot], np.zeros(0, np.float16), nan, nan, nan) for it in items]


def _has_parquet(path: str) -> bool:
    return os.path.isdir(path) and any(f.endswith(".parquet") for _, _, fs in os.walk(path) for f in fs)


def sample_stage(cfg: Config, out: OutputDir, run: RunInfo, stage: int, pool: LazyPool, student_state, progress: bool) -> None:
    """Write the stage's missing or damaged parts, then its manifest."""
    ipc = stage_ipc(stage, cfg.distill.ipc_seed, cfg.distill.ipc_per_stage)
    chunks = dict(enumerate(chunk(stage_items(stage, len(run.class_ids), ipc), cfg.distill.chunk_size)))
    s = stage_settings(cfg, stage)
    params = stage_params(cfg, run, s)
    old = {p["file"]: p["sha256"] for p in (out.manifest(stage) or {"parts": []})["parts"]}
    parts: dict[int, dict] = {}
    for idx, items in chunks.items():
        info = out.part_info(stage, idx, [(it.label, it.slot) for it in items])
        if info is not None and old.get(info["file"], info["sha256"]) == info["sha256"]:
            parts[idx] = info
    todo = {i: c for i, c in chunks.items() if i not in parts}
    if todo and stage == 0 and cfg.distill.seed_source:
        images = seed_images(cfg, run)
        for idx, items in todo.items():
            parts[idx] = out.write_part(stage, idx, copied_samples(images, items), params)
    elif todo:
        bar = _bar(progress, len(chunks), len(parts), f"{stage_name(stage)} sampling")
        memory = stage_memory(out, list(range(stage)), cfg.distill.memory_size) if s.gamma > 0 else None
        t0 = time.perf_counter()
        try:
            sampler = pool.get()
            check_precision(out, sampler.precision)
            parts.update(sampler.run_stage(stage, todo, s, params, student_state if stage > 0 else None, memory,
                                           on_part=lambda i, p: bar.update(1) if bar else None))
        finally:
            if bar:
                bar.close()
        # what `lgd-ray plan --from-run` fits: set-up (actors start, load, receive θ) vs sampling proper
        wall = time.perf_counter() - t0
        out.append_jsonl("metrics.jsonl", {"event": "sample", "stage": stage, "wall_s": wall,
                                           "setup_s": wall - sampler.sampling_s, "chunks": len(todo),
                                           "samplers": cfg.ray.samplers, "actors": sampler.placements,
                                           "failures": len(sampler.failures)})
    inputs = {"config_hash": cfg.hash(), "generator": cfg.generator.path,
              "student": sha256(weights_bytes(student_state)) if stage > 0 and student_state else None,
              "precision": (out.read_json("config.json") or {}).get("precision")}
    out.write_manifest(stage, [parts[i] for i in sorted(parts)], inputs)


def check_precision(out: OutputDir, precision: dict[str, str]) -> dict[str, str]:
    """Record the samplers' (device type, dtype) in config.json on first sampling; refuse to add parts of
    another precision to a run (a resume on other hardware under `generator.dtype: auto`): bf16 and fp32
    parts would otherwise mix under one config hash."""
    saved = out.read_json("config.json")
    recorded = saved.get("precision")
    if recorded is None:
        out.write_text("config.json", json.dumps({**saved, "precision": precision}, indent=1))
    elif recorded != precision:
        raise UserError("generator.dtype", f"{out.uri} was sampled in {recorded['dtype']} on {recorded['device']}, "
                        f"but the samplers now run {precision['dtype']} on {precision['device']}",
                        "resume on the same kind of device, or start another --out (or pass --overwrite)")
    return precision


class LazyPool:
    """The sampler pool, started on first use and released whenever training needs the resources."""

    def __init__(self, make):
        self.make, self.pool = make, None

    def get(self):
        if self.pool is None:
            self.pool = self.make()
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _bar(progress: bool, total: int, initial: int, desc: str):
    if not progress:
        return None

    return progress_bar(total=total, initial=initial, desc=desc, unit="part")


def train_stage_student(cfg: Config, out: OutputDir, run: RunInfo, stage: int, init: dict | None,
                        progress: bool = False) -> dict:
    """θ_stage on D_stage = I_0 ∪ … ∪ I_stage (warm start from θ_{stage−1} if configured); cached."""
    rel = f"checkpoints/{stage_name(stage)}/model.safetensors"
    state = load_weights(out, rel)
    if state is None:
        from .train_job import train_with_ray

        log(progress, f"{stage_name(stage)}: training θ_{stage} on stages 0..{stage} ({cfg.ray.train_workers} Ray Train worker(s))")
        t0 = time.perf_counter()
        state, metrics = train_with_ray(cfg, out, role="student", name=f"student-{stage_name(stage)}", class_ids=run.class_ids,
                                        in_channels=run.in_channels, stages=list(range(stage + 1)),
                                        init=init if cfg.student.warm_start else None, seed=cfg.seed + stage)
        out.write_bytes(rel, weights_bytes(state))
        out.append_jsonl("metrics.jsonl", {"event": "student", "stage": stage, **metrics,
                                           "wall_s": time.perf_counter() - t0})
        log(progress, f"{stage_name(stage)}: θ_{stage} selection-split acc {metrics.get('select_acc', float('nan')):.3f}")
    return state


def samplers_fit_beside_training(cfg: Config, cluster: dict[str, float]) -> bool:
    """Whether the cluster holds the sampler actors and the Ray Train workers at once. Then the actors
    live across stages (64 sampler GPUs need not reload a 2.7 GB generator at every stage); otherwise
    they are closed before each training phase, whose resources they would hold (2 CPUs: a deadlock)."""
    r = cfg.ray
    need_cpu = r.samplers * r.cpus_per_sampler + r.train_workers * r.cpus_per_train_worker
    need_gpu = r.samplers * r.gpus_per_sampler + r.train_workers * r.gpus_per_train_worker
    return need_cpu <= cluster.get("CPU", 0.0) + 1e-9 and need_gpu <= cluster.get("GPU", 0.0) + 1e-9


def _available() -> dict[str, float]:
    import ray

    return ray.available_resources()


def training_fits(cfg: Config, available: dict[str, float]) -> bool:
    """Whether the Ray Train workers fit into what is free now, with the sampler actors alive. On a
    cluster shared with other jobs (a sweep's trials, another run) the totals can hold both while the
    free resources cannot: keeping the actors then would leave the student waiting forever."""
    r = cfg.ray
    return (r.train_workers * r.cpus_per_train_worker <= available.get("CPU", 0.0) + 1e-9
            and r.train_workers * r.gpus_per_train_worker <= available.get("GPU", 0.0) + 1e-9)


def distill(cfg: Config, out_uri: str, *, overwrite: bool = False, progress: bool = True,
            on_stage: Callable[[int, dict], None] | None = None, keep_samplers: bool | None = None) -> dict:
    """Run (or resume) LGD into `out_uri`; returns a summary. Assumes Ray is initialised.

    `on_stage(i, metrics)` is called right after θ_i is trained or loaded, with its `metrics.jsonl`
    record (select_acc, on the selection split, ...); a sweep reports it to Tune. `keep_samplers`: keep
    the sampler actors alive through training (None: when `samplers_fit_beside_training`; a sweep
    passes False, its trial cap counts one phase at a time).
    """
    from .figures import write_previews
    from .sampler_actors import SamplerPool

    cfg = with_named_sampler(cfg)
    run = resolve_run(cfg)
    out = OutputDir(out_uri)
    resumed = prepare_output(out, cfg, overwrite)
    guided = needs_student(cfg)
    reference = ensure_reference(cfg, out, run, progress) if guided else None
    pool = LazyPool(lambda: SamplerPool(cfg.to_dict(), out.uri, reference, len(run.class_ids), run.in_channels,
                                        samplers=cfg.ray.samplers, cpus=cfg.ray.cpus_per_sampler,
                                        gpus=cfg.ray.gpus_per_sampler, restarts=cfg.ray.sampler_restarts,
                                        chunk_timeout_s=cfg.ray.chunk_timeout_s,
                                        on_failure=lambda record, msg: report_failure(out, record, msg)))
    student = None
    if keep_samplers is None:
        import ray

        keep_samplers = samplers_fit_beside_training(cfg, ray.cluster_resources())
    try:
        for stage in range(cfg.distill.stages + 1):
            if out.manifest(stage) is None or out.verify_stage(stage):
                sample_stage(cfg, out, run, stage, pool, student, progress)
            else:
                log(progress, f"{stage_name(stage)}: complete, kept")
            if guided and stage < cfg.distill.stages:
                if not keep_samplers or not training_fits(cfg, _available()):
                    pool.close()  # its CPUs/GPUs go to Ray Train while the student trains
                student = train_stage_student(cfg, out, run, stage, student, progress)
                if on_stage is not None:  # this stage's metrics.jsonl record (the latest one)
                    records = [json.loads(line) for line in out.read_bytes("metrics.jsonl").decode().splitlines()
                               if line.strip()] if out.exists("metrics.jsonl") else []
                    on_stage(stage, next((r for r in reversed(records)
                                          if r.get("event") == "student" and r.get("stage") == stage), {}))
    finally:
        pool.close()
    stages = list(range(cfg.distill.stages + 1))
    write_previews(out, stages, run.class_ids)
    if out.local and os.path.isdir(out.path("_ray_train")) and not os.listdir(out.path("_ray_train")):
        os.rmdir(out.path("_ray_train"))
    log(progress, f"done: {out.uri} (previews in preview/)")
    rows = sum(out.manifest(s)["rows"] for s in stages)
    return {"out": out.uri, "stages": len(stages), "images": rows, "resumed": resumed, "config_hash": cfg.hash()}
