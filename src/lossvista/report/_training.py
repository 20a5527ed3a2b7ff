"""Sections of training: monitors (learning curves, gradient and weight norms), comparisons of
optimizers, and trajectories (snapshots, projections, PCA directions, embeddings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..training import Comparison, TrainingMonitor
from ..trajectory import PCADirections, Projection, Trajectory, TrajectoryEmbedding
from ._blocks import line_plot, metadata_table, positive, rows_table, summary_table
from ._html import Block, Plot

__all__ = [
    "comparison_blocks",
    "embedding_blocks",
    "monitor_blocks",
    "pca_blocks",
    "projection_blocks",
    "trajectory_blocks",
]


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """A history list as float64, None as NaN (plotly leaves a gap there)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def history_plots(history: Mapping[str, Sequence[Any]], label: str = "") -> list[Block]:
    """Learning curves (per epoch and per step), gradient norms, weight norms, learning rate."""
    plots: list[Block] = []
    prefix = f"{label}: " if label else ""
    epochs = history.get("epoch") or list(range(1, len(history.get("loss", [])) + 1))
    curves = [
        (key, epochs, _numbers(history[key]))
        for key in ("loss", "val_loss")
        if any(v is not None for v in history.get(key, []))
    ]
    if curves:
        plots.append(
            line_plot(
                curves,
                title=f"{prefix}learning curves",
                x_title="epoch",
                y_title="loss",
                mode="lines+markers",
                log_y=all(positive(c[2]) for c in curves),
            )
        )
    steps = _numbers(history.get("step_loss", []))
    if steps.size:
        plots.append(
            line_plot(
                [("step loss", np.arange(1, steps.size + 1), steps)],
                title=f"{prefix}loss per step",
                x_title="step",
                y_title="loss",
                log_y=positive(steps),
            )
        )
    grads = [
        (key, np.arange(1, len(v) + 1), _numbers(v))
        for key, v in history.items()
        if (key == "grad_norm" or key.startswith("grad_norm/")) and len(v)
    ]
    if grads:
        plots.append(
            line_plot(
                grads,
                title=f"{prefix}gradient norms",
                x_title="backward pass",
                y_title="L2 norm",
                log_y=all(positive(g[2]) for g in grads),
            )
        )
    for key, title in (("step_weight_norm", "weight norm"), ("step_lr", "learning rate")):
        values = _numbers(history.get(key, []))
        if values.size:
            plots.append(
                line_plot(
                    [(title, np.arange(1, values.size + 1), values)],
                    title=f"{prefix}{title}",
                    x_title="step",
                    y_title=title,
                )
            )
    return plots


def monitor_blocks(result: TrainingMonitor) -> list[Block]:
    """Summary, curves, and the per-epoch numbers as a table."""
    h = result.history
    epoch_keys = [
        k
        for k in ("epoch", "loss", "val_loss", "weight_norm", "lr", "epoch_grad_norm", "steps")
        if h.get(k)
    ]
    count = max((len(h[k]) for k in epoch_keys), default=0)
    records = [{k: (h[k][i] if i < len(h[k]) else None) for k in epoch_keys} for i in range(count)]
    blocks: list[Block] = [summary_table(result), *history_plots(h)]
    if records:
        blocks.append(rows_table(records, "Per epoch", role="epochs"))
    return blocks


def comparison_blocks(result: Comparison) -> list[Block]:
    """The comparison table, the runs' learning curves on shared axes, then each run's norms."""
    blocks: list[Block] = [rows_table(result.table, "Runs", role="comparison")]
    curves = []
    for name, history in result.histories.items():
        losses = _numbers(history.get("loss", []))
        epochs = history.get("epoch") or list(range(1, losses.size + 1))
        if losses.size:
            curves.append((name, epochs, losses))
    if curves:
        blocks.append(
            line_plot(
                curves,
                title="training loss per run",
                x_title="epoch",
                y_title="loss",
                mode="lines+markers",
                log_y=all(positive(c[2]) for c in curves),
            )
        )
    sharp = [(row["name"], row.get("sharpness")) for row in result.table]
    if any(isinstance(v, (int, float)) for _, v in sharp):
        blocks.append(
            Plot(
                [
                    {
                        "type": "bar",
                        "name": "sharpness",
                        "x": [n for n, _ in sharp],
                        "y": [v if isinstance(v, (int, float)) else None for _, v in sharp],
                    }
                ],
                {"title": {"text": "sharpness of the final models"}},
            )
        )
    blocks.append(metadata_table({"settings": result.settings}))
    return blocks


def trajectory_blocks(result: Trajectory) -> list[Block]:
    """A trajectory holds parameter snapshots: its summary (steps, parameters, storage)."""
    return [summary_table(result)]


def projection_blocks(result: Projection) -> list[Block]:
    """The projected path (2-D: in the plane; otherwise each coordinate over the steps) and the
    residual norm off the directions."""
    coords = np.asarray(result.coordinates, dtype=np.float64)
    labels = list(result.axis_labels) or [f"direction {i + 1}" for i in range(coords.shape[1])]
    blocks: list[Block] = [summary_table(result)]
    if coords.ndim == 2 and coords.shape[1] == 2:
        blocks.append(
            line_plot(
                [("path", coords[:, 0], coords[:, 1])],
                title="projected path",
                x_title=labels[0],
                y_title=labels[1],
                mode="lines+markers",
            )
        )
    else:
        blocks.append(
            line_plot(
                [(labels[i], result.steps, coords[:, i]) for i in range(coords.shape[1])],
                title="coordinates over the steps",
                x_title="step",
                y_title="coordinate",
            )
        )
    blocks.append(
        line_plot(
            [("residual norm", result.steps, result.residual_norm)],
            title="distance off the directions",
            x_title="step",
            y_title="residual norm",
        )
    )
    return blocks


def pca_blocks(result: PCADirections) -> list[Block]:
    """Explained variance ratio per component."""
    ratio = np.asarray(result.explained_variance_ratio_, dtype=np.float64)
    bars = Plot(
        [
            {
                "type": "bar",
                "name": "explained variance ratio",
                "x": [f"PC{i + 1}" for i in range(ratio.size)],
                "y": ratio.tolist(),
            }
        ],
        {"title": {"text": "explained variance ratio"}},
    )
    return [summary_table(result), bars, metadata_table({"center": result.center})]


def embedding_blocks(result: TrajectoryEmbedding) -> list[Block]:
    """The embedded path (first two components), coloured by step."""
    e = np.asarray(result.embedding, dtype=np.float64)
    blocks: list[Block] = [summary_table(result)]
    if e.ndim == 2 and e.shape[1] >= 2:
        blocks.append(
            Plot(
                [
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "name": "embedding",
                        "x": e[:, 0].tolist(),
                        "y": e[:, 1].tolist(),
                        "text": [str(s) for s in result.steps],
                        "marker": {
                            "color": np.asarray(result.steps, dtype=np.float64).tolist(),
                            "colorscale": "Viridis",
                            "showscale": True,
                        },
                    }
                ],
                {"title": {"text": f"{result.method} embedding of the trajectory"}},
            )
        )
    blocks.append(metadata_table({"seed": result.seed, "settings": result.settings}))
    return blocks
