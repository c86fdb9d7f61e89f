"""`facebook/DiT-XL-2-256` compatibility without the 2.7 GB download: a tiny DiT written in the hub's
pipeline layout (hub-style configs, model_index.json, no lgd_ray.json) must load through
`load_generator` with the ImageNet conventions of METHOD.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lgd_ray.core.data import IMAGENETTE, generator_class_index
from lgd_ray.core.generator import (
    META_FILE,
    create_generator,
    load_generator,
    read_generator_info,
)

IMAGENETTE_INDEX = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # positions among the sorted 1000 wnids


def _hub_transformer_config(cfg: dict) -> dict:
    """Rewrite our DiTTransformer2DModel config the way the hub's (diffusers 0.12) one reads."""
    cfg = {k: v for k, v in cfg.items() if k != "norm_eps"}
    cfg.update({"_class_name": "Transformer2DModel", "_diffusers_version": "0.12.0.dev0",
                "cross_attention_dim": None, "num_vector_embeds": None, "only_cross_attention": False,
                "use_linear_projection": False})
    return cfg


HUB_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.12.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 0, "trained_betas": None,
}


@pytest.fixture(scope="module")
def hub_layout(tmp_path_factory) -> tuple[str, object]:
    """(directory, the in-memory generator it was written from)."""
    from timm.data import ImageNetInfo

    original = create_generator("dit-micro-vae", 1000, 16, 3, seed=0)
    assert original.vae.config.scaling_factor == pytest.approx(0.18215)
    root = tmp_path_factory.mktemp("hub") / "DiT-XL-2-256"
    original.save_pretrained(root)
    os.remove(root / META_FILE)  # the hub has none: classes must come from the ImageNet convention
    tf = root / "transformer" / "config.json"
    tf.write_text(json.dumps(_hub_transformer_config(json.loads(tf.read_text())), indent=2))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(HUB_SCHEDULER, indent=2))
    info = ImageNetInfo()
    model_index = {
        "_class_name": "DiTPipeline", "_diffusers_version": "0.12.0.dev0",
        "id2label": {str(i): info.index_to_description(i) for i in range(1000)},
        "scheduler": ["diffusers", "KarrasDiffusionSchedulers"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
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


def test_cfg_combines_eps(hub_layout):
    gen = load_generator(hub_layout[0])
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
