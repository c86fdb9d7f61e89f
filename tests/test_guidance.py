"""The method's math: direction of guidance, ρ_t, selection, deviation, the window."""

from __future__ import annotations

import math

import pytest
import torch

from lgd_ray.core.generator import create_generator, load_generator
from lgd_ray.core.guidance import (
    ClassMemory,
    deviation_grad,
    guided_eps,
    in_window,
    learnability_score,
    max_cosine,
    rho,
    select_best,
)
from lgd_ray.core.sampler import (
    SampleSettings,
    denoise,
    quantize,
    sample_items,
    score_images,
)
from lgd_ray.core.work import stage_items

from helpers import tiny_classifier


@pytest.fixture(scope="module")
def models():
    return tiny_classifier(1), tiny_classifier(2)


@pytest.fixture(scope="module")
def digits_generator():
    """The shipped digits model: guidance acts on x̂0, which only a trained model keeps in range."""
    return load_generator("builtin:digits")


def _gen(scheduler: str, steps: int = 8, base=None):
    g = base if base is not None else create_generator("unet-micro", 10, 8, 1, seed=0)
    g.set_scheduler(scheduler, steps)
    return g


@pytest.mark.parametrize("scheduler, clip_x0", [("ddim", False), ("ddpm", False), ("ddim", True), ("ddpm", True)])
def test_guidance_raises_learnability_with_same_seeds(scheduler, clip_x0, models, digits_generator):
    student, reference = models
    gen = _gen(scheduler, base=digits_generator)
    items = stage_items(1, 10, 3)
    base = SampleSettings(num_steps=8, k=1, window=(0, 7), lam=0.0, clip_x0=clip_x0)
    guided = SampleSettings(num_steps=8, k=1, window=(0, 7), lam=0.2, clip_x0=clip_x0)
    s0 = torch.tensor([s.score for s in sample_items(gen, items, base, list(range(10)), student=student, reference=reference)])
    s1 = torch.tensor([s.score for s in sample_items(gen, items, guided, list(range(10)), student=student, reference=reference)])
    assert s1.mean() > s0.mean() + 0.05
    assert (s1 > s0).float().mean() >= 0.9  # per seed, not only on average
    assert not gen.scheduler.config.clip_sample  # clipping x̂0 would flip the net direction


def test_clip_x0_steps_with_the_eps_of_the_clipped_x0():
    """generator.clip_x0: each step's x̂0 is clipped to [-1, 1] and ε recomputed from it, so the DDIM step
    lands on √ᾱ_prev·clip(x̂0) + √(1−ᾱ_prev)·ε' and the last step on clip(x̂0) itself. An untrained
    model's x̂0 runs far off the range, so without the clip its samples end outside it."""
    gen = _gen("ddim", steps=6)
    x = torch.randn(4, *gen.latent_shape) * 3
    t = gen.scheduler.timesteps[2]
    eps = torch.randn_like(x) * 4
    clipped = gen.x0(x, t, eps).clamp(-1, 1)
    assert gen.x0(x, t, eps).abs().max() > 1.5
    eps_c = gen.eps_of(x, t, clipped)
    torch.testing.assert_close(gen.x0(x, t, eps_c), clipped, atol=1e-5, rtol=0)
    prev = gen.scheduler.timesteps[3]
    ab_prev = gen.alpha_bar(prev)
    torch.testing.assert_close(gen.step(eps_c, None, t, x), ab_prev.sqrt() * clipped + (1 - ab_prev).sqrt() * eps_c,
                               atol=1e-4, rtol=1e-4)
    labels = torch.arange(4) % 10
    seeds = [11, 12, 13, 14]
    free = denoise(gen, seeds, labels, labels, SampleSettings(num_steps=6, k=1))
    held = denoise(gen, seeds, labels, labels, SampleSettings(num_steps=6, k=1, clip_x0=True))
    assert free.abs().max() > 1.5 and held.abs().max() <= 1 + 1e-4


def test_rho_scales_step_as_specified():
    torch.manual_seed(0)
    eps, grad = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8) * torch.tensor([1e-3, 1.0, 10.0, 100.0]).view(4, 1, 1, 1)
    ab = torch.tensor(0.3)
    lam = 0.7
    step = eps - guided_eps(eps, ab, grad_s=grad, lam=lam)
    # ‖λ·ρ_t·∇S‖ = λ·√(1−ᾱ)·‖ε̂‖ whatever the gradient's own scale, and along ∇S
    want = lam * math.sqrt(1 - 0.3) * eps.flatten(1).norm(dim=1)
    torch.testing.assert_close(step.flatten(1).norm(dim=1), want)
    cos = torch.nn.functional.cosine_similarity(step.flatten(1), grad.flatten(1))
    torch.testing.assert_close(cos, torch.ones(4))
    assert torch.equal(rho(eps, torch.zeros_like(grad), ab), torch.zeros(4, 1, 1, 1))


def test_score_definition():
    logits_s, logits_r = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.arange(5)
    s, ls, lr = learnability_score(logits_s, logits_r, y, omega=0.5)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(s, ce(logits_s, y, reduction="none") - 0.5 * ce(logits_r, y, reduction="none"))


def test_selection_keeps_the_argmax(models):
    student, reference = models
    gen = _gen("ddim", 4)
    items = stage_items(2, 10, 1)
    k = 4
    s = SampleSettings(num_steps=4, k=k, window=(0, 3), lam=0.0)
    chosen = sample_items(gen, items, s, list(range(10)), student=student, reference=reference)
    # Score every candidate on its own (batch of one: selection must not depend on batching)
    one = SampleSettings(num_steps=4, k=1, window=(0, 3), lam=0.0)
    for sample in chosen[:4]:
        scores = []
        for c in range(k):
            from lgd_ray.core.work import item_seed

            seed = item_seed(0, 2, sample.item.label, sample.item.slot, c)
            z = denoise(gen, [seed], torch.tensor([sample.item.label]), torch.tensor([sample.item.label]), one)
            img = quantize(gen.decode(z))
            sc, _, _ = score_images(img, torch.tensor([sample.item.label]), student, reference, 0.5, 8)
            scores.append(float(sc))
        assert sample.candidate == max(range(k), key=lambda c: scores[c])
        assert sample.score == pytest.approx(max(scores), abs=1e-5)
    assert select_best(torch.tensor([[0.1, 0.5, 0.2], [3.0, -1.0, 3.0]])).tolist() == [1, 0]


def test_deviation_lowers_max_cosine_to_memory(digits_generator):
    gen = _gen("ddim", 8, base=digits_generator)
    items = stage_items(1, 10, 2)
    labels = torch.tensor([it.label for it in items])
    from lgd_ray.core.work import item_seed

    seeds = [item_seed(0, 1, it.label, it.slot, 0) for it in items]
    base = SampleSettings(num_steps=8, k=1, window=(0, 7))
    z0 = denoise(gen, seeds, labels, labels, base)
    # A memory holding exactly what the unguided sampler makes: the hardest case for diversity
    memory = ClassMemory(64)
    for label in range(10):
        memory.add(label, z0[labels == label])
    mem = memory.as_dict()
    pushed = SampleSettings(num_steps=8, k=1, window=(0, 7), gamma=0.3)
    z1 = denoise(gen, seeds, labels, labels, pushed, memory=mem)
    before = torch.stack([max_cosine(z0[i:i + 1], mem[int(labels[i])]) for i in range(len(items))])
    after = torch.stack([max_cosine(z1[i:i + 1], mem[int(labels[i])]) for i in range(len(items))])
    assert after.mean() < before.mean() - 0.02
    assert (after < before).all()


def test_deviation_grad_is_the_cosine_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    memory = {0: torch.randn(5, 16), 1: torch.randn(2, 16)}
    labels = torch.tensor([0, 1, 0])
    analytic = deviation_grad(x.detach(), labels, memory)
    total = sum(max_cosine(x[i:i + 1], memory[int(labels[i])]).sum() for i in range(3))
    (auto,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(analytic, auto, atol=1e-5, rtol=1e-4)


def test_window_convention_and_no_autograd_outside(models):
    student, reference = models
    assert in_window(0, (0, 3)) and in_window(3, (0, 3)) and not in_window(4, (0, 3))
    gen = _gen("ddim", 6)
    grad_calls = []
    hook = gen.denoiser.register_forward_hook(lambda m, i, o: grad_calls.append(torch.is_grad_enabled()))
    items = stage_items(1, 10, 1)[:2]
    # window [4, 5] = the two noisiest steps, which run first
    sample_items(gen, items, SampleSettings(num_steps=6, k=1, window=(4, 5), lam=0.3), list(range(10)),
                 student=student, reference=reference)
    hook.remove()
    assert grad_calls == [True, True, False, False, False, False]
