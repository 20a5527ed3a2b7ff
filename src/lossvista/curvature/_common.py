"""What the curvature modules share: warnings, argument checks, renamed keywords and the default
eigensolver tolerance."""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from .._checks import check_int
from ..errors import ConvergenceWarning, HessianWarning, InputError  # noqa: F401 (warnings re-exported)
from ..objective import Objective

F = TypeVar("F", bound=Callable[..., Any])

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


_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the calling function point at the
    first frame outside lossvista: the user's line, however many wrappers lie between."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def renamed(**renames: str) -> Callable[[F], F]:
    """Keep old keyword names working: ``@renamed(hvp_method="hvp_backend")`` accepts
    ``hvp_method=`` with a :class:`DeprecationWarning` naming ``hvp_backend``, and refuses both
    at once. The decorated function's signature shows only the new names."""

    def decorate(function: F) -> F:
        where = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise InputError(
                        f"{where}: got both {new}= and {old}=; pass only {new}= ({old}= is its "
                        "deprecated old name)"
                    )
                warnings.warn(
                    f"{where}: the keyword {old}= is deprecated; use {new}= instead",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


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
