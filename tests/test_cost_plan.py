"""`lgd-ray plan`: the cost model's scaling laws (images, κ, GPUs, guided window) and its inputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from lgd_ray.apps.bench import BenchSpec, step_costs
from lgd_ray.apps.cost import ASSUMED_H100_DIT_XL, figures_from_bench, make_plan
from lgd_ray.cli import main
from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError

JOBS = Path(__file__).resolve().parent.parent / "jobs"
IN1K = str(JOBS / "imagenet1k_ipc50.yaml")
NO_OVERHEAD = dataclasses.replace(ASSUMED_H100_DIT_XL, stage_overhead_s=0.0, train_overhead_s=0.0)
# exact LGD on the paper's window, whose arithmetic these tests spell out; the shipped jobs sample with the
# x̂0-space cut on [37, 45] (test_the_paper_jobs_cut_is_planned_as_counted)
EXACT = ("distill.grad_space=xt", "distill.window=[10,45]")


def plan(*overrides: str, figures=NO_OVERHEAD, path: str = IN1K):
    return make_plan(load_config(path, [*EXACT, *overrides]), figures)


def guided(p):
    return [s for s in p.stages if s.stage > 0]


def test_sampling_is_linear_in_images():
    base = plan()
    more_per_stage = plan("distill.ipc_per_stage=20")
    fewer_classes = plan("data.classes=imagenette")
    for a, b, c in zip(guided(base), guided(more_per_stage), guided(fewer_classes)):
        assert b.sample_gpu_s == pytest.approx(2 * a.sample_gpu_s)
        assert c.sample_gpu_s == pytest.approx(a.sample_gpu_s / 100)
    assert plan("distill.ipc_seed=30").stages[0].sample_gpu_s == pytest.approx(3 * base.stages[0].sample_gpu_s)


def test_sampling_is_linear_in_kappa_and_stage_zero_has_one_candidate():
    k1, k3, k6 = plan("distill.k=1"), plan("distill.k=3"), plan("distill.k=6")
    for a, b, c in zip(guided(k1), guided(k3), guided(k6)):
        assert b.sample_gpu_s == pytest.approx(3 * a.sample_gpu_s)
        assert c.sample_gpu_s == pytest.approx(6 * a.sample_gpu_s)
    assert k1.stages[0].sample_gpu_s == k6.stages[0].sample_gpu_s
    assert k6.stages[0].candidates == 1


def test_guided_cost_only_on_window_steps():
    f = NO_OVERHEAD
    wide, narrow = plan("distill.window=[10, 45]"), plan("distill.window=[10, 10]")
    s_wide, s_narrow = wide.stages[1], narrow.stages[1]
    assert (s_wide.guided_steps, s_wide.unguided_steps) == (36, 14)
    assert (s_narrow.guided_steps, s_narrow.unguided_steps) == (1, 49)
    extra = s_wide.slots * s_wide.candidates * 35 * (f.guided_ratio - 1) * f.image_step_s
    assert s_wide.sample_gpu_s - s_narrow.sample_gpu_s == pytest.approx(extra)
    # the exact count: 10,000 slots × κ 3 × (14 unguided + 36 × ratio) steps
    assert s_wide.sample_gpu_s == pytest.approx(10_000 * 3 * (14 + 36 * f.guided_ratio) * f.image_step_s)
    # stage 0 and λ = 0 sample without guidance: every step at the unguided cost
    assert wide.stages[0].guided_steps == 0
    assert wide.stages[0].sample_gpu_s == pytest.approx(10_000 * 50 * f.image_step_s)
    unguided = plan("distill.lam=0")
    assert all(s.guided_steps == 0 for s in unguided.stages)
    assert unguided.stages[1].sample_gpu_s == pytest.approx(10_000 * 3 * 50 * f.image_step_s)


def test_time_travel_repeats_only_the_guided_steps():
    f = NO_OVERHEAD
    off, twice = plan(), plan("distill.time_travel=1")
    for a, b in zip(off.stages, twice.stages):
        extra = a.slots * a.candidates * a.guided_steps * f.guided_ratio * f.image_step_s  # one more pass each
        assert b.sample_gpu_s == pytest.approx(a.sample_gpu_s + extra)
    assert twice.stages[0].sample_gpu_s == off.stages[0].sample_gpu_s  # stage 0 is unguided


def test_sampling_wall_inverse_in_gpus_up_to_chunk_granularity():
    p = plan()
    s = p.stages[1]
    assert s.chunks == 1250 and s.chunk_slots == 8
    chunk_s = s.sample_gpu_s / s.chunks
    for n in (10, 125, 250, 1250):  # divisors of the chunk count: exact
        assert p.sampling_wall_s(s, n) == pytest.approx(s.sample_gpu_s / n)
    for n in (8, 64, 256, 999):
        wall = p.sampling_wall_s(s, n)
        assert s.sample_gpu_s / n - 1e-9 <= wall <= s.sample_gpu_s / n + chunk_s
    assert p.sampling_wall_s(s, 5000) == pytest.approx(chunk_s)  # never below one chunk
    assert p.sampling_wall_s(s, 64) > p.sampling_wall_s(s, 256) > p.sampling_wall_s(s, 1250)


def test_training_scales_with_images_and_epochs_not_sampler_gpus():
    f = NO_OVERHEAD
    p = plan()
    assert [s.train_images for s in p.stages] == [10_000, 20_000, 30_000, 40_000, 0]
    assert p.stages[3].train_gpu_s == pytest.approx(300 * 40_000 / f.train_images_per_s["convnet"])
    assert plan("student.epochs=600").train_gpu_s == pytest.approx(2 * p.train_gpu_s)
    assert p.training_wall_s(p.stages[3]) == pytest.approx(p.stages[3].train_gpu_s / 8)
    # at 112 px a student image costs a quarter
    assert plan("data.image_size=112").train_gpu_s == pytest.approx(p.train_gpu_s / 4)


def test_total_wall_adds_stage_overheads_and_falls_with_gpus():
    p0 = plan()
    p1 = plan(figures=dataclasses.replace(NO_OVERHEAD, stage_overhead_s=100.0, train_overhead_s=10.0))
    # 5 sampling stages, 4 student runs (none after the last stage); θ* is the train-reference job's
    assert p1.wall_s(8) == pytest.approx(p0.wall_s(8) + 5 * 100.0 + 4 * 10.0)
    assert p0.wall_s(8) > p0.wall_s(64) > p0.wall_s(256)
    assert p0.wall_s(1250) == pytest.approx(p0.sample_gpu_s / 1250 + p0.train_gpu_s / 8)


def test_cfg_factor_follows_the_figures():
    cfg4 = plan()
    no_cfg = plan("generator.cfg_scale=1.0")
    assert cfg4.cfg_factor == 1.0 and no_cfg.cfg_factor == 0.5
    assert no_cfg.sample_gpu_s == pytest.approx(cfg4.sample_gpu_s / 2)


def test_seed_source_skips_stage_zero_sampling(tmp_path):
    p = plan(f"distill.seed_source={tmp_path}")
    assert p.stages[0].sample_gpu_s == 0 and p.sampling_wall_s(p.stages[0], 8) == 0


def test_reference_counted_only_when_trained_in_the_run():
    given, trained = plan(), plan("reference.path=null")
    assert not given.reference_in_run and trained.reference_in_run
    assert trained.real_images == 1281 * 1000
    assert trained.reference_gpu_s == pytest.approx(60 * 1_281_000 / 4000)
    assert trained.busy_gpu_s == pytest.approx(given.busy_gpu_s + trained.reference_gpu_s)
    assert trained.wall_s(8) == pytest.approx(given.wall_s(8) + trained.reference_gpu_s / 8)


def _bench_report(tmp_path: Path) -> Path:
    """A bench.json with the layout `lgd-ray bench --out` writes, its step figures measured for real."""
    spec = BenchSpec(arch="unet-micro", steps=4, window=(0, 3), batch_size=4, repeats=1)
    report = {"device": "cpu", "spec": spec.__dict__, "step": step_costs(spec, torch.device("cpu")), "throughput": {}}
    (tmp_path / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    return tmp_path / "bench.json"


def test_figures_from_bench_json(tmp_path):
    path = _bench_report(tmp_path)
    step = json.loads(path.read_text())["step"]
    f = figures_from_bench(tmp_path)  # the folder works too
    assert f.image_step_s == pytest.approx(step["unguided_step_s"] / step["batch"])
    assert f.guided_ratio == pytest.approx(step["guided_over_unguided"])
    assert not f.with_cfg and "unet-micro" in f.source
    assert f.train_images_per_s == ASSUMED_H100_DIT_XL.train_images_per_s
    p = make_plan(load_config(IN1K, list(EXACT)), f)
    assert p.cfg_factor == 2.0  # measured without CFG, the job samples with CFG 4.0
    s = p.stages[1]
    assert s.sample_gpu_s == pytest.approx(10_000 * 3 * (14 + 36 * f.guided_ratio) * f.image_step_s * 2)


def test_bad_bench_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        figures_from_bench(tmp_path / "missing.json")
    (tmp_path / "bench.json").write_text(json.dumps({"step": {"batch": 4}}))
    with pytest.raises(UserError, match="not a bench report"):
        figures_from_bench(tmp_path / "bench.json")


def test_cli_prints_the_table(capsys):
    assert main(["plan", IN1K, "--gpus", "8,64,256"]) == 0
    out = capsys.readouterr().out
    assert "1000 classes, IPC 50 = 10 + 4 × 10" in out and "assumed" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("stage"))
    assert all(f"wall @{n}" in header for n in (8, 64, 256))
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    # sampling GPU-hours with the stated figures (the counted guided/unguided ratio, lgd-ray bench --flops)
    hours = sum(s.sample_gpu_s for s in make_plan(load_config(IN1K)).stages) / 3600
    exact = sum(s.sample_gpu_s for s in make_plan(load_config(IN1K, list(EXACT))).stages) / 3600
    assert "50000" in total and f"{hours:.2f}" in total and 4.9 < exact < 5.1 and 2.0 < hours < 2.4


def test_cli_bad_input_exits_2(capsys, tmp_path):
    assert main(["plan", IN1K, "--gpus", "four"]) == 2
    assert main(["plan", IN1K, "--gpus", "4"]) == 2  # ray.train_workers = 8 cannot fit
    assert "ray.train_workers" in capsys.readouterr().err
    assert main(["plan", IN1K, "--gpus", "8", "--bench", str(tmp_path / "nope.json")]) == 2
    assert main(["plan", IN1K, "distill.k=0", "--gpus", "8"]) == 2
    assert math.isfinite(make_plan(load_config(None)).wall_s(2))  # the demo config plans too


def _synthetic_run(tmp_path, cfg, figures) -> str:
    """A distill output whose metrics.jsonl holds the timings the plan's own model predicts for `figures`."""
    from lgd_ray.engine.distill import prepare_output
    from lgd_ray.engine.store import OutputDir

    out = OutputDir(str(tmp_path / "run"))
    prepare_output(out, cfg, False)
    p = make_plan(cfg, figures)
    w = cfg.ray.train_workers
    out.append_jsonl("metrics.jsonl", {"event": "reference", "epochs": cfg.reference.epochs, "train_images": p.real_images,
                                       "loop_s": p.reference_gpu_s / w, "wall_s": p.reference_wall_s()})
    for s in p.stages:
        out.append_jsonl("metrics.jsonl", {"event": "sample", "stage": s.stage, "chunks": s.chunks, "samplers": cfg.ray.samplers,
                                           "setup_s": figures.stage_overhead_s,
                                           "wall_s": figures.stage_overhead_s + p.sampling_wall_s(s, cfg.ray.samplers)})
        if s.train_images:
            loop = p.training_wall_s(s)
            out.append_jsonl("metrics.jsonl", {"event": "student", "stage": s.stage, "epochs": cfg.student.epochs,
                                               "train_images": s.train_images, "loop_s": loop,
                                               "wall_s": loop + figures.train_overhead_s})
    return out.uri


def test_figures_fitted_to_a_run_invert_the_model(tmp_path):
    """Timings made by the plan's model from known figures are fitted back to those figures, and the plan
    then predicts the run with zero error: the calibration inverts exactly what the plan multiplies out."""
    from lgd_ray.apps.cost import compare_with_run, figures_from_run

    cfg = load_config(None, ["distill.stages=3", "distill.ipc_per_stage=4", "distill.chunk_size=7", "ray.samplers=2",
                             "ray.train_workers=2", "distill.k=3", "distill.window=[2,13]"])
    truth = dataclasses.replace(ASSUMED_H100_DIT_XL, image_step_s=2.5e-3, guided_ratio=3.2, with_cfg=False,
                                train_images_per_s={**ASSUMED_H100_DIT_XL.train_images_per_s, "convnet": 5.0},
                                stage_overhead_s=6.0, train_overhead_s=11.0)
    run = _synthetic_run(tmp_path, cfg, truth)
    fit = figures_from_run(run)
    assert fit.image_step_s == pytest.approx(truth.image_step_s)
    assert fit.guided_ratio == pytest.approx(truth.guided_ratio)
    assert fit.train_images_per_s["convnet"] == pytest.approx(5.0)
    assert (fit.stage_overhead_s, fit.train_overhead_s) == (pytest.approx(6.0), pytest.approx(11.0))
    table, err = compare_with_run(make_plan(cfg, fit), run)
    assert err == pytest.approx(0.0, abs=1e-9) and "total" in table
    # the CLI: figures from one run, compared with another (here the same), one-line errors otherwise
    assert main(["plan", "--from-run", run, "--compare", run]) == 0
    assert main(["plan", "--from-run", str(tmp_path), "--gpus", "2"]) == 2
    assert main(["plan", "--from-run", run, "--bench", run, "--gpus", "2"]) == 2
