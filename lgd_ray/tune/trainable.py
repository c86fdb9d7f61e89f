"""`lgd-ray tune`: a Ray Tune sweep over the LGD hyper-parameters (λ, ω, κ, γ, window) with ASHA.

Each trial is a full `distill` of the base config with the trial's parameters applied, written into
`<out>/trials/<trial_id>/`; after every stage the student's validation accuracy is reported to Tune
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.config import Config, from_dict, load_config, parse_override, read_yaml, set_key, validate
from .core.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "choice")
SEARCHERS = ("random", "optuna")
HEAD = {"CPU": 0.01}  # the trial's own actor: it only drives the pipeline
EXPERIMENT = "tune"  # Tune's experiment folder inside --out


@dataclass
class Param:
    key: str
    dist: str  # uniform | loguniform | choice
    values: list  # [lo, hi] or the choices

    def tune_domain(self):
        from ray import tune

        if self.dist == "uniform":
            return tune.uniform(*self.values)
        if self.dist == "loguniform":
            return tune.loguniform(*self.values)
        return tune.choice([self._encode(v) for v in self.values])

    # Choices that are not scalars (a window [lo, hi]) travel as JSON strings: model-based searchers
    # (Optuna) only take None/bool/int/float/str categories.
    @staticmethod
    def _encode(v: Any) -> Any:
        return json.dumps(v) if isinstance(v, (list, dict)) else v

    def decode(self, v: Any) -> Any:
        if self.dist == "choice" and isinstance(v, str) and any(isinstance(c, (list, dict)) for c in self.values):
            return json.loads(v)
        return v


def decode_params(space: list[Param], config: dict) -> dict:
    """A trial's sampled config → config-key values (JSON-encoded choices decoded)."""
    return {p.key: p.decode(config[p.key]) for p in space if p.key in config}


@dataclass
class Sweep:
    base: Config
    space: list[Param]
    num_samples: int = 4
    search: str = "random"
    metric: str = "val_acc"
    grace_period: int = 2
    reduction_factor: int = 2
    seed: int = 0
    source: str = ""
    base_dict: dict = field(default_factory=dict)

    @property
    def stages(self) -> int:
        return self.base.distill.stages


def config_with(base: Config, params: dict[str, Any]) -> Config:
    cfg = from_dict(base.to_dict())
    for k, v in params.items():
        set_key(cfg, k, v)
    validate(cfg)
    return cfg


def _check_value(base: Config, key: str, value: Any, what: str) -> None:
    """The value must be a valid setting of the key (type and range), else a UserError naming space.<key>."""
    try:
        config_with(base, {key: value})
    except UserError as e:  # also when another field breaks with it (e.g. window vs generator.num_steps)
        raise UserError(f"space.{key}", f"{what} {value!r} is invalid: {e.problem}", e.fix) from None


def parse_param(base: Config, key: str, spec: Any) -> Param:
    field_name = f"space.{key}"
    try:
        set_key(from_dict(base.to_dict()), key, _probe(base, key))
    except UserError as e:
        raise UserError(field_name, "unknown parameter (not a config key)", e.fix) from None
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(field_name, f"expected one distribution, got {spec!r}",
                        "write e.g. {loguniform: [0.02, 0.5]}, {uniform: [0, 1]} or {choice: [1, 3, 5]}")
    dist, values = next(iter(spec.items()))
    if dist not in DISTRIBUTIONS:
        raise UserError(field_name, f"unknown distribution {dist!r}", f"choose one of {', '.join(DISTRIBUTIONS)}")
    if dist == "choice":
        if not isinstance(values, list) or not values:
            raise UserError(field_name, "choice needs a non-empty list", "write e.g. {choice: [1, 3, 5]}")
        for v in values:
            _check_value(base, key, v, "choice")
        return Param(key, dist, list(values))
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise UserError(field_name, f"{dist} needs [lo, hi], got {values!r}", f"write e.g. {{{dist}: [0.05, 0.5]}}")
    lo, hi = float(values[0]), float(values[1])
    if lo >= hi:
        raise UserError(field_name, f"empty or inverted range [{values[0]}, {values[1]}]", "give lo < hi")
    if dist == "loguniform" and lo <= 0:
        raise UserError(field_name, f"loguniform needs lo > 0, got {values[0]}", "use uniform to include 0")
    current = _probe(base, key)
    if isinstance(current, int) and not isinstance(current, bool):
        raise UserError(field_name, f"{dist} draws real numbers but {key} is an integer", "use {choice: [...]}")
    for v in (lo, hi):
        _check_value(base, key, v, "bound")
    return Param(key, dist, [lo, hi])


def _probe(base: Config, key: str) -> Any:
    """The key's current value (for checking that the key exists), or None when it does not."""
    obj: Any = base
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return obj


def _resolve_base(base: Any, sweep_path: Path, overrides: list[str]) -> Config:
    if base is None:
        return load_config(None, overrides)
    if isinstance(base, dict):
        try:
            cfg = from_dict(base)
        except UserError as e:
            raise UserError(f"base.{e.field}", e.problem, e.fix) from None
        for text in overrides:
            set_key(cfg, *parse_override(text))
        validate(cfg)
        return cfg
    if isinstance(base, str):
        for p in (Path(base), sweep_path.parent / base):
            if p.is_file():
                return load_config(p, overrides)
        raise UserError("base", f"config file not found: {base}", "give a distill config path (e.g. jobs/demo.yaml) or an inline mapping")
    raise UserError("base", f"expected a config path or mapping, got {type(base).__name__}", "e.g. base: jobs/demo.yaml")


def _int_field(tree: dict, name: str, default: int, minimum: int = 1, prefix: str = "") -> int:
    v = tree.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(prefix + name, f"must be an integer >= {minimum}, got {v!r}", f"e.g. {name}: {default}")
    return v


def parse_sweep(tree: dict, overrides: list[str] | tuple[str, ...] = (), *, source: str = "<inline>") -> Sweep:
    """A sweep mapping (see jobs/sweep_demo.yaml) → Sweep; every mistake is a one-line UserError."""
    if not isinstance(tree, dict):
        raise UserError("sweep", f"{source} must be a mapping", "see jobs/sweep_demo.yaml")
    known = {"base", "overrides", "space", "search", "num_samples", "metric", "asha", "seed"}
    for k in tree:
        if k not in known:
            raise UserError(str(k), "unknown sweep field", f"use {', '.join(sorted(known))}")
    extra = tree.get("overrides") or {}
    if not isinstance(extra, dict):
        raise UserError("overrides", "expected a mapping of config keys", "e.g. overrides: {distill.stages: 3}")
    for k, v in extra.items():  # checked against the config keys here, applied before the command line's
        try:
            set_key(Config(), str(k), v)
        except UserError as e:
            raise UserError(f"overrides.{k}", e.problem, e.fix) from None
    cli = [f"{k}={json.dumps(v)}" for k, v in extra.items()] + list(overrides)
    base = _resolve_base(tree.get("base"), Path(source), cli)
    space_tree = tree.get("space")
    if not isinstance(space_tree, dict) or not space_tree:
        raise UserError("space", "no parameters to sweep", "e.g. space: {distill.lam: {loguniform: [0.02, 0.5]}}")
    space = [parse_param(base, str(k), v) for k, v in space_tree.items()]
    search = tree.get("search", "random")
    if search not in SEARCHERS:
        raise UserError("search", f"unknown searcher {search!r}",
                        "use random or optuna (Optuna's TPE through Ray Tune's OptunaSearch)")
    metric = tree.get("metric", "val_acc")
    if metric != "val_acc":
        raise UserError("metric", f"unknown metric {metric!r}", "use val_acc (the student's validation accuracy per stage)")
    asha = tree.get("asha") or {}
    if not isinstance(asha, dict):
        raise UserError("asha", "expected a mapping", "e.g. asha: {grace_period: 1, reduction_factor: 2}")
    for k in asha:
        if k not in ("grace_period", "reduction_factor"):
            raise UserError(f"asha.{k}", "unknown ASHA field", "use grace_period and reduction_factor")
    # Stage 1 reports θ_0, trained on the shared unguided seed increment: every trial scores the same
    # there, so the first rung that can separate trials is stage 2.
    grace = _int_field(asha, "grace_period", min(2, base.distill.stages), prefix="asha.")
    rf = _int_field(asha, "reduction_factor", 2, minimum=2, prefix="asha.")
    if grace > base.distill.stages:
        raise UserError("asha.grace_period", f"{grace} is more than the {base.distill.stages} stages",
                        "use at most distill.stages")
    seed = tree.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError("seed", f"expected an integer, got {seed!r}", "e.g. seed: 0")
    return Sweep(base=base, space=space, num_samples=_int_field(tree, "num_samples", 4), search=search, metric=metric,
                 grace_period=grace, reduction_factor=rf, seed=seed, source=source, base_dict=base.to_dict())


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    tree = read_yaml(path, "sweep", "jobs/sweep_demo.yaml")
    return parse_sweep(tree, overrides, source=str(path))


# ----------------------------------------------------------------------------------------- resources


def trial_resources(cfg: Config) -> dict:
    """What one trial holds: the head always; the sampler pool or the Ray Train run, one at a time.

    Returns {"head": {...}, "sampling": {...}, "training": {...}, "peak": {...}, "bundles": [...]}:
    `bundles` is the placement-group shape a trial would reserve (head + one per sampler actor),
    `peak` what must be free for the trial never to wait on its own children.
    """
    r = cfg.ray
    sampler = {"CPU": float(r.cpus_per_sampler), "GPU": float(r.gpus_per_sampler)}
    worker = {"CPU": 1.0, "GPU": float(r.gpus_per_train_worker)}
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
    for k, need in peak.items():
        have = float(cluster.get(k, 0.0))
        n = math.floor(have / need + 1e-9)
        if n < 1:
            key = "ray.gpus_per_sampler" if k == "GPU" else "ray.samplers"
            raise UserError(key, f"one trial needs {need:g} {k} at its peak but the cluster has {have:g}",
                            "use fewer sampler actors / train workers per trial or a larger cluster")
        fits.append(n)
    return max(1, min([num_samples, *fits]))


# ----------------------------------------------------------------------------------------- trainable


class _DistillRunner:
    """Runs one trial's distill outside the trial's placement group (see the module docstring). An actor,
    so that it dies with its trial when ASHA stops it, taking its samplers and Ray Train run with it;
    threaded, so the trial can collect the per-stage metrics while `run` is busy."""

    def __init__(self):
        self.reports: list[tuple[int, dict]] = []

    def run(self, cfg_dict: dict, out: str, cwd: str) -> dict:
        from .pipeline import distill

        os.chdir(cwd)  # config paths are relative to the caller's folder
        return distill(from_dict(cfg_dict), out, progress=False, on_stage=lambda i, m: self.reports.append((i, m)))

    def take(self, start: int) -> list[tuple[int, dict]]:
        return self.reports[start:]


def _trial(config: dict, *, base: dict, space: list[Param], out_root: str, cwd: str, metric: str) -> None:
    """One Tune trial: a full distill of the base config with this trial's params, reported per stage."""
    import ray
    from ray import tune

    cfg = config_with(from_dict(base), decode_params(space, config))
    trial_id = tune.get_context().get_trial_id()
    out = os.path.join(out_root, "trials", trial_id)
    # Tune captures the trial's children into its one-bundle group; the runner is scheduled outside it
    # ("DEFAULT"), so the samplers and the Ray Train run it starts take the cluster's free resources.
    runner = ray.remote(_DistillRunner).options(num_cpus=0, max_concurrency=2, scheduling_strategy="DEFAULT").remote()
    done = runner.run.remote(cfg.to_dict(), out, cwd)
    seen = 0

    def report_new() -> None:
        nonlocal seen
        for i, m in ray.get(runner.take.remote(seen)):
            tune.report({"stage": i + 1, metric: float(m.get("val_acc", float("nan"))),
                         "val_loss": float(m.get("val_loss", float("nan")))})
            seen += 1

    while not ray.wait([done], timeout=0.5)[0]:
        report_new()
    report_new()
    ray.get(done)  # a failed distill fails the trial with its error


def _quiet() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def run_sweep(sweep: Sweep, out: str, *, progress: bool = True) -> dict:
    """Run (or resume) the sweep into `out`; writes trials.csv, trials.md, best.yaml, sweep.png."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    _quiet()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    exp_dir = os.path.join(out, EXPERIMENT)
    saved = os.path.join(out, "sweep.json")
    spec = {"base": sweep.base_dict, "space": [[p.key, p.dist, p.values] for p in sweep.space],
            "num_samples": sweep.num_samples, "search": sweep.search, "metric": sweep.metric,
            "asha": [sweep.grace_period, sweep.reduction_factor], "seed": sweep.seed}
    if os.path.isfile(saved):
        old = json.load(open(saved))
        if _spec_key(old) != _spec_key(spec):
            raise UserError("out", f"{out} holds another sweep", "choose another --out")
    with open(saved, "w") as f:
        json.dump(spec, f, indent=1)

    trainable = tune.with_parameters(_trial, base=sweep.base_dict, space=sweep.space, out_root=out, cwd=os.getcwd(),
                                     metric=sweep.metric)
    trainable = tune.with_resources(trainable, dict(HEAD))
    start = time.time()
    restored = tune.Tuner.can_restore(exp_dir)
    if restored:
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        concurrent = max_concurrent(sweep.base, ray.cluster_resources(), sweep.num_samples)
        # max_t past the last report: a trial that survives the last rung ends by itself, after it has
        # sampled its final increment (at max_t ASHA would stop it right after θ_{K-1}'s report)
        scheduler = ASHAScheduler(time_attr="stage", grace_period=sweep.grace_period,
                                  reduction_factor=sweep.reduction_factor, max_t=sweep.stages + 1)
        tuner = tune.Tuner(
            trainable,
            param_space={p.key: p.tune_domain() for p in sweep.space},
            tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", scheduler=scheduler,
                                        search_alg=search_algorithm(sweep, concurrent),
                                        num_samples=sweep.num_samples),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out, verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    from .sweep_results import collect, write_results

    rows = collect(grid, sweep, out)
    summary = write_results(out, sweep, rows)
    summary.update({"restored": restored, "wall_s": round(time.time() - start, 1)})
    return summary


def search_algorithm(sweep: Sweep, concurrent: int):
    """Random search or Optuna's TPE, each capped at `concurrent` trials in flight (Tune ignores
    TuneConfig.max_concurrent_trials once a search algorithm is given: the algorithm holds the cap)."""
    if sweep.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=concurrent, random_state=sweep.seed)


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)
