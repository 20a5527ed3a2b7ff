"""lossvista: see and measure the loss landscape of PyTorch models."""

from . import integrations, toys
from ._dist import single_process
from ._result import load
from ._tensorboard import log_to_tensorboard
from ._version import __version__
from .curvature import (
    ConvergenceWarning,
    CriticalPoint,
    EigenResult,
    HessianOperator,
    HessianSummary,
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
    LongRunWarning,
    LossvistaError,
    LossvistaWarning,
    MissingDependencyError,
    NonFiniteLossWarning,
    StoreError,
    StoreMismatchError,
)
from .geometry import (
    Alignment,
    Curve,
    LayerSensitivity,
    Persistence,
    align,
    connect,
    coordinate_line,
    coordinate_plane,
    layer_sensitivity,
    persistence,
)
from .landscape import Interpolation, Landscape
from .ndgrid import grid
from .objective import Objective
from .plot.animate import animate
from .probe import LandscapeProbe
from .report import report
from .shards import merge
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
    "Alignment",
    "CenterMismatchError",
    "CheckpointError",
    "Comparison",
    "ConvergenceWarning",
    "CriticalPoint",
    "Curve",
    "DataError",
    "Direction",
    "DirectionError",
    "EigenResult",
    "EngineConfig",
    "EngineReport",
    "HessianOperator",
    "HessianSummary",
    "HessianWarning",
    "InputError",
    "Interpolation",
    "Landscape",
    "LandscapeProbe",
    "LayerSensitivity",
    "LongRunWarning",
    "LossvistaError",
    "LossvistaWarning",
    "MissingDependencyError",
    "NonFiniteLossWarning",
    "Objective",
    "PCADirections",
    "Persistence",
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
    "align",
    "animate",
    "compare_optimizers",
    "connect",
    "coordinate_line",
    "coordinate_plane",
    "critical_point",
    "curvature_map",
    "direction_between",
    "grid",
    "hessian_dense",
    "hessian_density",
    "hessian_directions",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "integrations",
    "interpolate",
    "layer_sensitivity",
    "line",
    "load",
    "log_to_tensorboard",
    "merge",
    "pca_directions",
    "persistence",
    "plane",
    "plane_through",
    "project",
    "random_directions",
    "reduce_trajectory",
    "report",
    "sharpness",
    "single_process",
    "span_covering",
    "suggest_span",
    "surface_metrics",
    "sweep",
    "toys",
]
