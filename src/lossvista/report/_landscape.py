"""Sections of landscapes: lines and interpolations (1-D), planes (2-D), N-D grids."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..landscape import Interpolation, Landscape
from ._blocks import axis_layout, line_plot, metadata_table, positive, summary_table
from ._html import Block, Plot, Table, plain

__all__ = ["CLIP_PERCENTILE", "critical_points", "landscape_blocks", "on_surface"]

#: The "clipped" views cap the values at this percentile of the finite ones.
CLIP_PERCENTILE = 90.0


def landscape_blocks(landscape: Landscape, path: np.ndarray | None = None) -> list[Block]:
    """Summary, plots and metadata of a landscape of any dimension.

    ``path``: coordinates ``(P, 2)`` of a training path to draw on a plane that carries none.
    """
    blocks: list[Block] = [summary_table(landscape)]
    if landscape.ndim == 1:
        blocks += _line_blocks(landscape)
    elif landscape.ndim == 2:
        trajectory = landscape.trajectory if landscape.trajectory is not None else path
        blocks += _plane_blocks(landscape, trajectory)
    else:
        blocks += _grid_blocks(landscape)
    blocks.append(metadata_table(landscape_metadata(landscape)))
    return blocks


def landscape_metadata(landscape: Landscape) -> dict[str, Any]:
    """What produced a landscape: kind, seed, axes, centre and its check, end points, markers,
    the directions' descriptions and every setting (objective, engine, versions, timings)."""
    directions = {
        f"direction {i + 1}": {"norm": d.norm(), **dict(d.meta)}
        for i, d in enumerate(landscape.directions)
    }
    return {
        "kind": landscape.kind,
        "seed": landscape.seed,
        "axis labels": list(landscape.axis_labels),
        "center": landscape.center,
        "center check": landscape.center_check,
        "endpoints": landscape.endpoints,
        "markers": {k: list(v) for k, v in landscape.markers.items()},
        "directions": directions,
        "settings": landscape.settings,
        "file": None if landscape.path is None else str(landscape.path),
    }


# -- 1-D ---------------------------------------------------------------------------------------
def _line_blocks(landscape: Landscape) -> list[Block]:
    t = landscape.coords[0]
    blocks: list[Block] = []
    interpolation = isinstance(landscape, Interpolation) and bool(landscape.endpoints)
    for metric in landscape.metrics:
        values = landscape.values[metric]
        series = [(metric, t, values)]
        if interpolation:
            a, b = landscape.endpoints["a"][metric], landscape.endpoints["b"][metric]
            chord = (1.0 - t) * a + t * b
            inside = (t >= 0.0) & (t <= 1.0)
            series.append(("straight line between the ends", t[inside], chord[inside]))
        blocks.append(
            line_plot(
                series,
                title=metric,
                x_title=landscape.axis_labels[0],
                y_title=metric,
                mode="lines+markers",
            )
        )
    if isinstance(landscape, Interpolation) and landscape.endpoints:
        rows = [
            (
                metric,
                landscape.endpoints["a"].get(metric),
                landscape.endpoints["b"].get(metric),
                landscape.barrier_of(metric),
            )
            for metric in landscape.metrics
        ]
        blocks.append(
            Table(
                ("metric", "at a (t = 0)", "at b (t = 1)", "barrier"),
                rows,
                f"Barrier (loss barrier {landscape.barrier:.6g} at t = {landscape.barrier_t:.6g})",
                role="barrier",
            )
        )
    return blocks


# -- 2-D ---------------------------------------------------------------------------------------
def on_surface(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``z`` (``"ij"``: ``z[i, j]`` at ``xs[i], ys[j]``) at ``points``
    ``(P, 2)``; points outside the grid take the value at its edge."""

    def fraction(axis: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(axis) == 1:
            return np.zeros(len(p), dtype=np.int64), np.zeros(len(p))
        position = np.interp(p, axis, np.arange(len(axis), dtype=np.float64))
        low = np.minimum(np.floor(position).astype(np.int64), len(axis) - 2)
        return low, position - low

    i, u = fraction(xs, points[:, 0])
    j, v = fraction(ys, points[:, 1])
    i1, j1 = np.minimum(i + 1, len(xs) - 1), np.minimum(j + 1, len(ys) - 1)
    return (
        (1 - u) * (1 - v) * z[i, j]
        + u * (1 - v) * z[i1, j]
        + (1 - u) * v * z[i, j1]
        + u * v * z[i1, j1]
    )


def critical_points(landscape: Landscape, metric: str = "loss") -> list[dict[str, Any]]:
    """The grid minimum, the grid's local minima and saddles (from 0-dimensional persistence,
    :mod:`lossvista.geometry.topology`), each as ``{"kind", "coords", "value", "persistence"}``."""
    from ..geometry.topology import persistence

    values = landscape.values[metric]
    if not np.isfinite(values).any():
        return []

    def at(index: Any) -> tuple[tuple[float, ...], float]:
        index = tuple(int(k) for k in index)
        coords = tuple(float(c[k]) for c, k in zip(landscape.coords, index, strict=True))
        return coords, float(values[index])

    lowest = np.unravel_index(int(np.nanargmin(values)), values.shape)
    coords, value = at(lowest)
    points = [{"kind": "grid minimum", "coords": coords, "value": value, "persistence": None}]
    pairs = persistence(landscape, metric)
    for row in range(len(pairs.pairs)):
        span = float(pairs.persistence[row])
        coords, value = at(pairs.minima[row])
        points.append(
            {"kind": "local minimum", "coords": coords, "value": value, "persistence": span}
        )
        if pairs.saddles[row][0] >= 0:
            coords, value = at(pairs.saddles[row])
            points.append({"kind": "saddle", "coords": coords, "value": value, "persistence": span})
    return points


def _views(z: np.ndarray) -> dict[str, np.ndarray]:
    """The surface's value views: as is, log10 (only for positive values), clipped, both."""
    finite = z[np.isfinite(z)]
    views = {"linear": z}
    clip = float(np.percentile(finite, CLIP_PERCENTILE)) if finite.size else np.nan
    views[f"clipped at p{CLIP_PERCENTILE:g}"] = np.minimum(z, clip)
    if positive(z):
        with np.errstate(invalid="ignore", divide="ignore"):
            views["log10"] = np.log10(z)
            views[f"log10, clipped at p{CLIP_PERCENTILE:g}"] = np.log10(np.minimum(z, clip))
    return views


def _plane_blocks(landscape: Landscape, trajectory: np.ndarray | None) -> list[Block]:
    xs, ys = landscape.coords
    x_label, y_label = landscape.axis_labels[:2]
    path = None if trajectory is None else np.asarray(trajectory, dtype=np.float64)[:, :2]
    blocks: list[Block] = [_surface3d(landscape, path)]
    points = critical_points(landscape)
    for metric in landscape.metrics:
        z = landscape.values[metric]
        data: list[dict[str, Any]] = [
            {
                "type": "contour",
                "name": metric,
                "x": plain(xs),
                "y": plain(ys),
                "z": plain(z.T),
                "colorscale": "Viridis",
                "contours": {"coloring": "heatmap"},
                "colorbar": {"title": {"text": metric}},
            }
        ]
        if path is not None:
            data.append(_path_trace(path, "training path"))
        if metric == "loss":
            # The grid minimum last: it is drawn over the local minimum at the same point.
            for kind, symbol in (
                ("local minimum", "circle"),
                ("saddle", "x"),
                ("grid minimum", "star"),
            ):
                chosen = [p for p in points if p["kind"] == kind]
                if chosen:
                    data.append(
                        {
                            "type": "scatter",
                            "mode": "markers",
                            "name": kind,
                            "x": [p["coords"][0] for p in chosen],
                            "y": [p["coords"][1] for p in chosen],
                            "marker": {
                                "symbol": symbol,
                                "size": 11,
                                "color": "white",
                                "line": {"color": "black", "width": 1},
                            },
                        }
                    )
        layout = {
            "title": {"text": f"{metric}: contours"},
            "xaxis": axis_layout(x_label),
            "yaxis": axis_layout(y_label),
            "legend": {"orientation": "h", "y": -0.15},
        }
        blocks.append(Plot(data, layout))
    if points:
        rows = [(p["kind"], *p["coords"], p["value"], p["persistence"]) for p in points]
        blocks.append(
            Table(
                ("point", x_label, y_label, "loss", "persistence"),
                rows,
                "Minima and saddles of the grid (loss)",
                role="critical",
            )
        )
    return blocks


def _path_trace(path: np.ndarray, name: str) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": plain(path[:, 0]),
        "y": plain(path[:, 1]),
        "line": {"color": "red", "width": 2},
        "marker": {"size": 4, "color": "red"},
    }


def _surface3d(landscape: Landscape, path: np.ndarray | None) -> Plot:
    xs, ys = landscape.coords
    views = _views(landscape.values["loss"])
    data: list[dict[str, Any]] = [
        {
            "type": "surface",
            "name": "loss",
            "x": plain(xs),
            "y": plain(ys),
            "z": plain(views["linear"].T),
            "colorscale": "Viridis",
        }
    ]
    if path is not None:
        data.append(
            {
                "type": "scatter3d",
                "mode": "lines+markers",
                "name": "training path",
                "x": plain(path[:, 0]),
                "y": plain(path[:, 1]),
                "z": plain(on_surface(xs, ys, views["linear"], path)),
                "line": {"color": "red", "width": 5},
                "marker": {"size": 2, "color": "red"},
            }
        )
    buttons = []
    for label, z in views.items():
        update: dict[str, Any] = {"z": [plain(z.T)]}
        if path is not None:
            update["z"].append(plain(on_surface(xs, ys, z, path)))
        buttons.append(
            {"label": label, "method": "restyle", "args": [update, list(range(len(data)))]}
        )
    layout = {
        "title": {"text": "loss surface"},
        "scene": {
            "xaxis": axis_layout(landscape.axis_labels[0]),
            "yaxis": axis_layout(landscape.axis_labels[1]),
            "zaxis": axis_layout("loss"),
        },
        "updatemenus": [
            {
                "type": "buttons",
                "direction": "right",
                "x": 0,
                "y": 1.12,
                "xanchor": "left",
                "buttons": buttons,
            }
        ],
        "height": 560,
        "margin": {"t": 90},
    }
    caption = (
        "Drag to rotate. The buttons switch the loss to log10 (when every value is positive) "
        f"and clip it at its {CLIP_PERCENTILE:g}th percentile."
    )
    return Plot(data, layout, caption)


# -- N-D ---------------------------------------------------------------------------------------
def _grid_blocks(landscape: Landscape) -> list[Block]:
    xs, ys = landscape.coords[:2]
    start = [int(np.argmin(np.abs(c))) for c in landscape.coords]
    blocks: list[Block] = []
    for metric in landscape.metrics:
        values = landscape.values[metric]
        where: tuple[Any, ...] = (slice(None), slice(None), *start[2:])
        data = [
            {
                "type": "heatmap",
                "name": metric,
                "x": plain(xs),
                "y": plain(ys),
                "z": plain(values[where].T),
                "colorscale": "Viridis",
                "colorbar": {"title": {"text": metric}},
            }
        ]
        layout = {
            "title": {"text": f"{metric}: plane of the first two axes"},
            "xaxis": axis_layout(landscape.axis_labels[0]),
            "yaxis": axis_layout(landscape.axis_labels[1]),
        }
        controls = [
            {
                "axis": axis,
                "label": landscape.axis_labels[axis],
                "coords": landscape.coords[axis],
                "index": start[axis],
            }
            for axis in range(2, landscape.ndim)
        ]
        volume = {"shape": list(values.shape), "values": plain(values.ravel())}
        caption = "The sliders fix the other axes (they start at the grid point nearest 0)."
        blocks.append(Plot(data, layout, caption, volume=volume, controls=controls))
    return blocks
