"""`facebook/DiT-XL-2-256` compatibility without the 2.7 GB download: a tiny DiT written in the hub's
pipeline layout (hub-style configs, model_index.json, no lgd_ray.json) must load through
`load_generator` with the ImageNet conventions of METHOD.md, and sample as DiT does (DDPM with the
learned-range variance, CFG on ε channels :3), checked against the closed form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lgd_ray.core.config import load_config
from lgd_ray.core.data import IMAGENETTE, generator_class_index
from lgd_ray.core.errors import UserError
from lgd_ray.core.generator import (
    META_FILE,
    create_generator,
    load_generator,
    read_generator_info,
)
from lgd_ray.core.sampler import SampleSettings, denoise, guided_step
from lgd_ray.core.students import build_student

from helpers import write_hub_dit

IMAGENETTE_INDEX = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # positions among the sorted 1000 wnids


@pytest.fixture(scope="module")
def hub_layout(tmp_path_factory) -> tuple[str, object]:
    """(directory, the in-memory generator it was written from)."""
    root = tmp_path_factory.mktemp("hub") / "DiT-XL-2-256"
    original = write_hub_dit(root)
    assert original.vae.config.scaling_factor == pytest.approx(0.18215)
    return str(root), original


def test_layout_has_no_project_metadata(hub_layout):
    root = Path(hub_layout[0])
    assert not (root / META_FILE).exists()
    assert {p.name for p in root.iterdir()} == {"transformer", "vae", "scheduler", "model_index.json"}


def test_imagenet_classes_from_the_convention(hub_layout):
    path, _ = hub_layout
    for info in (read_generator_info(path), load_generator(path).info):
        assert info.num_classes == 1000
        assert info.class_ids[0] == "n01440764"
        assert info.class_ids == sorted(info.class_ids) and len(set(info.class_ids)) == 1000
    ids = read_generator_info(path).class_ids
    assert generator_class_index(IMAGENETTE, ids) == IMAGENETTE_INDEX


def test_latent_conventions(hub_layout):
    gen = load_generator(hub_layout[0])
    assert type(gen.denoiser).__name__ == "DiTTransformer2DModel"
    assert gen.latent_scale == pytest.approx(0.18215)
    assert gen.null_class == 1000
    assert gen.learned_sigma and gen.latent_shape == (4, 8, 8)
    assert gen.image_channels == 3 and gen.image_size == 16


def test_weights_load_not_reinitialised(hub_layout):
    path, original = hub_layout
    gen = load_generator(path)
    x, y = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 217, 999])
    with torch.no_grad():
        out, ref = gen.model_output(x, 500, y), original.model_output(x, 500, y)
    assert out.std() > 0
    torch.testing.assert_close(out, ref)


def test_learned_sigma_dropped_for_guidance(hub_layout):
    gen = load_generator(hub_layout[0])
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([0, 217])
    with torch.no_grad():
        out = gen.model_output(x, 400, y, cfg_scale=4.0)
    assert out.shape == (2, 8, 8, 8)
    eps, sigma = gen.split(out)
    assert eps.shape == (2, 4, 8, 8) and sigma is not None and sigma.shape == (2, 4, 8, 8)


def test_cfg_combines_eps_diffusers_convention(hub_layout):
    gen = load_generator(hub_layout[0], convention="diffusers")  # CFG on every ε channel
    x, y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 217])
    s = 4.0
    with torch.no_grad():
        cond = gen.model_output(x, 300, y)
        uncond = gen.model_output(x, 300, torch.full_like(y, gen.null_class))
        guided = gen.model_output(x, 300, y, cfg_scale=s)
    eps_c, eps_u = gen.split(cond)[0], gen.split(uncond)[0]
    assert (eps_c - eps_u).abs().max() > 1e-6  # the null class must condition differently
    torch.testing.assert_close(gen.split(guided)[0], eps_u + s * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gen.split(guided)[1], gen.split(cond)[1], rtol=1e-4, atol=1e-5)  # σ: conditional


def test_decodes_to_unit_images(hub_layout):
    gen = load_generator(hub_layout[0])
    z = torch.randn(2, 4, 8, 8) * gen.latent_scale
    with torch.no_grad():
        images = gen.decode(z)
    assert images.shape == (2, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


def test_hub_scheduler_runs_ddpm(hub_layout):
    gen = load_generator(hub_layout[0])
    gen.set_scheduler("ddpm", 50)
    assert len(gen.scheduler.timesteps) == 50 and gen.scheduler.config.clip_sample is False
    x, y = torch.randn(1, 4, 8, 8), torch.tensor([0])
    t = gen.scheduler.timesteps[0]
    with torch.no_grad():
        eps, sigma = gen.split(gen.model_output(x, t, y, cfg_scale=4.0))
        x_prev = gen.step(eps, sigma, t, x, [torch.Generator().manual_seed(0)])
    assert x_prev.shape == x.shape and torch.isfinite(x_prev).all()


# --- sampling as DiT does: learned-range DDPM variance, CFG on ε channels :3 -------------------------
CFG = 4.0


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.tensor([0, 217])


def test_dit_checkpoint_defaults_to_dit_sampling(hub_layout):
    gen = load_generator(hub_layout[0])
    assert (gen.convention, gen.cfg_channels) == ("dit", 3)
    gen.set_scheduler("ddpm", 50)
    assert gen.scheduler.config.variance_type == "learned_range"  # the hub's config has no variance_type
    gen.set_scheduler("ddim", 50)  # DDIM adds no noise and never reads σ, though its config keeps the key
    x, y = _inputs()
    with torch.no_grad():
        eps, sigma = gen.split(gen.model_output(x, gen.scheduler.timesteps[0], y, cfg_scale=CFG))
        assert gen.step(eps, sigma, gen.scheduler.timesteps[0], x).shape == x.shape
    gen.set_scheduler("ddpm", 50)  # back to DDPM: the convention still holds
    assert gen.scheduler.config.variance_type == "learned_range" and gen.scheduler.config.clip_sample is False
    plain = load_generator(hub_layout[0], convention="diffusers")
    plain.set_scheduler("ddpm", 50)
    assert (plain.cfg_channels, plain.scheduler.config.variance_type) == (4, "fixed_small")


def test_other_models_keep_the_scheduler_convention(hub_layout):
    unet = create_generator("unet-micro", 10, 8, 1)
    assert (unet.convention, unet.cfg_channels) == ("diffusers", 1)
    unet.set_scheduler("ddpm", 10)
    assert unet.scheduler.config.variance_type == "fixed_small"
    with pytest.raises(UserError, match="learned variance"):  # no σ channels to take a variance from
        create_generator("unet-micro", 10, 8, 1, convention="dit")
    with pytest.raises(UserError):
        load_generator(hub_layout[0], convention="ddpm")
    trained_here = create_generator("dit-micro-vae", 10, 16, 3)
    trained_here.info.extra["train"] = {"steps": 1}  # train_generator.py fits the ε half only
    trained_here.set_convention("auto")
    assert trained_here.convention == "diffusers"


def test_cfg_touches_only_the_first_three_channels(hub_layout):
    gen = load_generator(hub_layout[0])
    x, y = _inputs()
    with torch.no_grad():
        cond = gen.model_output(x, 300, y)
        uncond = gen.model_output(x, 300, torch.full_like(y, gen.null_class))
        guided = gen.model_output(x, 300, y, cfg_scale=CFG)
    combined = uncond + CFG * (cond - uncond)
    torch.testing.assert_close(guided[:, :3], combined[:, :3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, 3:], cond[:, 3:], rtol=1e-4, atol=1e-5)  # ε channel 3 and all of v
    assert (combined[:, 3] - cond[:, 3]).abs().max() > 1e-2  # so guiding channel 3 would have shown


def test_ddpm_step_is_the_learned_range_posterior(hub_layout):
    """One DDPM step = N(μ̃(x_t, x̂0(ε)), exp(frac·log β_t + (1−frac)·log β̃_t)), frac = (v+1)/2, in closed
    form from the scheduler's ᾱ: the mean and the standard deviation are recovered from two noise draws."""
    gen = load_generator(hub_layout[0])
    gen.set_scheduler("ddpm", 50)
    j = 46  # a clean step (t = 60 -> 40), where β_t and β̃_t differ: 1 − ᾱ_t is small there
    t, t_prev = gen.scheduler.timesteps[j], gen.scheduler.timesteps[j + 1]
    x, y = _inputs()
    with torch.no_grad():
        cond = gen.model_output(x, t, y).double()
        uncond = gen.model_output(x, t, torch.full_like(y, gen.null_class)).double()
        eps_p, v_p = gen.split(gen.model_output(x, t, y, cfg_scale=CFG))
        seeds = ([11, 12], [13, 14])
        x_a, x_b = (gen.step(eps_p, v_p, t, x, [torch.Generator().manual_seed(s) for s in ss]) for ss in seeds)
    # DiT's forward_with_cfg: ε[:, :3] combined, ε[:, 3] and v from the conditional pass
    eps = cond[:, :4].clone()
    eps[:, :3] = uncond[:, :3] + CFG * (cond[:, :3] - uncond[:, :3])
    v = cond[:, 4:]
    ab = gen.scheduler.alphas_cumprod.double()
    ab_t, ab_prev = ab[int(t)], ab[int(t_prev)]
    beta = 1 - ab_t / ab_prev  # the respaced process's β_t (50 of 1000 steps)
    beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)  # posterior variance of q(x_{t-1} | x_t, x_0)
    x0 = (x.double() - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * x.double()
    frac = (v + 1) / 2
    std = (0.5 * (frac * beta.log() + (1 - frac) * beta_tilde.log())).exp()
    # the step's noise, drawn as diffusers draws it for a list of generators: one (1, C, H, W) per sample
    z_a, z_b = (torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in ss]).double()
                for ss in seeds)
    keep = (z_a - z_b).abs() > 0.5  # solve x = μ + σ·z from the two draws where that is well conditioned
    std_hat = (x_a.double() - x_b.double()) / (z_a - z_b)
    mean_hat = x_a.double() - std_hat * z_a
    torch.testing.assert_close(std_hat[keep], std[keep], rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(mean_hat[keep], mean[keep], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(x_a.double(), mean + std * z_a, rtol=1e-4, atol=1e-5)
    assert (std / beta_tilde.sqrt() - 1).abs().mean() > 0.05  # fixed_small would be a different step


def _guidance_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return tuple(build_student("convnet2-w8", 10, 16, 3, seed=i).eval().requires_grad_(False) for i in (1, 2))


def test_guidance_and_determinism_under_dit_sampling(hub_layout):
    gen = load_generator(hub_layout[0])
    gen.set_scheduler("ddpm", 6)
    student, reference = _guidance_models()
    labels = torch.tensor([0, 3, 7])
    gen_labels = torch.tensor([IMAGENETTE_INDEX[i] for i in labels.tolist()])
    seeds = [5, 6, 7]
    s = SampleSettings(num_steps=6, cfg_scale=CFG, lam=0.5, k=1, window=(0, 5), student_size=16)
    x = torch.randn(3, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    eps, sigma, _, grad = guided_step(gen, x, gen.scheduler.timesteps[2], labels, gen_labels, s, student, reference)
    assert sigma is not None and sigma.shape == eps.shape and grad.abs().sum() > 0  # ∇S reaches x_t
    runs = [denoise(gen, seeds, labels, gen_labels, s, student, reference) for _ in range(2)]
    unguided = denoise(gen, seeds, labels, gen_labels, SampleSettings(num_steps=6, cfg_scale=CFG), student, reference)
    assert torch.isfinite(runs[0]).all()
    assert runs[0].numpy().tobytes() == runs[1].numpy().tobytes()  # same seeds -> same bytes
    assert (runs[0] - unguided).abs().max() > 1e-3  # guidance acts under learned-range DDPM


def test_convention_config_key():
    assert load_config(None, ["generator.convention=auto"]).hash() == load_config(None).hash()
    assert load_config(None, ["generator.convention=dit"]).hash() != load_config(None).hash()
    with pytest.raises(UserError, match="convention"):
        load_config(None, ["generator.convention=learned"])
