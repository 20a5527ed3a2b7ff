"""Checks and records of the arguments the trajectory functions take: integers that must be
integers, and JSON-friendly copies of settings kept in metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._json import json_friendly
from ..errors import InputError

__all__ = ["check_integer", "json_friendly"]


def check_integer(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{what} must be >= {minimum}, got {value}")
    return int(value)
