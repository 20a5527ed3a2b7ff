"""The one result protocol every public result follows.

A result subclasses :class:`Result`, names its ``result_kind`` (the tag written into its files,
distinct from the ``kind`` field several results hold: a landscape's kind of slice, a critical
point's verdict, a sharpness kind) and its ``file_format`` (``"json"`` for a summary, ``"hdf5"`` where it holds arrays), and describes
itself by two methods:

- ``_state()`` -> a mapping of plain values, numpy arrays and tensors (nested mappings, lists
  and tuples allowed) that is everything needed to rebuild it, and
- ``_from_state(state)`` (a classmethod) -> the result again.

From these the base provides ``as_dict()`` (strict JSON: NaN and inf become null), ``save(path)``
and :func:`load` (one loader for every lossvista file, returning an equal object), value
equality (NaN equals NaN, arrays compared element-wise), a readable ``__repr__`` and
``_repr_html_`` for notebooks (a table of ``_summary()`` and, when the result can ``plot()``,
the picture as an embedded PNG). Dataclass results are declared with ``eq=False, repr=False``
so that these are the ones used.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from . import _hdf5, _json
from ._version import __version__
from .errors import InputError, LossvistaError, StoreError

RESULT_FORMAT = "lossvista-result"
RESULT_FORMAT_VERSION = 1

#: kind -> result class, filled as result classes are defined.
_KINDS: dict[str, type[Result]] = {}
#: file format tag (other than ``lossvista-result``) -> function reading such a file.
_READERS: dict[str, Callable[[Path], Any]] = {}


def register_reader(format_tag: str, reader: Callable[[Path], Any]) -> None:
    """Let :func:`load` read files whose ``format`` tag is ``format_tag`` (surfaces, trajectories)."""
    _READERS[format_tag] = reader


class Result:
    """Base class of lossvista's results (see the module docstring for the protocol)."""

    #: The tag written into the result's files (``lv.load`` finds the class by it); results
    #: that are stored in a format of their own (surface files, trajectories) leave it empty.
    result_kind: ClassVar[str] = ""
    file_format: ClassVar[str] = "json"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__dict__.get("result_kind")
        if tag:
            if tag in _KINDS and _KINDS[tag].__qualname__ != cls.__qualname__:
                raise TypeError(f"result kind {tag!r} is taken by {_KINDS[tag].__qualname__}")
            _KINDS[tag] = cls

    # -- what a subclass provides ------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        raise NotImplementedError(f"{type(self).__name__} must define _state()")

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Any:
        return cls(**state)

    def _summary(self) -> list[tuple[str, Any]]:
        """The key numbers, as (label, value) rows, for ``__repr__`` and notebooks."""
        rows = []
        for key, value in self._state().items():
            if isinstance(value, np.generic):
                value = value.item()
            if value is None or isinstance(value, (bool, int, float, str)):
                rows.append((str(key), value))
        return rows

    # -- what every result gets ----------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """A copy that ``json.dumps(..., allow_nan=False)`` accepts (NaN and inf become None)."""
        return _json.json_ready(self._state())

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (read it back with :func:`lossvista.load`)."""
        return save_state(path, self.result_kind, self._state(), file_format=self.file_format)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return same(self._state(), other._state())  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable

    def __repr__(self) -> str:
        parts = ", ".join(f"{label}={_short(value)}" for label, value in self._summary())
        return f"{type(self).__name__}({parts})"

    def _repr_html_(self) -> str:
        return result_html(self)


# -- files ---------------------------------------------------------------------------------------
def save_state(
    path: str | Path, kind: str, state: Mapping[str, Any], *, file_format: str = "json"
) -> Path:
    """Write one result's state to ``path`` as a ``lossvista-result`` file."""
    path = Path(path)
    header = {
        "format": RESULT_FORMAT,
        "format_version": RESULT_FORMAT_VERSION,
        "kind": kind,
        "lossvista_version": __version__,
    }
    if file_format == "hdf5":

        def fill(f: Any) -> None:
            for key, value in header.items():
                f.attrs[key] = value
            group = f.create_group("state", track_order=True)
            _hdf5.write_tree(group, state)

        return _hdf5.create_file(path, fill, what=f"{kind} file")
    text = _json.dumps({**header, "state": state}, indent=1)
    _write_text(path, text, what=f"{kind} file")
    return path


def load(path: str | os.PathLike[str]) -> Any:
    """Read any file lossvista wrote: the object that was saved, of the same type.

    Surfaces and interpolations (also 2018 ``loss-landscape`` files), trajectories and every
    result's ``save`` file are recognised from their contents, not their names.

    Raises:
        InputError: ``path`` is not a path (``None``, a number, a result object...), or names
            nothing or a folder.
        StoreError: the file is not one lossvista wrote, is damaged, or holds a result this
            version cannot rebuild; the message names the file.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InputError(
            f"load needs the path of a file lossvista wrote (a str or pathlib.Path), got "
            f"{_described(path)}"
        )
    path = Path(path)
    if not path.exists():
        raise InputError(f"file {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a folder; give the path of a file lossvista wrote")
    if _hdf5.is_hdf5(path):
        with _hdf5.open_file(path, "r") as f:
            tag = _text(f.attrs.get("format", ""))
            if tag == RESULT_FORMAT:
                kind = _text(f.attrs.get("kind", ""))
                state = _hdf5.read_tree(f["state"])
                return _rebuild(kind, state, path)
            legacy = "xcoordinates" in f
        if tag in _READERS:
            return _READERS[tag](path)
        if legacy or not tag:
            return _READERS["lossvista-surface"](path)
        raise StoreError(f"{str(path)!r} is an HDF5 file of unknown format {tag!r}")
    try:
        data = _json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(
            f"{str(path)!r} is not a readable HDF5 file, nor a JSON file written by lossvista "
            f"({exc})"
        ) from exc
    except OSError as exc:
        raise StoreError(f"cannot read {str(path)!r}: {_hdf5.describe_os_error(exc)}") from exc
    if isinstance(data, dict) and data.get("format") == RESULT_FORMAT:
        tagged, content = data.get("kind"), data.get("state")
        if not isinstance(tagged, str) or not tagged:
            raise StoreError(
                f"{str(path)!r} is a lossvista result file without a result kind (its 'kind' is "
                f"{tagged!r}): it was damaged or edited; save the result again"
            )
        if not isinstance(content, Mapping):
            what = "no 'state'" if content is None else f"a {type(content).__name__} as its 'state'"
            raise StoreError(
                f"{str(path)!r} is a {tagged} result file with {what}, not the mapping of its "
                "values: it was damaged or edited; save the result again"
            )
        return _rebuild(tagged, content, path)
    json_tag = data.get("format") if isinstance(data, dict) else None
    if isinstance(json_tag, str) and json_tag in _READERS:
        return _READERS[json_tag](path)
    raise StoreError(f"{str(path)!r} is not a file lossvista wrote (no 'format' tag recognised)")


def _rebuild(kind: str, state: Mapping[str, Any], path: Path) -> Any:
    _import_all()
    cls = _KINDS.get(kind)
    if cls is None:
        raise StoreError(
            f"{str(path)!r} holds a result of unknown kind {kind!r}: written by a newer "
            f"lossvista (this is {__version__}), or damaged; known kinds: {sorted(_KINDS)}"
        )
    try:
        return cls._from_state(dict(state))
    except (LossvistaError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        missing = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StoreError(
            f"{str(path)!r}: cannot rebuild its {kind} result ({type(exc).__name__}: {missing}); "
            "the file was damaged or edited, or written by another lossvista version "
            f"(this is {__version__})"
        ) from exc


def _import_all() -> None:
    import lossvista  # noqa: F401  (defines and registers every result class)


def _write_text(path: Path, text: str, *, what: str) -> None:
    data = (text + "\n").encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    _hdf5.atomic_write(path, write, what=what)


def write_json_file(path: str | Path, data: Any, *, what: str = "JSON file") -> Path:
    """Write strict JSON (NaN and inf become null) atomically; failures are a StoreError."""
    path = Path(path)
    _write_text(path, json.dumps(_json.json_ready(data), indent=2, allow_nan=False), what=what)
    return path


# -- equality ------------------------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Value equality of two states: NaN equals NaN, arrays and tensors compared element-wise."""
    if _is_array(a) or _is_array(b):
        if not (_is_array(a) and _is_array(b)):
            return False
        x, y = _as_numpy(a), _as_numpy(b)
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            return bool(np.array_equal(x, y, equal_nan=True))
        return bool(np.array_equal(x, y))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Result) and isinstance(b, Result):
        return a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or _hdf5._is_tensor(value)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    tensor = value.detach().cpu()
    return (tensor.double() if tensor.is_floating_point() else tensor).numpy()


# -- notebooks -----------------------------------------------------------------------------------
def result_html(result: Any, rows: list[tuple[str, Any]] | None = None) -> str:
    """A small HTML block: a table of the key numbers and, when there is a plot, the picture."""
    rows = result._summary() if rows is None else rows
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(label))}</th>"
        f"<td style='text-align:left'>{html.escape(_short(value, 200))}</td></tr>"
        for label, value in rows
    )
    picture = ""
    if callable(getattr(result, "plot", None)):
        png = figure_png(result.plot)
        if png:
            picture = f"<img alt='{html.escape(type(result).__name__)} plot' src='data:image/png;base64,{png}'/>"
    title = html.escape(type(result).__name__)
    return f"<div class='lossvista-result'><strong>{title}</strong><table>{cells}</table>{picture}</div>"


def figure_png(draw: Callable[[], Any]) -> str:
    """Base64 PNG of the figure ``draw()`` returns ('' when it cannot draw)."""
    import matplotlib.pyplot as plt

    try:
        figure = draw()
    except Exception:
        return ""
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    finally:
        plt.close(figure)


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _described(value: Any) -> str:
    """``None``, ``an int (5)``, ``a Landscape``: what was passed, briefly."""
    if value is None:
        return "None"
    shown = _short(value, 40) if isinstance(value, (int, float, bytes)) else ""
    return f"a {type(value).__name__}" + (f" ({shown})" if shown else "")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
