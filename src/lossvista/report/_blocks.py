"""Blocks every section uses: the summary table, the metadata table, line plots and contours."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._html import Plot, Table, plain

__all__ = [
    "axis_layout",
    "flatten",
    "line_plot",
    "metadata_table",
    "rows_table",
    "summary_table",
]

#: Nested settings are flattened to ``a.b.c`` keys down to this depth; deeper ones stay JSON.
DEPTH = 4
#: Lists longer than this are shown by their length and first items only.
LONG_LIST = 12


def summary_table(result: Any, caption: str = "Summary") -> Table:
    """The result's own ``_summary()`` rows (the numbers of its ``repr``) as a table."""
    return Table(("quantity", "value"), [(str(k), v) for k, v in result._summary()], caption)


def flatten(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` rows of nested mappings; lists of plain values stay one row."""
    if isinstance(value, Mapping) and value and depth < DEPTH:
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key), depth + 1)
        return rows
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        value = plain(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        if len(value) > LONG_LIST:
            head = json.dumps(plain(list(value[:LONG_LIST])))
            value = f"{len(value)} items: {head[:-1]}, ...]"
        elif all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            value = json.dumps(plain(list(value)))
    elif isinstance(value, Mapping):
        value = json.dumps(plain(value), sort_keys=True)
    return [(prefix, value)]


def metadata_table(items: Mapping[str, Any], caption: str = "Metadata") -> Table:
    """Everything that produced a result (settings, seeds, versions, engine, timings) as rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in items.items():
        if value is None or (isinstance(value, Mapping) and not value):
            continue
        rows += flatten(value, key)
    return Table(("setting", "value"), rows, caption, role="metadata")


def rows_table(records: Sequence[Mapping[str, Any]], caption: str, role: str = "rows") -> Table:
    """A table of dict rows, columns in order of first appearance."""
    columns: list[str] = []
    for record in records:
        columns += [str(k) for k in record if str(k) not in columns]
    cells = [[_cell_value(record.get(c)) for c in columns] for record in records]
    return Table(columns, cells, caption, role=role)


def _cell_value(value: Any) -> Any:
    if isinstance(value, (np.ndarray, list, tuple, Mapping)) or hasattr(value, "detach"):
        return json.dumps(plain(value), sort_keys=True)
    return value


def axis_layout(title: str, *, log: bool = False) -> dict[str, Any]:
    """An axis with a title (and a log scale when asked)."""
    axis: dict[str, Any] = {"title": {"text": title}}
    if log:
        axis["type"] = "log"
    return axis


def line_plot(
    series: Sequence[tuple[str, Any, Any]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
    mode: str = "lines",
    caption: str = "",
) -> Plot:
    """Lines ``(name, x, y)`` on one pair of axes."""
    data = [
        {"type": "scatter", "mode": mode, "name": name, "x": plain(x), "y": plain(y)}
        for name, x, y in series
    ]
    layout = {
        "title": {"text": title},
        "xaxis": axis_layout(x_title),
        "yaxis": axis_layout(y_title, log=log_y),
        "margin": {"t": 50},
    }
    return Plot(data, layout, caption)


def positive(values: Any) -> bool:
    """Whether every finite value is above zero (a log scale can show them all)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return bool(finite.size) and bool(np.all(finite > 0))
