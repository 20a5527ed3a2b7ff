"""What the curvature modules share: warnings, argument checks, renamed keywords and the default
eigensolver tolerance."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import (  # noqa: F401 (re-exported)
    caller_stacklevel,
    check_int,
    check_objective,
    renamed,
)
from ..errors import ConvergenceWarning, HessianWarning, InputError  # noqa: F401 (warnings re-exported)

#: Default relative residual tolerance of the eigensolver for float64 parameters.
TOL_FLOAT64 = 1e-6
#: Default for parameters of lower precision (float32, float16, bfloat16): float32
#: Hessian-vector products round at about 1e-6 |H|, so 1e-6 is at the edge of what is reachable.
TOL_LOW_PRECISION = 1e-5


def default_tol(dtype: torch.dtype) -> float:
    """The eigensolver tolerance ``tol=None`` stands for, by the parameters' dtype."""
    return TOL_FLOAT64 if dtype == torch.float64 else TOL_LOW_PRECISION


def check_tol(tol: Any, dtype: torch.dtype, name: str = "tol") -> float:
    """``tol`` as a positive float; ``None`` gives :func:`default_tol` of ``dtype``."""
    if tol is None:
        return default_tol(dtype)
    try:
        value = float(tol)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a positive number or None, got {tol!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number or None, got {tol!r}")
    return value


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
