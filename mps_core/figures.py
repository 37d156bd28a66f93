"""Preview figures as plain data, rendered to PNG here and to pyqtgraph by the GUI.

A step's preview function returns a :class:`Figure` (panels of images, lines or histograms).
The store saves it as a PNG beside the step's arrays; the GUI draws the same panels live.
Keeping the figure as data means one preview definition serves both, and the core needs no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ImagePanel:
    title: str
    image: np.ndarray
    cmap: str = "gray"
    # optional outlines drawn on top: list of (y array, x array, label)
    outlines: list[tuple[np.ndarray, np.ndarray, str]] = field(default_factory=list)


@dataclass
class LinePanel:
    title: str
    x: np.ndarray
    lines: dict[str, np.ndarray]
    xlabel: str = ""
    ylabel: str = ""
    hlines: dict[str, float] = field(default_factory=dict)
    # marked x positions, e.g. flagged frames
    marks: np.ndarray | None = None


@dataclass
class HistPanel:
    title: str
    values: dict[str, np.ndarray]
    bins: int = 50
    xlabel: str = ""


@dataclass
class TextPanel:
    title: str
    text: str


Panel = ImagePanel | LinePanel | HistPanel | TextPanel


@dataclass
class Figure:
    title: str
    panels: list[Panel]


# Fixed margins in inches, not matplotlib's constrained layout: the layout solver measured
# every tick label twice and took over a third of each preview's drawing time.
_MARGIN_IN = {"left": 0.7, "right": 0.2, "top": 0.75, "bottom": 0.55, "wspace": 0.75, "hspace": 0.8}


def render_png(fig: Figure, path: Path, dpi: int = 90) -> Path:
    """Draw a Figure into a PNG with matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    n = max(len(fig.panels), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    width, height = 4.2 * cols, 3.6 * rows
    m = _MARGIN_IN
    mfig = MplFigure(figsize=(width, height), dpi=dpi)
    mfig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width,
                         top=1 - m["top"] / height, bottom=m["bottom"] / height,
                         wspace=m["wspace"] / ((width - m["left"] - m["right"]) / cols),
                         hspace=m["hspace"] / ((height - m["top"] - m["bottom"]) / rows))
    mfig.suptitle(fig.title, y=1 - 0.12 / height, va="top")
    for i, panel in enumerate(fig.panels):
        ax = mfig.add_subplot(rows, cols, i + 1)
        ax.set_title(panel.title, fontsize=9)
        _draw(ax, panel)
    path = Path(path)
    mfig.savefig(path)
    return path


def _draw(ax, panel: Panel) -> None:
    if isinstance(panel, ImagePanel):
        img = np.asarray(panel.image, dtype=float)
        finite = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1))
        ax.imshow(img, cmap=panel.cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
        for ys, xs, label in panel.outlines:
            ax.plot(xs, ys, lw=0.8, label=label or None)
        ax.set_xticks([])
        ax.set_yticks([])
    elif isinstance(panel, LinePanel):
        for label, y in panel.lines.items():
            ax.plot(panel.x, y, lw=0.8, label=label)
        for label, v in panel.hlines.items():
            ax.axhline(v, ls="--", lw=0.8, color="gray")
            ax.text(panel.x[0] if len(panel.x) else 0, v, label, fontsize=7, va="bottom")
        if panel.marks is not None and len(panel.marks):
            for m in np.asarray(panel.marks)[:500]:
                ax.axvline(m, color="red", alpha=0.3, lw=0.6)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if len(panel.lines) > 1:
            ax.legend(fontsize=7)
    elif isinstance(panel, HistPanel):
        for label, v in panel.values.items():
            v = np.asarray(v, dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                # one filled outline per series, not a patch per bin (a tenth of the cost)
                counts, edges = np.histogram(v, bins=panel.bins)
                ax.stairs(counts, edges, fill=True, alpha=0.6, label=label)
        ax.set_xlabel(panel.xlabel)
        if len(panel.values) > 1:
            ax.legend(fontsize=7)
    elif isinstance(panel, TextPanel):
        ax.axis("off")
        # shrink long lines to the panel's width (a monospace glyph is about 0.6 em wide)
        width_in = ax.get_position().width * ax.figure.get_figwidth() + 0.4
        longest = max((len(line) for line in panel.text.splitlines()), default=1)
        size = max(5.0, min(8.0, width_in * 72 / (0.6 * max(longest, 1))))
        ax.text(-0.05, 1, panel.text, va="top", family="monospace", fontsize=size)
