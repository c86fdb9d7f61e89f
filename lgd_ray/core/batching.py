"""`generator.batch_size: auto`: the largest sampling batch that fits the GPU, from a measured probe.

A guided step's memory is linear in the batch (activation_bytes.py counts it: fixed bytes, such as the bf16
weight copies autocast makes per op, plus bytes per image), so two probe steps at small batches on
the device give both terms, and the free memory gives the batch. On CPU there is nothing to probe
against: `CPU_BATCH_SIZE` is used.
"""

from __future__ import annotations

import torch

from .errors import UserError
from .generator import Generator
from .sampler import (
    SampleSettings,
    autocast_context,
    guided_step,
    quantize,
    score_images,
)

CPU_BATCH_SIZE = 64  # the batch `auto` means without a GPU (the key's old default)
SAFETY_FRACTION = 0.10  # of the free memory, for fragmentation, cuDNN/cuBLAS workspaces and the estimate's error


def max_batch(free_bytes: int, fixed_bytes: int, per_image_bytes: int, k: int, cap: int,
              safety_fraction: float = SAFETY_FRACTION) -> int:
    """Largest batch b with fixed + per_image·b ≤ free·(1 − safety), in whole slots (multiples of κ), ≤ cap.

    When not even one slot's κ candidates fit, the largest smaller batch (at least 1): the sampler
    runs any batch; a chunk's slots merely need more than one batch then.
    """
    if k < 1 or cap < 1:
        raise ValueError(f"k and cap must be >= 1, got k={k}, cap={cap}")
    budget = free_bytes * (1 - safety_fraction) - fixed_bytes
    if per_image_bytes <= 0:
        return cap
    fits = int(budget // per_image_bytes)
    if fits >= k:
        fits -= fits % k
    return max(1, min(fits, cap))


def _probe_batch(gen: Generator, s: SampleSettings, student, reference, batch: int) -> None:
    """What sample_items does per batch at its most expensive step: the step, then decode and score."""
    device = gen.device
    x = torch.randn(batch, *gen.latent_shape, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    t = gen.scheduler.timesteps[0]
    if s.lam > 0 and student is not None and reference is not None:
        guided_step(gen, x, t, labels, labels, s, student, reference)
    else:
        with torch.no_grad(), autocast_context(device, s):
            gen.model_output(x, t, labels, s.cfg_scale)
    with torch.no_grad():
        img = quantize(gen.decode(x))
    score_images(img, labels, student, reference, s.omega, s.student_size)


def probe_step_bytes(gen: Generator, s: SampleSettings, student=None, reference=None,
                     batches: tuple[int, int] = (1, 2)) -> tuple[int, int]:
    """(fixed, per-image) bytes above what is allocated now, from CUDA peak memory at two batches."""
    peaks = []
    for b in batches:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _probe_batch(gen, s, student, reference, b)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    per_image = max(0, (peaks[1] - peaks[0]) // (batches[1] - batches[0]))
    return max(0, peaks[0] - per_image * batches[0]), per_image


def free_cuda_bytes() -> int:
    """Free device memory plus what PyTorch's caching allocator holds unused (it is ours to reuse)."""
    free, _ = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()


def check_fixed_batch(batch: int, free_bytes: int, fixed_bytes: int, per_image_bytes: int, k: int, cap: int,
                      safety_fraction: float = SAFETY_FRACTION) -> None:
    """Refuse a fixed `generator.batch_size` that the measured model (fixed + per image × b within the free
    memory less the safety margin) says cannot fit: one line with the batch that would, before any chunk."""
    need = fixed_bytes + per_image_bytes * batch
    if need > free_bytes * (1 - safety_fraction):
        fits = max_batch(free_bytes, fixed_bytes, per_image_bytes, k, cap, safety_fraction)
        gib = 2**30
        raise UserError("generator.batch_size", f"{batch} images need about {need / gib:.1f} GiB per guided step, "
                        f"the GPU has {free_bytes / gib:.1f} GiB free", f"use auto, or at most {fits}")


def fixed_batch_fits(gen: Generator, s: SampleSettings, cap: int, student=None, reference=None) -> None:
    """On CUDA, measure (two probe steps, as `auto` does) and refuse a fixed batch that does not fit."""
    if gen.device.type != "cuda":
        return
    probe = (s.k, 2 * s.k) if 2 * s.k <= cap else (1, 2)
    fixed, per_image = probe_step_bytes(gen, s, student, reference, probe)
    check_fixed_batch(s.batch_size, free_cuda_bytes(), fixed, per_image, s.k, cap)


def auto_batch_size(gen: Generator, s: SampleSettings, cap: int, student=None, reference=None) -> int:
    """The batch for `generator.batch_size: auto`: probed on CUDA, CPU_BATCH_SIZE (≤ cap) elsewhere."""
    if gen.device.type != "cuda":
        return max(1, min(CPU_BATCH_SIZE, cap))
    probe = (s.k, 2 * s.k) if 2 * s.k <= cap else (1, 2)
    fixed, per_image = probe_step_bytes(gen, s, student, reference, probe)
    return max_batch(free_cuda_bytes(), fixed, per_image, s.k, cap)
