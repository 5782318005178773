"""Shared look of the figures: one colour and marker per class, the class legend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# Distinct from the decision map's background (a grey-green-purple scale), so that a point never
# disappears on a region of its own colour.
CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CLASS_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def class_colour(k: int) -> str:
    return CLASS_COLOURS[k % len(CLASS_COLOURS)]


def class_marker(k: int) -> str:
    return CLASS_MARKERS[k % len(CLASS_MARKERS)]


def scatter_classes(ax: Axes, xy, labels, *, size: float = 14, edge: str = "k") -> None:
    """Points ``xy`` ``(N, 2)`` (numpy) coloured and marked by class ``labels`` ``(N,)``, one legend
    entry per class."""
    for k in sorted({int(v) for v in labels}):
        sel = labels == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=class_colour(k), marker=class_marker(k),
                   edgecolors=edge, linewidths=0.4, label=f"class {k}", zorder=3)


def class_legend(ax: Axes, classes, *, loc: str = "best") -> None:
    """A legend with one line per class in ``classes`` (for plots drawn line by line)."""
    handles = [Line2D([], [], color=class_colour(k), marker=class_marker(k), lw=1.2, label=f"class {k}")
               for k in sorted({int(v) for v in classes})]
    ax.legend(handles=handles, fontsize=7, loc=loc)
