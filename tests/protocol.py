"""The result-protocol checks every result kind passes (used by the per-package result tests)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lossvista as lv


def check_protocol(
    result: Any, tmp_path: Path, *, numbers: Iterable[str] = (), name: str = "result"
) -> Any:
    """as_dict is strict JSON, the notebook HTML shows ``numbers``, save + lv.load gives an equal
    object of the same type, and the repr is one readable line. Returns the loaded object."""
    text = json.dumps(result.as_dict(), allow_nan=False)
    assert isinstance(json.loads(text), dict)
    page = result._repr_html_()
    assert page.lstrip().startswith("<") and type(result).__name__ in page
    for number in numbers:
        assert number in page, f"{number!r} missing from the notebook view"
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    line = repr(result)
    assert line.startswith(type(result).__name__) and "\n" not in line and len(line) < 2000
    path = result.save(tmp_path / name)
    loaded = lv.load(path)
    assert type(loaded) is type(result)
    assert loaded == result
    return loaded
