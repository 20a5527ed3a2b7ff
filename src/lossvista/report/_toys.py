"""Sections of the optimizer lab: races, single optimizer paths, searches, scaling studies."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..toys import LossSurface, OptimizerPath, Race, RegressionProblem, ScalingStudy, SearchResult
from ..toys.toy_function import ToyFunction
from ._blocks import axis_layout, line_plot, metadata_table, rows_table, summary_table
from ._html import Block, Plot, plain

__all__ = [
    "loss_surface_blocks",
    "optimizer_path_blocks",
    "race_blocks",
    "regression_blocks",
    "scaling_blocks",
    "search_blocks",
]

#: Grid points per axis of a toy function's contours.
CONTOUR_POINTS = 121


def _contour(xs: Any, ys: Any, values: np.ndarray, *, log: bool, name: str) -> dict[str, Any]:
    """A contour trace of ``values`` (``"ij"``), log-scaled above the minimum when asked."""
    z = np.asarray(values, dtype=np.float64)
    title = name
    if log and np.isfinite(z).any():
        z = np.log10(1.0 + z - np.nanmin(z))
        title = f"log10(1 + {name} - min)"
    return {
        "type": "contour",
        "name": name,
        "x": plain(xs),
        "y": plain(ys),
        "z": plain(z.T),
        "ncontours": 30,
        "colorscale": "Viridis",
        "showscale": True,
        "colorbar": {"title": {"text": title}},
    }


def function_traces(fn: ToyFunction) -> list[dict[str, Any]]:
    """The function's contours over its bounds, with its minima and saddles marked."""
    xs, ys, values = fn.grid(CONTOUR_POINTS)
    traces = [_contour(xs, ys, values, log=fn.log_scale, name="f")]
    for label, points, symbol in (("minima", fn.minima, "star"), ("saddles", fn.saddles, "x")):
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(points):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": label,
                    "x": plain(points[:, 0]),
                    "y": plain(points[:, 1]),
                    "marker": {
                        "symbol": symbol,
                        "size": 12,
                        "color": "white",
                        "line": {"color": "black", "width": 1},
                    },
                }
            )
    return traces


def _path_trace(name: str, points: np.ndarray) -> dict[str, Any]:
    points = np.asarray(points, dtype=np.float64)
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": plain(points[:, 0]),
        "y": plain(points[:, 1]),
        "marker": {"size": 3},
    }


def _function_layout(fn: ToyFunction, title: str) -> dict[str, Any]:
    (x0, x1), (y0, y1) = fn.bounds
    return {
        "title": {"text": title},
        "xaxis": {**axis_layout("x"), "range": [x0, x1]},
        "yaxis": {**axis_layout("y"), "range": [y0, y1]},
        "legend": {"orientation": "h", "y": -0.15},
        "height": 560,
    }


def _function_table(fn: ToyFunction) -> Any:
    return metadata_table(
        {
            "function": fn.name,
            "formula": fn.formula,
            "bounds": [list(b) for b in fn.bounds],
            "parameters": fn.parameters,
            "minima": plain(fn.minima),
            "minimum values": plain(fn.minimum_values),
        },
        "Function",
    )


def race_blocks(result: Race) -> list[Block]:
    """Every path over the function's contours, the convergence table and the values per step."""
    fn = result.function
    data = function_traces(fn) + [_path_trace(n, p.points) for n, p in result.paths.items()]
    blocks: list[Block] = [
        summary_table(result),
        Plot(data, _function_layout(fn, f"race on {fn.name}")),
        rows_table(result.table.rows, f"Convergence (winner: {result.winner})", role="race"),
        line_plot(
            [(n, np.arange(len(p.values)), p.values) for n, p in result.paths.items()],
            title="value per step",
            x_title="step",
            y_title="f",
            log_y=False,
        ),
        _function_table(fn),
        metadata_table(
            {
                "tol": result.tol,
                "minimum_tol": result.minimum_tol,
                "runs": {
                    n: {
                        "optimizer": p.optimizer,
                        **p.hyperparameters,
                        "seed": p.seed,
                        "wall_time": p.wall_time,
                    }
                    for n, p in result.paths.items()
                },
            }
        ),
    ]
    return blocks


def optimizer_path_blocks(result: OptimizerPath) -> list[Block]:
    """One optimizer's path over the function's contours."""
    fn = result.function
    data = [*function_traces(fn), _path_trace(result.name, result.points)]
    return [
        summary_table(result),
        Plot(data, _function_layout(fn, f"{result.name} on {fn.name}")),
        _function_table(fn),
        metadata_table(
            {
                "optimizer": result.optimizer,
                "hyperparameters": result.hyperparameters,
                "implementation": result.implementation,
                "seed": result.seed,
                "wall_time": result.wall_time,
            }
        ),
    ]


def search_blocks(result: SearchResult) -> list[Block]:
    """A search's visited points (annealing) or its grid, and the best point found."""
    fn = result.function
    data = function_traces(fn)
    points = getattr(result.history, "points", None)
    if points is not None and len(points):
        data.append(_path_trace("visited", points))
    best = np.asarray(result.best_params, dtype=np.float64).reshape(1, 2)
    data.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": "best",
            "x": plain(best[:, 0]),
            "y": plain(best[:, 1]),
            "marker": {"symbol": "diamond", "size": 12},
        }
    )
    return [
        summary_table(result),
        Plot(data, _function_layout(fn, f"{result.method} search on {fn.name}")),
        _function_table(fn),
        metadata_table(
            {
                "settings": result.settings,
                "evaluations": result.evaluations,
                "wall_time": result.wall_time,
            }
        ),
    ]


def loss_surface_blocks(result: LossSurface, title: str = "MSE surface") -> list[Block]:
    """The MSE surface's contours (log-spaced above the minimum)."""
    layout = {"title": {"text": title}, "xaxis": axis_layout("w1"), "yaxis": axis_layout("w2")}
    return [Plot([_contour(result.w1, result.w2, result.values, log=True, name="MSE")], layout)]


def regression_blocks(result: RegressionProblem, label: str = "") -> list[Block]:
    """Summary, the surface with gradient descent's path on it."""
    plots = loss_surface_blocks(result.surface, f"{label} MSE surface".strip())
    plot = plots[0]
    if isinstance(plot, Plot) and len(result.path):
        plot.data.append(_path_trace("gradient descent", result.path))
    return [summary_table(result, f"Summary {label}".strip()), *plots]


def scaling_blocks(result: ScalingStudy) -> list[Block]:
    """The raw and the standardised problem side by side."""
    return [
        summary_table(result),
        *regression_blocks(result.raw, "raw features"),
        *regression_blocks(result.scaled, "standardised features"),
    ]
