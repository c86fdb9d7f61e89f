"""Learnability guidance, deviation guidance and rank selection: the method's math, nothing else.

Sign convention (the one thing easy to get wrong): in the ε-parameterisation
x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, so LOWERING ε along ∇_{x_t}S raises S. We therefore use
    ε̃ = ε̂ − λ·ρ_t·∇S + γ·ρ'_t·∇D,   ρ_t = √(1−ᾱ_t)·‖ε̂‖ / ‖∇S‖  (per sample; ρ'_t likewise for D)
which moves samples toward higher learnability S and lower similarity D to the class memory.
The paper writes "+" in its own convention; tests prove the direction with the schedulers in use.
With this ρ_t the guidance term has norm λ·√(1−ᾱ_t)·‖ε̂‖: λ = 1 is a step as large as ε̂ itself.

Step indices: 0 = the cleanest (last) sampling step, num_steps−1 = the noisiest (first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def learnability_score(student_logits: torch.Tensor | None, reference_logits: torch.Tensor | None,
                       labels: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S, student CE, reference CE) per sample, S = CE(student) − ω·CE(reference): high where the
    student fails and θ* succeeds. A missing model (None) gives NaN for its loss and for S."""
    nan = torch.full(labels.shape, float("nan"), device=labels.device)
    ls = F.cross_entropy(student_logits.float(), labels, reduction="none") if student_logits is not None else nan
    lr = F.cross_entropy(reference_logits.float(), labels, reduction="none") if reference_logits is not None else nan
    return ls - omega * lr, ls, lr


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def rho(eps: torch.Tensor, grad: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ρ_t = √(1−ᾱ_t)·‖ε̂‖/‖∇‖ per sample (a zero gradient gives a zero step, not a NaN)."""
    g = _per_sample_norm(grad)
    return (1 - alpha_bar).sqrt() * _per_sample_norm(eps) / torch.where(g > 0, g, torch.ones_like(g)) * (g > 0)


def guided_eps(eps: torch.Tensor, alpha_bar: torch.Tensor, *, grad_s: torch.Tensor | None = None, lam: float = 0.0,
               grad_d: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """ε̃ = ε̂ − λ·ρ_t·∇S + γ·ρ'_t·∇D (see the module docstring for the sign)."""
    out = eps
    if grad_s is not None and lam > 0:
        out = out - lam * rho(eps, grad_s, alpha_bar) * grad_s
    if grad_d is not None and gamma > 0:
        out = out + gamma * rho(eps, grad_d, alpha_bar) * grad_d
    return out


def renoise(x_prev: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
            noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_{t-1}) = N(√(ᾱ_t/ᾱ_{t-1}) x_{t-1}, (1 − ᾱ_t/ᾱ_{t-1}) I): one step back up the
    forward process, so a sample at t−1 with ᾱ_{t-1}'s marginal has ᾱ_t's again (time travel)."""
    ratio = (alpha_bar_t / alpha_bar_prev).to(x_prev.device)
    return ratio.sqrt() * x_prev + (1 - ratio).clamp_min(0).sqrt() * noise


def in_window(step_index: int, window: tuple[int, int] | list[int]) -> bool:
    """Is this step (0 = cleanest) inside the inclusive guidance window [lo, hi]?"""
    return window[0] <= step_index <= window[1]


def max_cosine(x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    """Per sample: max cosine similarity of the flattened x to the rows of memory (M×D); 0 if empty."""
    if memory is None or memory.numel() == 0:
        return torch.zeros(x.shape[0], device=x.device)
    sims = F.normalize(x.flatten(1).float(), dim=1) @ F.normalize(memory.float().to(x.device), dim=1).T
    return sims.max(dim=1).values


def deviation_grad(x0: torch.Tensor, labels: torch.Tensor, memory: dict[int, torch.Tensor]) -> torch.Tensor:
    """∇_{x̂0} D, D = cosine similarity to the most similar entry of the sample's class memory.

    Closed form, no autograd: ∂cos(a, m)/∂a = m/(‖a‖‖m‖) − cos·a/‖a‖². The deviation step is taken
    w.r.t. x̂0 with ε̂ held fixed (∂x̂0/∂x_t = 1/√ᾱ_t, a positive scale that ρ'_t normalises away),
    so it costs no backward pass; the class memory is that of the previous stages (see sampler.py).
    """
    a = x0.flatten(1).float()
    grad = torch.zeros_like(a)
    for label in labels.unique().tolist():
        mem = memory.get(int(label))
        if mem is None or mem.numel() == 0:
            continue
        idx = (labels == label).nonzero().flatten()
        rows = a[idx]
        m = mem.float().to(a.device)
        sims = F.normalize(rows, dim=1) @ F.normalize(m, dim=1).T
        best = sims.argmax(dim=1)
        mb, cos = m[best], sims.gather(1, best[:, None])
        an = rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        grad[idx] = mb / (an * mb.norm(dim=1, keepdim=True).clamp_min(1e-12)) - cos * rows / an**2
    return grad.view_as(x0)


def select_best(scores: torch.Tensor, reference_prob: torch.Tensor | None = None, gate: float = 0.0) -> torch.Tensor:
    """Rank selection: scores is slots×κ; the index of the highest S per slot (first on ties).

    The validity gate (`gate` > 0): a candidate to which θ* gives its label a probability below
    `gate` cannot win, however learnable; when no candidate of a slot passes, the one θ* finds most
    typical of its class wins (the slot is still filled, with the least doubtful image).
    """
    if gate <= 0 or reference_prob is None:
        return scores.argmax(dim=1)
    valid = reference_prob >= gate
    gated = torch.where(valid, scores, torch.full_like(scores, -torch.inf)).argmax(dim=1)
    return torch.where(valid.any(dim=1), gated, reference_prob.argmax(dim=1))


def blur(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian low-pass of a gradient over its last two (spatial) axes, σ in pixels (0 = none).

    ∇S of a small ConvNet is dominated by pixel-scale patterns (adversarial texture); blurring keeps
    the part of the direction that changes content. Reflect padding, so the border is not darkened.
    """
    if sigma <= 0:
        return grad
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=grad.device)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = (k / k.sum()).to(grad.dtype)
    n, c, h, w = grad.shape
    g = grad.reshape(n * c, 1, h, w)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    g = F.pad(g, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w > 0 else g
    g = F.conv2d(g, k[radius - pad_w:radius + pad_w + 1].view(1, 1, 1, -1))
    g = F.pad(g, (0, 0, pad_h, pad_h), mode="reflect") if pad_h > 0 else g
    g = F.conv2d(g, k[radius - pad_h:radius + pad_h + 1].view(1, 1, -1, 1))
    return g.reshape(n, c, h, w)


def shifted_views(images: torch.Tensor, seeds: list[int], step: int, views: int, max_shift: int) -> torch.Tensor:
    """`views` copies of each image, each translated by a random whole-pixel shift in
    [−max_shift, max_shift]² (border pixels repeated), stacked view-major: (views·n, C, H, W).

    For an expectation of S over augmentations (EOT): the gradient of the mean over shifted views
    points at what the student sees wherever the digit sits, not at one pixel pattern. Seed rule:
    sample i's shifts at step j come from its own generator seeded by (seed_i, j), so they do not
    depend on the batch it is in. Differentiable (a gather of the image's own pixels).
    """
    n, _, h, w = images.shape
    shifts = torch.stack([torch.randint(-max_shift, max_shift + 1, (views, 2),
                                        generator=torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63))
                          for seed in seeds], dim=1).to(images.device)  # views × n × (dy, dx)
    rows = (torch.arange(h, device=images.device)[None, None, :] - shifts[..., 0:1]).clamp(0, h - 1)
    cols = (torch.arange(w, device=images.device)[None, None, :] - shifts[..., 1:2]).clamp(0, w - 1)
    out = []
    for v in range(views):
        x = images.gather(2, rows[v][:, None, :, None].expand(n, images.shape[1], h, w))
        out.append(x.gather(3, cols[v][:, None, None, :].expand(n, images.shape[1], h, w)))
    return torch.cat(out)


class ClassMemory:
    """Per-class memory of the most recent selected latents (flattened), for deviation guidance."""

    def __init__(self, size: int = 64):
        self.size = size
        self.rows: dict[int, torch.Tensor] = {}

    def add(self, label: int, latents: torch.Tensor) -> None:
        rows = torch.cat([self.rows.get(label, latents.new_zeros(0, latents[0].numel())), latents.flatten(1)])
        self.rows[label] = rows[-self.size:]

    def as_dict(self) -> dict[int, torch.Tensor]:
        return dict(self.rows)
