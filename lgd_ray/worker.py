"""The sampling worker: loads the generator and θ* once, takes a stage's θ_{i-1}, turns chunks into parts.

Plain Python, no Ray: the sampler actor is this class under `ray.remote` (sampling.py), and the
benchmark runs the very same class in-process, so the two are compared like for like.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from .core.batching import auto_batch_size
from .core.config import Config, from_dict
from .core.generator import load_generator
from .core.plan import WorkItem
from .core.sampler import SampleSettings, sample_items
from .core.students import build_student
from .store import OutputDir, StageParams


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Strict load (a mismatch is an error, never silently ignored), eval mode, frozen."""
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


class ChunkWorker:
    def __init__(self, cfg: dict, out_uri: str, reference_state: dict[str, torch.Tensor] | None,
                 num_classes: int, in_channels: int, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.cfg: Config = from_dict(cfg)
        self.device = pick_device(self.cfg.ray.gpus_per_sampler)
        g = self.cfg.generator
        self.gen = load_generator(g.path, device=self.device)
        self.gen.set_scheduler(g.scheduler, g.num_steps)
        self.out = OutputDir(out_uri)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.reference = self._model(self.cfg.reference.arch, reference_state)
        self.student = None
        self.settings: SampleSettings | None = None
        self.params: StageParams | None = None
        self.memory: dict[int, torch.Tensor] = {}

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

    def _sized(self, s: SampleSettings) -> SampleSettings:
        """`batch_size: auto`: probed on this device at each stage (two small guided steps); at most a chunk."""
        if not s.auto_batch:
            return s
        cap = self.cfg.distill.chunk_size * s.k
        batch = auto_batch_size(self.gen, s, cap, self.student, self.reference)
        return replace(s, batch_size=batch, auto_batch=False)

    def run_chunk(self, stage: int, chunk_index: int, items: list[WorkItem]) -> dict:
        samples = sample_items(self.gen, items, self.settings, self.params.class_map, student=self.student,
                               reference=self.reference, memory=self.memory)
        return self.out.write_part(stage, chunk_index, samples, self.params)
