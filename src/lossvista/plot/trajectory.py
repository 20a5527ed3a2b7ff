"""Figures of trajectories: a path coloured by step (an embedding, a projection onto directions)
and the explained variance of PCA directions. matplotlib is imported inside the functions so that
``import lossvista`` stays light; nothing here computes, it draws what the results hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ._figures import figure_of, literal, new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..trajectory import PCADirections, Projection, TrajectoryEmbedding

__all__ = ["plot_embedding", "plot_explained_variance", "plot_projection"]


def plot_embedding(embedding: TrajectoryEmbedding, ax: Axes | None = None) -> Figure:
    """The first two coordinates of a :class:`~lossvista.TrajectoryEmbedding` as a path coloured
    by step, titled with the method and its trustworthiness; returns the figure."""
    trust = embedding.trustworthiness
    title = f"trajectory — {embedding.method}" + (
        "" if trust is None else f", trustworthiness {trust:.3f}"
    )
    return plot_path(
        embedding.embedding, embedding.steps, embedding.axis_labels, ax=ax, title=title
    )


def plot_projection(projection: Projection, ax: Axes | None = None) -> Figure:
    """The coordinates of a :class:`~lossvista.Projection` (its first two axes) as a path
    coloured by step, with the origin marked; returns the figure."""
    figure = plot_path(
        projection.coordinates,
        projection.steps,
        projection.axis_labels,
        ax=ax,
        title="trajectory projected onto the directions",
    )
    figure.axes[0].scatter([0.0], [0.0], marker="+", color="black", zorder=3, label="origin")
    return figure


def plot_path(
    points: np.ndarray,
    steps: np.ndarray,
    labels: Sequence[str],
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Figure:
    """Points ``(P, n >= 2)`` joined in order (grey) and coloured by ``steps`` (a colour bar)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise InputError(
            f"plot() needs at least 2 coordinates per snapshot, got shape {points.shape}"
        )
    ax = new_axes(ax)
    x, y = points[:, 0], points[:, 1]
    ax.plot(x, y, color="grey", linewidth=1, zorder=1)
    dots = ax.scatter(x, y, c=np.asarray(steps), cmap="viridis", zorder=2)
    ax.figure.colorbar(dots, ax=ax, label="step")
    names = list(labels) + [f"axis {i + 1}" for i in range(len(labels), 2)]
    ax.set_xlabel(literal(names[0]))
    ax.set_ylabel(literal(names[1]))
    if title:
        ax.set_title(literal(title))
    return figure_of(ax)


def plot_explained_variance(directions: PCADirections, ax: Axes | None = None) -> Figure:
    """The share of the trajectory's spread along each PCA direction (bars) and their running
    total (line, in percent); returns the figure."""
    ratio = 100.0 * np.asarray(directions.explained_variance_ratio_, dtype=np.float64)
    if not ratio.size:
        raise InputError("nothing to plot: these PCA directions hold no explained variance")
    ax = new_axes(ax)
    positions = np.arange(1, ratio.size + 1)
    ax.bar(positions, ratio, color="tab:blue", label="per direction")
    ax.plot(positions, np.cumsum(ratio), marker="o", color="tab:orange", label="cumulative")
    ax.set_xticks(positions, [f"PC{i}" for i in positions])
    ax.set_ylim(0.0, 100.0)
    ax.set_ylabel("explained variance (%)")
    ax.set_title(literal(f"PCA of the trajectory (center={directions.center!r})"))
    ax.legend(fontsize="small")
    return figure_of(ax)
