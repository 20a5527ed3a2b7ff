"""The one JSON converter: a strict, readable form for people and a lossless form for files.

- :func:`json_ready` makes a copy that ``json.dumps(..., allow_nan=False)`` accepts: mappings
  and sequences are walked, numpy and torch values become Python numbers and lists, NaN and
  infinities become ``None``, other objects their ``str``. It is what ``as_dict()`` returns.
- :func:`dumps` / :func:`loads` keep everything a result needs to come back equal: non-finite
  floats, tuples, numpy arrays (dtype and shape) and tensors are written as small tagged
  objects, so files stay strict JSON and ``loads(dumps(x))`` equals ``x``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

_TAG = "__lossvista__"


def json_ready(value: Any) -> Any:
    """A strict-JSON copy of ``value`` (NaN and infinities become ``None``)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            items = sorted(value, key=repr)
        return [json_ready(v) for v in items]
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if _is_tensor(value):
        return json_ready(value.detach().cpu().tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, complex):
        return [json_ready(value.real), json_ready(value.imag)]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return json_ready(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return str(value)


def json_friendly(value: Any) -> Any:
    """Deprecated name of :func:`json_ready` (kept for old callers)."""
    return json_ready(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """Lossless, strict JSON text of ``value`` (read back with :func:`loads`)."""
    return json.dumps(_encode(value), allow_nan=False, **kwargs)


def loads(text: str | bytes) -> Any:
    """The value :func:`dumps` wrote (also reads plain JSON, and bare ``NaN`` of older files)."""
    return _decode(json.loads(text))


def _encode(value: Any) -> Any:
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: _encode(v) for k, v in value.items()}
        return {_TAG: "map", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return {
            _TAG: "ndarray",
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "data": [
                _encode(float(v)) if value.dtype.kind == "f" else _encode(v.item())
                for v in value.ravel()
            ],
        }
    if _is_tensor(value):
        array = value.detach().cpu()
        return {
            _TAG: "tensor",
            "dtype": str(array.dtype).removeprefix("torch."),
            "array": _encode(
                array.double().numpy() if array.is_floating_point() else array.numpy()
            ),
        }
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isfinite(number):
            return number
        return {
            _TAG: "float",
            "value": "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf"),
        }
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (PurePath, enum.Enum)):
        return str(value.value) if isinstance(value, enum.Enum) else str(value)
    return str(value)  # anything else (a user's object in settings) is kept by its description


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, float):
        return value
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in value.items()}
    if tag == "float":
        return float(value["value"])
    if tag == "tuple":
        return tuple(_decode(v) for v in value["items"])
    if tag == "map":
        return {_hashable(_decode(k)): _decode(v) for k, v in value["items"]}
    if tag == "ndarray":
        data = [_decode(v) for v in value["data"]]
        return np.asarray(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if tag == "tensor":
        import torch

        array = _decode(value["array"])
        tensor = torch.from_numpy(np.ascontiguousarray(array)).reshape(array.shape)  # 0-d stays 0-d
        return tensor.to(getattr(torch, value["dtype"]))
    raise ValueError(f"unknown tag {tag!r} in a lossvista file (written by a newer version?)")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")
