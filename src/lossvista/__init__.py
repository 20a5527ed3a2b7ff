"""lossvista: see and measure the loss landscape of PyTorch models."""

from . import toys
from ._version import __version__
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
from .store import load
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
    "DataError",
    "Direction",
    "DirectionError",
    "EngineConfig",
    "EngineReport",
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
    "StoreError",
    "StoreMismatchError",
    "SurfaceMetrics",
    "TrainingMonitor",
    "Trajectory",
    "TrajectoryEmbedding",
    "TrajectoryRecorder",
    "__version__",
    "compare_optimizers",
    "direction_between",
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
