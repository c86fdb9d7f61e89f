"""The results table of the evaluation protocol, as printed by `demo` and `evaluate` and kept in report.md."""

from __future__ import annotations

import math


def fmt_pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def results_table(results: dict[str, dict]) -> str:
    """Markdown table: method, IPC, final and best accuracy (mean ± std over seeds), θ* fidelity."""
    lines = ["| method | IPC | images | final acc % | best acc % | θ* acc on set % | seeds |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        fid = r.get("reference_acc_on_set")
        lines.append(f"| {name} | {r['ipc']} | {r['images']} | {fmt_pm(r['final_acc_mean'], r['final_acc_std'])} | "
                     f"{fmt_pm(r['best_acc_mean'], r['best_acc_std'])} | {'–' if fid is None else f'{100 * fid:.1f}'} | {r['n']} |")
    return "\n".join(lines)
