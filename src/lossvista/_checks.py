"""Argument checks shared by every public function, so that they cannot drift apart.

A ``bool`` is never accepted where an integer is asked for (``True`` is an ``int`` in Python, but
``batch_size=True`` is a mistake, not a batch of one).
"""

from __future__ import annotations

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
