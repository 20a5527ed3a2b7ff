"""Draw a :class:`~lossvista.landscape.Landscape`: a line (1-D); contours, heatmap, surface (2-D);
small multiples of planes (3-D, one panel per value of the third axis).

Values are indexed ``"ij"`` (``values[m][i, j]`` is at ``(coords[0][i], coords[1][j])``) and so
are the grids handed to matplotlib (``np.meshgrid(..., indexing="ij")``): X, Y and Z share one
layout and nothing is transposed. NaN points are masked, never drawn as zeros. matplotlib is
imported inside the functions so that ``import lossvista`` stays light.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import InputError, LossvistaWarning
from ..landscape import Interpolation
from ._figures import figure_of, literal

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import Axes3D

    from ..landscape import Landscape

#: Valid ``kind`` values by landscape dimensionality; the first is the default.
KINDS: dict[int, tuple[str, ...]] = {
    1: ("line",),
    2: ("contour", "filled", "heatmap", "surface3d"),
    3: ("contour", "filled", "heatmap"),
}
DEFAULT_LEVELS = 20
Levels = int | Sequence[float] | None
_CONTOURS = ("contour", "filled")
_ORIGIN_STYLE = {"marker": "*", "markersize": 14, "color": "white", "markeredgecolor": "black"}
_POINT_STYLE = {"marker": "o", "markersize": 6, "color": "white", "markeredgecolor": "black"}
_PATH_COLOR = "crimson"


def plot_landscape(
    landscape: Landscape,
    ax: Axes | None = None,
    kind: str | None = None,
    *,
    metric: str = "loss",
    log: bool = False,
    vmax: float | None = None,
    vmin: float | None = None,
    levels: Levels = None,
    title: str | None = None,
    path: Any = None,
    markers: bool = True,
    cmap: str = "viridis",
    labels: bool = True,
    panels: Sequence[int] | None = None,
) -> Figure:
    """Draw one metric of a landscape and return the figure (``plt.show()`` is left to you).

    A 3-D landscape is drawn as small multiples: one 2-D panel (axes 0 and 1) per value of the
    third axis, or per index in ``panels``, titled with that value; the contour levels (or the
    colour range of a heatmap) are shared by every panel, so the panels compare. A 4-D or larger
    landscape is refused: draw a :meth:`~lossvista.Landscape.section` of it.

    Args:
        landscape: a :class:`~lossvista.landscape.Landscape` (or ``Interpolation``) of 1 to 3
            axes.
        ax: axes to draw into (a 3-D axes for ``kind="surface3d"``); a new figure when None.
            For a 3-D landscape: ``None`` or one axes per panel.
        kind: 1-D: ``"line"``; 2-D: ``"contour"`` (default, labelled levels), ``"filled"``,
            ``"heatmap"`` or ``"surface3d"``.
        metric: the value to draw. 1-D plots add every other metric on a twin y axis and shade
            ``<name>_stderr`` arrays as ±1 standard-error bands around ``<name>``.
        log: log y axis (1-D), log-spaced contour levels, a log colour scale (heatmap) or log10
            heights (surface). Non-positive values are masked with a :class:`LossvistaWarning`.
        vmax: values above are drawn as ``vmax`` (line, heatmap, surface); contour levels stop
            at ``vmax``, leaving higher regions blank. Keeps a loss spike from flattening the rest.
        vmin: the same from below.
        levels: number of contour levels (at least 2) or their values; by default 20 spanning
            the finite range within ``[vmin, vmax]``.
        title: axes title, drawn as written (``$`` is not mathtext); by default like
            ``"loss — plane (filter-normalised)"``.
        path: a trajectory to overlay on a 2-D landscape: a ``(P, 2)`` array of coordinates, or
            an object whose ``coordinates`` attribute is one.
        markers: draw ``landscape.markers`` (dotted vertical lines in 1-D, points in 2-D).
        cmap: colour map of 2-D plots.
        labels: write marker names, path ends and contour level values.
        panels: 3-D only: indices along the third axis to draw (default: every value).

    Returns:
        The figure holding the axes drawn into (``ax.figure`` when ``ax`` was given).

    Raises:
        InputError: unknown ``metric`` or ``kind``, a kind that does not fit the landscape's
            dimensionality, a 2-D ``ax`` for ``"surface3d"``, a badly shaped ``path``, or nothing
            finite to plot.
    """
    kind = _check_kind(landscape, kind)
    if metric not in landscape.values:
        raise InputError(f"unknown metric {metric!r}; this landscape has {landscape.metrics}")
    if vmin is not None and vmax is not None and vmin > vmax:
        raise InputError(f"vmin={vmin} is larger than vmax={vmax}")
    if panels is not None and landscape.ndim != 3:
        raise InputError(f"panels= is for 3-D landscapes, not {landscape.ndim}-D")
    if landscape.ndim == 3:
        if path is not None:
            raise InputError("a path can only be overlaid on a 2-D landscape, not 3-D")
        from ._panels import draw_panels  # it draws each panel with plot_landscape

        return draw_panels(
            landscape,
            ax,
            kind,
            panels,
            metric=metric,
            log=log,
            vmin=vmin,
            vmax=vmax,
            levels=levels,
            title=title,
            markers=markers,
            cmap=cmap,
            labels=labels,
        )
    points = _path_points(landscape, path)
    contours = kind in _CONTOURS  # contours keep the values and cap their levels instead
    bounds = (None, None) if contours else (vmin, vmax)
    data = _prepare(landscape.values[metric], metric, log, *bounds)
    steps = _contour_levels(data, levels, log, vmin, vmax) if contours else None
    ax = _axes(ax, three_d=kind == "surface3d")
    if landscape.ndim == 1:
        _draw_line(ax, landscape, data, metric, log=log, markers=markers, labels=labels)
    else:
        drawn = _draw_plane(ax, landscape, data, metric, kind, steps, log, cmap, labels)
        heights = drawn if kind == "surface3d" else None
        _draw_overlays(ax, landscape, points, heights, markers=markers, labels=labels)
    ax.set_title(literal(title if title is not None else _default_title(landscape, metric)))
    return figure_of(ax)


# -- checks and data ----------------------------------------------------------------------------
def _check_kind(landscape: Landscape, kind: str | None) -> str:
    valid = KINDS.get(landscape.ndim)
    if valid is None:
        fix = ", ".join(f"{d}=0.0" for d in landscape.dims[3:]) or "..."
        raise InputError(
            f"can only plot landscapes of 1 to 3 axes, got {landscape.ndim}-D (shape "
            f"{landscape.shape}); take a section first, e.g. landscape.section({fix}).plot(), "
            "which fixes the axes after the third"
        )
    if kind is None:
        return valid[0]
    if kind not in valid:
        raise InputError(
            f"kind={kind!r} does not fit a {landscape.ndim}-D landscape; valid kinds: {list(valid)}"
        )
    return kind


def _path_points(landscape: Landscape, path: Any) -> np.ndarray | None:
    if path is None:
        return None
    if landscape.ndim != 2:
        raise InputError(f"a path can only be overlaid on a 2-D landscape, not {landscape.ndim}-D")
    points = np.asarray(getattr(path, "coordinates", path), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise InputError(
            f"path must be a (P, 2) array of coordinates or have such a .coordinates attribute, "
            f"got shape {points.shape}"
        )
    return points


def _prepare(
    values: np.ndarray, metric: str, log: bool, vmin: float | None, vmax: float | None
) -> np.ma.MaskedArray:
    """Mask non-finite values, clip to ``[vmin, vmax]`` and, for ``log``, mask values <= 0."""
    data = np.ma.masked_invalid(values)
    if data.count() == 0:
        raise InputError(
            f"nothing to plot: {metric!r} has no finite value (not computed yet, or every "
            "evaluation gave NaN/inf)"
        )
    if vmin is not None or vmax is not None:
        data = np.ma.clip(data, vmin, vmax)
    if log:
        nonpositive = int(np.ma.sum(data <= 0))
        if nonpositive:
            warnings.warn(
                f"log scale: {nonpositive} non-positive {metric!r} value(s) cannot be logged and "
                "are left out",
                LossvistaWarning,
                stacklevel=3,
            )
            data = np.ma.masked_less_equal(data, 0.0)
        if data.count() == 0:
            raise InputError(f"nothing to plot: {metric!r} has no positive value for log=True")
    return data


def _contour_levels(
    data: np.ma.MaskedArray, levels: Levels, log: bool, vmin: float | None, vmax: float | None
) -> np.ndarray:
    """Increasing contour levels inside ``[vmin, vmax]`` (and > 0 for ``log``)."""
    low = -np.inf if vmin is None else vmin
    high = np.inf if vmax is None else vmax
    # int too: the type checker does not count int as a numbers.Integral
    if levels is not None and not isinstance(levels, (int, numbers.Integral)):
        steps = np.unique(np.asarray(levels, dtype=np.float64))
        steps = steps[(steps >= low) & (steps <= high) & ((steps > 0) | (not log))]
        if steps.size == 0:
            raise InputError(f"none of levels={list(levels)} lies within [{vmin}, {vmax}]")
        return steps
    count = DEFAULT_LEVELS if levels is None else int(levels)
    if count < 2:
        raise InputError(f"levels must be at least 2, got {count}")
    lo, hi = max(float(data.min()), low), min(float(data.max()), high)
    if lo > hi:
        raise InputError(
            f"nothing to plot: every value lies outside [vmin, vmax] = [{vmin}, {vmax}] "
            f"(data range [{float(data.min()):.4g}, {float(data.max()):.4g}])"
        )
    if lo == hi:  # a constant surface: one band
        return np.array([lo, np.nextafter(lo, np.inf)])
    return np.geomspace(lo, hi, count) if log else np.linspace(lo, hi, count)


def _default_title(landscape: Landscape, metric: str) -> str:
    title = f"{metric} — {landscape.kind.replace('_', ' ')}"
    directions = landscape.settings.get("directions")
    first = directions[0] if isinstance(directions, (list, tuple)) and directions else {}
    norm = first.get("norm") if isinstance(first, dict) else None
    return f"{title} ({norm}-normalised)" if norm else title


def _axes(ax: Axes | None, *, three_d: bool) -> Axes:
    if ax is not None:
        if three_d and getattr(ax, "name", None) != "3d":
            raise InputError(
                'kind="surface3d" needs a 3-D axes: create it with '
                'fig.add_subplot(projection="3d"), or pass ax=None'
            )
        return ax
    import matplotlib.pyplot as plt

    if three_d:
        return plt.figure().add_subplot(projection="3d")
    return plt.subplots()[1]


# -- 1-D --------------------------------------------------------------------------------------
def _draw_line(
    ax: Axes,
    landscape: Landscape,
    data: np.ma.MaskedArray,
    metric: str,
    *,
    log: bool,
    markers: bool,
    labels: bool,
) -> None:
    x = landscape.coords[0]
    handles = [_curve(ax, x, data, landscape.values.get(f"{metric}_stderr"), metric, "C0")]
    ax.set_xlabel(literal(landscape.axis_labels[0]))
    ax.set_ylabel(literal(metric))
    if log:
        ax.set_yscale("log")
    if isinstance(landscape, Interpolation) and all(
        metric in landscape.endpoints.get(end, {}) for end in ("a", "b")
    ):
        a, b = landscape.endpoints["a"][metric], landscape.endpoints["b"][metric]
        barrier = landscape.barrier_of(metric)
        handles += ax.plot(
            [0.0, 1.0], [a, b], "--", color="C0", alpha=0.6, label=f"chord, barrier {barrier:.3g}"
        )
    others = [m for m in landscape.metrics if m != metric and not m.endswith("_stderr")]
    legend_axes = ax
    if others:
        legend_axes = ax.twinx()  # drawn above ax, so the legend goes here to stay on top
        for colour, other in enumerate(others, start=1):
            values = np.ma.masked_invalid(landscape.values[other])
            stderr = landscape.values.get(f"{other}_stderr")
            handles.append(_curve(legend_axes, x, values, stderr, other, f"C{colour}"))
        legend_axes.set_ylabel(literal(", ".join(others)))
    if markers:
        for name, point in landscape.markers.items():
            ax.axvline(point[0], linestyle=":", color="grey", linewidth=1)
            if labels:
                at_top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
                text = literal(f" {name}")
                ax.text(point[0], 0.98, text, transform=at_top, va="top", color="grey")
    legend_axes.legend(handles=handles, fontsize="small")


def _curve(ax: Axes, x: np.ndarray, y: np.ndarray, stderr: Any, label: str, colour: str) -> Any:
    """Plot ``y`` against ``x`` with an optional ±``stderr`` band; returns the line."""
    (line,) = ax.plot(x, y, marker=".", color=colour, label=literal(label))
    if stderr is not None:
        centre = np.ma.filled(y.astype(np.float64), np.nan)
        ax.fill_between(x, centre - stderr, centre + stderr, color=colour, alpha=0.2, linewidth=0)
    return line


# -- 2-D --------------------------------------------------------------------------------------
def _draw_plane(
    ax: Axes,
    landscape: Landscape,
    data: np.ma.MaskedArray,
    metric: str,
    kind: str,
    steps: np.ndarray | None,
    log: bool,
    cmap: str,
    labels: bool,
) -> np.ma.MaskedArray:
    """Draw ``data`` as ``kind`` (``steps``: contour levels); returns the heights drawn."""
    from matplotlib.colors import LogNorm

    grid = np.meshgrid(*landscape.coords, indexing="ij")  # same layout as data
    ax.set_xlabel(literal(landscape.axis_labels[0]))
    ax.set_ylabel(literal(landscape.axis_labels[1]))
    colour_label = literal(metric)
    mappable: ScalarMappable
    if kind in _CONTOURS:
        # plot_landscape computes the levels of every contour kind
        norm = LogNorm(steps[0], steps[-1]) if log and steps is not None else None
        if kind == "contour":
            contours = ax.contour(*grid, data, levels=steps, cmap=cmap, norm=norm)
            if labels:
                every_other = np.asarray(contours.levels)[::2]
                ax.clabel(contours, every_other, fontsize="x-small", fmt="%.3g")
            return data
        mappable = ax.contourf(*grid, data, levels=steps, cmap=cmap, norm=norm)
    elif kind == "heatmap":
        norm = LogNorm() if log else None
        mappable = ax.pcolormesh(*grid, data, shading="nearest", cmap=cmap, norm=norm)
    else:
        if log:
            data, colour_label = np.ma.log10(data), literal(f"log10 {metric}")
        axes3d = cast("Axes3D", ax)  # _axes made or checked a "3d" axes for surface3d
        mappable = axes3d.plot_surface(*grid, data, cmap=cmap)
        axes3d.set_zlabel(colour_label)
    pad = 0.1 if kind == "surface3d" else 0.05  # keep the z label clear of the colour bar
    ax.figure.colorbar(mappable, ax=ax, label=colour_label, shrink=0.8, pad=pad)
    return data


def _positions(
    points: np.ndarray, landscape: Landscape, heights: np.ma.MaskedArray | None
) -> list[np.ndarray]:
    """``[x, y]`` of ``points`` (shape ``(P, 2)``), plus the nearest grid height on 3-D axes."""
    columns = [points[:, 0], points[:, 1]]
    if heights is None:
        return columns
    i = np.abs(landscape.coords[0][:, None] - points[:, 0]).argmin(axis=0)
    j = np.abs(landscape.coords[1][:, None] - points[:, 1]).argmin(axis=0)
    return [*columns, np.ma.filled(heights[i, j].astype(np.float64), np.nan)]


def _draw_overlays(
    ax: Axes,
    landscape: Landscape,
    points: np.ndarray | None,
    heights: np.ma.MaskedArray | None,
    *,
    markers: bool,
    labels: bool,
) -> None:
    """Draw ``landscape.markers`` (when ``markers``) and the path ``points`` (when given)."""
    for name, point in landscape.markers.items() if markers else ():
        position = _positions(np.asarray([point[:2]], dtype=np.float64), landscape, heights)
        style: dict[str, Any] = _ORIGIN_STYLE if name == "origin" else _POINT_STYLE
        ax.plot(*position, linestyle="none", zorder=5, label=literal(name), **style)
        if labels:
            _text(ax, [float(c[0]) for c in position], literal(f" {name}"), fontsize="small")
    if points is None:
        return
    line = _positions(points, landscape, heights)
    ax.plot(*line, color=_PATH_COLOR, linewidth=1.5, zorder=4, label="path")
    for index, name, marker in ((0, "start", "o"), (-1, "end", "X")):
        ax.plot(*(c[[index]] for c in line), marker=marker, color=_PATH_COLOR, linestyle="none")
        if labels:
            _text(ax, [float(c[index]) for c in line], f" {name}", color=_PATH_COLOR)


def _text(ax: Axes, at: list[float], text: str, **kwargs: Any) -> None:
    """``text`` at ``at``: ``(x, y)``, or ``(x, y, z)`` on a 3-D axes."""
    if len(at) == 3:
        x, y, z = at
        cast("Axes3D", ax).text(x, y, z, text, **kwargs)
    else:
        x, y = at
        ax.text(x, y, text, **kwargs)


# -- 3-D: small multiples -------------------------------------------------------------------------
