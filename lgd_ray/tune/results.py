"""What a sweep leaves behind: trials.csv / trials.md (parameters, accuracy per stage, status),
best.yaml (the best completed trial as a runnable distill config) and sweep.png."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from ..core.config import dump_yaml
from ..engine.store import OutputDir
from .spec import Sweep, config_with


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
            for s, a in zip(df["stage"], df[sweep.metric]):
                accs[int(s)] = float(a)
        status_raw = trial.status if trial is not None else "UNKNOWN"
        if res.error is not None or status_raw == "ERROR":
            status = "error"
        elif OutputDir(f"{out.rstrip('/')}/trials/{tid}").manifest(sweep.stages) is not None:
            status = "completed"
        elif status_raw == "TERMINATED":
            status = "early-stopped"
        else:
            status = status_raw.lower()
        params = {p.key: p.decode((res.config or {}).get(p.key)) for p in sweep.space}  # None: trial died early
        last = max(accs) if accs else None
        rows.append({"trial_id": tid, "params": params, "acc": accs, "stages_done": last or 0,
                     "final_acc": accs[last] if last else None, "status": status,
                     "error": _last_line(res.error)})
    rows.sort(key=lambda r: r["trial_id"])
    return rows


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
    stage_cols = [f"acc_stage{s}" for s in range(1, sweep.stages + 1)]
    header = ["trial_id", *keys, *stage_cols, "final_acc", "stages_done", "status", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([r["trial_id"], *[_fmt(r["params"][k]) for k in keys],
                    *[r["acc"].get(s, "") for s in range(1, sweep.stages + 1)],
                    "" if r["final_acc"] is None else r["final_acc"], r["stages_done"], r["status"], r["error"]])
    dest = OutputDir(out)  # a local folder, NFS, s3:// or gs://, as distill's --out
    dest.write_text("trials.csv", buf.getvalue())

    best = best_row(rows, sweep.stages)
    md = [f"# Sweep ({len(rows)} trials, {sweep.stages} stages, ASHA grace {sweep.grace_period}, "
          f"reduction {sweep.reduction_factor})", "",
          "Accuracy = selection-split accuracy (carved from train; never the test split) of the student θ_{s-1} trained on stages 0..s-1 (stage s reported after it).", "",
          "| trial | " + " | ".join(keys) + " | " + " | ".join(f"stage {s}" for s in range(1, sweep.stages + 1))
          + " | final | status |",
          "|" + "---|" * (len(keys) + sweep.stages + 3)]
    for r in rows:
        cells = [r["trial_id"], *[_fmt(r["params"][k]) for k in keys],
                 *[f"{100 * r['acc'][s]:.1f}" if s in r["acc"] else "–" for s in range(1, sweep.stages + 1)],
                 f"{100 * r['final_acc']:.1f}" if r["final_acc"] is not None else "–", r["status"]]
        md.append("| " + " | ".join(cells) + " |")
    if best is not None:
        md += ["", f"Best: {best['trial_id']} ({', '.join(f'{k}={_fmt(v)}' for k, v in best['params'].items())}), "
               f"selection-split accuracy {100 * best['final_acc']:.1f}% at stage {best['stages_done']}; config in best.yaml."]
    dest.write_text("trials.md", "\n".join(md) + "\n")

    if best is not None:
        cfg = config_with(sweep.base, best["params"])
        dest.write_text("best.yaml", f"# best trial {best['trial_id']} of `lgd-ray tune`; "
                                     f"run with: lgd-ray distill best.yaml --out DIR\n" + dump_yaml(cfg))
    plot_sweep(out, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"out": out, "trials": len(rows), "status": counts,
            "best": None if best is None else {"trial_id": best["trial_id"], "params": best["params"],
                                               "select_acc": best["final_acc"], "stage": best["stages_done"]}}


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
