"""One section per result: the kind of result decides which blocks it gets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._result import Result
from ..curvature import CriticalPoint, EigenResult, HessianSummary, SpectralDensity, TraceEstimate
from ..errors import InputError
from ..geometry import Alignment, Curve, LayerSensitivity, Persistence
from ..landscape import Interpolation, Landscape
from ..sharpness import Sharpness
from ..surface_metrics import SurfaceMetrics
from ..toys import LossSurface, OptimizerPath, Race, RegressionProblem, ScalingStudy, SearchResult
from ..training import Comparison, TrainingMonitor
from ..trajectory import PCADirections, Projection, Trajectory, TrajectoryEmbedding
from . import _curvature, _geometry, _toys, _training
from ._blocks import metadata_table, summary_table
from ._html import Block, Section
from ._landscape import landscape_blocks

__all__ = ["SUPPORTED", "check_supported", "section_for"]

#: Result type -> (heading, the blocks of its section). Checked in order: subclasses first.
_RENDERERS: tuple[tuple[type, str, Callable[[Any], list[Block]]], ...] = (
    (HessianSummary, "Hessian summary", _curvature.hessian_summary_blocks),
    (CriticalPoint, "Critical point", _curvature.critical_point_blocks),
    (EigenResult, "Hessian eigenvalues", _curvature.eigen_blocks),
    (SpectralDensity, "Hessian spectral density", _curvature.density_blocks),
    (TraceEstimate, "Hessian trace", _curvature.trace_blocks),
    (Sharpness, "Sharpness", _curvature.sharpness_blocks),
    (SurfaceMetrics, "Surface metrics", _curvature.surface_metrics_blocks),
    (TrainingMonitor, "Training monitor", _training.monitor_blocks),
    (Comparison, "Comparison", _training.comparison_blocks),
    (Trajectory, "Trajectory", _training.trajectory_blocks),
    (Projection, "Projected trajectory", _training.projection_blocks),
    (PCADirections, "PCA directions", _training.pca_blocks),
    (TrajectoryEmbedding, "Trajectory embedding", _training.embedding_blocks),
    (Race, "Optimizer race", _toys.race_blocks),
    (OptimizerPath, "Optimizer path", _toys.optimizer_path_blocks),
    (SearchResult, "Search", _toys.search_blocks),
    (ScalingStudy, "Feature-scaling study", _toys.scaling_blocks),
    (RegressionProblem, "Regression problem", _toys.regression_blocks),
    (LossSurface, "MSE surface", _toys.loss_surface_blocks),
    (Curve, "Curve between minima", _geometry.curve_blocks),
    (Alignment, "Permutation alignment", _geometry.alignment_blocks),
    (LayerSensitivity, "Layer sensitivity", _geometry.sensitivity_blocks),
    (Persistence, "Persistence", _geometry.persistence_blocks),
)

#: Words for error messages: what a report can show.
SUPPORTED = (
    "Landscape / Interpolation (lines, planes, N-D grids), "
    + ", ".join(t.__name__ for t, _, _ in _RENDERERS)
    + ", any other lossvista result (its summary), or the path of a file lossvista wrote"
)


def check_supported(obj: Any, position: int) -> None:
    """Refuse (before any work) what a report cannot show.

    Raises:
        InputError: ``obj`` is not a lossvista result; names its type and what is supported.
    """
    if not isinstance(obj, Result):
        raise InputError(
            f"report cannot show result {position} of type {type(obj).__module__}."
            f"{type(obj).__qualname__}; it shows {SUPPORTED}"
        )


def section_for(obj: Result, label: str, path: np.ndarray | None = None) -> Section:
    """The section of one result; ``label`` (a file name, or the position) ends its heading.

    ``path``: a projected training path ``(P, 2)`` to draw on a plane that carries none.
    """
    if isinstance(obj, Landscape):
        kind = "interpolation" if isinstance(obj, Interpolation) else f"landscape-{obj.ndim}d"
        shape = " x ".join(str(n) for n in obj.shape)
        heading = f"Landscape ({obj.kind}, {shape})"
        return Section(f"{heading}: {label}", kind, landscape_blocks(obj, path))
    for cls, heading, render in _RENDERERS:
        if isinstance(obj, cls):
            return Section(f"{heading}: {label}", obj.result_kind, render(obj))
    return Section(f"{type(obj).__name__}: {label}", obj.result_kind or "result", _generic(obj))


def _generic(obj: Result) -> list[Block]:
    """The summary of a result without a section of its own, and its settings if it has any."""
    blocks: list[Block] = [summary_table(obj)]
    settings = getattr(obj, "settings", None)
    if isinstance(settings, dict) and settings:
        blocks.append(metadata_table({"settings": settings}))
    return blocks
