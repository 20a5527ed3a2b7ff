"""Sections of the geometry family: curves between minima, alignments, per-layer sensitivity,
persistence diagrams."""

from __future__ import annotations

import numpy as np

from ..geometry import Alignment, Curve, LayerSensitivity, Persistence
from ._blocks import line_plot, metadata_table, rows_table, summary_table
from ._html import Block, Plot, Table, plain

__all__ = ["alignment_blocks", "curve_blocks", "persistence_blocks", "sensitivity_blocks"]


def curve_blocks(result: Curve) -> list[Block]:
    """The loss along the curve against the straight line, and the fit's training loss."""
    t = result.path.coords[0]
    blocks: list[Block] = [summary_table(result)]
    for metric in result.path.metrics:
        series = [(f"{result.kind} curve", t, result.path.values[metric])]
        if metric in result.line.values:
            series.append(("straight line", result.line.coords[0], result.line.values[metric]))
        blocks.append(
            line_plot(series, title=f"{metric} along the paths", x_title="t", y_title=metric)
        )
    if len(result.fit_loss):
        blocks.append(
            line_plot(
                [("fit loss", np.arange(1, len(result.fit_loss) + 1), result.fit_loss)],
                title="curve fitting",
                x_title="step",
                y_title="training loss",
            )
        )
    blocks.append(metadata_table({"bn": result.bn, "settings": result.settings}))
    return blocks


def alignment_blocks(result: Alignment) -> list[Block]:
    """Summary, units moved per permuted axis, settings."""
    rows = [
        (name, len(p), int(np.sum(np.asarray(p) != np.arange(len(p)))))
        for name, p in result.permutations.items()
    ]
    table = Table(("axis", "units", "units moved"), rows, "Permutations", role="permutations")
    return [summary_table(result), table, metadata_table({"settings": result.settings})]


def sensitivity_blocks(result: LayerSensitivity) -> list[Block]:
    """A bar per group of its main value, and the rows."""
    key = result.value_name
    bars = Plot(
        [
            {
                "type": "bar",
                "name": key,
                "x": [str(r["group"]) for r in result.rows],
                "y": [plain(r.get(key)) for r in result.rows],
            }
        ],
        {"title": {"text": f"{key} per group"}},
    )
    return [
        summary_table(result),
        bars,
        rows_table(result.rows, "Groups", role="groups"),
        metadata_table({"settings": result.settings}),
    ]


def persistence_blocks(result: Persistence) -> list[Block]:
    """The persistence diagram (birth against death; essential classes on the top edge)."""
    pairs = np.asarray(result.pairs, dtype=np.float64).reshape(-1, 2)
    blocks: list[Block] = [summary_table(result)]
    if len(pairs):
        finite = np.isfinite(pairs[:, 1])
        top = float(np.max(pairs[finite, 1])) if finite.any() else float(np.max(pairs[:, 0]))
        deaths = np.where(finite, pairs[:, 1], top)
        blocks.append(
            Plot(
                [
                    {
                        "type": "scatter",
                        "mode": "markers",
                        "name": "pairs",
                        "x": plain(pairs[:, 0]),
                        "y": plain(deaths),
                        "marker": {"symbol": np.where(finite, "circle", "triangle-up").tolist()},
                    }
                ],
                {
                    "title": {"text": f"persistence diagram ({result.metric})"},
                    "xaxis": {"title": {"text": "birth"}},
                    "yaxis": {"title": {"text": "death"}},
                },
                "Triangles: essential classes (they never die), drawn at the highest finite death.",
            )
        )
        rows = [(float(b), float(d), float(d - b)) for b, d in pairs]
        blocks.append(Table(("birth", "death", "persistence"), rows, "Pairs", role="pairs"))
    return blocks
