"""Drawing shared by the toy lab: a function's contours over its bounds, and paths on top.

matplotlib is imported inside the functions so that importing :mod:`lossvista.toys` stays light.
Minima, saddles and path ends are drawn with ``scatter`` so that ``ax.lines`` holds exactly one
line per path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from .functions import Bounds, ToyFunction

#: How searches' paths are drawn: their steps are jumps, not moves.
SEARCH_STYLE = {"linestyle": ":", "linewidth": 1.0, "marker": ".", "markersize": 4}
#: Grid points per axis of the contour plots.
CONTOUR_POINTS = 201
CONTOUR_LEVELS = 30


def axes(ax: Axes | None = None) -> Axes:
    """``ax``, or the axes of a new figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 5.2))[1]


def contour_levels(values: np.ndarray, *, log: bool, count: int = CONTOUR_LEVELS) -> np.ndarray:
    """``count`` increasing levels over the finite range of ``values``.

    With ``log`` the levels sit at ``min + geomspace(1e-4 * span, span)``: dense near the
    minimum, where a narrow valley (Rosenbrock, Beale) would otherwise show no contour at all.
    """
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    span = high - low
    if span <= 0:
        return np.array([low, np.nextafter(low, np.inf)])
    if log:
        return low + np.geomspace(1e-4 * span, span, count)
    return np.linspace(low, high, count)


def draw_function(
    ax: Axes,
    fn: ToyFunction,
    *,
    bounds: Bounds | None = None,
    levels: int = CONTOUR_LEVELS,
    critical_points: bool = True,
) -> Any:
    """Contours of ``fn`` over ``bounds`` (its own by default); the axis limits are the bounds.

    Minima are drawn as white stars, saddles as black crosses. Returns the contour set.
    """
    bounds = fn.bounds if bounds is None else bounds
    xs, ys, values = fn.grid(CONTOUR_POINTS, bounds)
    grid = np.meshgrid(xs, ys, indexing="ij")
    steps = contour_levels(values, log=fn.log_scale, count=levels)
    contours = ax.contour(*grid, values, levels=steps, cmap="viridis", linewidths=0.8)
    if critical_points:
        if len(fn.minima):
            ax.scatter(*fn.minima.T, marker="*", s=140, c="white", edgecolors="black", zorder=5)
        if len(fn.saddles):
            ax.scatter(*fn.saddles.T, marker="x", s=40, c="black", zorder=5)
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return contours


def draw_path(ax: Axes, points: np.ndarray, *, label: str, color: Any = None, **style: Any) -> Any:
    """One line through ``points`` ``(P, 2)``, a dot at the start and a cross at the end.

    ``style`` goes to ``ax.plot`` (``linestyle``, ``marker``...). Returns the line and the
    end marker (a scatter collection an animation can move).
    """
    style = {"linewidth": 1.6, **style}
    (line,) = ax.plot(points[:, 0], points[:, 1], color=color, label=label, **style)
    ends = points[[0, -1]]
    colour = line.get_color()
    ax.scatter(*ends[:1].T, marker="o", s=25, color=colour, zorder=6)
    end = ax.scatter(*ends[1:].T, marker="X", s=50, color=colour, edgecolors="black", zorder=6)
    return line, end
