"""Argument checks shared by every public function, so that they cannot drift apart.

A ``bool`` is never accepted where an integer is asked for (``True`` is an ``int`` in Python, but
``batch_size=True`` is a mistake, not a batch of one).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from .errors import InputError

F = TypeVar("F", bound=Callable[..., Any])
_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers accepted), at least ``minimum`` when given."""
    wanted = (
        "an integer"
        if minimum is None
        else "a positive integer"
        if minimum == 1
        else f"an integer >= {minimum}"
    )
    wrong_type = isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
    if wrong_type or (minimum is not None and value < minimum):
        raise InputError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_optional_int(value: Any, name: str, minimum: int | None = None) -> int | None:
    """Like :func:`check_int`, with ``None`` allowed (and returned)."""
    return None if value is None else check_int(value, name, minimum)


# -- grid axes ---------------------------------------------------------------------------------
def axes(spans: Sequence[Any], steps: Sequence[Any], n: int) -> tuple[np.ndarray, ...]:
    """``n`` coordinate axes ``linspace(lo, hi, count)``, checked."""
    out = []
    for i in range(n):
        span, count = spans[i], steps[i]
        count = check_int(count, "steps", 2)
        try:
            lo, hi = (float(v) for v in span)
        except (TypeError, ValueError) as exc:
            raise InputError(f"span must be a pair (min, max) of numbers, got {span!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise InputError(f"span must have min < max (both finite), got ({lo}, {hi})")
        out.append(np.linspace(lo, hi, int(count)))
    return tuple(out)


def pair(value: Any, what: str) -> tuple[Any, Any]:
    """One value for both axes of a plane, or a pair (``span`` may be one ``(min, max)``)."""
    if isinstance(value, (int, np.integer)):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2:
        if all(isinstance(v, (int, float, np.number)) for v in value) and what == "span":
            return (tuple(value), tuple(value))
        return (value[0], value[1])
    raise InputError(f"{what} must be one value for both axes or a pair, got {value!r}")


# -- renamed keywords ------------------------------------------------------------------------------
def renamed(**renames: str) -> Callable[[F], F]:
    """Keep old keyword names working: ``@renamed(hvp_method="hvp_backend")`` accepts
    ``hvp_method=`` with a :class:`DeprecationWarning` naming ``hvp_backend`` (pointing at the
    caller's line), and refuses the old and the new name together, also when the new one was
    passed by position. The decorated function's signature shows only the new names."""

    def decorate(function: F) -> F:
        where = function.__qualname__.removesuffix(".__init__")
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                given = signature.bind_partial(*args).arguments
                if new in kwargs or new in given:
                    raise InputError(
                        f"{where}: got both {new}= and {old}=; pass only {new}= ({old}= is its "
                        "deprecated old name)"
                    )
                warnings.warn(
                    f"{where}: the keyword {old}= is deprecated; use {new}= instead",
                    DeprecationWarning,
                    stacklevel=caller_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the calling function point at the
    first frame outside lossvista: the user's line, however many wrappers lie between."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level
