"""The levers against adversarial guidance and the FLOP cuts: each one's math, and that "off" is exact LGD.

x̂0-space gradient (no denoiser backward), expectation over shifted views, a low-pass ∇S, the validity
gate in rank selection, candidate pruning partway through the trajectory, time travel.
"""

from __future__ import annotations

import pytest
import torch

from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError
from lgd_ray.core.generator import load_generator
from lgd_ray.core.guidance import blur, renoise, select_best, shifted_views
from lgd_ray.core.sampler import (
    SampleSettings,
    quantize,
    reverse_process,
    sample_items,
    score_images,
)
from lgd_ray.core.work import item_seed, stage_items
from lgd_ray.engine.run import with_named_sampler

from helpers import tiny_classifier


@pytest.fixture(scope="module")
def models():
    return tiny_classifier(1), tiny_classifier(2)


@pytest.fixture(scope="module")
def gen():
    g = load_generator("builtin:digits")  # a trained model keeps x̂0 in range, so S means something
    g.set_scheduler("ddim", 8)
    return g


def _scores(gen, models, **kw) -> torch.Tensor:
    student, reference = models
    s = SampleSettings(num_steps=8, k=1, window=(0, 7), **kw)
    return torch.tensor([x.score for x in sample_items(gen, stage_items(1, 10, 3), s, list(range(10)),
                                                       student=student, reference=reference)])


@pytest.mark.parametrize("lever", [{"grad_space": "x0"}, {"views": 4}, {"grad_blur": 0.7}, {"time_travel": 1}])
def test_each_lever_still_raises_learnability_with_the_same_seeds(gen, models, lever):
    unguided = _scores(gen, models, lam=0.0)
    guided = _scores(gen, models, lam=0.2, **lever)
    assert guided.mean() > unguided.mean() + 0.05
    assert (guided > unguided).float().mean() >= 0.8


def test_x0_space_skips_the_denoiser_backward(gen, models):
    """The saving issue 14 counts: no autograd through the denoiser in an x̂0-space guided step."""
    student, reference = models
    grad_enabled = []
    hook = gen.denoiser.register_forward_hook(lambda m, i, o: grad_enabled.append(o[0].requires_grad))
    for space in ("xt", "x0"):
        sample_items(gen, stage_items(1, 10, 1)[:2], SampleSettings(num_steps=8, k=1, window=(0, 7), lam=0.2,
                                                                    grad_space=space), list(range(10)),
                     student=student, reference=reference)
    hook.remove()
    assert grad_enabled[:8] == [True] * 8 and grad_enabled[8:] == [False] * 8


def test_blur_keeps_the_smooth_part_and_removes_pixel_patterns():
    assert torch.equal(blur(torch.ones(1, 1, 4, 4), 0.0), torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(blur(torch.full((2, 3, 8, 8), 2.5), 1.0), torch.full((2, 3, 8, 8), 2.5))
    i = torch.arange(8)
    checker = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float().view(1, 1, 8, 8)
    ramp = (i[None, :].float() / 7).expand(8, 8).reshape(1, 1, 8, 8)
    assert blur(checker, 1.0).norm() < 0.1 * checker.norm()  # the highest frequency is gone
    assert (blur(ramp, 1.0) - ramp)[..., 2:-2].abs().max() < 1e-5  # a linear ramp passes (inside the border)


def test_shifted_views_are_whole_pixel_shifts_seeded_per_sample():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    v = shifted_views(x, [11, 12, 13], step=4, views=5, max_shift=1)
    assert v.shape == (15, 1, 8, 8)
    for view in range(5):
        for i in range(3):
            got = v[view * 3 + i, 0]
            # some shift (dy, dx) in [-1, 1]² with the border repeated reproduces the view exactly
            hits = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                    if torch.equal(got, x[i, 0][(torch.arange(8) - dy).clamp(0, 7)][:, (torch.arange(8) - dx).clamp(0, 7)])]
            assert hits
    # sample 12's views do not depend on its batch; another step draws other shifts
    alone = shifted_views(x[1:2], [12], step=4, views=5, max_shift=1)
    torch.testing.assert_close(alone, v.view(5, 3, 1, 8, 8)[:, 1])
    other = [shifted_views(x[1:2], [12], step=s, views=5, max_shift=1) for s in range(5, 10)]
    assert any(not torch.equal(o, alone) for o in other)
    v.sum().backward()  # a gather: every pixel's gradient counts how often it was picked
    assert x.grad.sum() == pytest.approx(15 * 64)


def test_the_gate_lets_only_typical_candidates_win():
    scores = torch.tensor([[5.0, 1.0, 0.0], [2.0, 3.0, 1.0], [9.0, 8.0, 7.0]])
    prob = torch.tensor([[0.1, 0.9, 0.6], [0.8, 0.2, 0.95], [0.1, 0.3, 0.2]])
    assert select_best(scores, prob, gate=0.0).tolist() == [0, 1, 0]  # off: plain argmax of S
    # slot 0: the most learnable is atypical, the next one passes; slot 2: none passes, so the most typical
    assert select_best(scores, prob, gate=0.5).tolist() == [1, 0, 1]


def test_the_gate_in_sampling_keeps_fidelity(gen, models):
    student, reference = models
    items = stage_items(1, 10, 2)
    kept = {}
    for gate in (0.0, 0.3):
        s = SampleSettings(num_steps=8, k=4, window=(0, 7), lam=0.3, gate=gate)
        kept[gate] = sample_items(gen, items, s, list(range(10)), student=student, reference=reference)
    for a, b in zip(kept[0.0], kept[0.3]):
        pa, pb = torch.exp(torch.tensor(-a.reference_loss)), torch.exp(torch.tensor(-b.reference_loss))
        assert pb >= 0.3 or pb >= pa  # a winner under the gate is typical, or the most typical there was
    assert any(a.candidate != b.candidate for a, b in zip(kept[0.0], kept[0.3]))


def test_pruning_keeps_the_best_candidates_on_x0_and_finishes_them_unchanged(gen, models):
    student, reference = models
    items = stage_items(1, 10, 1)[:4]
    full = SampleSettings(num_steps=8, k=3, window=(0, 7), lam=0.2)
    pruned = SampleSettings(num_steps=8, k=3, window=(0, 7), lam=0.2, prune_at=4, prune_keep=1)
    seeds = [item_seed(0, it.stage, it.label, it.slot, c) for it in items for c in range(3)]
    labels = torch.tensor([it.label for it in items for _ in range(3)])
    z_full, rows_full = reverse_process(gen, seeds, labels, labels, full, student, reference)
    z_pruned, rows = reverse_process(gen, seeds, labels, labels, pruned, student, reference)
    assert rows_full.tolist() == list(range(12)) and len(rows) == 4
    assert [int(r) // 3 for r in rows] == [0, 1, 2, 3]  # one survivor per slot
    # the survivors' trajectories are those of the unpruned run (samples are independent)
    torch.testing.assert_close(z_pruned, z_full[rows], atol=1e-4, rtol=1e-4)
    # and they are the candidates with the highest S on x̂0 at the pruning step: rerun to that step
    early = SampleSettings(num_steps=8, k=3, window=(0, 7), lam=0.2, prune_at=4, prune_keep=2)
    _, rows2 = reverse_process(gen, seeds, labels, labels, early, student, reference)
    assert set(rows.tolist()) <= set(rows2.tolist())  # the best one is among the best two
    # the final choice comes from the survivors only
    chosen = sample_items(gen, items, pruned, list(range(10)), student=student, reference=reference)
    assert [c.candidate for c in chosen] == [int(r) % 3 for r in rows]


def test_unguided_candidates_follow_the_unguided_trajectory_and_compete_with_the_guided_ones(gen, models):
    """`unguided_candidates=1`: candidate 0 of every slot is the image λ = 0 makes from its seed, the
    others are the guided run's, bit for bit up to float noise; rank selection then chooses among all
    κ, and each stored row records the guidance its own image was made with."""
    from lgd_ray.engine.store import StageParams, samples_to_table

    student, reference = models
    items = stage_items(1, 10, 1)[:4]
    seeds = [item_seed(0, it.stage, it.label, it.slot, c) for it in items for c in range(3)]
    labels = torch.tensor([it.label for it in items for _ in range(3)])
    cands = [c for _ in items for c in range(3)]
    base = {"num_steps": 8, "k": 3, "window": (0, 7)}
    z = {name: reverse_process(gen, seeds, labels, labels, SampleSettings(**base, **kw), student, reference,
                               candidates=cands)[0]
         for name, kw in (("plain", {"lam": 0.0}), ("guided", {"lam": 0.3}),
                          ("mixed", {"lam": 0.3, "unguided_candidates": 1}))}
    first = torch.tensor(cands) == 0
    torch.testing.assert_close(z["mixed"][first], z["plain"][first], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(z["mixed"][~first], z["guided"][~first], atol=1e-4, rtol=1e-4)
    assert (z["guided"][~first] - z["plain"][~first]).abs().amax() > 0.05  # guidance moved the others
    # rank selection (gate off) keeps the highest S of all three final images, the unguided one included
    mixed = SampleSettings(**base, lam=0.3, unguided_candidates=1)
    kept = sample_items(gen, items, mixed, list(range(10)), student=student, reference=reference)
    with torch.no_grad():
        score = score_images(quantize(gen.decode(z["mixed"])), labels, student, reference, 0.5, 8)[0].view(4, 3)
    assert [k.candidate for k in kept] == score.argmax(dim=1).tolist()
    table = samples_to_table(kept, StageParams([str(i) for i in range(10)], list(range(10)), 3, 0.3, 0.5, 0.0, 1)).to_pylist()
    assert [r["lambda"] == 0.0 for r in table] == [r["candidate"] == 0 for r in table]


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_time_travel_goes_back_to_the_timestep_the_step_left(kind):
    """alpha_bar_after(j) is the ᾱ the scheduler's step j lands on (DDIM with the exact ε lands on
    √ᾱ' x0 + √(1−ᾱ') ε), and renoise takes a sample with that marginal back to ᾱ_t's: mean √ᾱ_t x0,
    variance 1 − ᾱ_t, whatever the step."""
    g = load_generator("builtin:digits")
    g.set_scheduler(kind, 8)
    x0 = torch.rand(1, *g.latent_shape) * 2 - 1
    for j, t in enumerate(g.scheduler.timesteps):
        ab_t, ab_prev = g.alpha_bar(t), g.alpha_bar_after(j)
        assert ab_prev > ab_t
        if kind == "ddpm":  # DDPM names the timestep it lands on
            prev = int(g.scheduler.previous_timestep(t))
            assert ab_prev == (g.alpha_bar(prev) if prev >= 0 else 1.0)
        if kind == "ddim":
            eps = torch.randn(1, *g.latent_shape)
            x_prev = g.step(eps, None, t, ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps)
            torch.testing.assert_close(x_prev, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps, atol=1e-4, rtol=1e-4)
        n = 20_000
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * torch.randn(n, *g.latent_shape)
        back = renoise(x_prev, ab_t, ab_prev, torch.randn(n, *g.latent_shape))
        torch.testing.assert_close(back.mean(0), ab_t.sqrt() * x0[0], atol=0.04, rtol=0)
        assert abs(float(back.var(0).mean()) - float(1 - ab_t)) < 0.02


def test_time_travel_redoes_only_guided_steps_of_guided_rows_and_keeps_the_seed_rule(gen, models):
    """Without guidance (λ = 0) time travel changes nothing; with it the guided rows move and the
    unguided candidates stay bit for bit the unguided trajectory; its noise is each candidate's own, so
    a batch of one gives the bytes of a batch of all."""
    student, reference = models
    items = stage_items(1, 10, 1)[:3]
    seeds = [item_seed(0, it.stage, it.label, it.slot, c) for it in items for c in range(2)]
    labels = torch.tensor([it.label for it in items for _ in range(2)])
    cands = [c for _ in items for c in range(2)]
    base = {"num_steps": 8, "k": 2, "window": (2, 6)}

    def run(rows=slice(None), **kw):
        return reverse_process(gen, seeds[rows], labels[rows], labels[rows], SampleSettings(**base, **kw), student,
                               reference, candidates=cands[rows])[0]

    assert torch.equal(run(lam=0.0, time_travel=2), run(lam=0.0))
    guided, travelled = run(lam=0.3), run(lam=0.3, time_travel=1)
    assert (travelled - guided).abs().amax() > 0.05
    mixed = run(lam=0.3, time_travel=1, unguided_candidates=1)
    first = torch.tensor(cands) == 0
    torch.testing.assert_close(mixed[first], run(lam=0.0)[first], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[~first], travelled[~first], atol=1e-4, rtol=1e-4)
    one = run(slice(3, 4), lam=0.3, time_travel=1)
    torch.testing.assert_close(one, travelled[3:4], atol=1e-4, rtol=1e-4)


def test_levers_off_keep_the_old_hash_and_are_refused_out_of_range():
    cfg = load_config(None)
    # every lever off: the hash the demo's config had before the levers, so outputs made then still resume
    # (the hash a run writes and resumes by: generator.scheduler's auto resolved, ddim for the digits model)
    assert with_named_sampler(load_config(None, ["distill.gate=0.0", "distill.views=1"])).hash() == "3f01a9cd1cd30abd"
    assert cfg.distill.gate == 0.5 and cfg.hash() != "3f01a9cd1cd30abd"  # the gate is on by default
    for bad, field in (("distill.grad_space=latent", "distill.grad_space"), ("distill.views=0", "distill.views"),
                       ("distill.gate=1.0", "distill.gate"), ("distill.grad_blur=-1", "distill.grad_blur"),
                       ("distill.prune_at=25", "distill.prune_at"), ("distill.prune_keep=3", "distill.prune_keep"),
                       ("distill.unguided_candidates=3", "distill.unguided_candidates"),
                       ("distill.time_travel=-1", "distill.time_travel")):
        overrides = [bad] if "keep" not in bad else ["distill.prune_at=10", bad]
        with pytest.raises(UserError) as e:
            load_config(None, overrides)
        assert e.value.field == field



def test_a_guidance_decoder_decodes_only_what_guidance_differentiates(tmp_path):
    """generator.guidance_decoder: the AutoencoderTiny (hub layout, tiny random weights) decodes x̂0 in the
    guided steps; every stored image is still decoded by the full VAE."""
    from lgd_ray.core.generator import (
        create_generator,
        load_guidance_decoder,
        tiny_guidance_decoder,
    )

    tiny_guidance_decoder().save_pretrained(tmp_path / "taesd")
    assert (tmp_path / "taesd" / "config.json").is_file()
    gen = create_generator("dit-micro-vae", 10, 16, 3)
    gen.set_scheduler("ddim", 4)
    gen.set_guidance_decoder(load_guidance_decoder(str(tmp_path / "taesd")))
    student, reference = (tiny_classifier(i, channels=3) for i in (1, 2))
    calls = {"tiny": [], "full": []}
    hooks = [gen.guidance_vae.decoder.register_forward_hook(lambda m, i, o: calls["tiny"].append(o.requires_grad)),
             gen.vae.decoder.register_forward_hook(lambda m, i, o: calls["full"].append(o.requires_grad))]
    s = SampleSettings(num_steps=4, k=2, window=(1, 2), lam=0.3, student_size=8)
    out = sample_items(gen, stage_items(1, 10, 1)[:2], s, list(range(10)), student=student, reference=reference)
    for h in hooks:
        h.remove()
    assert calls["tiny"] == [True, True]  # the two guided steps, with autograd
    assert calls["full"] == [False]  # one decode of the batch's final latents, no autograd
    with torch.no_grad():  # the stored latent is float16: its decode matches the stored image to a level or two
        full = gen.decode(torch.from_numpy(out[0].latent.astype("float32"))[None])
    stored = torch.from_numpy(out[0].image).float()
    assert ((full[0] * 255).round() - stored).abs().max() <= 2


def test_a_guidance_decoder_that_does_not_fit_is_refused(tmp_path):
    from lgd_ray.core.generator import check_guidance_decoder, tiny_guidance_decoder

    tiny_guidance_decoder().save_pretrained(tmp_path / "taesd")
    with pytest.raises(UserError) as e:  # the digits model works in pixels: there is no VAE to replace
        check_guidance_decoder("builtin:digits", str(tmp_path / "taesd"))
    assert e.value.field == "generator.guidance_decoder" and "pixel-space" in e.value.problem
    (tmp_path / "kl").mkdir()
    (tmp_path / "kl" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(UserError, match="not an AutoencoderTiny"):
        check_guidance_decoder("builtin:digits", str(tmp_path / "kl"))
    assert load_config(None, ["generator.guidance_decoder=null"]).hash() == load_config(None).hash()


def test_clip_x0_is_for_pixel_models_and_off_keeps_the_hash(tmp_path):
    """generator.clip_x0 clips x̂0 to the image range: a latent model (a vae/ folder) is refused in one line,
    a pixel one runs, and outputs made before the key keep their hash while it is off."""
    from lgd_ray.core.generator import create_generator
    from lgd_ray.engine.run import resolve_run

    create_generator("dit-micro-vae", 10, 16, 3).save_pretrained(tmp_path / "latent")
    with pytest.raises(UserError) as e:
        resolve_run(load_config(None, [f"generator.path={tmp_path / 'latent'}", "generator.clip_x0=true"]))
    assert e.value.field == "generator.clip_x0" and "latent" in e.value.problem
    resolve_run(load_config(None, ["generator.clip_x0=true"]))  # the digits model samples pixels
    assert load_config(None, ["generator.clip_x0=false"]).hash() == load_config(None).hash()
    assert load_config(None, ["generator.clip_x0=true"]).hash() != load_config(None).hash()
