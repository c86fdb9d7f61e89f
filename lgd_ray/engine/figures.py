"""What people look at, as PNG bytes: the preview grid of every stage (`preview/stage=NNN.png`) and
the small matplotlib figures of the reports (heatmap, scatter, lines).

Figures are built with the object API on an Agg canvas (never pyplot), so nothing touches global
backend state and the helpers are safe inside Ray workers and threads. Callers write the bytes
wherever they like (usually `OutputDir.write_bytes`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..core.data import decode_png
from .store import OutputDir, stage_name

DPI = 120


def png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No Software/date metadata: the same figure gives the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str = "",
            xlabel: str = "", ylabel: str = "", fmt: str = "{:.1%}", vmin: float = 0.0, vmax: float = 1.0) -> bytes:
    """A matrix as coloured cells with its values written in them (rows on y, columns on x)."""
    m = np.asarray(matrix, dtype=float)
    rows, cols = m.shape
    fig = Figure(figsize=(1.2 + 0.9 * cols, 1.0 + 0.7 * rows))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(cols), labels=list(col_labels), rotation=30, ha="right")
    ax.set_yticks(range(rows), labels=list(row_labels))
    mid = (vmin + vmax) / 2
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(m[i, j]):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > mid else "white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return png_bytes(fig)


def scatter(x: Sequence[float], y: Sequence[float], groups: Sequence[object], *, title: str = "",
            xlabel: str = "", ylabel: str = "", group_name: str = "", hlines: Sequence[float] = (),
            vlines: Sequence[float] = (), xlim: tuple[float, float] | None = None,
            ylim: tuple[float, float] | None = None) -> bytes:
    """Points coloured by group (one legend entry per group), with optional dashed guide lines and
    fixed axis limits (so maps of different runs can be compared by eye)."""
    x, y, g = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(groups)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for k in sorted(set(g.tolist())):
        sel = g == k
        ax.scatter(x[sel], y[sel], s=10, alpha=0.6, label=f"{group_name}{k}")
    for v in hlines:
        ax.axhline(v, color="grey", ls="--", lw=0.8)
    for v in vlines:
        ax.axvline(v, color="grey", ls="--", lw=0.8)
    if len(x):
        ax.legend(fontsize=8, markerscale=2)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return png_bytes(fig)


def lines(curves: dict[str, Sequence[tuple[float, float]]], *, title: str = "", xlabel: str = "",
          ylabel: str = "") -> bytes:
    """One marked line per named curve of (x, y) points, sorted by x."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    for name, points in curves.items():
        pts = sorted((float(a), float(b)) for a, b in points)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return png_bytes(fig)


def image_grid(rows: list[list[np.ndarray]], scale: int = 1, pad: int = 1) -> Image.Image:
    """rows of C×H×W uint8 images -> one PIL image (grey background between tiles)."""
    cols = max((len(r) for r in rows), default=1)
    _c, h, w = next(img.shape for r in rows for img in r)
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
