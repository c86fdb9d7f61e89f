"""The sampler actors: a ChunkWorker loads the generator and θ* once, takes a stage's θ_{i-1} and
turns chunks of work items into Parquet parts; the SamplerPool runs ChunkWorkers as Ray actors and
deals the chunks out.

ChunkWorker is plain Python: the actor is this class under `ray.remote`, and the benchmark runs the
very same class in-process, so the two are compared like for like.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import ray
import torch

from ..core.batching import auto_batch_size, fixed_batch_fits
from ..core.config import Config, from_dict
from ..core.errors import UserError
from ..core.generator import load_generator, load_guidance_decoder
from ..core.sampler import SampleSettings, sample_items
from ..core.students import build_student
from ..core.work import WorkItem
from .run import localize_paths
from .store import OutputDir, StageParams, stage_name


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(dtype: str, device: torch.device) -> dict[str, str]:
    """What changes a part's bytes, decided where the model runs: `generator.dtype: auto` is bf16 autocast
    on a GPU and fp32 elsewhere. A driver on a CPU-only head must not decide it for GPU actors."""
    bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda")
    return {"device": device.type, "dtype": "bf16" if bf16 else "fp32"}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Strict load (a mismatch is an error, never silently ignored), eval mode, frozen."""
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


class ChunkWorker:
    def __init__(self, cfg: dict, out_uri: str, reference_state: dict[str, torch.Tensor] | None,
                 num_classes: int, in_channels: int, threads: int | None = None, driver_cwd: str | None = None):
        if threads:
            torch.set_num_threads(threads)
        # a relative generator.path or seed_source is relative to the driver's folder, not this process's
        self.cfg: Config = from_dict(localize_paths(cfg, driver_cwd) if driver_cwd else cfg)
        self.device = pick_device(self.cfg.ray.gpus_per_sampler)
        g = self.cfg.generator
        self.precision = resolve_precision(g.dtype, self.device)
        self.gen = load_generator(g.path, device=self.device, convention=g.convention)
        self.gen.set_scheduler(g.scheduler, g.num_steps)
        if g.guidance_decoder:
            self.gen.set_guidance_decoder(load_guidance_decoder(g.guidance_decoder))
        self.out = OutputDir(out_uri)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.reference = self._model(self.cfg.reference.arch, reference_state)
        self.student = None
        self.settings: SampleSettings | None = None
        self.params: StageParams | None = None
        self.memory: dict[int, torch.Tensor] = {}
        self.stage_inputs: str | None = None  # the object id of the stage inputs in use (load_stage)

    def _model(self, arch: str, state: dict | None):
        if state is None:
            return None
        m = build_student(arch, self.num_classes, self.cfg.data.image_size, self.in_channels)
        return load_state(m, state).to(self.device)

    def set_stage(self, settings: SampleSettings, params: StageParams, student_state: dict | None,
                  memory: dict[int, torch.Tensor] | None) -> int:
        """Stage inputs, sent once per stage through the object store."""
        self.params = params
        self.student = self._model(self.cfg.student.arch, student_state)
        self.memory = {k: v.to(self.device) for k, v in (memory or {}).items()}
        self.settings = self._sized(settings)
        return os.getpid()

    def load_stage(self, inputs: list) -> dict:
        """The stage's inputs from the object store, `[ref]` to (settings, params, θ_{i-1}, memory), loaded
        unless they are the ones in use; returns this actor's placement. Every chunk names its stage's
        inputs too, so an actor that Ray restarted (a fresh __init__, nothing of the stage) fetches them
        again before its retried chunk."""
        self._use_stage(inputs)
        return self.placement()

    def _use_stage(self, inputs: list) -> None:
        ref = inputs[0]  # wrapped in a list, so Ray hands over the reference, not the value
        if ref.hex() != self.stage_inputs:
            self.set_stage(*ray.get(ref))
            self.stage_inputs = ref.hex()

    def placement(self) -> dict:
        """This actor's precision (device type, dtype) and process: the driver records and checks it."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        in_actor = ctx is not None and ctx.get_actor_id() is not None  # in-process (the bench): no assignment
        return {**self.precision, "pid": os.getpid(), "node": ctx.get_node_id() if ctx else None,
                "gpus": float(ctx.get_assigned_resources().get("GPU", 0.0)) if in_actor else 0.0}

    def _sized(self, s: SampleSettings) -> SampleSettings:
        """This device's settings: its autocast, and for `batch_size: auto` the batch probed here at each
        stage (two small guided steps), at most a chunk."""
        s = replace(s, autocast=self.precision["dtype"] == "bf16")
        if not s.auto_batch:  # a fixed batch that cannot fit this GPU is refused before the first chunk
            fixed_batch_fits(self.gen, s, max(s.batch_size, self.cfg.distill.chunk_size * s.k), self.student,
                             self.reference)
            return s
        cap = self.cfg.distill.chunk_size * s.k
        batch = auto_batch_size(self.gen, s, cap, self.student, self.reference)
        return replace(s, batch_size=batch, auto_batch=False)

    def run_chunk(self, stage: int, chunk_index: int, items: list[WorkItem], inputs: list | None = None) -> dict:
        """Sample a chunk and write its part; returns the part's info and, with `inputs` (the pool's
        path), the writer's pid, which tells the driver whether the actor was restarted meanwhile."""
        if inputs is not None:
            self._use_stage(inputs)
        samples = sample_items(self.gen, items, self.settings, self.params.class_map, student=self.student,
                               reference=self.reference, memory=self.memory)
        info = self.out.write_part(stage, chunk_index, samples, self.params)
        return info if inputs is None else {**info, "writer": {**self.precision, "pid": os.getpid()}}


SamplerActor = ray.remote(ChunkWorker)


def user_errors(fn: Callable):
    """fn(), with a UserError raised inside an actor re-raised as itself (one line, exit 2), not as the
    multi-line RayTaskError that wraps it."""
    try:
        return fn()
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):  # the actor's __init__ refused its inputs
            raise cause from None
        raise


class SamplerPool:
    """ChunkWorker actors and the chunks dealt to them, `depth` in flight per actor.

    Failures are Ray's to repair: each actor restarts up to `restarts` times (a fresh process, on any
    node that has room) and its chunks in flight are retried on it (`max_task_retries`), while the
    other actors' chunks go on untouched. Parts are pure functions of their chunk, written atomically,
    so a redone chunk writes the very bytes it would have written. What Ray cannot see is a hung actor:
    one with no finished chunk for `chunk_timeout_s` is killed (and so restarted; the new process gets
twice that for its first chunk). The timeout must cover a restart: a fresh process that loads the
generator and the stage's inputs before its first chunk. An actor whose
    restarts are used up leaves its chunks to the others.
    """

    depth = 2

    def __init__(self, cfg: dict, out_uri: str, reference_state: dict | None, num_classes: int, in_channels: int,
                 *, samplers: int, cpus: float, gpus: float, restarts: int = 3, chunk_timeout_s: float = 1800.0,
                 on_failure: Callable[[dict, str], None] | None = None):
        # held for the pool's lifetime: a restarted actor's __init__ reads its arguments again, and Ray
        # frees an object nobody references (the restart would then fail)
        self.reference_ref = ref = ray.put(reference_state)
        threads = max(1, int(cpus)) if gpus == 0 else None
        # SPREAD: the actors of one pool on as many nodes as there are, so a lost node takes few of them
        opts = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": restarts, "max_task_retries": -1,
                "scheduling_strategy": "SPREAD"}
        self.actors = [SamplerActor.options(**opts).remote(cfg, out_uri, ref, num_classes, in_channels, threads,
                                                           os.getcwd())
                       for _ in range(samplers)]
        self.chunk_timeout_s = chunk_timeout_s
        self.on_failure = on_failure or (lambda record, msg: None)
        self.failures: list[dict] = []  # of the last run_stage
        self.sampling_s = 0.0  # the last run_stage's chunk loop, after the actors were ready for the stage
        self.placements = user_errors(lambda: ray.get([a.placement.remote() for a in self.actors]))

    @property
    def precision(self) -> dict[str, str]:
        """The one (device type, dtype) every actor resolved; actors that disagree would mix bytes."""
        kinds = {(p["device"], p["dtype"]) for p in self.placements}
        if len(kinds) > 1:
            raise UserError("ray.gpus_per_sampler", f"sampler actors resolved different precisions {sorted(kinds)}",
                            "give every sampler the same kind of device (a GPU each, or none), or fix generator.dtype")
        device, dtype = kinds.pop()
        return {"device": device, "dtype": dtype}

    def _failure(self, record: dict, msg: str) -> None:
        self.failures.append(record)
        self.on_failure(record, msg)

    def run_stage(self, stage: int, chunks: dict[int, list[WorkItem]], settings: SampleSettings, params: StageParams,
                  student_state: dict | None, memory: dict | None,
                  on_part: Callable[[int, dict], None] | None = None) -> dict[int, dict]:
        """Sample the given chunks (index -> items); returns index -> part info. Order-free, deterministic."""
        inputs = [ray.put((settings, params, student_state, memory))]
        self.placements = user_errors(lambda: ray.get([a.load_stage.remote(inputs) for a in self.actors]))
        precision = self.precision
        pids = [p["pid"] for p in self.placements]
        self.failures = []
        t0 = time.perf_counter()
        todo = sorted(chunks)
        pending: dict = {}  # task -> (actor index, chunk index)
        done: dict[int, dict] = {}
        live = set(range(len(self.actors)))
        last = [time.monotonic()] * len(self.actors)  # per actor: when it last finished a chunk, or got one idle
        # Two chunks in flight per actor: the next one is queued while the current one runs,
        # so an actor never idles on the driver's round trip.
        slots = [i for i in live for _ in range(self.depth)]
        while todo or pending:
            while todo and slots:
                i, idx = slots.pop(0), todo.pop(0)
                if not any(a == i for a, _ in pending.values()):
                    last[i] = time.monotonic()
                pending[self.actors[i].run_chunk.remote(stage, idx, chunks[idx], inputs)] = (i, idx)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(10.0, self.chunk_timeout_s / 4))
            if not ready:
                self._kill_hung(stage, pending, last)
                continue
            task = ready[0]
            i, idx = pending.pop(task)
            try:
                info = user_errors(lambda: ray.get(task))  # noqa: B023 -- called at once
            except ray.exceptions.RayActorError as e:  # restarts used up: its chunks go to the others
                todo = sorted([*todo, idx])
                if i in live:
                    live.discard(i)
                    slots = [a for a in slots if a != i]
                    lost = sorted([idx, *(c for a, c in pending.values() if a == i)])
                    self._failure({"kind": "sampler_actor_gone", "stage": stage, "actor": i, "pid": pids[i],
                                   "chunks": lost}, f"sampler actor {i} (pid {pids[i]}) is gone for good "
                                  f"(ray.sampler_restarts used up: {type(e).__name__}); chunk(s) {lost} of "
                                  f"{stage_name(stage)} go to the other actors")
                if not live:
                    raise RuntimeError(f"every sampler actor is gone (ray.sampler_restarts used up); "
                                       f"{len(todo)} chunks of {stage_name(stage)} left: rerun to resume") from e
                continue
            writer = info.pop("writer")
            if writer["pid"] != pids[i]:
                redone = sorted([idx, *(c for a, c in pending.values() if a == i)])
                self._failure({"kind": "sampler_actor_restarted", "stage": stage, "actor": i, "pid": pids[i],
                               "new_pid": writer["pid"], "chunks_retried": redone},
                              f"sampler actor {i} (pid {pids[i]}) was lost; Ray restarted it as pid "
                              f"{writer['pid']} and retried chunk(s) {redone} of {stage_name(stage)} on it")
                pids[i] = writer["pid"]
            if (writer["device"], writer["dtype"]) != (precision["device"], precision["dtype"]):
                raise UserError("ray.gpus_per_sampler", f"sampler actor {i} was restarted on a {writer['device']} "
                                f"({writer['dtype']}) while the stage runs {precision['dtype']} on {precision['device']}",
                                "give every node that can hold a sampler the same kind of device")
            last[i] = time.monotonic()
            done[idx] = info
            slots.append(i)
            if on_part:
                on_part(idx, done[idx])
        self.sampling_s = time.perf_counter() - t0
        return done

    def _kill_hung(self, stage: int, pending: dict, last: list[float]) -> None:
        """Kill each actor that has chunks in flight but finished none for chunk_timeout_s: Ray restarts
        it and retries those chunks on it (a kill counts as one of its restarts)."""
        now = time.monotonic()
        for i in sorted({a for a, _ in pending.values()}):
            if now - last[i] > self.chunk_timeout_s:
                chunks = sorted(c for a, c in pending.values() if a == i)
                self._failure({"kind": "sampler_actor_hung", "stage": stage, "actor": i, "chunks": chunks,
                               "timeout_s": self.chunk_timeout_s},
                              f"sampler actor {i} finished no chunk in {self.chunk_timeout_s:g} s "
                              f"(ray.chunk_timeout_s) with chunk(s) {chunks} of {stage_name(stage)} in flight: "
                              "killed; Ray restarts it and retries them")
                ray.kill(self.actors[i], no_restart=False)
                # the restarted actor (a fresh process that loads the generator, then the stage) has
                # twice the timeout for its first chunk
                last[i] = now + self.chunk_timeout_s

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
