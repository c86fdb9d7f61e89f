"""`lgd-ray tune`: sweep parsing, bad sweep files, per-stage reporting, reservation, resume, best.yaml."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from lgd_ray.core.config import from_dict, load_config
from lgd_ray.core.errors import UserError
from lgd_ray.engine.store import OutputDir
from lgd_ray.tune.spec import load_sweep, parse_sweep
from lgd_ray.tune.trainable import (
    HEAD,
    max_concurrent,
    placement_group_factory,
    run_sweep,
    trial_resources,
)

from helpers import tiny_overrides

SPACE = {"distill.lam": {"loguniform": [0.05, 0.5]}, "distill.omega": {"uniform": [0.0, 1.0]},
         "distill.k": {"choice": [1, 2]}}


def test_space_parsing(tmp_path):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        "base: jobs/demo.yaml\noverrides: {distill.stages: 3, student.epochs: 20}\n"
        "space:\n  distill.lam: {loguniform: [0.02, 0.5]}\n  distill.omega: {uniform: [0, 1]}\n"
        "  distill.k: {choice: [1, 3, 5]}\n  distill.window: {choice: [[0, 10], [5, 20]]}\n"
        "  distill.gamma: {uniform: [0.0, 0.1]}\n"
        "num_samples: 5\nsearch: random\nmetric: select_acc\nasha: {grace_period: 1, reduction_factor: 3}\n")
    s = load_sweep(sweep_file, ["student.epochs=7"])
    got = {p.key: (p.dist, p.values) for p in s.space}
    assert got == {"distill.lam": ("loguniform", [0.02, 0.5]), "distill.omega": ("uniform", [0.0, 1.0]),
                   "distill.k": ("choice", [1, 3, 5]), "distill.window": ("choice", [[0, 10], [5, 20]]),
                   "distill.gamma": ("uniform", [0.0, 0.1])}
    assert (s.num_samples, s.search, s.metric, s.grace_period, s.reduction_factor) == (5, "random", "select_acc", 1, 3)
    assert s.base.distill.stages == 3 and s.base.student.epochs == 7  # sweep overrides, then the command line
    # the shipped sweeps parse
    assert load_sweep("jobs/sweep_demo.yaml").num_samples >= 4
    woof = load_sweep("jobs/sweep_imagewoof.yaml")
    assert woof.base.data.classes == "imagewoof" and {p.key for p in woof.space} >= {"distill.lam", "distill.omega", "distill.k"}


@pytest.mark.parametrize("space, field", [
    ({"distill.lamda": {"loguniform": [0.1, 1]}}, "space.distill.lamda"),   # unknown parameter
    ({"student.nope": {"choice": [1]}}, "space.student.nope"),
    ({"distill.lam": {"loguniform": [0.5, 0.5]}}, "space.distill.lam"),     # empty range
    ({"distill.omega": {"uniform": [1.0, 0.2]}}, "space.distill.omega"),    # inverted
    ({"distill.lam": {"loguniform": [0.0, 0.5]}}, "space.distill.lam"),     # lo <= 0 on a log scale
    ({"distill.k": {"choice": [3, 0]}}, "space.distill.k"),                 # κ < 1
    ({"distill.k": {"choice": []}}, "space.distill.k"),
    ({"distill.lam": {"normal": [0, 1]}}, "space.distill.lam"),             # unknown distribution
    ({"distill.window": {"choice": [[0, 99]]}}, "space.distill.window"),     # outside the step range
    ({"distill.k": {"uniform": [1, 5]}}, "space.distill.k"),                # integer key, real draws
])
def test_bad_sweep_names_the_field(space, field):
    with pytest.raises(UserError) as e:
        parse_sweep({"space": space})
    assert e.value.field == field and "\n" not in str(e.value)


def test_bad_sweep_fields():
    for tree, field in (({"space": SPACE, "search": "hyperopt"}, "search"), ({"space": {}}, "space"),
                        ({"space": SPACE, "num_samples": 0}, "num_samples"), ({"space": SPACE, "metric": "loss"}, "metric"),
                        ({"space": SPACE, "asha": {"grace": 1}}, "asha.grace"), ({"space": SPACE, "spaec": 1}, "spaec"),
                        ({"space": SPACE, "overrides": {"distill.lamm": 1}}, "overrides.distill.lamm")):
        with pytest.raises(UserError) as e:
            parse_sweep(tree)
        assert e.value.field == field


def test_resource_reservation():
    cfg = load_config(None, ["ray.samplers=3", "ray.cpus_per_sampler=2", "ray.gpus_per_sampler=0.5",
                             "ray.train_workers=2", "ray.gpus_per_train_worker=1"])
    r = trial_resources(cfg)
    assert r["bundles"] == [HEAD] + [{"CPU": 2.0, "GPU": 0.5}] * 3
    assert r["sampling"] == {"CPU": 6.0, "GPU": 1.5} and r["training"] == {"CPU": 2.0, "GPU": 2.0}
    assert r["peak"] == {"CPU": 6.01, "GPU": 2.0}
    assert placement_group_factory(cfg).bundles == r["bundles"]
    assert max_concurrent(cfg, {"CPU": 64, "GPU": 8}, num_samples=100) == 4  # GPUs bind: 8 / 2
    assert max_concurrent(cfg, {"CPU": 64, "GPU": 8}, num_samples=3) == 3
    with pytest.raises(UserError) as e:
        max_concurrent(cfg, {"CPU": 64}, num_samples=4)
    assert e.value.field == "ray.gpus_per_sampler"
    cpu = load_config(None, ["ray.samplers=1"])
    assert max_concurrent(cpu, {"CPU": 2.0}, 6) == 1  # head 0.01 + 1 CPU: one trial at a time on 2 cores
    assert max_concurrent(cpu, {"CPU": 8.0}, 10) == 7


# 2 trials × 2 guided stages. ASHA's rung is stage 2 (θ_1, the first report that can separate trials; stage 1
# reports θ_0, trained on the unguided seed increment every trial shares): a trial below it is stopped before
# it samples its final increment, one above it goes on to sample it (ASHA's max_t is past the last report).
TINY_TREE = {"space": {"distill.lam": {"loguniform": [0.05, 0.5]}, "distill.omega": {"uniform": [0.0, 1.0]}},
             "num_samples": 2, "seed": 1, "asha": {"grace_period": 2, "reduction_factor": 2}}
STAGES = 2


def tiny_sweep_overrides(generator_dir: str, reference: str) -> list[str]:
    return tiny_overrides(generator_dir, reference) + [f"distill.stages={STAGES}"]


def test_optuna_search_proposes_within_the_space():
    """`search: optuna` is Optuna's TPE behind Tune's OptunaSearch, capped at the derived concurrency; its
    proposals (window pairs included, which Optuna only takes as encoded categories) decode to valid configs."""
    from ray import tune  # noqa: F401  (Tune's search space types)

    from lgd_ray.tune.spec import decode_params
    from lgd_ray.tune.trainable import search_algorithm

    sweep = parse_sweep({"space": {**SPACE, "distill.window": {"choice": [[0, 10], [5, 20]]}}, "search": "optuna",
                         "num_samples": 4, "seed": 3})
    alg = search_algorithm(sweep, concurrent=2)
    assert type(alg).__name__ == "ConcurrencyLimiter" and type(alg.searcher).__name__ == "OptunaSearch"
    assert alg.set_search_properties("select_acc", "max", {p.key: p.tune_domain() for p in sweep.space})
    proposals = [alg.suggest(f"t{i}") for i in range(3)]
    assert proposals[2] is None  # two in flight at most
    for cfg in proposals[:2]:
        params = decode_params(sweep.space, cfg)
        assert 0.05 <= params["distill.lam"] <= 0.5 and 0.0 <= params["distill.omega"] <= 1.0
        assert params["distill.k"] in (1, 2) and params["distill.window"] in ([0, 10], [5, 20])
        _ = load_config(None, [f"distill.window={json.dumps(params['distill.window'])}"])
    alg.on_trial_complete("t0", {"select_acc": 0.5, "stage": 3})
    assert alg.suggest("t3") is not None  # a finished trial frees a slot


@pytest.fixture(scope="module")
def tiny_sweep(tiny_generator_dir, reference_file):
    return parse_sweep(TINY_TREE, tiny_sweep_overrides(tiny_generator_dir, reference_file))


def _students(trial: Path) -> set[int]:
    """The stages i whose θ_i the trial has trained and recorded (a line being written is not one yet)."""
    m = trial / "metrics.jsonl"
    found = set()
    for line in (m.read_text().splitlines() if m.is_file() else []):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "student":
            found.add(rec["stage"])
    return found


@pytest.fixture(scope="module")
def swept(ray_session, tiny_sweep, tiny_generator_dir, reference_file, tmp_path_factory):
    """The tiny sweep, run once for every test below, the way a user finishes a sweep whose driver died:
    `lgd-ray tune` in its own process, SIGKILLed in the middle of the first trial (θ_0 trained and
    reported, θ_1 not yet), then the same sweep again (here in-process), which resumes it. The second
    trial starts after the resume and is never interrupted. What the kill left behind is recorded for
    test_killed_sweep_resumes; the other tests read the finished sweep."""
    import signal
    import subprocess
    import sys

    import yaml

    root = tmp_path_factory.mktemp("sweep")
    sweep_file, out, stderr_file = root / "sweep.yaml", root / "out", root / "tune.stderr"
    sweep_file.write_text(yaml.safe_dump(TINY_TREE))
    overrides = tiny_sweep_overrides(tiny_generator_dir, reference_file)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    t0 = time.time()
    with open(stderr_file, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "lgd_ray.cli", "tune", str(sweep_file), "--out", str(out),
                                 "--quiet", *overrides], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    trials: list[Path] = []
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            trials = sorted(Path(out, "trials").glob("*")) if out.exists() else []
            if any(0 in _students(t) for t in trials):
                break
            time.sleep(0.3)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = {"alive": alive, "stderr": stderr_file.read_bytes().decode(errors="replace")[-2000:],
              "trials": trials, "students": {t.name: _students(t) for t in trials},
              # the finished stage: its parts and manifest, and θ_0's weights
              "kept": {p: p.stat().st_mtime_ns for t in trials
                       for p in [*t.glob("data/stage-000/*"), *t.glob("checkpoints/stage=000/*")]}}
    resumed = load_sweep(sweep_file, overrides)
    assert resumed.base_dict == tiny_sweep.base_dict  # the file and the inline tree are one sweep
    summary = run_sweep(resumed, str(out), progress=False)
    return str(out), summary, time.time() - t0, killed


@pytest.fixture(scope="module")
def from_scratch(ray_session, tmp_path_factory):
    """`distill` from scratch of a config (what `lgd-ray distill best.yaml` runs), once per config: the
    tests that compare a trial with a fresh run of its config share the run when they name one trial."""
    from lgd_ray.engine.distill import distill

    runs: dict[str, Path] = {}

    def run(cfg) -> Path:
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key not in runs:
            out = tmp_path_factory.mktemp("rerun") / "out"
            distill(cfg, str(out), progress=False)
            runs[key] = out
        return runs[key]

    return run


def _rows(out: str) -> list[dict]:
    with open(Path(out, "trials.csv")) as f:
        return list(csv.DictReader(f))


def _student_records(run: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]
    return {r["stage"]: r for r in recs if r["event"] == "student"}


def test_per_stage_reporting(swept):
    out, summary, _, _ = swept
    rows = _rows(out)
    assert len(rows) == 2 and summary["trials"] == 2
    assert {r["status"] for r in rows} <= {"completed", "early-stopped"} and "completed" in {r["status"] for r in rows}
    for r in rows:
        trial = Path(out, "trials", r["trial_id"])
        n = int(r["stages_done"])
        # each trial reported stages 1..K: ASHA's only rung is the last report, stage K = 2
        assert n == STAGES and all(r[f"acc_stage{s}"] != "" for s in range(1, n + 1))
        # kept by the rung: the final increment sampled, the trial complete; stopped: never sampled
        assert (r["status"] == "completed") == (trial / "data" / f"stage-{STAGES:03d}" / "_manifest.json").is_file()
        students = {s: x["select_acc"] for s, x in _student_records(trial).items()}
        for s in range(1, n + 1):  # what Tune got is what the pipeline measured for θ_{s-1}
            assert float(r[f"acc_stage{s}"]) == pytest.approx(students[s - 1])
    # the reservation: one trial's peak (0.01 + 1 CPU) fits 2 CPUs once, so the trials ran one after the other
    first, second = (sorted(p.stat().st_mtime for p in Path(out, "trials", r["trial_id"]).rglob("*") if p.is_file())
                     for r in rows)
    assert first[-1] <= second[0]
    md = Path(out, "trials.md").read_text()
    assert all(r["trial_id"] in md for r in rows)
    assert Path(out, "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_best_yaml(swept, tiny_sweep):
    out, summary, _, _ = swept
    best = summary["best"]
    done = [r for r in _rows(out) if r["status"] == "completed"]
    assert best["trial_id"] == max(done, key=lambda r: float(r["final_acc"]))["trial_id"]
    cfg = load_config(Path(out, "best.yaml"))
    trial_cfg = json.loads(Path(out, "trials", best["trial_id"], "config.json").read_text())
    assert cfg.to_dict() == trial_cfg["config"]
    assert cfg.distill.lam == pytest.approx(best["params"]["distill.lam"])


def test_best_yaml_reproduces_the_trial(swept, from_scratch):
    """`lgd-ray distill best.yaml` from scratch ends with the accuracy the sweep reported for that trial."""
    out, summary, _, _ = swept
    rerun = from_scratch(load_config(Path(out, "best.yaml")))
    recs = _student_records(rerun)
    last = max(recs)
    assert last + 1 == summary["best"]["stage"]
    assert recs[last]["select_acc"] == summary["best"]["select_acc"]
    assert {p.name for p in Path(out, "trials", summary["best"]["trial_id"]).glob("data/stage-*")} == \
        {p.name for p in rerun.glob("data/stage-*")}


def test_resume_keeps_finished_trials(swept, tiny_sweep):
    out, first, first_s, _ = swept
    before = {p: p.stat().st_mtime_ns for p in Path(out, "trials").glob("*/metrics.jsonl")}
    t0 = time.time()
    again = run_sweep(tiny_sweep, out, progress=False)
    assert again["restored"] and again["trials"] == first["trials"] and again["best"] == first["best"]
    after = {p: p.stat().st_mtime_ns for p in Path(out, "trials").glob("*/metrics.jsonl")}
    assert after == before  # no trial distilled or trained again
    assert time.time() - t0 < first_s / 2


def test_killed_sweep_resumes(swept, from_scratch):
    """SIGKILL the `lgd-ray tune` driver in the middle of its trial, rerun the same sweep: the trial resumes
    from its finished stage (its files untouched) and ends with the accuracies and the bytes of a run of
    its config that was never interrupted."""
    out, summary, _, killed = swept
    assert killed["alive"], f"sweep ended before it could be killed: {killed['stderr']}"
    (trial,) = killed["trials"]  # the first trial, killed before the second started
    assert killed["students"][trial.name] == {0}  # θ_0 trained and reported, θ_1 not yet
    kept = killed["kept"]
    assert any(p.name == "_manifest.json" for p in kept) and any(p.suffix == ".safetensors" for p in kept)

    assert summary["restored"] and summary["trials"] == 2
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished stage was not redone
    assert _students(trial) == set(range(STAGES))
    (row,) = [r for r in _rows(out) if r["trial_id"] == trial.name]
    assert row["status"] == "completed"

    cfg = from_dict(json.loads((trial / "config.json").read_text())["config"])
    # the resumed trial kept the parameters it was drawn with (trials.csv: 4 significant digits)
    assert (float(row["distill.lam"]), float(row["distill.omega"])) == \
        (pytest.approx(cfg.distill.lam, rel=1e-3), pytest.approx(cfg.distill.omega, rel=1e-3))
    fresh = from_scratch(cfg)
    accs = {s: x["select_acc"] for s, x in _student_records(fresh).items()}
    assert [float(row[f"acc_stage{s}"]) for s in range(1, STAGES + 1)] == [accs[s] for s in range(STAGES)]
    for s in range(STAGES + 1):
        assert OutputDir(str(trial)).manifest(s)["parts"] == OutputDir(str(fresh)).manifest(s)["parts"]



def test_concurrency_from_the_sweep_file_for_clusters_that_start_empty(tmp_path):
    """An autoscaling cluster starts with no GPU workers: counting today's resources would refuse the sweep;
    `max_concurrent` in the file caps trials instead, and the trials wait for the nodes the autoscaler adds."""
    tree = {"base": "jobs/demo.yaml", "space": {"distill.lam": {"uniform": [0.05, 0.2]}}, "num_samples": 6}
    gpu = ["ray.gpus_per_sampler=1", "ray.gpus_per_train_worker=1"]
    assert parse_sweep(tree, gpu).max_concurrent is None
    with pytest.raises(UserError, match="max_concurrent"):  # the refusal says how to run it on such a cluster
        max_concurrent(parse_sweep(tree, gpu).base, {"CPU": 4.0}, 6)
    assert parse_sweep({**tree, "max_concurrent": 3}, gpu).max_concurrent == 3
    with pytest.raises(UserError, match="max_concurrent"):
        parse_sweep({**tree, "max_concurrent": 0})


def test_trial_paths_resolve_without_changing_folder(tmp_path, monkeypatch):
    """The trial's runner may sit on another node: it never chdirs into the driver's folder. A relative
    path that exists where it runs (a job's working_dir) stays; one found only under the driver's folder
    (a local run) becomes absolute; hub ids, builtin: and URLs are left alone."""
    from lgd_ray.core.config import Config
    from lgd_ray.engine.run import localize_paths

    driver = tmp_path / "driver"
    (driver / "gens" / "g").mkdir(parents=True)
    here = tmp_path / "worker"
    (here / "data").mkdir(parents=True)
    monkeypatch.chdir(here)
    cfg = Config().to_dict()
    cfg["generator"]["path"], cfg["data"]["root"] = "gens/g", "data"
    cfg["reference"]["path"], cfg["eval"]["teacher"] = "s3://bucket/ref.safetensors", "timm:resnet18"
    got = localize_paths(cfg, str(driver))
    assert got["generator"]["path"] == str(driver / "gens" / "g") and got["data"]["root"] == "data"
    assert got["reference"]["path"] == "s3://bucket/ref.safetensors" and got["eval"]["teacher"] == "timm:resnet18"
    assert cfg["generator"]["path"] == "gens/g"  # the caller's dict is not changed
    assert os.getcwd() == str(here)


# ------------------------------------------------------------------ ablations: variants, grid, eval_acc

LEVERS = {"variants": {"lgd": {}, "rank-only": {"distill.lam": 0.0}, "gated": {"distill.gate": 0.5}},
          "space": {"seed": {"choice": [0, 1]}}, "search": "grid", "metric": "eval_acc"}


def test_variants_cross_the_grid():
    from lgd_ray.tune.spec import trial_config
    from lgd_ray.tune.trainable import param_space

    s = parse_sweep(LEVERS)
    assert list(s.variants) == ["lgd", "rank-only", "gated"] and s.trials == 6 and s.num_samples == 1
    space = param_space(s)
    assert space["variant"] == {"grid_search": ["lgd", "rank-only", "gated"]}
    assert space["seed"] == {"grid_search": [0, 1]}
    cfg = trial_config(s, {"seed": 1}, "gated")
    assert (cfg.seed, cfg.distill.gate, cfg.distill.lam) == (1, 0.5, s.base.distill.lam)
    assert trial_config(s, {"seed": 0}, "lgd").hash() == s.base.hash()  # {} is the base itself
    assert load_sweep("jobs/sweep_levers.yaml").trials == 26  # the shipped ablation: 13 variants × 2 seeds
    assert load_sweep("jobs/sweep_flop_cuts.yaml").trials == 6
    assert load_sweep("jobs/sweep_photo_clip.yaml").trials == 8
    guidance = load_sweep("jobs/sweep_photo_guidance.yaml")  # selection alone vs LGD, seed for seed
    assert guidance.trials == 10
    assert load_sweep("jobs/sweep_unguided_candidates.yaml").trials == 4
    band = load_sweep("jobs/sweep_photo_select_band.yaml")  # the photos' choices on a select band of their own
    assert band.trials == 12 and band.base.data.select_split == "select"
    assert trial_config(band, {"seed": 0}, "unguided-1").distill.unguided_candidates == 1
    travel = load_sweep("jobs/sweep_time_travel.yaml")
    assert travel.trials == 8
    assert (trial_config(travel, {"seed": 0}, "time-travel-exact").distill.gate,
            trial_config(travel, {"seed": 0}, "time-travel").distill.time_travel) == (0.0, 1)
    assert load_sweep("jobs/sweep_photo_time_travel.yaml").trials == 12
    steps = load_sweep("jobs/sweep_photo_generator_steps.yaml")  # the generator's own row, two lengths
    assert steps.trials == 8 and trial_config(steps, {"seed": 0}, "steps-6000").generator.path.endswith("6000/ema")
    sampler = load_sweep("jobs/sweep_photo_scheduler.yaml")  # DDIM against DDPM, row for row
    assert sampler.trials == 24 and trial_config(sampler, {"seed": 0}, "lgd-ddim").hash() == sampler.base.hash()
    ddpm = trial_config(sampler, {"seed": 0}, "lgd-ddpm")
    assert (ddpm.generator.scheduler, ddpm.generator.num_steps, ddpm.distill.window) == ("ddpm", 25, sampler.base.distill.window)
    k3 = trial_config(sampler, {"seed": 3}, "lgd-ddpm")  # the κ = 1 sweep is these trials with κ = 1, nothing else
    k3.distill.k = 1
    assert trial_config(load_sweep("jobs/sweep_photo_k.yaml"), {"seed": 3}, "lgd-k1-ddpm").hash() == k3.hash()
    rank, lgd = trial_config(guidance, {"seed": 2}, "rank-only"), trial_config(guidance, {"seed": 2}, "lgd")
    assert (rank.distill.lam, rank.distill.gamma, rank.distill.k, rank.distill.gate) == (0.0, 0.0, lgd.distill.k, lgd.distill.gate)


@pytest.mark.parametrize("tree, field", [
    ({**LEVERS, "variants": {"bad": {"distill.gaet": 0.5}}}, "variants.bad.distill.gaet"),
    ({**LEVERS, "variants": {"bad": {"distill.gate": 1.5}}}, "variants.bad.distill.gate"),
    ({**LEVERS, "variants": {"bad": {"distill.prune_at": 10, "distill.prune_keep": 3}}}, "variants.bad"),
    ({**LEVERS, "variants": ["lgd"]}, "variants"),
    ({**LEVERS, "space": {"distill.lam": {"uniform": [0.0, 1.0]}}}, "space.distill.lam"),  # grid needs choices
    ({**LEVERS, "search": "optuna"}, "variants"),
    ({**LEVERS, "metric": "test_acc"}, "metric"),
])
def test_bad_ablation_names_the_field(tree, field):
    with pytest.raises(UserError) as e:
        parse_sweep(tree)
    assert e.value.field == field


def test_variants_are_compared_over_generation_seeds():
    """The table's arithmetic: mean over seeds × eval seeds, SE from core.evaluate.mean_se, z against the first."""
    from lgd_ray.core.evaluate import mean_se
    from lgd_ray.tune.results import group_rows

    s = parse_sweep(LEVERS)
    accs = {("lgd", 0): [0.90, 0.92], ("lgd", 1): [0.94, 0.96], ("gated", 0): [0.97, 0.97], ("gated", 1): [0.95, 0.99]}
    rows = [{"variant": v, "params": {"seed": seed}, "evaluation": {"acc": sum(a) / 2, "accs": a, "fidelity": 0.9}}
            for (v, seed), a in accs.items()] + [{"variant": "rank-only", "params": {"seed": 0}, "evaluation": None}]
    groups = group_rows(rows, s)
    assert [g["variant"] for g in groups] == ["lgd", "gated"]  # the sweep's order; unfinished trials left out
    lgd, gated = groups
    assert lgd["mean"] == pytest.approx(0.93) and gated["mean"] == pytest.approx(0.97)
    # lgd: the seed means 0.91 and 0.95 differ more than the eval seeds within a seed: s_b²/G = 0.0004
    assert lgd["se"] == pytest.approx(0.02)
    # gated: equal seed means (0.97, 0.97), so the within-seed floor: s_w² = 0.0004, / (2 × 2)
    assert gated["se"] == pytest.approx(0.01)
    assert gated["z"] == pytest.approx(0.04 / (0.02 ** 2 + 0.01 ** 2) ** 0.5)
    assert mean_se([[0.5, 0.7]]) == pytest.approx((0.6, 0.1))  # one seed: the evaluation noise alone


def test_an_ablation_of_unguided_trials_has_a_best_variant(tmp_path):
    """Unguided trials train no student, so they report no stage accuracy; the sweep still has a best
    variant (by eval acc) and is not taken for one whose every trial failed."""
    from lgd_ray.tune.results import write_results

    s = parse_sweep({**LEVERS, "variants": {"a": {"distill.lam": 0.0, "distill.k": 1}, "b": {"distill.lam": 0.0, "distill.k": 1, "generator.cfg_scale": 2.0}}})
    rows = [{"trial_id": f"t{i}", "variant": v, "params": {"seed": seed}, "acc": {}, "final_acc": None, "stages_done": 0,
             "status": "completed", "error": None,
             "evaluation": {"acc": acc, "accs": [acc, acc], "fidelity": 0.98}}
            for i, (v, seed, acc) in enumerate([("a", 0, 0.90), ("a", 1, 0.92), ("b", 0, 0.95), ("b", 1, 0.93)])]
    summary = write_results(str(tmp_path), s, rows)
    assert summary["best"]["variant"] == "b" and summary["best"]["eval_acc"] == pytest.approx(0.94)
    assert "Best: b" in (tmp_path / "trials.md").read_text() and (tmp_path / "best.yaml").exists()


@pytest.mark.slow
def test_an_ablation_chooses_on_the_selection_split(ray_session, tiny_generator_dir, reference_file, tmp_path):
    """End to end: two variants × two generation seeds, each trial's finished set evaluated on the
    selection split (engine.eval_tasks.evaluate_on_selection); the grouped table and best.yaml follow from them."""
    import yaml

    # the ungated base pinned, as jobs/sweep_levers.yaml does: the gate is on by default
    tree = {**LEVERS, "variants": {"lgd": {"distill.gate": 0.0}, "gated": {"distill.gate": 0.5}}}
    s = parse_sweep(tree, tiny_sweep_overrides(tiny_generator_dir, reference_file) + ["eval.epochs=3", "eval.seeds=[0,1]"])
    summary = run_sweep(s, str(tmp_path / "out"), progress=False)
    assert summary["status"] == {"completed": 4}
    groups = summary["groups"]
    assert [g["variant"] for g in groups] == ["lgd", "gated"] and all(len(g["seeds"]) == 2 for g in groups)
    md = (tmp_path / "out" / "trials.md").read_text()
    assert "By variant, over generation seeds" in md and "| gated |" in md
    best = max(groups, key=lambda g: g["mean"])
    cfg = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert cfg["distill"]["gate"] == (0.5 if best["variant"] == "gated" else 0.0)


def test_the_demo_over_generation_seeds_states_lgds_margin_in_standard_errors():
    from lgd_ray.apps.demo import combine_seeds, seeds_table

    def res(accs, fid):
        return {"final_acc": accs, "ipc": 10, "reference_acc_on_set": fid}

    per = {0: {"LGD": res([0.96, 0.98], 0.9), "rank": res([0.94, 0.94], 0.97)},
           1: {"LGD": res([0.98, 1.00], 0.8), "rank": res([0.93, 0.95], 0.95)}}
    c = combine_seeds(per, "LGD")
    assert c["LGD"]["mean"] == pytest.approx(0.98) and c["rank"]["mean"] == pytest.approx(0.94)
    assert c["LGD"]["se"] == pytest.approx(0.01)  # seed means 0.97, 0.99: s_b²/G = 0.0001
    assert c["LGD"]["fidelity"] == pytest.approx(0.85)
    assert c["rank"]["lgd_margin"] == pytest.approx(0.04)
    assert c["rank"]["lgd_margin_z"] == pytest.approx(0.04 / (0.01 ** 2 + c["rank"]["se"] ** 2) ** 0.5)
    assert "| rank | 10 | 94.0 ± " in seeds_table(c, 2, 2, "LGD")


def test_rows_that_move_together_between_generation_seeds_are_compared_paired():
    """Rows of one generation seed share its seed increment, its noises and the eval seeds' student
    inits, so a seed that is bad for one is bad for all: the unpaired z drowns a steady margin in that
    swing, the paired z measures the SE on the differences themselves."""
    from lgd_ray.apps.demo import combine_seeds, seeds_table
    from lgd_ray.core.evaluate import mean_se

    def res(accs):
        return {"final_acc": accs, "ipc": 10, "reference_acc_on_set": None}

    per = {0: {"LGD": res([0.59, 0.61]), "rank": res([0.58, 0.58])},
           1: {"LGD": res([0.79, 0.81]), "rank": res([0.78, 0.78])}}
    c = combine_seeds(per, "LGD")["rank"]
    assert c["lgd_margin"] == pytest.approx(0.02) and c["lgd_margin_paired"] == pytest.approx(0.02)
    assert c["lgd_margin_z"] == pytest.approx(0.02 / (0.1 ** 2 + 0.1 ** 2) ** 0.5)  # each row's SE 0.1: the swing
    # differences 0.01, 0.03 in both seeds: no spread between seeds, the within-seed floor √(0.0002/4)
    assert c["lgd_margin_paired_se"] == pytest.approx(0.0002 ** 0.5 / 2)
    assert c["lgd_margin_z_paired"] == pytest.approx(0.02 / (0.0002 ** 0.5 / 2)) and c["lgd_margin_z_paired"] > 2
    assert (c["lgd_margin_paired"], c["lgd_margin_paired_se"]) == pytest.approx(mean_se([[0.01, 0.03], [0.01, 0.03]]))
    assert "| rank | 10 | 68.0 ± 10.0 | +2.0 (+0.1) | +2.0 (+2.8) |" in seeds_table(combine_seeds(per, "LGD"), 2, 2, "LGD")
    # a seed where the row wins instead shows up as spread between seeds, and the paired z falls
    per[1]["rank"] = res([0.84, 0.84])
    flipped = combine_seeds(per, "LGD")["rank"]
    assert flipped["lgd_margin_paired"] == pytest.approx(-0.01) and abs(flipped["lgd_margin_z_paired"]) < 1


def test_random_reals_further_draws_join_its_mean_and_se_and_nothing_else():
    """A multi-seed demo evaluates random real on more draws than there are generation seeds: they join
    its mean and SE (so LGD's margin over it), the generated rows and every fidelity stay the seeds'."""
    from lgd_ray.apps.demo import combine_seeds, extra_draw_seeds, seeds_table
    from lgd_ray.core.evaluate import mean_se

    def res(accs, fid=None):
        return {"final_acc": accs, "ipc": 10, "reference_acc_on_set": fid}

    per = {0: {"LGD": res([0.96, 0.98], 0.9), "random": res([0.90, 0.92], 1.0)},
           1: {"LGD": res([0.98, 1.00], 0.8), "random": res([0.96, 0.98], 1.0)}}
    more = {2: res([0.93, 0.95]), 3: res([0.94, 0.94])}
    alone, joined = combine_seeds(per, "LGD"), combine_seeds(per, "LGD", extra={"random": more})
    assert joined["LGD"] == alone["LGD"]
    assert (joined["random"]["mean"], joined["random"]["se"]) == pytest.approx(
        mean_se([[0.90, 0.92], [0.96, 0.98], [0.93, 0.95], [0.94, 0.94]]))
    assert joined["random"]["se"] < alone["random"]["se"] and joined["random"]["fidelity"] == 1.0
    assert joined["random"]["lgd_margin_z"] > alone["random"]["lgd_margin_z"]
    assert joined["random"]["lgd_margin_z_paired"] == alone["random"]["lgd_margin_z_paired"]  # no partner for a draw
    table = seeds_table(joined, 2, 2, "LGD")
    assert "| random (4 draws) | 10 | 94.0 ± " in table and "| LGD | 10 |" in table
    assert extra_draw_seeds([0, 2], 5) == [1, 3, 4] and extra_draw_seeds([0, 1], 2) == []
