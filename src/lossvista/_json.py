"""JSON-friendly copies of settings and metadata (kept in files and in results)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def json_friendly(value: Any) -> Any:
    """A JSON-friendly copy (sets and tuples become lists, other objects their ``str``)."""
    if isinstance(value, Mapping):
        return {str(k): json_friendly(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [json_friendly(v) for v in items]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
