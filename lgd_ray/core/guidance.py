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


def select_best(scores: torch.Tensor) -> torch.Tensor:
    """Rank selection: scores is slots×κ; the index of the highest S per slot (first on ties)."""
    return scores.argmax(dim=1)


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
