"""Figures of the optimizer lab (:mod:`lossvista.toys`): a function's contours over its bounds with
paths on top, races (a picture and a GIF), searches, and the feature-scaling surfaces.

matplotlib is imported inside the functions so that importing :mod:`lossvista.toys` stays light;
nothing here computes, it draws what the results hold. Minima, saddles and path ends are drawn
with ``scatter`` so that ``ax.lines`` holds exactly one line per path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import InputError
from ._figures import figure_of, literal
from ._figures import new_axes as _new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..toys import (
        LossSurface,
        OptimizerPath,
        Race,
        RegressionProblem,
        ScalingStudy,
        SearchResult,
        ToyFunction,
    )
    from ..toys.functions import Bounds

__all__ = [
    "animate_race",
    "contour_levels",
    "draw_function",
    "draw_path",
    "plot_loss_surface",
    "plot_optimizer_path",
    "plot_race",
    "plot_regression_problem",
    "plot_scaling_study",
    "plot_search",
]

#: How searches' paths are drawn: their steps are jumps, not moves.
SEARCH_STYLE = {"linestyle": ":", "linewidth": 1.0, "marker": ".", "markersize": 4}
#: Grid points per axis of the contour plots.
CONTOUR_POINTS = 201
CONTOUR_LEVELS = 30


# -- the pieces ------------------------------------------------------------------------------------
def new_axes(ax: Axes | None = None) -> Axes:
    """``ax``, or the axes of a new figure of the lab's size."""
    return _new_axes(ax, figsize=(6.4, 5.2))


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
            x, y = fn.minima[:, 0], fn.minima[:, 1]
            ax.scatter(x, y, marker="*", s=140, c="white", edgecolors="black", zorder=5)
        if len(fn.saddles):
            ax.scatter(fn.saddles[:, 0], fn.saddles[:, 1], marker="x", s=40, c="black", zorder=5)
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
    (line,) = ax.plot(points[:, 0], points[:, 1], color=color, label=literal(label), **style)
    ends = points[[0, -1]]
    colour = line.get_color()
    ax.scatter(ends[:1, 0], ends[:1, 1], marker="o", s=25, color=colour, zorder=6)
    end = ax.scatter(
        ends[1:, 0], ends[1:, 1], marker="X", s=50, color=colour, edgecolors="black", zorder=6
    )
    return line, end


# -- optimizer paths and races ---------------------------------------------------------------------
def plot_optimizer_path(path: OptimizerPath, ax: Axes | None = None) -> Figure:
    """An :class:`~lossvista.toys.OptimizerPath` over its function's contours (the function's
    bounds are the axis limits); returns the figure."""
    ax = new_axes(ax)
    draw_function(ax, path.function)
    draw_path(ax, path.points, label=path.name)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(literal(f"{path.name} on {path.function.name}"))
    return figure_of(ax)


def plot_race(race: Race, ax: Axes | None = None, *, legend: bool = True) -> Figure:
    """Every path of a :class:`~lossvista.toys.Race` over the function's contours (log-spaced
    levels for narrow valleys); returns the figure.

    The axis limits are the function's bounds; paths that leave them are clipped. Each path is
    one line in ``ax.lines``, in race order.
    """
    ax = new_axes(ax)
    draw_race(ax, race, legend="best" if legend else None)
    return figure_of(ax)


def draw_race(
    ax: Axes, race: Race, *, legend: Literal["best", "upper right"] | None
) -> list[tuple[Any, Any]]:
    """Draw ``race`` into ``ax`` (``legend``: its location, None for none); returns
    ``(line, end marker)`` per path."""
    draw_function(ax, race.function)
    handles = [
        draw_path(
            ax, path.points, label=label,
            **(SEARCH_STYLE if path.implementation == "search" else {}),
        )
        for label, path in race.paths.items()
    ]  # fmt: skip
    if legend:
        ax.legend(loc=legend, fontsize="small", framealpha=0.7)
    ax.set_title(literal(f"{race.function.name}: {race.function.formula}"), fontsize="medium")
    return handles


def animate_race(
    race: Race, path: str | Path, *, fps: int = 15, frames: int = 60, dpi: int = 80
) -> Path:
    """Write a GIF of ``race``: frame ``f`` shows every path up to step ``k_f``.

    The steps ``k_f`` are spread evenly from 0 to the longest path's length; there are
    ``min(frames, longest + 1)`` frames, each titled with its step (so no two are the same and
    GIF encoders keep them all). Written by :func:`lossvista.plot.animate.write_movie` (Pillow,
    a matplotlib dependency; an ``.mp4`` path needs ffmpeg), atomically.

    Args:
        race: the race.
        path: the ``.gif`` file to write (or ``.mp4``).
        fps: frames per second.
        frames: number of frames (at least 2).
        dpi: resolution; the figure is 6.4 x 5.2 inches.

    Returns:
        The path written.

    Raises:
        InputError: fewer than 2 frames or 1 frame per second, or another extension than
            ``.gif``/``.mp4`` (``.mp4`` without ffmpeg).
    """
    from .animate import check_movie_path, check_rate, frame_indices, write_movie

    check_rate(fps, frames)
    target = check_movie_path(path)
    longest = max(p.steps for p in race.paths.values())
    steps = frame_indices(longest + 1, frames)
    ax = new_axes()
    figure = figure_of(ax)  # a new figure's, so a Figure
    handles = draw_race(ax, race, legend="upper right")  # "best" would move between frames

    def draw(frame: int) -> list[Any]:
        step = steps[frame]
        for (line, end), trajectory in zip(handles, race.paths.values()):
            shown = trajectory.points[: min(step, trajectory.steps) + 1]
            line.set_data(shown[:, 0], shown[:, 1])
            end.set_offsets(shown[-1:])
        ax.set_title(literal(f"{race.function.name} — step {step}/{longest}"))
        return [artist for pair in handles for artist in pair]

    return write_movie(figure, draw, len(steps), target, fps=fps, dpi=dpi)


# -- searches --------------------------------------------------------------------------------------
def plot_search(result: SearchResult, ax: Axes | None = None) -> Figure:
    """A :class:`~lossvista.toys.SearchResult` over its function's contours in the region
    searched (``settings["bounds"]``): the chain (annealing, one line) or the grid's points (grid
    search, no line), and the best point found (a red plus); returns the figure."""
    from ..toys import AnnealingHistory

    ax = new_axes(ax)
    region = result.settings.get("bounds")  # searched; holds a start outside fn.bounds
    bounds: Bounds | None = None
    if region is not None:
        (xmin, xmax), (ymin, ymax) = region
        bounds = ((float(xmin), float(xmax)), (float(ymin), float(ymax)))
    draw_function(ax, result.function, bounds=bounds)
    if isinstance(result.history, AnnealingHistory):
        draw_path(ax, result.history.points, label="chain", color="tab:orange")
    else:
        gx, gy = np.meshgrid(result.history.xs, result.history.ys, indexing="ij")
        ax.scatter(gx, gy, s=2, c="grey", alpha=0.5, label="grid")
    x, y = result.best_params
    ax.scatter(x, y, marker="P", s=120, c="red", edgecolors="black", zorder=7)
    method = result.method.replace("_", " ")
    ax.set_title(literal(f"{method} on {result.function.name}: best {result.best_value:.6g}"))
    return figure_of(ax)


# -- feature scaling -------------------------------------------------------------------------------
def plot_loss_surface(surface: LossSurface, ax: Axes | None = None) -> Figure:
    """The contours of a :class:`~lossvista.toys.LossSurface` (log-spaced above the minimum,
    equal axis scales) over its grid; returns the figure."""
    ax = new_axes(ax)
    _draw_surface(ax, surface)
    return figure_of(ax)


def plot_regression_problem(
    problem: RegressionProblem, ax: Axes | None = None, *, title: str = ""
) -> Figure:
    """A :class:`~lossvista.toys.RegressionProblem`: its loss surface, the gradient-descent path
    (one line) and the least-squares weights (a star), titled with the condition number and the
    steps to ``tol`` after ``title``; returns the figure."""
    ax = new_axes(ax)
    _draw_surface(ax, problem.surface)
    marker = "." if len(problem.path) <= 200 else None  # dots only where they can be seen
    ax.plot(*problem.path.T, color="crimson", linewidth=1.5, marker=marker, markersize=4)
    w1, w2 = problem.weights
    ax.scatter(w1, w2, marker="*", s=140, c="white", edgecolors="black")
    steps = "not reached" if problem.iterations is None else f"{problem.iterations}"
    prefix = literal(f"{title}: ") if title else ""
    ax.set_title(
        f"{prefix}κ = {problem.condition_number:.4g}, GD steps to tol: {steps}",
        fontsize="medium",
    )
    return figure_of(ax)


def plot_scaling_study(study: ScalingStudy, ax: Sequence[Axes] | None = None) -> Figure:
    """Both problems of a :class:`~lossvista.toys.ScalingStudy` side by side (raw left,
    standardised right, see :func:`plot_regression_problem`); returns the figure.

    Args:
        study: the study.
        ax: a pair of axes (raw, scaled); a new 1 x 2 figure by default.

    Raises:
        InputError: ``ax`` is not a pair of axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(1, 2, figsize=(11, 5))[1]
    if len(ax) != 2:
        raise InputError(f"ax must be a pair of axes (raw, scaled), got {len(ax)}")
    plot_regression_problem(study.raw, ax[0], title="raw")
    plot_regression_problem(study.scaled, ax[1], title="standardised")
    return figure_of(ax[0])


def _draw_surface(ax: Axes, surface: LossSurface) -> None:
    grid = np.meshgrid(surface.w1, surface.w2, indexing="ij")
    levels = contour_levels(surface.values, log=True, count=25)
    ax.contour(*grid, surface.values, levels=levels, cmap="viridis", linewidths=0.8)
    ax.set_xlim(surface.w1[0], surface.w1[-1])
    ax.set_ylim(surface.w2[0], surface.w2[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
