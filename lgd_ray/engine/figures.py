"""Small matplotlib figures for the analysis reports, returned as PNG bytes.

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

DPI = 120


def _png(fig: Figure) -> bytes:
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
    return _png(fig)


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
    return _png(fig)


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
    return _png(fig)
