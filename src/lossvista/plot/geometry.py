"""Figures of the geometry results: per-layer sensitivity bars, persistence diagrams, barcodes and
merge trees, and a scatter of two parameter groups along a trajectory. matplotlib is imported
inside the functions so that ``import lossvista`` stays light; nothing here evaluates a model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ._figures import figure_of, literal, new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..geometry.sensitivity import LayerSensitivity
    from ..geometry.topology import Persistence

__all__ = ["interaction_plot", "plot_merge_tree", "plot_persistence", "plot_sensitivity"]

#: Where the essential classes (death ``inf``) are drawn: this share of the finite range above
#: the highest finite value.
_INFINITY_MARGIN = 0.1


def plot_sensitivity(result: LayerSensitivity, ax: Axes | None = None) -> Figure:
    """A bar per group of its main value (``lambda_max``, ``sharpness`` or, for slices, the
    largest loss increase along the slice). For ``kind="slice"`` with ``ax=None`` the per-group
    slices are overlaid on a second axes. Returns the figure."""
    slices = result.kind == "slice" and ax is None and bool(result.slices)
    if ax is None:
        import matplotlib.pyplot as plt

        count = 2 if slices else 1
        axes = plt.subplots(1, count, figsize=(6.4 * count, 4.0), squeeze=False)[1][0]
        ax = axes[0]
    else:
        axes = [ax]
    key = result.value_name
    names = [literal(row["group"]) for row in result.rows]
    values = np.array([float(row[key]) for row in result.rows], dtype=np.float64)
    positions = np.arange(len(names))
    ax.bar(positions, values, color="C0")
    ax.set_xticks(positions, names, rotation=45 if len(names) > 4 else 0, ha="right")
    ax.set_ylabel(key)
    ax.set_title(f"Per-group sensitivity ({result.kind})")
    if slices:
        curves = axes[1]
        for row in result.rows:
            piece = result.slices[row["group"]]
            curves.plot(piece["coords"], piece["loss"], label=literal(row["group"]))
        curves.set_xlabel("step along the filter-normalised direction")
        curves.set_ylabel("loss")
        curves.set_title("Per-group slices")
        curves.legend(fontsize="small")
    return figure_of(ax)


def plot_persistence(result: Persistence, ax: Axes | None = None) -> Figure:
    """The persistence diagram: one point ``(birth, death)`` per basin, the diagonal, and the
    essential classes on a dashed line labelled infinity above the finite deaths. With
    ``ax=None`` the barcode (one horizontal bar per basin, birth to death) is drawn beside it.
    Returns the figure."""
    with_barcode = ax is None
    if ax is None:
        import matplotlib.pyplot as plt

        diagram, barcode = plt.subplots(1, 2, figsize=(11.0, 4.5))[1]
    else:
        diagram, barcode = ax, None
    births, deaths = result.pairs[:, 0], result.pairs[:, 1]
    top = _infinity_level(result.pairs)
    essential = ~np.isfinite(deaths)
    low = float(births.min()) if births.size else 0.0
    diagram.plot([low, top], [low, top], color="grey", lw=0.8, ls=":")
    diagram.scatter(births[~essential], deaths[~essential], color="C0", label="basins", zorder=3)
    if essential.any():
        diagram.axhline(top, color="grey", lw=0.8, ls="--")
        diagram.scatter(
            births[essential],
            np.full(int(essential.sum()), top),
            color="C3",
            marker="^",
            label="essential (death = inf)",
            zorder=3,
        )
    diagram.set_xlabel("birth (minimum value)")
    diagram.set_ylabel("death (merge value)")
    diagram.set_title(f"Persistence diagram of {literal(result.metric)}")
    diagram.legend(loc="lower right", fontsize="small")
    if with_barcode and barcode is not None:
        order = np.argsort(births, kind="stable")
        for row, i in enumerate(order):
            end = deaths[i] if np.isfinite(deaths[i]) else top
            colour = "C0" if np.isfinite(deaths[i]) else "C3"
            barcode.plot([births[i], end], [row, row], color=colour, lw=2.5)
        barcode.set_xlabel(literal(result.metric))
        barcode.set_ylabel("basin")
        barcode.set_title("Barcode")
    return figure_of(diagram)


def plot_merge_tree(result: Persistence, ax: Axes | None = None) -> Figure:
    """The merge tree: every minimum's vertical bar from its birth up to its death, joined by a
    horizontal segment at the death to the bar of the basin it merges into; essential classes
    rise to a level above the finite deaths. Leaves are ordered depth-first from the essential
    classes so that joins do not cross. Returns the figure."""
    ax = new_axes(ax, figsize=(6.4, 4.5))
    pairs, parents = result.pairs, result.parents
    top = _infinity_level(pairs)
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents.tolist()):
        children.setdefault(p, []).append(i)
    x = np.zeros(len(pairs))
    position = 0

    def place(i: int) -> None:
        nonlocal position
        x[i] = position
        position += 1
        for child in sorted(children.get(i, []), key=lambda c: -pairs[c, 1]):
            place(child)

    for root in children.get(-1, []):
        place(root)
    for i, (birth, death) in enumerate(pairs):
        end = death if np.isfinite(death) else top
        colour = "C0" if np.isfinite(death) else "C3"
        ax.plot([x[i], x[i]], [birth, end], color=colour, lw=1.8)
        if parents[i] >= 0:
            ax.plot([x[i], x[parents[i]]], [death, death], color="grey", lw=1.0)
    ax.set_xticks([])
    ax.set_ylabel(literal(result.metric))
    ax.set_title("Merge tree of the basins")
    return figure_of(ax)


def interaction_plot(
    trajectory: Any,
    losses: Sequence[float] | np.ndarray,
    x: str | Sequence[str] | tuple[str, tuple[int, ...]],
    y: str | Sequence[str] | tuple[str, tuple[int, ...]],
    ax: Axes | None = None,
) -> Figure:
    """How two parameter groups move together along a trajectory, coloured by the loss.

    Every snapshot is one point: its summary of group ``x`` against its summary of group ``y``,
    coloured by ``losses[i]``. A group given as a name or glob, or a list of them, is summarised
    by the L2 norm of the matched parameters; a tuple ``("fc.weight", (0, 1))`` names one entry,
    whose value is used as it is.

    Args:
        trajectory: a :class:`~lossvista.Trajectory` (or a list of state dicts).
        losses: ``(P,)`` the loss of each snapshot (e.g. recorded during training).
        x, y: the two groups.
        ax: axes to draw into (default: a new figure).

    Returns:
        The figure.
    """
    from ..trajectory.container import as_trajectory

    traj = as_trajectory(trajectory)
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    if loss.shape != (len(traj),):
        raise InputError(f"losses must hold one value per snapshot ({len(traj)}), got {loss.shape}")
    xs, x_label = _summary(traj, x)
    ys, y_label = _summary(traj, y)
    ax = new_axes(ax, figsize=(6.0, 4.8))
    points = ax.scatter(xs, ys, c=loss, cmap="viridis", zorder=3)
    ax.plot(xs, ys, color="grey", lw=0.6, zorder=2)
    ax.figure.colorbar(points, ax=ax, label="loss")
    ax.set_xlabel(literal(x_label))
    ax.set_ylabel(literal(y_label))
    ax.set_title("Parameter groups along the trajectory")
    return figure_of(ax)


def _summary(traj: Any, group: Any) -> tuple[np.ndarray, str]:
    names = tuple(traj.names)
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[1], tuple):
        name, index = group
        if name not in names:
            raise InputError(f"the trajectory has no parameter {name!r}; it has {list(names)}")
        shape = tuple(traj[0][name].shape)
        flat = int(np.ravel_multi_index(index, shape))
        return traj.block(name)[:, flat], f"{name}[{', '.join(map(str, index))}]"
    patterns = [group] if isinstance(group, str) else list(group)
    chosen = [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise InputError(f"{patterns} match no parameter of the trajectory; it has {list(names)}")
    squared = sum(np.sum(traj.block(n) ** 2, axis=1) for n in chosen)
    return np.sqrt(squared), f"|{', '.join(patterns)}|"


def _infinity_level(pairs: np.ndarray) -> float:
    """The height at which death ``inf`` is drawn: a margin above every finite value."""
    finite = pairs[np.isfinite(pairs)]
    if finite.size == 0:
        return 1.0
    low, high = float(finite.min()), float(finite.max())
    return high + _INFINITY_MARGIN * (high - low if high > low else max(abs(high), 1.0))
