"""Argument checks shared by every public function, so that they cannot drift apart.

A ``bool`` is never accepted where an integer is asked for (``True`` is an ``int`` in Python, but
``batch_size=True`` is a mistake, not a batch of one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError


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
