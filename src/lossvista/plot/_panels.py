"""Small multiples of a 3-D landscape: one 2-D panel per value of its third axis, drawn by
:func:`lossvista.plot.landscape.plot_landscape` with levels (or a colour range) shared by every
panel, so equal colours mean equal values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ._figures import figure_of, literal
from .landscape import (
    _CONTOURS,
    Levels,
    _contour_levels,
    _default_title,
    _prepare,
    plot_landscape,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..landscape import Landscape


def draw_panels(
    landscape: Landscape,
    ax: Any,
    kind: str,
    panels: Sequence[int] | None,
    *,
    metric: str,
    log: bool,
    vmin: float | None,
    vmax: float | None,
    levels: Levels,
    title: str | None,
    markers: bool,
    cmap: str,
    labels: bool,
) -> Figure:
    """One 2-D panel per chosen index of the third axis, with shared levels or colour range."""
    import matplotlib.pyplot as plt

    count = landscape.shape[2]
    chosen = list(range(count)) if panels is None else [_panel_index(p, count) for p in panels]
    if not chosen:
        raise InputError("panels= is empty; pass at least one index of the third axis")
    everything = _prepare(landscape.values[metric], metric, log, vmin, vmax)
    if kind in _CONTOURS:  # one set of levels, so equal colours mean equal values
        shared: Levels = list(_contour_levels(everything, levels, log, vmin, vmax))
        low, high = vmin, vmax
    else:
        shared, low, high = levels, float(everything.min()), float(everything.max())
    if ax is None:
        columns = math.ceil(math.sqrt(len(chosen)))
        rows = math.ceil(len(chosen) / columns)
        figure, grid = plt.subplots(
            rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False
        )
        axes_list = list(grid.ravel())
        for spare in axes_list[len(chosen) :]:
            spare.remove()
    else:
        axes_list = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes_list) != len(chosen):
            raise InputError(
                f"a 3-D landscape draws {len(chosen)} panel(s): pass that many axes, or ax=None"
            )
        figure = figure_of(axes_list[0])
    name = landscape.axis_labels[2] if len(landscape.axis_labels) > 2 else landscape.dims[2]
    for panel, index in zip(axes_list, chosen):
        value = float(landscape.coords[2][index])
        plane = landscape.section(indices={2: index})
        if not np.isfinite(plane.values[metric]).any():
            panel.set_title(literal(f"{name} = {value:.4g}"))
            panel.text(0.5, 0.5, "no finite values", ha="center", va="center")
            continue
        plot_landscape(
            plane,
            ax=panel,
            kind=kind,
            metric=metric,
            log=log,
            vmin=low,
            vmax=high,
            levels=shared,
            title=f"{name} = {value:.4g}",
            markers=markers,
            cmap=cmap,
            labels=labels,
        )
        if kind == "heatmap":  # the same colours for the same values in every panel
            for mesh in panel.collections:
                mesh.set_clim(low, high)
    heading = title if title is not None else _default_title(landscape, metric)
    figure.suptitle(literal(heading))
    return figure


def _panel_index(index: Any, count: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"panels= takes indices of the third axis, got {index!r}")
    if not -count <= index < count:
        raise InputError(
            f"panel index {index} is out of range for {count} values of the third axis"
        )
    return int(index) % count
