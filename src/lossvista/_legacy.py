"""Import of surface files written by the 2018 ``loss-landscape`` scripts (Li et al.).

Datasets ``xcoordinates``, optional ``ycoordinates``, and surfaces such as ``train_loss``,
``train_acc``, ``test_loss``. The scripts fill ``losses.ravel()`` in the order of
``np.meshgrid(x, y)`` (y slowest), so a flat surface is laid out ``(len(y), len(x))``; ours is
``(x, y)``. Their fill value ``-1`` means "not computed yet". Datasets that are not numeric (the
name of a direction file, say) or not the size of the grid are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import _hdf5
from .errors import StoreError

_LEGACY_METRICS = {"train_loss": "loss", "train_acc": "accuracy"}
_COORDINATES = ("xcoordinates", "ycoordinates")


def read_legacy(path: Path) -> dict[str, Any]:
    """The fields of a 2018 file (a ``Landscape``'s constructor arguments, ``kind="legacy"``)."""
    h5py = _hdf5.h5py()
    with _hdf5.open_file(path, "r", what="surface file") as f:
        coords = tuple(
            _axis(f, name, path) for name in _COORDINATES if name == "xcoordinates" or name in f
        )
        size = int(np.prod([len(c) for c in coords]))
        values: dict[str, np.ndarray] = {}
        for name in f:
            node = f[name]
            if name in _COORDINATES or not isinstance(node, h5py.Dataset):
                continue
            if node.dtype.kind not in "fiub" or node.size != size:
                continue  # text (a direction file's name), or not a surface (a stored direction)
            raw = np.asarray(node[()], dtype=np.float64)
            if len(coords) == 2:
                raw = raw.reshape(-1).reshape(len(coords[1]), len(coords[0])).T
            else:
                raw = raw.reshape(-1)
            values[name] = np.where(raw == -1, np.nan, raw)  # the scripts pre-fill with -1
        if not values:
            raise StoreError(
                f"{str(path)!r} has coordinates but no numeric surface of their size "
                f"({' x '.join(str(len(c)) for c in coords)} points)"
            )
        attrs = {k: _plain_attr(v) for k, v in f.attrs.items()}
    for legacy, ours in _LEGACY_METRICS.items():
        if legacy in values and ours not in values:
            values[ours] = values[legacy]
    if "loss" not in values:
        first = next((n for n in values if "loss" in n), None)
        values["loss"] = values[first] if first else next(iter(values.values()))
    computed = np.isfinite(values["loss"])
    has_origin = all(c.min() <= 0.0 <= c.max() for c in coords)
    return dict(
        coords=coords,
        values=values,
        kind="legacy",
        settings={"source": "loss-landscape (2018)", "attrs": attrs},
        axis_labels=tuple(f"direction {i + 1}" for i in range(len(coords))),
        markers={"origin": tuple(0.0 for _ in coords)} if has_origin else {},
        computed=computed,
        path=path,
    )


def _axis(f: Any, name: str, path: Path) -> np.ndarray:
    node = f[name]
    if not hasattr(node, "dtype") or node.dtype.kind not in "fiu":
        raise StoreError(f"{str(path)!r}: {name!r} is not a numeric array of coordinates")
    axis = np.asarray(node[()], dtype=np.float64).reshape(-1)
    if axis.size == 0:
        raise StoreError(
            f"{str(path)!r}: the axis {name!r} is empty, so the file holds no surface; "
            "it was saved before its coordinates were written"
        )
    if not np.all(np.isfinite(axis)):
        raise StoreError(f"{str(path)!r}: the axis {name!r} holds NaN or infinite coordinates")
    return axis


def _plain_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
