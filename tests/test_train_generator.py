"""The from-scratch generator's recipe: the saved weights are the EMA of the iterates (with DiT's and
diffusers' warm-up of the decay), and natural-image folders are flipped left-right while digits never are."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import lgd_ray.core.train_generator as tg
from helpers import quadrant_set, write_class_folder
from lgd_ray.cli import main
from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError
from lgd_ray.core.generator import load_generator
from lgd_ray.engine.run import with_named_sampler


def test_update_ema_moves_floats_by_one_minus_decay_and_copies_counters():
    ema, model = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    model.num_batches_tracked.fill_(7)
    tg.update_ema(ema, model, decay=0.9)
    assert torch.allclose(ema.weight, torch.full((3,), 0.1))
    assert int(ema.num_batches_tracked) == 7  # an integer buffer is copied, not averaged
    tg.update_ema(ema, model, decay=0.9)
    assert torch.allclose(ema.weight, torch.full((3,), 0.19))


def test_the_saved_generator_is_the_warmed_up_ema_of_the_iterates(monkeypatch, tmp_path):
    data = quadrant_set(4, seed=0)
    seen = []  # (ema before the update, model after the optimizer step, decay) at every step
    real = tg.update_ema

    def recording(ema, model, decay):
        seen.append(({k: v.clone() for k, v in ema.state_dict().items()},
                     {k: v.clone() for k, v in model.state_dict().items()}, decay))
        real(ema, model, decay)

    monkeypatch.setattr(tg, "update_ema", recording)
    s = tg.GeneratorTrainSettings(arch="unet-micro", steps=4, batch_size=8, ema=0.2)
    gen = tg.train_generator(data, s, progress=False, last_iterate_path=str(tmp_path / "last"))
    assert [d for *_, d in seen] == [1 / 10, 2 / 11, 0.2, 0.2]  # min(ema, (1+n)/(10+n))
    expected = seen[0][0]  # the initial weights
    for _, model, decay in seen:
        expected = {k: decay * expected[k] + (1 - decay) * model[k] if v.is_floating_point() else model[k]
                    for k, v in expected.items()}
    saved = gen.denoiser.state_dict()
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in expected)
    last = seen[-1][1]
    assert any(not torch.allclose(saved[k], last[k]) for k in saved)  # not the last iterate
    kept = load_generator(str(tmp_path / "last")).denoiser.state_dict()  # ... which is kept beside it on request
    assert all(torch.equal(kept[k], last[k]) for k in last)
    assert gen.info.extra["train"]["ema"] == 0.2


def test_ema_zero_saves_the_last_iterate(monkeypatch):
    data = quadrant_set(4, seed=0)
    gen = tg.train_generator(data, tg.GeneratorTrainSettings(arch="unet-micro", steps=3, batch_size=8, ema=0.0),
                             progress=False)
    assert gen.info.extra["train"]["ema"] == 0.0 and gen.info.extra["train"]["steps_done"] == 3


def test_a_trained_generator_names_ddpm_and_auto_samples_with_what_the_folder_names(tmp_path):
    """generator.scheduler: auto is the sampler the generator's folder names: DDPM for one this project
    trains (DDIM leaves a quarter of a small photo model's samples as coloured noise), DDIM for a folder
    that names none (the shipped digits model, hub models); the run's config and hash hold the sampler
    itself, so auto and the same sampler named outright are one run; a sampler named outright wins."""
    folder = str(tmp_path / "gen")
    tg.train_generator(quadrant_set(4, seed=0), tg.GeneratorTrainSettings(arch="unet-micro", steps=3, batch_size=8),
                       progress=False).save_pretrained(folder)
    assert json.loads((tmp_path / "gen" / "lgd_ray.json").read_text())["sampler"] == "ddpm"
    trained = load_generator(folder)
    trained.set_scheduler("auto", 5)
    assert isinstance(trained.scheduler, DDPMScheduler) and len(trained.scheduler.timesteps) == 5
    digits = load_generator("builtin:digits")
    digits.set_scheduler("auto", 5)
    assert isinstance(digits.scheduler, DDIMScheduler)

    auto = with_named_sampler(load_config(None, [f"generator.path={folder}"]))
    assert auto.generator.scheduler == "ddpm"
    assert auto.hash() == load_config(None, [f"generator.path={folder}", "generator.scheduler=ddpm"]).hash()
    assert with_named_sampler(load_config(None, [])).generator.scheduler == "ddim"
    assert with_named_sampler(load_config(None, [f"generator.path={folder}", "generator.scheduler=ddim"])
                              ).generator.scheduler == "ddim"
    with pytest.raises(UserError, match="generator.scheduler.*choose ddim, ddpm or auto"):
        load_config(None, ["generator.scheduler=euler"])


def test_folders_are_flipped_and_digits_are_not(ray_session, tmp_path):
    root = write_class_folder(tmp_path / "data", ("n01440764", "n02102040"), (6, 2))
    for name, data in (("digits", ["data.name=digits"]), ("folder", ["data.name=imagefolder", f"data.root={root}"])):
        out = tmp_path / name
        assert main(["train-generator", *data, "--arch", "unet-micro", "--steps", "3", "--batch-size", "4",
                     "--out", str(out)]) == 0
        train = json.loads((out / "lgd_ray.json").read_text())["train"]
        assert train["flip"] is (name == "folder") and train["ema"] == 0.999
    assert main(["train-generator", "data.name=digits", "--arch", "unet-micro", "--steps", "3", "--flip",
                 "--ema", "0", "--out", str(tmp_path / "flipped")]) == 0
    train = json.loads((tmp_path / "flipped" / "lgd_ray.json").read_text())["train"]
    assert train["flip"] is True and train["ema"] == 0.0
