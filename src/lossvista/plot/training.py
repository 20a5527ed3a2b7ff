"""Figures of training runs: the learning curves and norms of a
:class:`~lossvista.training.TrainingMonitor`, and the runs of a
:class:`~lossvista.training.Comparison` overlaid. matplotlib is imported inside the functions so
that ``import lossvista`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ._figures import figure_of, literal, new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..training import Comparison

__all__ = ["plot_comparison", "plot_history"]


def plot_history(
    history: Mapping[str, list[Any]], ax: Axes | Sequence[Axes] | None = None
) -> Figure:
    """Learning curves (left) and norms on a log scale (right) of a training history.

    Args:
        history: :attr:`TrainingMonitor.history <lossvista.training.TrainingMonitor>` (or the
            ``"history"`` of a file written by its ``save``).
        ax: two axes, or one (the norms then go on a twin axis), or ``None`` for a new figure.

    Returns:
        The figure (``plt.show()`` is left to you).
    """
    if not history.get("epoch") and not history.get("step_loss") and not history.get("grad_norm"):
        raise InputError("nothing to plot: the monitor has recorded nothing yet")
    loss_ax, norm_ax = _two_axes(ax)
    by_epoch = bool(history["epoch"])
    step_x = _step_positions(history)
    if by_epoch:
        for key, label in (("loss", "train loss"), ("val_loss", "validation loss")):
            epochs, values = _present(history["epoch"], history[key])
            if len(values):
                loss_ax.plot(epochs, values, marker=".", label=label)
    epochs_or_steps, values = _present(step_x, history["step_loss"])
    if len(values):
        loss_ax.plot(epochs_or_steps, values, alpha=0.35, linewidth=1, label="batch loss")
    loss_ax.set_ylabel("loss")
    norm_source = (
        (history["epoch"], history["weight_norm"], history["epoch_grad_norm"])
        if by_epoch
        else (step_x, history["step_weight_norm"], history["grad_norm"])
    )
    for series, label, style in (
        (norm_source[1], "weight norm", "-"),
        (norm_source[2], "gradient norm", "--"),
    ):
        x, y = _present(norm_source[0], series)
        if len(y):
            norm_ax.plot(x, y, style, label=label)
    if _all_positive(norm_ax):
        norm_ax.set_yscale("log")
    norm_ax.set_ylabel("L2 norm")
    for axes in (loss_ax, norm_ax):
        axes.set_xlabel("epoch" if by_epoch else "step")
        if axes.get_lines():
            axes.legend(fontsize="small")
    return loss_ax.figure


def plot_comparison(
    comparison: Comparison, ax: Axes | None = None, *, metric: str = "loss", log: bool = True
) -> Figure:
    """Overlay ``metric`` per epoch for every run of a comparison; returns the figure.

    Args:
        comparison: a :class:`~lossvista.training.Comparison`.
        ax: the axes to draw into; a new figure when ``None``.
        metric: a per-epoch history list: ``"loss"``, ``"val_loss"``, ``"weight_norm"``,
            ``"epoch_grad_norm"``.
        log: a logarithmic y axis when every value drawn is positive.
    """
    ax = new_axes(ax)
    drawn = 0
    for name, history in comparison.histories.items():
        if metric not in history:
            raise InputError(f"unknown metric {metric!r}; histories have {list(history)}")
        epochs, values = _present(history["epoch"], history[metric])
        if len(values):
            ax.plot(epochs, values, marker=".", label=literal(name))
            drawn += 1
    if not drawn:
        raise InputError(f"nothing to plot: no run recorded {metric!r}")
    if log and _all_positive(ax):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(literal(metric))
    ax.legend(fontsize="small")
    return figure_of(ax)


def _two_axes(ax: Any) -> tuple[Any, Any]:
    if ax is None:
        import matplotlib.pyplot as plt

        _, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        return left, right
    if isinstance(ax, (tuple, list, np.ndarray)):
        if len(ax) != 2:
            raise InputError(f"ax must be one axes or two, got {len(ax)}")
        return ax[0], ax[1]
    return ax, ax.twinx()


def _step_positions(history: Mapping[str, list[Any]]) -> list[float]:
    """x of each step: fractional epochs when epochs were recorded, else 1, 2, 3..."""
    count = len(history["step_loss"])
    if not history["epoch"] or not history["steps"] or history["steps"][-1] == 0:
        return list(range(1, count + 1))
    first = history["epoch"][0] - 1
    return list(
        np.interp(np.arange(1, count + 1), [0, *history["steps"]], [first, *history["epoch"]])
    )


def _present(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pairs)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _all_positive(ax: Any) -> bool:
    values = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
    finite = [v[np.isfinite(v)] for v in values]
    return bool(finite) and all(v.size and np.all(v > 0) for v in finite)
