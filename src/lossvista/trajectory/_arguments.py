"""Checks and records of the arguments the trajectory functions take: integers that must be
integers, and JSON-friendly copies of settings kept in metadata."""

from __future__ import annotations

from typing import Any

from .._checks import check_int
from .._json import json_friendly

__all__ = ["check_integer", "json_friendly"]


def check_integer(value: Any, what: str, minimum: int | None = None) -> int:
    return check_int(value, what, minimum)
