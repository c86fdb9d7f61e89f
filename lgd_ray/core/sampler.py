"""The guided sampling loop: κ candidates per slot, learnability + deviation guidance, rank selection.

Cost model (what the ancestors did worse): everything in a chunk is batched over slots × candidates;
a guided step is one denoiser forward with autograd and ONE backward for the whole batch (the samples
are independent, so the gradient of ΣS gives each sample its own ∇S); outside the window there is no
autograd at all; deviation guidance is closed form (guidance.deviation_grad).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .guidance import (
    blur,
    deviation_grad,
    guided_eps,
    in_window,
    learnability_score,
    renoise,
    select_best,
    shifted_views,
)
from .progress import progress_bar
from .work import WorkItem, derived_seed, item_seed

if TYPE_CHECKING:  # diffusers takes seconds to import; a Train worker needs none of it
    from .generator import Generator


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
    # The levers (config.DistillConfig says what each is for; all off = exact LGD as the paper states it)
    grad_space: str = "xt"  # xt: ∇_{x_t}S through the denoiser (exact) | x0: ∇_{x̂0}S with ε̂ held fixed
    views: int = 1  # S averaged over this many shifted views of the decoded image (1 = the image only)
    grad_blur: float = 0.0  # σ (latent pixels) of a Gaussian low-pass of ∇S; 0 = none
    gate: float = 0.0  # rank selection: a candidate θ* gives p(label) < gate cannot win; 0 = off
    prune_at: int = -1  # step index (0 = cleanest) where each slot keeps its prune_keep best candidates; -1 = off
    prune_keep: int = 1
    clip_x0: bool = False  # pixel models: step with the ε of x̂0 clipped to [-1, 1] (config.GeneratorConfig)
    unguided_candidates: int = 0  # candidates 0..n-1 of each slot follow the unguided trajectory
    time_travel: int = 0  # each guided step is redone this many times from its result re-noised back to t

    def pruning(self) -> bool:
        return self.prune_at >= 0 and self.prune_keep < self.k


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
                s: SampleSettings, student, reference, backward: bool = True, seeds: list[int] | None = None,
                step: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(ε̂, σ or None, x̂0, ∇S) of one guided step: the only place with autograd.

    Exact (`grad_space` xt): ∇_{x_t}S, the backward runs through the students, the resize, the VAE
    decoder and the denoiser (both CFG halves), in one pass for the whole batch. `x0`: ε̂ comes from
    a plain forward and ∇_{x̂0}S skips the denoiser's backward (the deviation term's rule: lowering ε
    along it still raises S, since ∂x̂0/∂ε = −√(1−ᾱ_t)/√ᾱ_t < 0 and ρ_t normalises the scale).
    With `views` > 1, S is the mean over shifted views (guidance.shifted_views: `seeds`, `step`).
    `backward=False` stops after the forward (activation_bytes.py counts what the forward saved).
    """
    gen.set_vae_checkpointing(s.vae_checkpointing)
    exact = s.grad_space == "xt"
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(exact)
        with autocast_context(x.device, s):
            with nullcontext() if exact else torch.no_grad():
                eps, sigma = gen.split(gen.model_output(x_in, t, gen_labels, s.cfg_scale))
            x0 = gen.x0(x_in, t, eps)
            wrt = x_in if exact else x0.detach().requires_grad_(True)
            img = to_student(gen.decode_for_guidance(x0 if exact else wrt), s.student_size)
            if s.views > 1:
                img = shifted_views(img, seeds if seeds is not None else list(range(len(img))), step, s.views,
                                    max(1, s.student_size // 8))
            score, _, _ = learnability_score(student(img), reference(img), labels.repeat(s.views), s.omega)
        grad_s = torch.autograd.grad(score.sum() / s.views, wrt)[0] if backward else None
    if grad_s is not None:
        grad_s = blur(grad_s, s.grad_blur)
    return eps.detach(), sigma.detach() if sigma is not None else None, x0.detach(), grad_s


def denoise(gen: Generator, seeds: list[int], labels: torch.Tensor, gen_labels: torch.Tensor, s: SampleSettings,
            student=None, reference=None, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Run the reverse process for one batch; returns final latents. Labels: student (guidance), generator (conditioning)."""
    return reverse_process(gen, seeds, labels, gen_labels, s, student, reference, memory)[0]


def reverse_process(gen: Generator, seeds: list[int], labels: torch.Tensor, gen_labels: torch.Tensor, s: SampleSettings,
                    student=None, reference=None, memory: dict[int, torch.Tensor] | None = None,
                    candidates: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, which rows of the batch they are). All rows, unless candidates are pruned: then
    the batch is whole slots of κ consecutive rows, and at step `prune_at` each slot keeps the
    `prune_keep` candidates of highest S on x̂0 (first on ties) and drops the others' remaining steps.
    `candidates`: each row's candidate index; rows below `s.unguided_candidates` take no guidance."""
    device = gen.device
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    # Noise is drawn on the CPU from each item's own generator: identical bytes on any device/batch.
    x = torch.stack([torch.randn(gen.latent_shape, generator=g) for g in gens]).to(device)
    x = x * gen.scheduler.init_noise_sigma
    labels, gen_labels = labels.to(device), gen_labels.to(device)
    rows = torch.arange(len(seeds))
    timesteps = gen.scheduler.timesteps
    use_s = s.lam > 0 and student is not None and reference is not None
    use_d = s.gamma > 0 and bool(memory)
    prune = s.pruning() and student is not None and reference is not None
    steer = None  # rows that take guidance; None = all
    if s.unguided_candidates > 0 and candidates is not None:
        steer = torch.tensor([c >= s.unguided_candidates for c in candidates], device=device)
    amp = autocast_context(device, s)
    # time travel draws its re-noising from a stream of each candidate's own, so the scheduler's
    # per-sample stream (DDPM's noise) is consumed as without it
    travel = [torch.Generator().manual_seed(derived_seed(seed, "time-travel")) for seed in seeds] if s.time_travel else []

    def step_eps(x: torch.Tensor, t, j: int, guided: bool, rows: torch.Tensor):
        """(ε̃, σ, x̂0) at x_t: ε̂, then guidance on the rows that take it."""
        if guided and use_s:
            live = [seeds[int(r)] for r in rows]
            eps, sigma, x0, grad_s = guided_step(gen, x, t, labels, gen_labels, s, student, reference, seeds=live, step=j)
        else:
            grad_s = None
            with torch.no_grad(), amp:
                eps, sigma = gen.split(gen.model_output(x, t, gen_labels, s.cfg_scale))
                x0 = gen.x0(x, t, eps) if guided or (prune and len(timesteps) - 1 - j == s.prune_at) else None
        if guided:
            grad_d = deviation_grad(x0, labels, memory) if use_d else None
            steered = guided_eps(eps, gen.alpha_bar(t).to(device), grad_s=grad_s, lam=s.lam, grad_d=grad_d, gamma=s.gamma)
            eps = steered if steer is None else torch.where(steering(rows), steered, eps)
        return eps, sigma, x0

    def steering(rows: torch.Tensor) -> torch.Tensor:
        return steer[rows.to(device)].view(-1, *[1] * len(gen.latent_shape))

    def advance(x: torch.Tensor, t, eps: torch.Tensor, sigma, generators: list[torch.Generator]) -> torch.Tensor:
        # σ (DiT's v) is never guided: under learned range it sets the step's variance, ε̃ its mean
        with torch.no_grad():
            if s.clip_x0:
                eps = gen.eps_of(x, t, gen.x0(x, t, eps).clamp(-1, 1))
            return gen.step(eps, sigma, t, x, generators)

    for j, t in enumerate(timesteps):
        index = len(timesteps) - 1 - j
        guided = in_window(index, s.window) and (use_s or use_d)
        eps, sigma, x0 = step_eps(x, t, j, guided, rows)
        x_prev = advance(x, t, eps, sigma, [gens[int(r)] for r in rows])
        # Time travel (Universal Guidance's self-recurrence): re-noise x_{t-1} back to t and take the
        # guided step again from there, so the denoiser can pull what guidance moved back toward its
        # data; unguided steps and unguided rows keep their first pass.
        for _ in range(s.time_travel if guided else 0):
            ab_t, ab_prev = gen.alpha_bar(t), gen.alpha_bar_after(j)
            noise = torch.stack([torch.randn(gen.latent_shape, generator=travel[int(r)]) for r in rows]).to(device)
            x_t = renoise(x_prev, ab_t, ab_prev, noise)
            eps, sigma, x0 = step_eps(x_t, t, j, guided, rows)
            again = advance(x_t, t, eps, sigma, [travel[int(r)] for r in rows])
            x_prev = again if steer is None else torch.where(steering(rows), again, x_prev)
        x = x_prev
        if prune and index == s.prune_at:
            keep = _prune(gen, x0, labels, s, student, reference)
            x, labels, gen_labels, rows = x[keep], labels[keep], gen_labels[keep], rows[keep.cpu()]
    return x.detach(), rows


@torch.no_grad()
def _prune(gen: Generator, x0: torch.Tensor, labels: torch.Tensor, s: SampleSettings, student, reference) -> torch.Tensor:
    """Rows to keep: per slot (κ consecutive rows) the prune_keep of highest S on the decoded x̂0."""
    img = to_student(gen.decode_for_guidance(x0), s.student_size)
    score, _, _ = learnability_score(student(img), reference(img), labels, s.omega)
    order = torch.sort(torch.nan_to_num(score, nan=0.0).view(-1, s.k), dim=1, descending=True, stable=True).indices
    top = order[:, :s.prune_keep].sort(dim=1).values  # stable: the first candidate wins a tie
    return (top + torch.arange(top.shape[0], device=top.device)[:, None] * s.k).flatten()


def sample_items(gen: Generator, items: list[WorkItem], s: SampleSettings, class_map: list[int], *, student=None,
                 reference=None, memory: dict[int, torch.Tensor] | None = None, progress: bool = False) -> list[Sample]:
    """Sample κ candidates for every item and keep the highest-S one per item (argmax; first on ties;
    under the validity gate only among those θ* finds typical enough, guidance.select_best)."""
    pairs = [(it, c) for it in items for c in range(s.k)]
    seeds = [item_seed(s.run_seed, it.stage, it.label, it.slot, c) for it, c in pairs]
    n = len(pairs)
    images = torch.zeros(0, dtype=torch.uint8)
    latents = torch.zeros(0)
    scores, ls_all, lr_all = (torch.full((n,), torch.nan) for _ in range(3))
    rank = torch.full((n,), -torch.inf)  # a pruned candidate has no final image, so it never wins
    # pruning compares a slot's candidates in one batch: the batch is then a whole number of slots
    bs = max(s.k, s.batch_size // s.k * s.k) if s.pruning() else s.batch_size
    batches = range(0, n, bs)
    if progress:

        batches = progress_bar(batches, desc="sampling", unit="batch")
    for b in batches:
        part = pairs[b:b + bs]
        labels = torch.tensor([it.label for it, _ in part])
        gen_labels = torch.tensor([class_map[it.label] for it, _ in part])
        z, rows = reverse_process(gen, seeds[b:b + bs], labels, gen_labels, s, student, reference, memory,
                                  candidates=[c for _, c in part])
        with torch.no_grad():
            img = quantize(gen.decode(z))
        sc, ls, lr = score_images(img, labels[rows].to(img.device), student, reference, s.omega, s.student_size)
        if images.numel() == 0:
            images = torch.zeros((n, *img.shape[1:]), dtype=torch.uint8)
            latents = torch.zeros((n, *z.shape[1:]))
        idx = rows + b
        images[idx], latents[idx] = img.cpu(), z.float().cpu()
        scores[idx], ls_all[idx], lr_all[idx] = sc.cpu(), ls.cpu(), lr.cpu()
        rank[idx] = torch.nan_to_num(sc.cpu(), nan=0.0)
    slots = (len(items), s.k)
    best = select_best(rank.view(slots), torch.exp(-lr_all).nan_to_num(nan=0.0).view(slots), s.gate)
    out = []
    for i, it in enumerate(items):
        j = i * s.k + int(best[i])
        out.append(Sample(it, int(best[i]), seeds[j], images[j].numpy(), latents[j].to(torch.float16).numpy(),
                          float(scores[j]), float(ls_all[j]), float(lr_all[j])))
    return out
