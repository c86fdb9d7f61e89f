"""`lgd-ray tune`: a Ray Tune sweep over the LGD hyper-parameters (λ, ω, κ, γ, window) with ASHA; the
trainable, the resources a trial holds, and the sweep driver (its file is parsed by tune/spec.py).

Each trial is a full `distill` of the base config with the trial's parameters applied, written into
`<out>/trials/<trial_id>/`; after every stage the student's selection-split accuracy (select_acc) is reported to Tune
(`stage` = i + 1 after θ_i), so ASHA stops poor trials after one or two stages.

Resources follow Ray's pattern for Ray Train V2 inside Tune: the trial is a light driver, and what it
starts reserves its own resources: the sampler actors (`ray.samplers` × {CPU: cpus_per_sampler, GPU:
gpus_per_sampler}) while sampling, then a Ray Train run (`ray.train_workers` × {CPU: 1, GPU:
gpus_per_train_worker}, in Train's own placement group) while the student trains; the pipeline
closes the samplers before training, so the two phases never overlap. A trial-wide placement group
cannot hold both: Train V2 always builds its worker group from the cluster's free resources, never
from the trial's bundles, so a trial group that held the training CPUs/GPUs would starve its own
trainer (Tune's old `Tuner(trainer)` reservation is gone with Train V1). Instead the number of trials
in flight is capped (`max_concurrent`) so that the sum of their peaks (head + the larger phase) fits
`ray.cluster_resources()`: every phase of every running trial can then always be placed, and no
trial waits on another.
"""

from __future__ import annotations

import json
import math
import os
import time

from ..core.config import Config, from_dict
from ..core.errors import UserError
from ..engine.run import localize_paths
from .spec import VARIANT, Sweep, decode_params, trial_config

HEAD = {"CPU": 0.01}  # the trial's own actor: it only drives the pipeline
EXPERIMENT = "tune"  # Tune's experiment folder inside --out


# ----------------------------------------------------------------------------------------- resources


def trial_resources(cfg: Config) -> dict:
    """What one trial holds: the head always; the sampler pool or the Ray Train run, one at a time.

    Returns {"head": {...}, "sampling": {...}, "training": {...}, "peak": {...}, "bundles": [...]}:
    `bundles` is the placement-group shape a trial would reserve (head + one per sampler actor),
    `peak` what must be free for the trial never to wait on its own children.
    """
    r = cfg.ray
    sampler = {"CPU": float(r.cpus_per_sampler), "GPU": float(r.gpus_per_sampler)}
    worker = {"CPU": float(r.cpus_per_train_worker), "GPU": float(r.gpus_per_train_worker)}
    sampling = {k: v * r.samplers for k, v in sampler.items()}
    training = {k: v * r.train_workers for k, v in worker.items()}
    peak = {k: HEAD.get(k, 0.0) + max(sampling[k], training[k]) for k in ("CPU", "GPU")}
    bundles = [dict(HEAD)] + [{k: v for k, v in sampler.items() if v > 0} for _ in range(r.samplers)]
    return {"head": dict(HEAD), "sampling": sampling, "training": training,
            "peak": {k: v for k, v in peak.items() if v > 0}, "bundles": bundles}


def placement_group_factory(cfg: Config):
    """The trial-wide PlacementGroupFactory (head + sampler bundles). Not used to run trials: Ray Train
    V2 cannot place its workers in it (see the module docstring); kept for clusters without Train."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_resources(cfg)["bundles"])


def max_concurrent(cfg: Config, cluster: dict, num_samples: int) -> int:
    """How many trials' peaks fit into the cluster's resources; a trial that cannot fit is a UserError."""
    peak = trial_resources(cfg)["peak"]
    fits = []
    for k, need in sorted(peak.items(), key=lambda kv: kv[0] != "GPU"):  # the scarcer resource is named first
        have = float(cluster.get(k, 0.0))
        n = math.floor(have / need + 1e-9)
        if n < 1:
            key = "ray.gpus_per_sampler" if k == "GPU" else "ray.samplers"
            raise UserError(key, f"one trial needs {need:g} {k} at its peak but the cluster has {have:g} now",
                            "use fewer sampler actors / train workers per trial or a larger cluster; on an "
                            "autoscaling cluster set max_concurrent in the sweep file")
        fits.append(n)
    return max(1, min([num_samples, *fits]))


# ----------------------------------------------------------------------------------------- trainable


class _DistillRunner:
    """Runs one trial's distill outside the trial's placement group (see the module docstring). An actor,
    so that it dies with its trial when ASHA stops it, taking its samplers and Ray Train run with it;
    threaded, so the trial can collect the per-stage metrics while `run` is busy."""

    def __init__(self):
        self.reports: list[tuple[int, dict]] = []

    def run(self, cfg_dict: dict, out: str, cwd: str, evaluate: bool = False) -> dict:
        from ..engine.distill import distill

        cfg = from_dict(localize_paths(cfg_dict, cwd))
        # one phase at a time (the trial cap counts on it): the samplers close before every training
        summary = distill(cfg, out, progress=False, on_stage=lambda i, m: self.reports.append((i, m)),
                          keep_samplers=False)
        if evaluate:  # the evaluation tasks start once the distill has let go of its resources
            from ..engine.eval_tasks import evaluate_on_selection

            summary["evaluation"] = evaluate_on_selection(cfg, out)
        return summary

    def take(self, start: int) -> list[tuple[int, dict]]:
        return self.reports[start:]


def _trial(config: dict, *, sweep: Sweep, out_root: str, cwd: str) -> None:
    """One Tune trial: a full distill of the base config with this trial's variant and params, reported
    per stage; with metric eval_acc, then the evaluation protocol on the selection split."""
    import ray
    from ray import tune

    cfg = trial_config(sweep, decode_params(sweep.space, config), config.get(VARIANT))
    trial_id = tune.get_context().get_trial_id()
    out = f"{out_root.rstrip('/')}/trials/{trial_id}"
    # Tune captures the trial's children into its one-bundle group; the runner is scheduled outside it
    # ("DEFAULT"), so the samplers and the Ray Train run it starts take the cluster's free resources.
    runner = ray.remote(_DistillRunner).options(num_cpus=0, max_concurrency=2, scheduling_strategy="DEFAULT").remote()
    final = sweep.metric == "eval_acc"
    done = runner.run.remote(cfg.to_dict(), out, cwd, final)
    seen = 0
    nan = float("nan")

    def report_new() -> None:
        nonlocal seen
        for i, m in ray.get(runner.take.remote(seen)):
            tune.report({"stage": i + 1, "select_acc": float(m.get("select_acc", nan)),
                         "select_loss": float(m.get("select_loss", nan)), **({"eval_acc": nan} if final else {})})
            seen += 1

    while not ray.wait([done], timeout=0.5)[0]:
        report_new()
    report_new()
    summary = ray.get(done)  # a failed distill fails the trial with its error
    if final:  # one more report, after the last stage: the finished set's protocol accuracy
        e = summary["evaluation"]
        tune.report({"stage": cfg.distill.stages + 2, "select_acc": nan, "select_loss": nan, "eval_acc": e["acc_mean"],
                     "eval_acc_std": e["acc_std"], "eval_accs": json.dumps(e["accs"]), "fidelity": e["fidelity"]})


def _quiet() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def run_sweep(sweep: Sweep, out: str, *, progress: bool = True) -> dict:
    """Run (or resume) the sweep into `out`; writes trials.csv, trials.md, best.yaml, sweep.png."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    _quiet()
    from ..engine.store import OutputDir

    remote = "://" in out
    out = out.rstrip("/") if remote else os.path.abspath(out)  # s3:// or gs:// like distill's --out
    dest = OutputDir(out)
    exp_dir = f"{out}/{EXPERIMENT}"
    spec = {"base": sweep.base_dict, "space": [[p.key, p.dist, p.values] for p in sweep.space],
            "num_samples": sweep.num_samples, "search": sweep.search, "metric": sweep.metric,
            "asha": [sweep.grace_period, sweep.reduction_factor], "seed": sweep.seed,
            **({"variants": sweep.variants} if sweep.variants else {})}
    old = dest.read_json("sweep.json")
    if old is not None and _spec_key(old) != _spec_key(spec):
        raise UserError("out", f"{out} holds another sweep", "choose another --out")
    restored = tune.Tuner.can_restore(exp_dir)
    if not restored:  # a sweep the cluster cannot hold is refused before anything is written
        concurrent = (min(sweep.max_concurrent, sweep.trials) if sweep.max_concurrent is not None
                      else max_concurrent(sweep.base, ray.cluster_resources(), sweep.trials))
    dest.write_text("sweep.json", json.dumps(spec, indent=1))

    trainable = tune.with_parameters(_trial, sweep=sweep, out_root=out, cwd=os.getcwd())
    trainable = tune.with_resources(trainable, dict(HEAD))
    start = time.time()
    if restored:
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        # max_t past the last report: a trial that survives the last rung ends by itself, after it has
        # sampled its final increment (at max_t ASHA would stop it right after θ_{K-1}'s report)
        # eval_acc is known only when a trial ends: nothing to stop early on (FIFO)
        scheduler = None if sweep.metric == "eval_acc" else ASHAScheduler(
            time_attr="stage", grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor,
            max_t=sweep.stages + 1)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep),
            tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", scheduler=scheduler,
                                        search_alg=search_algorithm(sweep, concurrent),
                                        num_samples=sweep.num_samples),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out, verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    from .results import collect, write_results

    rows = collect(grid, sweep, out)
    summary = write_results(out, sweep, rows)
    summary.update({"restored": restored, "wall_s": round(time.time() - start, 1)})
    return summary


def param_space(sweep: Sweep) -> dict:
    """Tune's param_space: each parameter's domain (every choice a grid axis under search: grid) and,
    with variants, a grid axis over their names, crossed with the rest."""
    from ray import tune

    space = {p.key: tune.grid_search([p._encode(v) for v in p.values]) if sweep.search == "grid" else p.tune_domain()
             for p in sweep.space}
    if sweep.variants:
        space[VARIANT] = tune.grid_search(list(sweep.variants))
    return space


def search_algorithm(sweep: Sweep, concurrent: int):
    """Random search or Optuna's TPE, each capped at `concurrent` trials in flight (Tune ignores
    TuneConfig.max_concurrent_trials once a search algorithm is given: the algorithm holds the cap)."""
    if sweep.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # random and grid: grid_search axes are crossed, random domains drawn, num_samples times over
    return BasicVariantGenerator(max_concurrent=concurrent, random_state=sweep.seed)


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)
