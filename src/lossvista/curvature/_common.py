"""What the curvature modules share: warnings, argument checks, JSON-friendly values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._checks import check_int
from ..errors import ConvergenceWarning, HessianWarning, InputError  # noqa: F401 (warnings re-exported)
from ..objective import Objective


def check_objective(obj: Any) -> None:
    if not isinstance(obj, Objective):
        raise InputError(
            f"expected an lv.Objective as first argument, got {type(obj).__name__}; build one "
            "with lv.Objective(model, loss_fn, data)"
        )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    return check_int(value, name, minimum)


def check_nonnegative(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number >= 0, got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def plain(value: Any) -> Any:
    """A JSON-serialisable copy: numpy scalars and arrays become Python numbers and lists,
    non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
