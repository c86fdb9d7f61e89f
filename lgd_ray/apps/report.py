"""What people look at: preview grids per stage, the results table, report.md."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from .core.data import decode_png
from .store import OutputDir, stage_name


def image_grid(rows: list[list[np.ndarray]], scale: int = 1, pad: int = 1) -> Image.Image:
    """rows of C×H×W uint8 images -> one PIL image (grey background between tiles)."""
    cols = max((len(r) for r in rows), default=1)
    c, h, w = next(img.shape for r in rows for img in r)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 96, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            tile = np.repeat(img, 3, 0) if img.shape[0] == 1 else img
            grid[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = tile.transpose(1, 2, 0)
    pil = Image.fromarray(grid)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def write_previews(out: OutputDir, stages: list[int], class_ids: list[str], max_per_class: int = 10) -> None:
    """preview/stage=NNN.png: one row per class, the stage's images in slot order."""
    for s in stages:
        t = out.read_rows([s], columns=["image", "label", "slot"])
        by_label: dict[int, list[tuple[int, np.ndarray]]] = {}
        for img, label, slot in zip(t.column("image").to_pylist(), t.column("label").to_pylist(), t.column("slot").to_pylist()):
            by_label.setdefault(label, []).append((slot, decode_png(img["bytes"])))
        rows = [[im for _, im in sorted(by_label.get(c, []), key=lambda x: x[0])[:max_per_class]] for c in range(len(class_ids))]
        rows = [r for r in rows if r]
        if not rows:
            continue
        size = rows[0][0].shape[-1]
        grid = image_grid(rows, scale=max(1, 64 // size))
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        out.write_bytes(f"preview/{stage_name(s)}.png", buf.getvalue())


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
