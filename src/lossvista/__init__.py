"""lossvista: see and measure the loss landscape of PyTorch models."""

from . import toys
from ._result import load
from ._version import __version__
from .curvature import (
    ConvergenceWarning,
    CriticalPoint,
    EigenResult,
    HessianOperator,
    HessianWarning,
    SpectralDensity,
    TraceEstimate,
    critical_point,
    curvature_map,
    hessian_dense,
    hessian_density,
    hessian_directions,
    hessian_eigs,
    hessian_trace,
    hvp,
)
from .directions import Direction, direction_between, random_directions
from .engine import EngineConfig, EngineReport
from .errors import (
    CenterMismatchError,
    CheckpointError,
    DataError,
    DirectionError,
    InputError,
    LossvistaError,
    LossvistaWarning,
    NonFiniteLossWarning,
    StoreError,
    StoreMismatchError,
)
from .landscape import Interpolation, Landscape
from .objective import Objective
from .sharpness import Sharpness, sharpness
from .slices import interpolate, line, plane, plane_through, suggest_span
from .surface_metrics import SurfaceMetrics, surface_metrics
from .training import Comparison, TrainingMonitor, compare_optimizers, sweep
from .trajectory import (
    PCADirections,
    Projection,
    Trajectory,
    TrajectoryEmbedding,
    TrajectoryRecorder,
    pca_directions,
    project,
    reduce_trajectory,
    span_covering,
)

__all__ = [
    "CenterMismatchError",
    "CheckpointError",
    "Comparison",
    "ConvergenceWarning",
    "CriticalPoint",
    "DataError",
    "Direction",
    "DirectionError",
    "EigenResult",
    "EngineConfig",
    "EngineReport",
    "HessianOperator",
    "HessianWarning",
    "InputError",
    "Interpolation",
    "Landscape",
    "LossvistaError",
    "LossvistaWarning",
    "NonFiniteLossWarning",
    "Objective",
    "PCADirections",
    "Projection",
    "Sharpness",
    "SpectralDensity",
    "StoreError",
    "StoreMismatchError",
    "SurfaceMetrics",
    "TraceEstimate",
    "TrainingMonitor",
    "Trajectory",
    "TrajectoryEmbedding",
    "TrajectoryRecorder",
    "__version__",
    "compare_optimizers",
    "critical_point",
    "curvature_map",
    "direction_between",
    "hessian_dense",
    "hessian_density",
    "hessian_directions",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "interpolate",
    "line",
    "load",
    "pca_directions",
    "plane",
    "plane_through",
    "project",
    "random_directions",
    "reduce_trajectory",
    "sharpness",
    "span_covering",
    "suggest_span",
    "surface_metrics",
    "sweep",
    "toys",
]
