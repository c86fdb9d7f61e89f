"""What a sweep leaves behind: trials.csv / trials.md (parameters, accuracy per stage, status),
best.yaml (the best completed trial as a runnable distill config) and sweep.png."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from ..core.config import dump_yaml
from ..core.evaluate import mean_se
from ..engine.run import with_named_sampler
from ..engine.store import OutputDir
from .spec import VARIANT, Sweep, trial_config


def collect(grid, sweep: Sweep, out: str) -> list[dict]:
    """One row per trial: params, accuracy per stage, final accuracy, status ("completed" = the trial's
    distilled set is whole, every stage's manifest written)."""
    all_trials = list(grid._experiment_analysis.trials)
    by_id = {t.trial_id: t for t in all_trials}
    by_path = {os.path.normpath(t.path): t for t in all_trials if getattr(t, "path", None)}
    rows = []
    for res in grid:
        trial = by_id.get((res.metrics or {}).get("trial_id")) or by_path.get(os.path.normpath(res.path))
        tid = trial.trial_id if trial is not None else os.path.basename(res.path)
        df = res.metrics_dataframe
        accs: dict[int, float] = {}
        if df is not None and "stage" in df:
            for s, a in zip(df["stage"], df["select_acc"]):
                if s <= sweep.stages and not math.isnan(a):  # NaN: the eval_acc report after the last stage
                    accs[int(s)] = float(a)
        status_raw = trial.status if trial is not None else "UNKNOWN"
        if res.error is not None or status_raw == "ERROR":
            status = "error"
        elif OutputDir(f"{out.rstrip('/')}/trials/{tid}").manifest(sweep.stages) is not None:
            status = "completed"
        elif status_raw == "TERMINATED":  # stopped by ASHA; with eval_acc (no scheduler) only by an interrupt
            status = "interrupted" if sweep.metric == "eval_acc" else "early-stopped"
        else:
            status = status_raw.lower()
        params = {p.key: p.decode((res.config or {}).get(p.key)) for p in sweep.space}  # None: trial died early
        last = max(accs) if accs else None
        m = res.metrics or {}
        evaluation = ({"acc": float(m["eval_acc"]), "accs": json.loads(m["eval_accs"]), "fidelity": float(m["fidelity"])}
                      if sweep.metric == "eval_acc" and m.get("eval_accs") else None)
        rows.append({"trial_id": tid, "params": params, "variant": (res.config or {}).get(VARIANT), "acc": accs,
                     "stages_done": last or 0, "final_acc": accs[last] if last else None, "status": status,
                     "evaluation": evaluation, "error": _last_line(res.error)})
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def group_rows(rows: list[dict], sweep: Sweep) -> list[dict]:
    """The eval_acc trials grouped by variant and parameters other than `seed` (the generation seed):
    mean ± standard error over seeds × eval seeds (core.evaluate.mean_se), θ*'s fidelity, and the
    difference from the first variant in standard errors of the difference, √(SE₁² + SE₂²)."""
    groups: dict[str, dict] = {}
    for r in rows:
        if r["evaluation"] is None:
            continue
        params = {k: v for k, v in r["params"].items() if k != "seed"}
        key = json.dumps([r["variant"], params], sort_keys=True, default=str)
        g = groups.setdefault(key, {"variant": r["variant"], "params": params, "accs": [], "fidelity": [], "seeds": []})
        g["accs"].append(r["evaluation"]["accs"])
        g["fidelity"].append(r["evaluation"]["fidelity"])
        g["seeds"].append(r["params"].get("seed", sweep.base.seed))
    order = list(sweep.variants) or [None]
    out = sorted(groups.values(), key=lambda g: (order.index(g["variant"]) if g["variant"] in order else len(order),
                                                 json.dumps(g["params"], sort_keys=True, default=str)))
    for g in out:
        g["mean"], g["se"] = mean_se(g["accs"])
        g["fidelity_mean"] = sum(g["fidelity"]) / len(g["fidelity"])
    if out:
        ref = out[0]
        for g in out:
            se = (g["se"] ** 2 + ref["se"] ** 2) ** 0.5
            g["diff"], g["z"] = g["mean"] - ref["mean"], ((g["mean"] - ref["mean"]) / se if se > 0 else None)
    return out


def _group_table(groups: list[dict], keys: list[str]) -> list[str]:
    ref = groups[0]["variant"] or "the first row"
    lines = ["| variant | " + "".join(f"{k} | " for k in keys if k != "seed") + "seeds | eval acc % (± SE) | "
             f"Δ vs {ref} (z) | θ* fidelity % |", "|" + "---|" * (len([k for k in keys if k != "seed"]) + 5)]
    for g in groups:
        z = "–" if g["z"] is None else f"{g['z']:+.1f}"
        lines.append(f"| {g['variant'] or '–'} | " + "".join(f"{_fmt(g['params'][k])} | " for k in keys if k != "seed")
                     + f"{len(g['seeds'])} × {len(g['accs'][0])} | {100 * g['mean']:.1f} ± {100 * g['se']:.1f} | "
                     f"{100 * g['diff']:+.1f} ({z}) | {100 * g['fidelity_mean']:.1f} |")
    return lines


def best_row(rows: list[dict], stages: int) -> dict | None:
    """The best completed trial (final stage accuracy); if none completed, the best at its last stage."""
    done = [r for r in rows if r["status"] == "completed" and r["final_acc"] is not None]
    pool = done or [r for r in rows if r["final_acc"] is not None]
    return max(pool, key=lambda r: (r["stages_done"], r["final_acc"])) if pool else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list) else str(v)


def _last_line(error) -> str:
    """The exception's own message: the last line of Ray's traceback (its first names only the task)."""
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def write_results(out: str, sweep: Sweep, rows: list[dict]) -> dict:
    keys = [p.key for p in sweep.space]
    lead = ["variant"] if sweep.variants else []
    final = sweep.metric == "eval_acc"
    stage_cols = [f"acc_stage{s}" for s in range(1, sweep.stages + 1)]
    header = ["trial_id", *lead, *keys, *stage_cols, "final_acc", *(["eval_acc", "fidelity"] if final else []),
              "stages_done", "status", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        e = r["evaluation"] or {}
        w.writerow([r["trial_id"], *([r["variant"]] if lead else []), *[_fmt(r["params"][k]) for k in keys],
                    *[r["acc"].get(s, "") for s in range(1, sweep.stages + 1)],
                    "" if r["final_acc"] is None else r["final_acc"],
                    *([e.get("acc", ""), e.get("fidelity", "")] if final else []), r["stages_done"], r["status"], r["error"]])
    dest = OutputDir(out)  # a local folder, NFS, s3:// or gs://, as distill's --out
    dest.write_text("trials.csv", buf.getvalue())

    groups = group_rows(rows, sweep) if final else []
    md = [f"# Sweep ({len(rows)} trials, {sweep.stages} stages, "
          + ("metric eval_acc, no early stopping)" if final else
             f"ASHA grace {sweep.grace_period}, reduction {sweep.reduction_factor})"), "",
          "Stage accuracy = selection-split accuracy (carved from train; never the test split) of the student "
          "θ_{s-1} trained on stages 0..s-1 (stage s reported after it)."
          + (" Eval acc = the evaluation protocol (a fresh eval.arch per eval seed, trained on the finished set) "
             "on the same selection split; fidelity = θ*'s accuracy on the set." if final else ""), "",
          "| trial | " + "".join(f"{k} | " for k in lead + keys) + " | ".join(f"stage {s}" for s in range(1, sweep.stages + 1))
          + " | final | " + ("eval acc | fidelity | " if final else "") + "status |",
          "|" + "---|" * (len(lead) + len(keys) + sweep.stages + 3 + (2 if final else 0))]
    for r in rows:
        e = r["evaluation"]
        cells = [r["trial_id"], *([str(r["variant"])] if lead else []), *[_fmt(r["params"][k]) for k in keys],
                 *[f"{100 * r['acc'][s]:.1f}" if s in r["acc"] else "–" for s in range(1, sweep.stages + 1)],
                 f"{100 * r['final_acc']:.1f}" if r["final_acc"] is not None else "–",
                 *([f"{100 * e['acc']:.1f}", f"{100 * e['fidelity']:.1f}"] if final and e else ["–", "–"] if final else []),
                 r["status"]]
        md.append("| " + " | ".join(cells) + " |")
    if groups:
        md += ["", "## By variant, over generation seeds", "",
               "Mean over generation seeds × evaluation seeds; SE² = max(s_b²/G, s_w²/(G·E)) (s_b²: variance of the "
               "G per-seed means, s_w²: pooled within-seed variance; `core.evaluate.mean_se`); z = Δ / √(SE₁² + SE₂²).",
               "", *_group_table(groups, keys)]
    best_group = max(groups, key=lambda g: g["mean"]) if groups else None
    best = best_row(rows, sweep.stages)
    if best_group is not None:
        params = {**best_group["params"], **({"seed": sweep.base.seed} if "seed" in keys else {})}
        cfg = with_named_sampler(trial_config(sweep, params, best_group["variant"]))  # as the trial's config.json
        md += ["", f"Best: {best_group['variant'] or ''} {params}, eval acc {100 * best_group['mean']:.1f} ± "
               f"{100 * best_group['se']:.1f}% on the selection split; config in best.yaml."]
        dest.write_text("best.yaml", "# best variant of `lgd-ray tune` by eval_acc on the selection split; "
                                     "run with: lgd-ray distill best.yaml --out DIR\n" + dump_yaml(cfg))
    elif best is not None:
        md += ["", f"Best: {best['trial_id']} ({', '.join(f'{k}={_fmt(v)}' for k, v in best['params'].items())}), "
               f"selection-split accuracy {100 * best['final_acc']:.1f}% at stage {best['stages_done']}; config in best.yaml."]
        cfg = with_named_sampler(trial_config(sweep, best["params"], best["variant"]))
        dest.write_text("best.yaml", f"# best trial {best['trial_id']} of `lgd-ray tune`; "
                                     f"run with: lgd-ray distill best.yaml --out DIR\n" + dump_yaml(cfg))
    dest.write_text("trials.md", "\n".join(md) + "\n")
    plot_sweep(out, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {"out": out, "trials": len(rows), "status": counts,
               "best": None if best is None else {"trial_id": best["trial_id"], "params": best["params"],
                                                  "select_acc": best["final_acc"], "stage": best["stages_done"]}}
    if summary["best"] is None and best_group is not None:  # trials without students (unguided) report no stage
        summary["best"] = {"variant": best_group["variant"], "params": best_group["params"],
                           "eval_acc": best_group["mean"], "se": best_group["se"]}
    if groups:
        summary["groups"] = [{k: g[k] for k in ("variant", "params", "mean", "se", "fidelity_mean", "diff", "z", "seeds")}
                             for g in groups]
    return summary


def plot_sweep(out: str, rows: list[dict]) -> None:
    """sweep.png: last reported accuracy against λ (log x), coloured by ω; hollow = stopped early."""
    from matplotlib.figure import Figure

    from ..engine.figures import png_bytes

    pts = [r for r in rows if r["final_acc"] is not None]
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    lam = [r["params"].get("distill.lam") for r in pts]
    if pts and all(v is not None for v in lam):
        omega = [r["params"].get("distill.omega") for r in pts]
        color = [float(o) if o is not None else 0.0 for o in omega]
        done = [r["status"] == "completed" for r in pts]
        acc = [100 * r["final_acc"] for r in pts]
        kw = dict(c=color, cmap="viridis", vmin=min(color), vmax=max(max(color), min(color) + 1e-9), s=50)
        sc = None
        for flag, label in ((True, "completed"), (False, "stopped early")):
            sel = [i for i, d in enumerate(done) if d == flag]
            if sel:
                sc = ax.scatter([lam[i] for i in sel], [acc[i] for i in sel], marker="o" if flag else "x",
                                label=label, **{**kw, "c": [color[i] for i in sel]})
        if sc is not None:
            fig.colorbar(sc, ax=ax, label="ω (distill.omega)")
        if min(lam) > 0:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a narrow decade
        ax.legend(fontsize=8)
    ax.set(title="LGD sweep: accuracy at the last reported stage", xlabel="λ (distill.lam)", ylabel="selection-split acc %")
    OutputDir(out).write_bytes("sweep.png", png_bytes(fig))
