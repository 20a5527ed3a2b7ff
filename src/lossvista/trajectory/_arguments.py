"""Checks and records of the arguments the trajectory functions take: integers that must be
integers, and JSON-friendly copies of settings kept in metadata."""

from __future__ import annotations

from .._checks import check_int as check_integer
from .._json import json_friendly

__all__ = ["check_integer", "json_friendly"]
