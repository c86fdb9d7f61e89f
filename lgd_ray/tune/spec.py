"""A sweep file: the base config, the search space (λ, ω, κ, γ, window, ...), the searcher and ASHA's
rungs, parsed and checked into a `Sweep`; `config_with` applies one trial's parameters to the base.
Every mistake is a one-line UserError naming the sweep field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import (
    Config,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    set_key,
    validate,
)
from ..core.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "choice")
SEARCHERS = ("random", "optuna", "grid")
# select_acc: θ_i's accuracy on the selection split after every stage (ASHA stops trials early);
# eval_acc: the evaluation protocol (a fresh eval.arch per eval seed, trained on the finished set)
#   scored on the selection split once the trial ends, with θ*'s accuracy on the set (label fidelity)
METRICS = ("select_acc", "eval_acc")
VARIANT = "variant"  # the Tune parameter that names a trial's variant (a row of `variants:`)


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
    metric: str = "select_acc"  # θ_i's accuracy on the selection split (never the test split)
    grace_period: int = 2
    reduction_factor: int = 2
    seed: int = 0
    source: str = ""
    base_dict: dict = field(default_factory=dict)
    # trials in flight; None = as many peaks as the cluster holds now (an autoscaling cluster that starts
    # with no GPU workers needs it: trials then wait for the nodes the autoscaler adds)
    max_concurrent: int | None = None
    # named sets of overrides, each tried with every point of the space (an ablation: one lever per
    # variant, `seed` in the space for the generation seeds); {} = no variants
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stages(self) -> int:
        return self.base.distill.stages

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: num_samples times the grid (variants × grid choices)."""
        n = self.num_samples * max(1, len(self.variants))
        for p in self.space:
            if self.search == "grid":
                n *= len(p.values)
        return n


def config_with(base: Config, params: dict[str, Any]) -> Config:
    cfg = from_dict(base.to_dict())
    for k, v in params.items():
        set_key(cfg, k, v)
    validate(cfg)
    return cfg


def trial_config(sweep: Sweep, params: dict[str, Any], variant: str | None) -> Config:
    """The base, then the trial's variant (if any), then its sampled parameters."""
    return config_with(sweep.base, {**sweep.variants.get(variant or "", {}), **params})


def _parse_variants(base: Config, tree: Any) -> dict[str, dict[str, Any]]:
    if tree is None:
        return {}
    if not isinstance(tree, dict) or not tree:
        raise UserError("variants", "expected a mapping of names to overrides",
                        "e.g. variants: {lgd: {}, rank-only: {distill.lam: 0.0}}")
    out = {}
    for name, overrides in tree.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise UserError(f"variants.{name}", f"expected a mapping of config keys, got {overrides!r}",
                            "e.g. {distill.gate: 0.5}, or {} for the base itself")
        for key, value in overrides.items():
            try:
                config_with(base, {str(key): value})
            except UserError as e:
                raise UserError(f"variants.{name}.{key}", e.problem, e.fix) from None
        try:
            config_with(base, {str(k): v for k, v in overrides.items()})
        except UserError as e:  # each key fine alone, not together (e.g. prune_keep with κ)
            raise UserError(f"variants.{name}", e.problem, e.fix) from None
        out[str(name)] = {str(k): v for k, v in overrides.items()}
    return out


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
    known = {"base", "overrides", "space", "search", "num_samples", "metric", "asha", "seed", "max_concurrent",
             "variants"}
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
    variants = _parse_variants(base, tree.get("variants"))
    space_tree = tree.get("space") or {}
    if not isinstance(space_tree, dict) or (not space_tree and not variants):
        raise UserError("space", "no parameters to sweep", "e.g. space: {distill.lam: {loguniform: [0.02, 0.5]}}")
    space = [parse_param(base, str(k), v) for k, v in space_tree.items()]
    search = tree.get("search", "random")
    if search not in SEARCHERS:
        raise UserError("search", f"unknown searcher {search!r}",
                        "use random, optuna (Optuna's TPE through Ray Tune's OptunaSearch) or grid (every choice)")
    if search == "grid":
        for p in space:
            if p.dist != "choice":
                raise UserError(f"space.{p.key}", f"search: grid needs choices, got {p.dist}",
                                "write {choice: [...]} (a grid tries every value), or use search: random")
    if search == "optuna" and variants:
        raise UserError("variants", "Optuna's searcher cannot cross variants with its proposals",
                        "use search: grid or random with variants")
    metric = tree.get("metric", "select_acc")
    if metric not in METRICS:
        raise UserError("metric", f"unknown metric {metric!r}",
                        "use select_acc (the student's accuracy per stage on the selection split carved from train) "
                        "or eval_acc (the evaluation protocol on the finished set, on the selection split)")
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
    cap = _int_field(tree, "max_concurrent", 1) if tree.get("max_concurrent") is not None else None
    return Sweep(base=base, space=space, num_samples=_int_field(tree, "num_samples", 1 if search == "grid" or variants else 4), search=search, metric=metric,
                 grace_period=grace, reduction_factor=rf, seed=seed, source=source, base_dict=base.to_dict(),
                 max_concurrent=cap, variants=variants)


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    tree = read_yaml(path, "sweep", "jobs/sweep_demo.yaml")
    return parse_sweep(tree, overrides, source=str(path))
