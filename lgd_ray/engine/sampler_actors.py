"""A pool of sampler actors: generator and θ* loaded once per actor, chunks dealt out by the driver."""

from __future__ import annotations

import time
from collections.abc import Callable

import ray

from .core.plan import WorkItem
from .core.sampler import SampleSettings
from .store import StageParams
from .worker import ChunkWorker

SamplerActor = ray.remote(ChunkWorker)


class SamplerPool:
    depth = 2

    def __init__(self, cfg: dict, out_uri: str, reference_state: dict | None, num_classes: int, in_channels: int,
                 *, samplers: int, cpus: float, gpus: float):
        ref = ray.put(reference_state)
        threads = max(1, int(cpus)) if gpus == 0 else None
        opts = {"num_cpus": cpus, "num_gpus": gpus}
        self.actors = [SamplerActor.options(**opts).remote(cfg, out_uri, ref, num_classes, in_channels, threads)
                       for _ in range(samplers)]
        self.sampling_s = 0.0  # the last run_stage's chunk loop, after the actors were ready for the stage

    def run_stage(self, stage: int, chunks: dict[int, list[WorkItem]], settings: SampleSettings, params: StageParams,
                  student_state: dict | None, memory: dict | None,
                  on_part: Callable[[int, dict], None] | None = None) -> dict[int, dict]:
        """Sample the given chunks (index -> items); returns index -> part info. Order-free, deterministic."""
        student_ref, memory_ref = ray.put(student_state), ray.put(memory)
        ray.get([a.set_stage.remote(settings, params, student_ref, memory_ref) for a in self.actors])
        t0 = time.perf_counter()
        todo = sorted(chunks)
        pending: dict = {}
        done: dict[int, dict] = {}
        # Two chunks in flight per actor: the next one is queued while the current one runs,
        # so an actor never idles on the driver's round trip.
        slots = [a for a in self.actors for _ in range(self.depth)]
        while todo or pending:
            while todo and slots:
                actor, idx = slots.pop(0), todo.pop(0)
                pending[actor.run_chunk.remote(stage, idx, chunks[idx])] = (actor, idx)
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, idx = pending.pop(ready[0])
            done[idx] = ray.get(ready[0])
            slots.append(actor)
            if on_part:
                on_part(idx, done[idx])
        self.sampling_s = time.perf_counter() - t0
        return done

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
