"""The figure of a curve between two models: the loss along the curve against the loss along the
straight line, both over ``t``. Nothing here computes; it draws what the :class:`Curve` holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._figures import figure_of, new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..geometry.curves import Curve

__all__ = ["plot_curve"]


def plot_curve(curve: Curve, ax: Axes | None = None) -> Figure:
    """Two lines over ``t`` in ``[0, 1]``: the curve's loss (solid) and the straight line's
    (dashed), titled with both barriers; returns the figure."""
    axes = new_axes(ax)
    t = curve.path.coords[0]
    bends = curve.bends
    axes.plot(
        t,
        curve.path.values["loss"],
        color="C0",
        label=f"{curve.kind} curve ({bends} bend{'s' if bends != 1 else ''})",
    )
    axes.plot(
        curve.line.coords[0], curve.line.values["loss"], color="C1", ls="--", label="straight line"
    )
    axes.scatter(
        [0.0, 1.0],
        [curve.path.values["loss"][0], curve.path.values["loss"][-1]],
        color="black",
        zorder=3,
    )
    axes.set_xlabel("t")
    axes.set_ylabel("loss")
    axes.set_xlim(0.0, 1.0)
    axes.set_title(f"barrier: curve {curve.barrier:.4g}, straight line {curve.line.barrier:.4g}")
    axes.legend()
    return figure_of(axes)
