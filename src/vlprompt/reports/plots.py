"""Few-shot curves like the CoOp paper's Figure 3 (matplotlib, Agg canvas, imported lazily)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vlprompt._io import atomic_write
from vlprompt.reports.tables import AVERAGE, Row, label_order

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


def plot_fewshot_curves(rows: list[Row], path: str | os.PathLike, *, dpi: int = 120) -> str | None:
    """Draw accuracy vs shots: one panel per dataset plus the "Average" panel (when there is one).

    Only ``subsample="all"`` rows are drawn. Zero-shot labels (``shots=None``) are horizontal dashed lines; every
    other label is a curve with markers over shots on a log2 axis, with a ±std band over seeds. Each label keeps
    one colour in every panel; one legend sits under the panels. With several backbones, series are named
    ``label (backbone)``.

    Args:
        rows: output of :func:`vlprompt.reports.tables.aggregate`.
        path: the PNG file to write (atomically).
        dpi: resolution.

    Returns:
        ``str(path)``, or ``None`` when there is nothing to draw.
    """
    # Full-data runs (negative shots) have no place on a log2 shots axis.
    rows = [r for r in rows if r.subsample == "all" and (r.shots is None or r.shots > 0)]
    if not rows:
        return None
    # Pyplot is never imported: a Figure on an Agg canvas leaves the user's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    multi = len({r.backbone for r in rows}) > 1

    def series(r: Row) -> str:
        return f"{r.label} ({r.backbone})" if multi else r.label

    zero = {series(r) for r in rows if r.shots is None}
    names = label_order((series(r) for r in rows), zero)
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    datasets = sorted({r.dataset for r in rows if not r.is_average})
    panels = datasets + ([AVERAGE] if any(r.is_average for r in rows) else [])
    shots = sorted({r.shots for r in rows if r.shots is not None}) or list(DEFAULT_SHOTS)

    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_cols = min(len(names), 2 * ncols)
    legend_h = 0.2 + 0.3 * math.ceil(len(names) / legend_cols)  # inches under the panels for the shared legend
    height = 3.3 * nrows + legend_h
    fig = Figure(figsize=(4.0 * ncols, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles: dict[str, object] = {}  # series name → its line, for the shared legend
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, [r for r in rows if r.dataset == panel], names, series, colors, handles, shots,
                    len(datasets))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    ordered = [n for n in names if n in handles]
    fig.legend([handles[n] for n in ordered], ordered, loc="lower center", ncol=legend_cols, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return str(Path(path))


def _draw_panel(ax, panel: str, panel_rows: list[Row], names: list[str], series, colors: dict[str, str],
                handles: dict[str, object], shots: list[int], n_datasets: int) -> None:
    """One panel of :func:`plot_fewshot_curves`: each series' dashed line (zero-shot) or curve with its ±std band
    (not on the average panel), on a log2 shots axis; records each series' line in ``handles``."""
    for name in names:
        mine = [r for r in panel_rows if series(r) == name]
        flat = [r for r in mine if r.shots is None]
        curve = sorted((r for r in mine if r.shots is not None), key=lambda r: r.shots)
        for r in flat:
            handles[name] = ax.axhline(r.accuracy_mean, color=colors[name], linestyle="--", linewidth=1.5)
        if curve:
            xs = [r.shots for r in curve]
            ys = [r.accuracy_mean for r in curve]
            (handles[name],) = ax.plot(xs, ys, color=colors[name], marker="o", markersize=4, linewidth=1.5)
            if panel != AVERAGE and any(r.accuracy_std for r in curve):
                std = [r.accuracy_std or 0.0 for r in curve]
                lo = [y - s for y, s in zip(ys, std)]
                hi = [y + s for y, s in zip(ys, std)]
                ax.fill_between(xs, lo, hi, color=colors[name], alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xlim(shots[0] / 1.25, shots[-1] * 1.25)
    ax.set_title(panel if panel != AVERAGE else f"Average over {n_datasets} datasets", fontsize=11)
    ax.set_xlabel("Number of labeled training examples per class")
    ax.set_ylabel("Score (%)")
    ax.grid(True, linestyle=":", linewidth=0.6)
