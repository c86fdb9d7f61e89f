"""The guided sampling loop: κ candidates per slot, learnability + deviation guidance, rank selection.

Cost model (what the ancestors did worse): everything in a chunk is batched over slots × candidates;
a guided step is one denoiser forward with autograd and ONE backward for the whole batch (the samples
are independent, so the gradient of ΣS gives each sample its own ∇S); outside the window there is no
autograd at all; deviation guidance is closed form (guidance.deviation_grad).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .generator import Generator
from .guidance import (
    deviation_grad,
    guided_eps,
    in_window,
    learnability_score,
    select_best,
)
from .work import WorkItem, item_seed


@dataclass
class SampleSettings:
    run_seed: int = 0
    num_steps: int = 25
    cfg_scale: float = 1.0
    lam: float = 0.0
    omega: float = 0.5
    gamma: float = 0.0
    k: int = 1
    window: tuple[int, int] = (0, 0)
    batch_size: int = 64
    auto_batch: bool = False  # the worker replaces batch_size by the largest that fits its GPU (core/batching.py)
    student_size: int = 8  # images are resized to this before the student and the reference see them
    autocast: bool = False  # bf16 autocast of the denoiser and students (GPU)
    vae_checkpointing: bool = False  # recompute the VAE decoder in the backward (activation_bytes.py measures the trade)


@dataclass
class Sample:
    item: WorkItem
    candidate: int
    seed: int
    image: np.ndarray  # uint8 C×H×W, as stored
    latent: np.ndarray  # float16, the final latent (pixels in [-1, 1] for pixel-space models)
    score: float  # S on the stored image (NaN without a student)
    student_loss: float
    reference_loss: float


def to_student(images: torch.Tensor, size: int) -> torch.Tensor:
    """Generator images in [0, 1] -> the students' resolution (differentiable)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8, the form in which images are stored and scored."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def score_images(images_u8: torch.Tensor, labels: torch.Tensor, student, reference, omega: float,
                 size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S, student loss, reference loss) of stored images; NaN for a missing model."""
    x = to_student(images_u8.float() / 255, size)
    return learnability_score(student(x) if student is not None else None,
                              reference(x) if reference is not None else None, labels, omega)


def autocast_context(device: torch.device, s: SampleSettings):
    return torch.autocast(device.type, dtype=torch.bfloat16) if s.autocast else nullcontext()


def guided_step(gen: Generator, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor, gen_labels: torch.Tensor,
                s: SampleSettings, student, reference, backward: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(ε̂, σ or None, x̂0, ∇_{x_t}S) of one guided step: the only place with autograd.

    The backward runs through the student and θ*, the resize, the VAE decoder and the denoiser
    (both CFG halves), all in one pass for the whole batch. `backward=False` stops after the
    forward (activation_bytes.py counts what the forward saved for it).
    """
    gen.set_vae_checkpointing(s.vae_checkpointing)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        with autocast_context(x.device, s):
            eps, sigma = gen.split(gen.model_output(x_in, t, gen_labels, s.cfg_scale))
            x0 = gen.x0(x_in, t, eps)
            img = to_student(gen.decode(x0), s.student_size)
            score, _, _ = learnability_score(student(img), reference(img), labels, s.omega)
        grad_s = torch.autograd.grad(score.sum(), x_in)[0] if backward else None
    return eps.detach(), sigma.detach() if sigma is not None else None, x0.detach(), grad_s


def denoise(gen: Generator, seeds: list[int], labels: torch.Tensor, gen_labels: torch.Tensor, s: SampleSettings,
            student=None, reference=None, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Run the reverse process for one batch; returns final latents. Labels: student (guidance), generator (conditioning)."""
    device = gen.device
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    # Noise is drawn on the CPU from each item's own generator: identical bytes on any device/batch.
    x = torch.stack([torch.randn(gen.latent_shape, generator=g) for g in gens]).to(device)
    x = x * gen.scheduler.init_noise_sigma
    labels, gen_labels = labels.to(device), gen_labels.to(device)
    timesteps = gen.scheduler.timesteps
    use_s = s.lam > 0 and student is not None and reference is not None
    use_d = s.gamma > 0 and bool(memory)
    amp = autocast_context(device, s)
    for j, t in enumerate(timesteps):
        guided = in_window(len(timesteps) - 1 - j, s.window) and (use_s or use_d)
        if guided and use_s:
            eps, sigma, x0, grad_s = guided_step(gen, x, t, labels, gen_labels, s, student, reference)
        else:
            grad_s = None
            with torch.no_grad(), amp:
                eps, sigma = gen.split(gen.model_output(x, t, gen_labels, s.cfg_scale))
                x0 = gen.x0(x, t, eps) if guided else None
        if guided:
            grad_d = deviation_grad(x0, labels, memory) if use_d else None
            eps = guided_eps(eps, gen.alpha_bar(t).to(device), grad_s=grad_s, lam=s.lam, grad_d=grad_d, gamma=s.gamma)
        # σ (DiT's v) is never guided: under learned range it sets the step's variance, ε̃ its mean
        with torch.no_grad():
            x = gen.step(eps, sigma, t, x, gens)
    return x.detach()


def sample_items(gen: Generator, items: list[WorkItem], s: SampleSettings, class_map: list[int], *, student=None,
                 reference=None, memory: dict[int, torch.Tensor] | None = None, progress: bool = False) -> list[Sample]:
    """Sample κ candidates for every item and keep the highest-S one per item (argmax; first on ties)."""
    pairs = [(it, c) for it in items for c in range(s.k)]
    seeds = [item_seed(s.run_seed, it.stage, it.label, it.slot, c) for it, c in pairs]
    images, latents, scores, ls_all, lr_all = [], [], [], [], []
    batches = range(0, len(pairs), s.batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sampling", unit="batch")
    for b in batches:
        part = pairs[b:b + s.batch_size]
        labels = torch.tensor([it.label for it, _ in part])
        gen_labels = torch.tensor([class_map[it.label] for it, _ in part])
        z = denoise(gen, seeds[b:b + s.batch_size], labels, gen_labels, s, student, reference, memory)
        with torch.no_grad():
            img = quantize(gen.decode(z))
        sc, ls, lr = score_images(img, labels.to(img.device), student, reference, s.omega, s.student_size)
        images.append(img.cpu()), latents.append(z.cpu()), scores.append(sc.cpu()), ls_all.append(ls.cpu()), lr_all.append(lr.cpu())
    images, latents = torch.cat(images), torch.cat(latents)
    scores, ls_all, lr_all = torch.cat(scores), torch.cat(ls_all), torch.cat(lr_all)
    best = select_best(torch.nan_to_num(scores, nan=0.0).view(len(items), s.k))
    out = []
    for i, it in enumerate(items):
        j = i * s.k + int(best[i])
        out.append(Sample(it, int(best[i]), seeds[j], images[j].numpy(), latents[j].to(torch.float16).numpy(),
                          float(scores[j]), float(ls_all[j]), float(lr_all[j])))
    return out
