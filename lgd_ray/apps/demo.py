"""`lgd-ray demo`: the small-scale replication of LGD's claims, on the embedded digits or any image folder.

Six sets at equal IPC (but the last), each trained from scratch over the eval seeds and tested on real val:
random real (a seeded random subset), the unguided generator run through the same incremental plan
(λ = γ = 0, κ = 1: the DiT baseline), rank selection alone (λ = γ = 0, the run's κ: what selection buys
without any guidance), LGD without rank selection (κ = 1), LGD (κ as configured), and the full real
training set. For every generated method: redundancy between increments, accuracy after
each stage, and data cartography. With data other than the digits and no generator given, a generator
is first trained on the data (`lgd-ray train-generator`'s code), so the claims can be checked anywhere.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..core.config import Config, DistillConfig
from ..core.data import ImageSet, load_part, materialize, random_subset_per_class
from ..core.errors import UserError
from ..engine.distill import distill
from ..engine.eval_tasks import evaluate_sets, load_teacher, reference_fidelity
from ..engine.run import log, resolve_classes_only, resolve_run, with_named_sampler
from ..engine.sampler_actors import load_state
from ..engine.store import OutputDir, load_weights, stage_name
from .diagnostics import cartography_report, progression_plot, redundancy
from .report import results_table

UNGUIDED, LGD_K1, RANDOM, FULL = "unguided generator", "LGD κ=1 (no rank selection)", "random real", "full real data"


def rank_only_name(k: int) -> str:
    return f"rank selection only (λ=0, κ={k})"


def variant(cfg: Config, **distill) -> Config:
    c = copy.deepcopy(cfg)
    for key, value in distill.items():
        setattr(c.distill, key, value)
    return c


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def ipc_after(d: DistillConfig, stage: int) -> int:
    """Images per class of D_stage = I_0 ∪ … ∪ I_stage (`d`: the config's distill section)."""
    return d.ipc_seed + stage * d.ipc_per_stage


def real_parts(cfg: Config, class_ids: list[str]) -> tuple[ImageSet, ImageSet]:
    """(train, test) real images: train less its selection split, which random real, full real and θ*
    draw from; test, which every figure of the table is read on."""
    return (materialize(load_part(cfg.data, "train", class_ids)),
            materialize(load_part(cfg.data, "test", class_ids)))


def random_real_order(train_real: ImageSet, ipc: int, seed: int) -> list[int]:
    """Random real's draw for run seed `seed`: `ipc` seeded indices per class (core.data)."""
    return random_subset_per_class(train_real.labels, ipc, seed, num_classes=train_real.num_classes)


CURVE_SEEDS = 2  # eval seeds of the accuracy-per-stage curve's points before the last stage
PROBE_STEPS = 5  # training steps timed to estimate the generator's training time before it starts


def generator_step_seconds(data, settings, gpus: float) -> tuple[float, str]:
    """Seconds per training step of the generator where it will train (a short timed probe in the same
    kind of Ray task, the first step's warm-up included, so the estimate errs long), and that device."""
    from dataclasses import replace

    from ..engine.generator_job import run_generator_training

    probe = run_generator_training(data, replace(settings, steps=PROBE_STEPS, max_minutes=None), gpus=gpus,
                                   progress=False, save=False)
    info = probe["train"]
    return float(info["seconds"]) / max(1, int(info["steps_done"])), probe["placement"]["device"]


def duration(seconds: float) -> str:
    """A rough duration for a person: 40 s, 12 min, 2 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def ensure_generator(cfg: Config, out_uri: str, steps: int, progress: bool, minutes: float | None = None) -> Config:
    """A user's image folder with the built-in digits generator: train one on the folder first.

    That training can take most of the demo's time (20+ minutes on 2 cores for 10 classes at 16 px), so its
    estimate is printed before it starts, `--quiet` or not, with the two ways to shorten it."""
    if cfg.data.name == "digits" or cfg.generator.path != "builtin:digits":
        return cfg
    from ..core.train_generator import GeneratorTrainSettings, flips_by_default
    from ..engine.generator_job import run_generator_training, write_folder

    if steps < 3:
        raise UserError("--generator-steps", f"must be >= 3, got {steps}", "give e.g. --generator-steps 1000")
    if minutes is not None and not minutes > 0:
        raise UserError("--generator-minutes", f"must be positive, got {minutes}", "give e.g. --generator-minutes 5")
    path = join(out_uri, "generator")
    if not (Path(path) / "lgd_ray.json").is_file():
        class_ids = resolve_classes_only(cfg)
        data = materialize(load_part(cfg.data, "train", class_ids), progress=progress)
        settings = GeneratorTrainSettings(steps=steps, seed=cfg.seed, max_minutes=minutes,
                                          flip=flips_by_default(cfg.data.name))
        gpus = cfg.ray.task_gpus()
        per_step, device = generator_step_seconds(data, settings, gpus)
        total = steps * per_step if minutes is None else min(steps * per_step, 60 * minutes)
        budget = "" if minutes is None or 60 * minutes >= steps * per_step else \
            f", stopped by --generator-minutes {minutes:g} after about {int(60 * minutes / per_step)} steps"
        log(True, f"training a generator on {cfg.data.root} first ({len(data)} images, {len(class_ids)} classes, "
                  f"{data.image_size} px, {steps} steps at {per_step:.2f} s/step on {device}{budget}): about "
                  f"{duration(total)}; --generator-steps N or --generator-minutes M shortens it")
        done = run_generator_training(data, settings, gpus=gpus, progress=progress,
                                      extra_meta={"data": {"name": cfg.data.name, "root": cfg.data.root}})
        write_folder(done["files"], path)
    c = copy.deepcopy(cfg)
    c.generator.path = path
    return c


def run_demo(cfg: Config, out_uri: str, *, overwrite: bool = False, progress: bool = True,
             generator_steps: int = 3000, generator_minutes: float | None = None, full_epochs: int = 30,
             teacher: torch.nn.Module | None = None) -> dict:
    """`teacher`: the soft protocol's (eval.protocol=soft), when the caller loaded it already.
    `generator_steps` / `generator_minutes`: the training of a generator for data other than the digits."""
    cfg = with_named_sampler(ensure_generator(cfg, out_uri, generator_steps, progress, generator_minutes))
    run = resolve_run(cfg)
    if teacher is None:
        teacher = load_teacher(cfg.eval, run.class_ids, cfg.data.image_size, run.in_channels)
    d = cfg.distill
    stages = list(range(d.stages + 1))
    ipc = ipc_after(d, d.stages)
    lgd = lgd_name(cfg)
    rank_only = rank_only_name(d.k)
    uris = {UNGUIDED: join(out_uri, "unguided"), rank_only: join(out_uri, "rank-only"), LGD_K1: join(out_uri, "lgd-k1"),
            lgd: join(out_uri, "lgd")}
    log(progress, f"{lgd}: distilling into {uris[lgd]}")
    distill(cfg, uris[lgd], overwrite=overwrite, progress=progress)
    shared = variant(cfg)  # the other runs reuse the θ* the LGD run trained (when it trained one)
    if not cfg.reference.path and OutputDir(uris[lgd]).exists("reference/model.safetensors"):
        shared.reference.path = OutputDir(uris[lgd]).path("reference/model.safetensors")
    runs = [(LGD_K1, variant(shared, k=1)), (UNGUIDED, variant(shared, lam=0.0, gamma=0.0, k=1))]
    if d.k > 1 and (d.lam > 0 or d.gamma > 0):  # else the LGD run is this one already
        runs.insert(0, (rank_only, variant(shared, lam=0.0, gamma=0.0)))
    else:
        del uris[rank_only]
    for name, c in runs:
        log(progress, f"{name}: distilling into {uris[name]}")
        distill(c, uris[name], overwrite=overwrite, progress=progress)

    # Random real and full real draw from the train part (the selection split held out, as for θ*); every
    # figure of the table is read on the test split, once, after all choices were made on the selection split.
    train_real, val = real_parts(cfg, run.class_ids)
    order = random_real_order(train_real, ipc, cfg.seed)
    generated = {name: OutputDir(uri) for name, uri in uris.items()}

    # Accuracy after each stage: D_i = I_0 ∪ … ∪ I_i per method; random real at the same sizes (nested).
    sets = {}
    for i in stages:
        size = ipc_after(d, i)
        sets[(RANDOM, i)] = train_real.subset(_first_per_class(order, train_real.labels, size))
        for name, out in generated.items():
            sets[(name, i)] = out.read_stages(stages[:i + 1], run.class_ids)
    # The table's sets (the last stage) get every eval seed; the curve's earlier points, a diagnostic,
    # the first CURVE_SEEDS of them: 4 in 5 of the demo's evaluation runs were those points.
    last = stages[-1]
    curve_seeds = cfg.eval.seeds[:CURVE_SEEDS]
    finals = {f"{m}|{i}": s for (m, i), s in sets.items() if i == last}
    earlier = {f"{m}|{i}": s for (m, i), s in sets.items() if i != last}
    log(progress, f"evaluating {len(finals)} sets x {len(cfg.eval.seeds)} seeds and the curve's {len(earlier)} "
                  f"earlier sets x {len(curve_seeds)} ({cfg.eval.arch})")
    gpus = cfg.ray.task_gpus()
    summaries = evaluate_sets({**finals, **earlier}, val, cfg.eval, teacher=teacher, progress=progress,
                              gpus_per_task=gpus, seeds_of={k: curve_seeds for k in earlier})
    full_eval = copy.deepcopy(cfg.eval)
    full_eval.epochs = full_epochs
    summaries[f"{FULL}|-"] = evaluate_sets({FULL: train_real}, val, full_eval, teacher=teacher, progress=progress,
                                                 gpus_per_task=gpus)[FULL]

    reference = _reference(cfg, uris[lgd], run)
    results, curves = {}, {}
    for name in [RANDOM, *generated, FULL]:
        key = f"{name}|-" if name == FULL else f"{name}|{last}"
        s = train_real if name == FULL else sets[(name, last)]
        results[name] = {**summaries[key], "ipc": len(s) // len(run.class_ids), "images": len(s),
                         "reference_acc_on_set": reference_fidelity(reference, s, cfg.data.image_size) if reference else None}
        if name != FULL:
            curves[name] = [(ipc_after(d, i), summaries[f"{name}|{i}"]["final_acc_mean"]) for i in stages]
    for name, out in generated.items():
        log(progress, f"{name}: redundancy and cartography")
        r = redundancy(out.uri, progress=progress)
        results[name]["cross_increment_acc"] = r["cross_acc_mean"]
        results[name]["cross_increment_loss"] = r["cross_loss_mean"]
        # Cartography over a short schedule: over the protocol's long one the early climb of p(true
        # class) dominates every sample's variability and the map says nothing.
        carto_epochs = max(20, (cfg.eval.epochs or 300) // 5)
        results[name]["cartography"] = cartography_report(out.uri, epochs=carto_epochs, progress=progress)["per_stage"]

    demo = OutputDir(out_uri)
    progression_plot(curves, demo, rel="progression.png", xlabel="images per class (stages)",
                     title="test-split accuracy after each stage")
    table = results_table(results)
    demo.write_text("results.json", json.dumps({"config_hash": cfg.hash(), "seeds": cfg.eval.seeds, "results": results,
                                                "progression": curves, "outputs": uris}, indent=1))
    demo.write_text("report.md", _report(cfg, table, results, uris, full_epochs))
    return {"table": table, "results": results}


def lgd_name(cfg: Config) -> str:
    return f"LGD (λ={cfg.distill.lam}, κ={cfg.distill.k})"


RANDOM_DRAWS = 10  # random real's draws in a multi-seed demo: evaluation only, so its mean is pinned cheaply


def extra_draw_seeds(seeds: list[int], draws: int) -> list[int]:
    """Random real's draws beyond the generation seeds' own: the smallest seeds ≥ 0 not among them."""
    extra, s = [], 0
    while len(seeds) + len(extra) < draws:
        if s not in seeds:
            extra.append(s)
        s += 1
    return extra


def random_real_draws(cfg: Config, draw_seeds: list[int], *, progress: bool = True,
                      teacher: torch.nn.Module | None = None) -> dict[int, dict]:
    """Random real at the demo's final IPC for each seed of `draw_seeds`, drawn as a demo run of that
    seed draws it (the train part less the selection split), evaluated over the eval seeds on the test
    split: seed -> the evaluation summary. No sampling, so each draw costs its evaluation runs alone."""
    ipc = ipc_after(cfg.distill, cfg.distill.stages)
    train_real, val = real_parts(cfg, resolve_classes_only(cfg))
    sets = {str(seed): train_real.subset(random_real_order(train_real, ipc, seed)) for seed in draw_seeds}
    log(progress, f"random real: {len(sets)} more draws x {len(cfg.eval.seeds)} eval seeds")
    summaries = evaluate_sets(sets, val, cfg.eval, teacher=teacher, progress=progress, gpus_per_task=cfg.ray.task_gpus())
    return {int(seed): {**summary, "ipc": ipc, "images": len(sets[seed])} for seed, summary in summaries.items()}


def run_demo_seeds(cfg: Config, out_uri: str, seeds: list[int], *, random_draws: int = RANDOM_DRAWS, **kw) -> dict:
    """The demo once per generation seed (`seed` = the run seed every image's seed derives from; random
    real's subset and θ* follow it too), into OUT/seed-N, then one table over all of them in
    OUT/seeds.md and OUT/results.json: each method's mean over seeds × eval seeds with its standard error
    (core.evaluate.mean_se) and LGD's margin over it in standard errors of the difference.

    Random real is a draw of real images, so its spread between seeds is the draw's (3 points on the
    digits between two seeds): with `random_draws` > len(seeds) the seeds' own draws are joined by more
    (`extra_draw_seeds`), each costing evaluation runs only, so the baseline's mean is not the weak link
    of the comparison. Every generated row keeps the generation seeds alone."""
    per = {}
    for seed in seeds:
        c = copy.deepcopy(cfg)
        c.seed = seed
        log(kw.get("progress", True), f"generation seed {seed}: demo into {join(out_uri, f'seed-{seed}')}")
        per[seed] = run_demo(c, join(out_uri, f"seed-{seed}"), **kw)["results"]
    extra = extra_draw_seeds(seeds, random_draws)
    draws = random_real_draws(cfg, extra, progress=kw.get("progress", True), teacher=kw.get("teacher")) if extra else {}
    combined = combine_seeds(per, lgd_name(cfg), extra={RANDOM: draws})
    table = seeds_table(combined, len(seeds), len(cfg.eval.seeds), lgd_name(cfg))
    demo = OutputDir(out_uri)
    demo.write_text("results.json", json.dumps({"generation_seeds": seeds, "random_real_draws": [*seeds, *extra],
                                                "eval_seeds": cfg.eval.seeds, "results": combined,
                                                "outputs": {s: join(out_uri, f"seed-{s}") for s in seeds}},
                                               indent=1))
    drawn = f" Random real: {len(seeds) + len(extra)} draws (seeds {[*seeds, *extra]}), the generation seeds' own and " \
            f"{len(extra)} more." if extra else ""
    demo.write_text("seeds.md", f"# lgd-ray demo over generation seeds {seeds}\n\nTest split, final accuracy; "
                    "SE² = max(s_b²/G, s_w²/(G·E)) over G generation seeds (or draws) × E evaluation seeds (s_b²: variance "
                    "of the per-seed means; s_w²: pooled within-seed variance); z = margin / √(SE_LGD² + SE²). Paired: the same "
                    "SE of the differences LGD − row per (generation seed, eval seed), over the generation seeds' runs "
                    "alone (rows of one seed share its seed increment, noises and student inits)."
                    + drawn + "\n\n" + table + "\n")
    return {"table": table, "results": combined, "per_seed": per, "random_draws": draws}


def combine_seeds(per: dict[int, dict[str, dict]], lgd: str, extra: dict[str, dict[int, dict]] | None = None) -> dict[str, dict]:
    """Per method over the seeds' results: mean ± SE of the final accuracy over seeds × eval seeds,
    mean fidelity and cross-increment accuracy, and LGD's margin over the method with its z, twice:

    - unpaired: margin / √(SE_LGD² + SE²), each SE over all of that row's results;
    - paired: the same generation seed gives every row of its demo the same seed increment D_0 and
      the same starting noise of every candidate, and the same eval seed the same student init, so
      rows of one seed move together (on the photo regions by 17 to 29 points between two seeds). The
      paired z is mean_se of the differences LGD − row per (generation seed, eval seed): the SE of the
      difference measured on the differences themselves, over the generation seeds' runs alone.

    `extra`: more results of some method (random real's further draws), by seed, joined to its seeds'
    own in the mean, SE and unpaired z; they have no LGD run to pair with, so the paired z leaves them
    out; fidelity and redundancy stay the seeds' runs'."""
    from ..core.evaluate import mean_se

    seeds = list(per)
    combined = {}
    for name in per[seeds[0]]:
        rs = [per[seed][name] for seed in seeds]
        more = list((extra or {}).get(name, {}).values())
        mean, se = mean_se([r["final_acc"] for r in rs + more])
        fid = [r["reference_acc_on_set"] for r in rs if r.get("reference_acc_on_set") is not None]
        cross = [r["cross_increment_acc"] for r in rs if "cross_increment_acc" in r]
        combined[name] = {"mean": mean, "se": se, "final_acc": [r["final_acc"] for r in rs + more], "ipc": rs[0]["ipc"],
                          "fidelity": sum(fid) / len(fid) if fid else None,
                          "cross_increment_acc": sum(cross) / len(cross) if cross else None}
    ref = combined[lgd]
    for name, r in combined.items():
        se = (r["se"] ** 2 + ref["se"] ** 2) ** 0.5
        r["lgd_margin"], r["lgd_margin_z"] = ref["mean"] - r["mean"], (ref["mean"] - r["mean"]) / se if se > 0 else None
        diffs = [[a - b for a, b in zip(per[seed][lgd]["final_acc"], per[seed][name]["final_acc"], strict=True)]
                 for seed in seeds]
        d, d_se = mean_se(diffs)
        r["lgd_margin_paired"], r["lgd_margin_paired_se"] = d, d_se
        r["lgd_margin_z_paired"] = d / d_se if d_se > 0 else None
    return combined


def seeds_table(combined: dict[str, dict], g: int, e: int, lgd: str) -> str:
    head = (f"| method | IPC | final acc % (± SE, {g} × {e} seeds) | LGD's margin (z) | paired margin (z) "
            "| θ* acc on set % | cross-increment acc % |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, r in combined.items():
        margin = "–" if name == lgd or r["lgd_margin_z"] is None else f"{100 * r['lgd_margin']:+.1f} ({r['lgd_margin_z']:+.1f})"
        paired = ("–" if name == lgd or r["lgd_margin_z_paired"] is None
                  else f"{100 * r['lgd_margin_paired']:+.1f} ({r['lgd_margin_z_paired']:+.1f})")
        fid = "–" if r["fidelity"] is None else f"{100 * r['fidelity']:.1f}"
        cross = "–" if r["cross_increment_acc"] is None else f"{100 * r['cross_increment_acc']:.1f}"
        label = name if len(r["final_acc"]) == g else f"{name} ({len(r['final_acc'])} draws)"
        lines.append(f"| {label} | {r['ipc']} | {100 * r['mean']:.1f} ± {100 * r['se']:.1f} | {margin} | {paired} "
                     f"| {fid} | {cross} |")
    return "\n".join(lines)


def _first_per_class(order: list[int], labels, n: int) -> list[int]:
    """The first n of each class's seeded random order: nested subsets, so curves compare like for like."""
    seen: dict[int, int] = {}
    keep = []
    for i in order:
        c = int(labels[i])
        if seen.get(c, 0) < n:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    return keep


def _reference(cfg: Config, lgd_uri: str, run):
    from ..core.students import build_student

    state = load_weights(OutputDir(lgd_uri), "reference/model.safetensors")
    if state is None:
        return None
    return load_state(build_student(cfg.reference.arch, len(run.class_ids), cfg.data.image_size, run.in_channels), state)


def _protocol(cfg: Config) -> str:
    e = cfg.eval
    return f"soft labels from {e.teacher} at T = {e.temperature}" if e.protocol == "soft" else "hard labels"


def _selection_text(cfg: Config) -> str:
    if cfg.data.select_split:
        return (f"the split `{cfg.data.select_split}` of the source (`data.select_split`), read whole; θ*, random real "
                f"and the full real set train on all of `data.train_split`")
    return (f"{cfg.data.select_fraction:g} of each class of `data.train_split`, seeded, held out of θ*, of random real "
            f"and of the full real set")


def _report(cfg: Config, table: str, results: dict, uris: dict, full_epochs: int) -> str:
    d = cfg.distill
    red = "\n".join(f"| {name} | {100 * r['cross_increment_acc']:.1f} | {r['cross_increment_loss']:.3f} |"
                    for name, r in results.items() if "cross_increment_acc" in r)
    stage_keys = [stage_name(i) for i in range(d.stages + 1)]
    carto = "\n".join(f"| {name} | " + " | ".join(f"{r['cartography'][k]['mean_confidence']:.2f}" for k in stage_keys) + " |"
                      for name, r in results.items() if "cartography" in r)
    previews = "\n".join(f"- {name}: `{Path(uri).name}/preview/{stage_name(d.stages)}.png`, "
                         f"`{Path(uri).name}/redundancy.png`, `{Path(uri).name}/cartography.png`" for name, uri in uris.items())
    return f"""# lgd-ray demo

Data: {cfg.data.name}; generator: {cfg.generator.path} ({cfg.generator.scheduler}, {cfg.generator.num_steps} steps).
IPC {d.ipc_seed} (seed) + {d.stages} x {d.ipc_per_stage}; λ={d.lam}, ω={d.omega}, κ={d.k}, γ={d.gamma}, window {d.window}.
Evaluation: {cfg.eval.arch}, {cfg.eval.epochs} epochs ({full_epochs} for the full data), seeds {cfg.eval.seeds}, {_protocol(cfg)}.
Config hash {cfg.hash()}.

Splits: every figure below is read on the **test split** (`data.val_split` = {cfg.data.val_split}), once, after
every choice was made. θ_i's accuracy in each run's `metrics.jsonl`, a sweep's ASHA metric and its
`best.yaml` read the **selection split**: {_selection_text(cfg)}.

{table}

Final = accuracy at the end of training; best = the best test accuracy seen during training (what the
field reports; optimistic, since the test set then doubles as model selection). θ* acc on set = the
reference model's accuracy on the distilled images (label fidelity).

## Redundancy between increments (train on one, test on another; lower = more complementary)

| method | mean cross-increment acc % | loss |
|---|---|---|
{red}

## Data cartography: mean confidence p(true class) over a short training run, per stage

Lower = harder to learn from the rest of the set (Swayamdipta et al. 2020); per-sample maps and the
easy / ambiguous / hard fractions are in each output's `cartography.json` and `cartography.png`.

| method | {" | ".join(stage_keys)} |
|---|{"---|" * len(stage_keys)}
{carto}

## Plots
- `progression.png`: test-split accuracy after each stage (the last point over every eval seed, the earlier
  ones over the first {CURVE_SEEDS}).
{previews}
"""
