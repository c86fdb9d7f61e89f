"""`lgd-ray bench --flops`: counted FLOPs per step and per kept image add up, and `lgd-ray plan` reads them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lgd_ray.apps import flops_bench as fb
from lgd_ray.apps.cost import (
    ASSUMED_H100_DIT_XL,
    COUNTED_FLOPS,
    figures_from_flops,
    make_plan,
)
from lgd_ray.cli import main
from lgd_ray.core.config import load_config
from lgd_ray.core.guidance import learnability_score
from lgd_ray.core.sampler import sample_items, to_student
from lgd_ray.core.work import stage_items

IN1K = str(Path(__file__).resolve().parent.parent / "jobs" / "imagenet1k_ipc50.yaml")
K = 2  # candidates in the tiny report


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores a second one can cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flops_dir(tmp_path_factory) -> Path:
    """The tiny report as the CLI writes it: DiT with learned σ + a VAE, ConvNet-2 students, CFG 4."""
    out = tmp_path_factory.mktemp("flops")
    assert main(["bench", "--flops", "--arch", "dit-micro-vae", "--k", str(K), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(flops_dir) -> dict:
    return json.loads((flops_dir / "flops.json").read_text())


@pytest.fixture(scope="module")
def models() -> fb.Models:
    return fb.build_models(fb.FlopsSpec(k=K))


def total(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=fb.CPU_ATTENTION) as c:
        fn()
    return c.get_total_flops()


def grad_of(fn, shape) -> None:
    """Forward fn on a fresh input with grad, and one backward to that input (the models are frozen)."""
    with torch.enable_grad():
        leaf = torch.randn(*shape, requires_grad=True)
        torch.autograd.grad(fn(leaf * 1.0).sum(), leaf)


def test_bench_writes_json_and_table(flops_dir, report, capsys):
    md = (flops_dir / "flops.md").read_text()
    assert "TFLOP per step" in md and "TFLOP per kept image" in md
    assert {"unguided", "lgd", "lgd_x0", "lgd_prune", "lgd_x0_prune", "lgd_x0_narrow", "lgd_taesd", "lgd_x0_taesd",
            "igd"} == set(report["rows"])
    for name in report["rows"]:
        assert f"| {name} |" in md
    lgd = report["rows"]["lgd"]
    assert report["guided_over_unguided"] == lgd["step_total"] / sum(report["unguided_step"].values())


def test_components_add_up_to_the_counted_total(report, models):
    """Each split adds up to what FlopCounterMode counts for the whole call, nothing left unattributed."""
    m = models
    s = m.settings(window=(0, 0))
    rows = report["rows"]
    assert sum(rows["lgd"]["step"].values()) == rows["lgd"]["step_total"] == total(
        lambda: fb.one_step(m, s, m.student, m.reference))
    assert sum(report["unguided_step"].values()) == total(lambda: fb.one_step(m, m.settings(lam=0.0, window=(0, 0))))
    for name, row in rows.items():
        assert row["step"]["other"] == 0 and row["final"]["other"] == 0, name
        assert sum(row["per_kept_image"].values()) == row["per_kept_image_total"], name
    assert rows["lgd"]["step"]["denoiser_fwd"] == report["unguided_step"]["denoiser_fwd"]  # the same forward
    assert all(v > 0 for k, v in rows["lgd"]["step"].items() if k != "other")
    # IGD: one DiT forward and decode, then per checkpoint its own backward through both
    igd, lgd, n = rows["igd"]["step"], rows["lgd"]["step"], fb.FlopsSpec().igd_checkpoints
    assert igd["denoiser_fwd"] == lgd["denoiser_fwd"] and igd["decoder_fwd"] == lgd["decoder_fwd"]
    assert igd["denoiser_bwd"] == n * lgd["denoiser_bwd"] and igd["decoder_bwd"] == n * lgd["decoder_bwd"]


def test_guided_step_is_denoiser_decoder_and_students_forward_and_backward(report, models):
    """Each component counted on its own, forward with grad + backward to its input: their sum is the step."""
    m, spec = models, models.spec
    gen, t = m.gen, m.gen.scheduler.timesteps[0]
    y = torch.zeros(1, dtype=torch.long)
    size = gen.image_size
    denoiser = total(lambda: grad_of(lambda x: gen.split(gen.model_output(x, t, y, spec.cfg_scale))[0],
                                     (1, *gen.latent_shape)))
    decoder = total(lambda: grad_of(gen.decode, (1, *gen.latent_shape)))

    def students(img):
        img = to_student(img, spec.student_size)
        return learnability_score(m.student(img), m.reference(img), y, 0.5)[0]

    classifiers = total(lambda: grad_of(students, (1, gen.image_channels, size, size)))
    step = fb.components(report["rows"]["lgd"]["step"])
    assert (step["denoiser"], step["decoder"], step["students"]) == (denoiser, decoder, classifiers)
    assert report["rows"]["lgd"]["step_total"] == denoiser + decoder + classifiers


def test_backward_costs_one_forward_frozen_and_two_with_weight_gradients(report, models):
    """Frozen convs and linears (every model in sampling) compute the input gradient only: backward = forward.
    With the weights as leaves (IGD's surrogate, training) they compute both: backward = 2 × forward."""
    lgd = report["rows"]["lgd"]["step"]
    assert lgd["students_bwd"] == lgd["students_fwd"]  # ConvNet: convs + a linear, all frozen
    net = models.student
    weights = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
    img = torch.rand(1, 3, models.spec.student_size, models.spec.student_size)
    fwd = total(lambda: torch.func.functional_call(net, weights, (img,)))

    def fwd_bwd():
        with torch.enable_grad():
            leaf = img.clone().requires_grad_(True)
            out = torch.func.functional_call(net, weights, (leaf * 1.0,))
            torch.autograd.grad(out.sum(), [leaf, *weights.values()])

    assert total(fwd_bwd) == 3 * fwd
    linear, x = torch.nn.Linear(64, 32), torch.randn(8, 64, requires_grad=True)
    mac = 8 * 64 * 32  # multiply-accumulates of the forward; FlopCounterMode counts 2 FLOPs each
    assert total(lambda: torch.autograd.grad(linear.requires_grad_(False)(x * 1.0).sum(), x)) == 2 * 2 * mac
    assert total(lambda: torch.autograd.grad(linear.requires_grad_(True)(x * 1.0).sum(), [x, linear.weight])) == 3 * 2 * mac


def test_per_kept_image_by_hand(report):
    """κ × (guided × G + unguided × U + final decode (+ score)) with the report's own spec."""
    spec, rows = report["spec"], report["rows"]
    u = sum(report["unguided_step"].values())
    guided = spec["window"][1] - spec["window"][0] + 1
    n = spec["num_steps"]
    decode = sum(rows["unguided"]["final"].values())
    lgd = rows["lgd"]
    assert (lgd["candidates"], lgd["guided_steps"], lgd["unguided_steps"]) == (K, guided, n - guided)
    assert lgd["per_kept_image_total"] == K * (guided * lgd["step_total"] + (n - guided) * u + sum(lgd["final"].values()))
    assert sum(lgd["final"].values()) > decode  # decoded and scored by θ_i and θ*
    assert rows["unguided"]["per_kept_image_total"] == n * u + decode
    igd = rows["igd"]
    g = spec["igd_guided_steps"]
    assert igd["per_kept_image_total"] == g * igd["step_total"] + (n - g) * u + decode


def test_the_narrow_window_is_the_x0_step_on_fewer_steps_with_every_candidate_finishing(report):
    spec, rows = report["spec"], report["rows"]
    lo, hi = spec["narrow_window"]
    n, u = spec["num_steps"], sum(report["unguided_step"].values())
    x0, narrow = rows["lgd_x0"], rows["lgd_x0_narrow"]
    assert narrow["step"] == x0["step"] and narrow["final"] == x0["final"] and not narrow["survivors"]
    g = hi - lo + 1
    assert (narrow["candidates"], narrow["guided_steps"]) == (K, g) and g < x0["guided_steps"]
    assert narrow["per_kept_image_total"] == K * (g * x0["step_total"] + (n - g) * u + sum(x0["final"].values()))


def test_per_kept_image_is_what_sample_items_counts(report, models):
    """The arithmetic against the sampler run end to end: 2 slots × κ candidates, 6 steps, 3 of them guided."""
    m = models
    steps, window = 6, (1, 3)
    m.gen.set_scheduler("ddpm", steps)
    try:
        s = m.settings(num_steps=steps, window=window, k=K, batch_size=64)
        items = stage_items(1, m.spec.num_classes, 1)[:2]
        counted = total(lambda: sample_items(m.gen, items, s, list(range(m.spec.num_classes)),
                                             student=m.student, reference=m.reference))
    finally:
        m.gen.set_scheduler("ddpm", m.spec.num_steps)
    lgd = report["rows"]["lgd"]
    row = fb.Row("lgd", "", lgd["step"], K, 3, 3, lgd["final"])
    assert counted == len(items) * sum(fb.per_kept_image(row, report["unguided_step"]).values())


def test_x0_space_and_pruning_cut_what_they_say(report, models):
    """x̂0-space: the same step less the denoiser's backward. Pruning: the arithmetic against the sampler
    run end to end, 2 slots × κ candidates to the pruning step, one survivor each after it."""
    rows = report["rows"]
    lgd, x0 = rows["lgd"]["step"], rows["lgd_x0"]["step"]
    assert x0["denoiser_bwd"] == 0 < lgd["denoiser_bwd"]
    assert {k: v for k, v in x0.items() if k != "denoiser_bwd"} == {k: v for k, v in lgd.items() if k != "denoiser_bwd"}
    assert rows["lgd_x0_prune"]["per_kept_image_total"] < rows["lgd_x0"]["per_kept_image_total"]
    taesd = rows["lgd_taesd"]["step"]  # only the decoder's share changes; the final decode is the full VAE's
    assert taesd["decoder_fwd"] != lgd["decoder_fwd"] and rows["lgd_taesd"]["final"] == rows["lgd"]["final"]
    assert {k: v for k, v in taesd.items() if not k.startswith("decoder")} == \
        {k: v for k, v in lgd.items() if not k.startswith("decoder")}
    m = models
    steps, window = 6, (1, 3)
    m.gen.set_scheduler("ddpm", steps)
    try:
        s = m.settings(num_steps=steps, window=window, k=K, batch_size=64, grad_space="x0", prune_at=2, prune_keep=1)
        items = stage_items(1, m.spec.num_classes, 1)[:2]
        counted = total(lambda: sample_items(m.gen, items, s, list(range(m.spec.num_classes)),
                                             student=m.student, reference=m.reference))
    finally:
        m.gen.set_scheduler("ddpm", m.spec.num_steps)
    r = rows["lgd_x0_prune"]
    # steps 5..2 with κ (2 of them guided), x̂0 scored at step 2, then steps 1..0 with one survivor (1 guided)
    row = fb.Row("x", "", r["step"], K, 2, 2, r["final"], survivors=1, guided_after=1, unguided_after=1, prune=r["prune"])
    assert counted == len(items) * sum(fb.per_kept_image(row, report["unguided_step"]).values())


def test_jobs_spec_is_the_paper_job():
    """The spec's exact rows use the paper's window [10, 45]; the job samples with the narrow x̂0-space row."""
    cfg = load_config(IN1K)
    spec = fb.jobs_spec("dit-xl-2-256")
    assert cfg.generator.path == "facebook/DiT-XL-2-256"
    assert (spec.num_steps, spec.cfg_scale, list(spec.window), spec.k) == (
        cfg.generator.num_steps, cfg.generator.cfg_scale, [10, 45], cfg.distill.k)
    assert (cfg.distill.grad_space, list(spec.narrow_window)) == ("x0", list(cfg.distill.window))
    assert (spec.student, spec.reference, spec.student_size) == (cfg.student.arch, cfg.reference.arch,
                                                                 cfg.data.image_size)
    assert spec.num_classes == 1000 and cfg.data.classes == "imagenet1k"


def test_plan_uses_the_counted_ratio(flops_dir, report, capsys):
    shipped = json.loads(COUNTED_FLOPS.read_text())
    assert shipped["spec"]["arch"] == "dit-xl-2-256" and shipped["spec"]["cfg_scale"] == 4.0
    assert ASSUMED_H100_DIT_XL.guided_ratio == shipped["guided_over_unguided"] != 7.5
    assert "counted in FLOPs" in ASSUMED_H100_DIT_XL.source

    f = figures_from_flops(flops_dir)  # the folder works too
    assert f.guided_ratio == report["guided_over_unguided"]
    assert dataclasses.replace(f, guided_ratio=0, x0_guided_ratio=0, source="") == dataclasses.replace(
        ASSUMED_H100_DIT_XL, guided_ratio=0, x0_guided_ratio=0, source="")
    x0 = report["rows"]["lgd_x0"]["step_total"] / sum(report["unguided_step"].values())
    assert f.x0_guided_ratio == x0 < f.guided_ratio
    s = make_plan(load_config(IN1K, ["distill.grad_space=xt", "distill.window=[10,45]"]), f).stages[1]
    assert s.sample_gpu_s == pytest.approx(10_000 * 3 * (14 + 36 * f.guided_ratio) * f.image_step_s)

    # x̂0-space guidance takes its own ratio; pruning runs κ candidates to step prune_at, then prune_keep
    cheap = make_plan(load_config(IN1K, ["distill.grad_space=x0", "distill.window=[10,45]", "distill.prune_at=38",
                                         "distill.prune_keep=1"]), f)
    s1 = cheap.stages[1]
    # steps 49..38 with κ = 3 (45..38 guided: 8), steps 37..0 with 1 (37..10 guided: 28)
    assert (s1.guided_image_steps, s1.unguided_image_steps) == (3 * 8 + 28, 3 * 4 + 10)
    assert s1.sample_gpu_s == pytest.approx(10_000 * (22 + 52 * x0) * f.image_step_s)

    assert main(["plan", IN1K, "--gpus", "8", "--flops", str(flops_dir / "flops.json")]) == 0
    out = capsys.readouterr().out
    assert f"guided step {f.guided_ratio:.1f}× unguided" in out and "dit-micro-vae, CFG 4" in out
    assert main(["plan", IN1K, "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert f"guided step {shipped['guided_over_unguided']:.1f}× unguided" in out and "assets/flops/flops.json: dit-xl-2-256" in out
    assert main(["plan", IN1K, "--gpus", "8", "--flops", str(flops_dir / "missing.json")]) == 2
    assert main(["plan", IN1K, "--gpus", "8", "--flops", str(flops_dir), "--bench", str(flops_dir)]) == 2


def test_the_paper_jobs_cut_is_planned_as_counted():
    """jobs/imagenet1k_ipc50.yaml: κ = 3 candidates, each to the end, ∇ w.r.t. x̂0 on 9 of 50 steps. Its counted
    FLOPs per kept image (the shipped lgd_ray/assets/flops) are at most IGD's one image, and `lgd-ray plan`
    samples a stage with the x̂0 step's ratio on exactly those steps."""
    shipped = json.loads(COUNTED_FLOPS.read_text())
    rows = shipped["rows"]
    assert rows["lgd_x0_narrow"]["per_kept_image_total"] <= rows["igd"]["per_kept_image_total"]
    assert rows["lgd_x0_narrow"]["per_kept_image_total"] < rows["lgd"]["per_kept_image_total"] / 2
    f = ASSUMED_H100_DIT_XL
    s = make_plan(load_config(IN1K), f).stages[1]
    assert (s.guided_image_steps, s.unguided_image_steps) == (3 * 9, 3 * 41)
    assert s.sample_gpu_s == pytest.approx(10_000 * 3 * (41 + 9 * f.x0_guided_ratio) * f.image_step_s)
