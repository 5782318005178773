"""Shared look of the figures: one colour and marker per class, the class legend, legends kept off the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# Distinct from the decision map's background (a grey-green-purple scale), so that a point never
# disappears on a region of its own colour.
CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CLASS_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")
LEGEND_FONTSIZE = 9


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


def arrows(ax: Axes, xy, uv, **kwargs) -> None:
    """A quiver of velocities ``uv`` ``(N, 2)`` at ``xy`` ``(N, 2)`` (numpy); a field that is zero everywhere (a
    zero-initialised last layer) is drawn as no arrows rather than matplotlib's division by a zero scale."""
    if not abs(uv).max() > 0:
        kwargs["scale"] = 1.0
    ax.quiver(xy[:, 0], xy[:, 1], uv[:, 0], uv[:, 1], **kwargs)


def class_handles(classes) -> list[Line2D]:
    """One legend handle (line and marker) per class in ``classes`` (for plots drawn line by line)."""
    return [Line2D([], [], color=class_colour(k), marker=class_marker(k), lw=1.2, label=f"class {k}")
            for k in sorted({int(v) for v in classes})]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """``plt.subplots`` with the constrained layout, which makes room for the legends put outside the axes."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kwargs)


def outside_legend(fig: Figure, handles=None, *, where: str = "right upper", ncol: int = 1, **kwargs) -> None:
    """One figure legend outside every axes (``where``: matplotlib's ``outside`` positions, e.g. ``right upper``,
    ``lower center``), so that it never covers data; ``handles`` default to the first axes' labelled artists.
    Needs a figure with the constrained layout (:func:`new_figure`)."""
    if handles is None:
        handles, _ = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles=handles, loc=f"outside {where}", ncol=ncol, fontsize=LEGEND_FONTSIZE, frameon=False,
               **kwargs)


def class_legend(ax: Axes, classes, *, loc: str = "upper left", bbox_to_anchor=(1.01, 1.0)) -> None:
    """A legend with one line per class in ``classes``, by default just right of the axes (off the data)."""
    ax.legend(handles=class_handles(classes), fontsize=LEGEND_FONTSIZE, loc=loc, bbox_to_anchor=bbox_to_anchor,
              frameon=False)
