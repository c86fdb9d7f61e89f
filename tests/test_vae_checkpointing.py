"""VAE-decoder gradient checkpointing in the guided step: same numbers, fewer saved bytes."""

from __future__ import annotations

import weakref

import pytest
import torch

from lgd_ray.core.activation_bytes import (
    GUIDANCE,
    SavedBytes,
    cuda_autocast_policy,
    saved_bytes,
    step_memory,
)
from lgd_ray.core.config import Config
from lgd_ray.core.generator import create_generator
from lgd_ray.core.sampler import SampleSettings, denoise, guided_step
from lgd_ray.core.students import build_student


@pytest.fixture(scope="module")
def models():
    gen = create_generator("dit-micro-vae", 10, 16, 3, seed=0)  # DiT on 4×8×8 latents + a 2-block VAE
    gen.set_scheduler("ddim", 3)
    student, reference = (build_student("convnet2-w8", 10, 16, 3, seed=i).eval().requires_grad_(False) for i in (1, 2))
    return gen, student, reference


def settings(**kw) -> SampleSettings:
    return SampleSettings(num_steps=3, cfg_scale=2.0, lam=0.5, k=1, window=(0, 2), student_size=16, **kw)


def test_outputs_and_guidance_gradient_unchanged(models):
    gen, student, reference = models
    x = torch.randn(3, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 4, 7])
    t = gen.scheduler.timesteps[0]
    plain = guided_step(gen, x, t, y, y, settings(vae_checkpointing=False), student, reference)
    ckpt = guided_step(gen, x, t, y, y, settings(vae_checkpointing=True), student, reference)
    assert gen.vae.decoder.gradient_checkpointing and not gen.vae.training  # on, in eval mode
    for a, b in zip(plain, ckpt):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert plain[3].abs().sum() > 0  # the gradient went through the decoder
    runs = [denoise(gen, [1, 2, 3], y, y, settings(vae_checkpointing=on), student, reference) for on in (False, True)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_saved_bytes_drop(models):
    gen, student, reference = models
    s = settings()
    off, on = (step_memory(gen, student, reference, s, (1, 2), vae_checkpointing=v) for v in (False, True))
    dec_off, dec_on = off.by_component("per_image")["vae_decoder"], on.by_component("per_image")["vae_decoder"]
    assert dec_on < dec_off / 3  # only block inputs and the full-size output layers stay
    assert any(k.startswith("vae_decoder/up") for k in off.per_image)
    assert not any(k.startswith("vae_decoder/up") for k in on.per_image)  # nothing kept inside the blocks
    assert on.by_component("per_image")["denoiser"] == off.by_component("per_image")["denoiser"]


def test_counts_are_linear_in_the_batch(models):
    gen, student, reference = models
    s = settings()
    m = step_memory(gen, student, reference, s, (1, 2))
    c3 = saved_bytes(gen, student, reference, s, 3)
    assert sum(c3.values()) == pytest.approx(m.total("fixed") + 3 * m.total("per_image"), rel=0.01)


def test_counting_frees_the_graph():
    counter = SavedBytes([], [])
    x = torch.randn(64, 64, requires_grad=True)
    with counter.counting():
        y = x.exp()  # saves its own output
    alive = weakref.ref(y)
    del y
    assert alive() is None and counter.bytes[GUIDANCE] == 64 * 64 * 4


def test_bf16_count_follows_cuda_autocast():
    """CPU autocast keeps group_norm in bf16; the counting policy runs it in fp32, as CUDA autocast does."""
    norm, conv = torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(conv(torch.randn(1, 4, 5, 5))).dtype == torch.bfloat16
        with cuda_autocast_policy():
            assert norm(conv(torch.randn(1, 4, 5, 5))).dtype == torch.float32


def test_checkpointing_does_not_change_the_run_hash():
    cfg = Config()
    before = cfg.hash()
    cfg.generator.vae_checkpointing = not cfg.generator.vae_checkpointing
    assert cfg.hash() == before
