"""lossvista: see and measure the loss landscape of PyTorch models."""

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

__all__ = [
    "CenterMismatchError",
    "CheckpointError",
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
    "Sharpness",
    "StoreError",
    "StoreMismatchError",
    "SurfaceMetrics",
    "__version__",
    "direction_between",
    "interpolate",
    "line",
    "load",
    "plane",
    "plane_through",
    "random_directions",
    "sharpness",
    "suggest_span",
    "surface_metrics",
]
