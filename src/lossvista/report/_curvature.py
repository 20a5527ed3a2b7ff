"""Sections of curvature and sharpness: eigenvalues, spectral density, trace, the critical-point
verdict, the summary of all of them that ``lossvista hessian`` writes, sharpness values and
surface metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..curvature import CriticalPoint, EigenResult, HessianSummary, SpectralDensity, TraceEstimate
from ..sharpness import Sharpness
from ..surface_metrics import SurfaceMetrics
from ._blocks import axis_layout, line_plot, metadata_table, rows_table, summary_table
from ._html import Block, Plot, Table, plain

__all__ = [
    "critical_point_blocks",
    "density_blocks",
    "eigen_blocks",
    "hessian_summary_blocks",
    "sharpness_blocks",
    "surface_metrics_blocks",
    "trace_blocks",
]


def eigen_blocks(result: EigenResult) -> list[Block]:
    """The eigenvalue table (value, residual, converged flag) and a plot with residual bars."""
    rows = [
        (i + 1, float(v), float(r), bool(c))
        for i, (v, r, c) in enumerate(
            zip(result.values, result.residuals, result.converged, strict=True)
        )
    ]
    plot = Plot(
        [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "eigenvalue",
                "x": [row[0] for row in rows],
                "y": plain(result.values),
                "error_y": {"type": "data", "array": plain(result.residuals), "visible": True},
                "marker": {"size": 9},
            }
        ],
        {
            "title": {"text": "Hessian eigenvalues (bars: residual |Hv - λv|)"},
            "xaxis": axis_layout("index"),
            "yaxis": axis_layout("eigenvalue"),
        },
    )
    table = Table(
        ("index", "eigenvalue", "residual", "converged"), rows, "Eigenvalues", role="eigenvalues"
    )
    meta = {
        "which": result.which,
        "k": result.k,
        "tol": result.tol,
        "seed": result.seed,
        "n_hvp": result.n_hvp,
        "iterations": result.iterations,
        "restarts": result.restarts,
        "spectral_norm": result.spectral_norm,
        "settings": result.settings,
    }
    return [summary_table(result), table, plot, metadata_table(meta)]


def density_blocks(result: SpectralDensity) -> list[Block]:
    """The smoothed eigenvalue density on a log scale, with the quadrature nodes below it."""
    density = np.asarray(result.density, dtype=np.float64)
    floor = float(density[density > 0].min()) if np.any(density > 0) else 1e-12
    plot = Plot(
        [
            {
                "type": "scatter",
                "mode": "lines",
                "name": "density",
                "x": plain(result.grid),
                "y": plain(np.where(density > 0, density, np.nan)),
            },
            {
                "type": "scatter",
                "mode": "markers",
                "name": "quadrature nodes",
                "x": plain(result.nodes),
                "y": [floor] * len(result.nodes),
                "marker": {"symbol": "line-ns-open", "size": 10},
            },
        ],
        {
            "title": {"text": "Hessian eigenvalue density (stochastic Lanczos quadrature)"},
            "xaxis": axis_layout("eigenvalue"),
            "yaxis": axis_layout("density", log=True),
        },
        "Log scale: the bulk near zero and the outliers both show.",
    )
    meta = {
        "size": result.size,
        "n_runs": result.n_runs,
        "n_steps": result.n_steps,
        "seed": result.seed,
        "n_hvp": result.n_hvp,
        "width": result.width,
        "settings": result.settings,
    }
    return [summary_table(result), plot, metadata_table(meta)]


def trace_blocks(result: TraceEstimate) -> list[Block]:
    """``trace ± stderr`` and the running estimate over the probes."""
    table = Table(
        ("method", "trace", "stderr", "probes", "n_hvp"),
        [(result.method, result.estimate, result.stderr, result.n_probes, result.n_hvp)],
        "Trace estimate (trace ± stderr)",
        role="trace",
    )
    blocks: list[Block] = [summary_table(result), table]
    if len(result.samples):
        running, stderr = result.running()
        count = np.arange(1, len(running) + 1)
        blocks.append(
            line_plot(
                [
                    ("running estimate", count, running),
                    ("+2 stderr", count, running + 2 * stderr),
                    ("-2 stderr", count, running - 2 * stderr),
                ],
                title="trace estimate over the probes",
                x_title="probes",
                y_title="tr(H)",
            )
        )
    meta = {"seed": result.seed, "deflated": result.deflated, "settings": result.settings}
    blocks.append(metadata_table(meta))
    return blocks


def critical_point_blocks(result: CriticalPoint) -> list[Block]:
    """The verdict and its evidence: the eigen result and, when computed, the density."""
    blocks: list[Block] = [_verdict_table(result), summary_table(result)]
    if result.note:
        blocks.append(_note_table(result))
    blocks += [b for b in eigen_blocks(result.eigs) if not _is_summary(b)]
    if result.density is not None:
        blocks += [b for b in density_blocks(result.density) if not _is_summary(b)]
    blocks.append(metadata_table({"settings": result.settings}, "Metadata (verdict)"))
    return blocks


def hessian_summary_blocks(result: HessianSummary) -> list[Block]:
    """What ``lossvista hessian`` measured: its key numbers, then the blocks of each part it
    holds (eigenvalues, verdict, trace, density), each part's own summary and metadata captioned
    with the part's name, and the command's settings last."""
    blocks: list[Block] = [summary_table(result)]
    blocks += _part(eigen_blocks(result.eigs), "eigenvalues")
    point = result.critical_point
    if point is not None:
        # The verdict table holds both extreme eigenvalues; the point's eigen result repeats
        # the eigenvalues above, and its density is the summary's own.
        blocks.append(_verdict_table(point))
        if point.note:
            blocks.append(_note_table(point))
        blocks.append(metadata_table({"settings": point.settings}, "Metadata (verdict)"))
        if point.density is not None and point.density != result.density:
            blocks += _part(density_blocks(point.density), "verdict's density")
    if result.trace is not None:
        blocks += _part(trace_blocks(result.trace), "trace")
    if result.density is not None:
        blocks += _part(density_blocks(result.density), "density")
    blocks.append(metadata_table({"settings": result.settings}, "Metadata (command)"))
    return blocks


def _part(blocks: list[Block], name: str) -> list[Block]:
    """A part's blocks inside a larger section: its summary and metadata tables captioned (and
    the summary's role named) after the part, so the section's own summary stays unique."""
    renamed: list[Block] = []
    for block in blocks:
        if isinstance(block, Table) and block.role == "summary":
            role = f"{name.replace(' ', '_')}_summary"
            block = dataclasses.replace(block, caption=f"Summary ({name})", role=role)
        elif isinstance(block, Table) and block.role == "metadata":
            block = dataclasses.replace(block, caption=f"Metadata ({name})")
        renamed.append(block)
    return renamed


def _verdict_table(result: CriticalPoint) -> Table:
    return Table(
        ("verdict", "lambda_max", "lambda_min", "threshold", "grad_norm", "loss", "converged"),
        [
            (
                result.kind,
                result.lambda_max,
                result.lambda_min,
                result.threshold,
                result.grad_norm,
                result.loss,
                result.converged,
            )
        ],
        "Critical point",
        role="verdict",
    )


def _note_table(result: CriticalPoint) -> Table:
    return Table(("note",), [(result.note,)], "Note", role="note")


def _is_summary(block: Block) -> bool:
    return isinstance(block, Table) and block.role == "summary"


def sharpness_blocks(result: Sharpness) -> list[Block]:
    """The value with its settings (the result's own summary lists both)."""
    table = Table(
        ("kind", "value", "stderr", "rho", "base_loss", "perturbed_loss", "n_evaluations"),
        [
            (
                result.kind,
                result.value,
                result.stderr,
                result.rho,
                result.base_loss,
                result.perturbed_loss,
                result.n_evaluations,
            )
        ],
        "Sharpness",
        role="sharpness",
    )
    extra: dict[str, Any] = {"lambda_max": result.lambda_max, "keskar": result.keskar}
    return [table, summary_table(result), metadata_table({**extra, "settings": result.settings})]


def surface_metrics_blocks(result: SurfaceMetrics) -> list[Block]:
    """The scalar descriptors, then the minima and saddles the metrics found."""
    blocks: list[Block] = [summary_table(result)]
    for name, points in (("minima", result.minima), ("saddles", result.saddles)):
        if points:
            blocks.append(rows_table(points, f"Grid {name} ({result.metric})", role=name))
    return blocks
