"""Reading and validating lossvista surface files (the writer is :mod:`lossvista.store`).

Every read checks what a surface file must hold (its format attributes, coordinates, the
``computed`` flags, ``loss``, directions, shapes that agree) and names what is missing or
damaged in a :class:`~lossvista.errors.StoreError`, instead of a raw ``KeyError`` from h5py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _hdf5
from ._json import loads as _loads
from .directions import Direction
from .errors import StoreError

FORMAT = "lossvista-surface"
FORMAT_VERSION = 1
DAMAGED = "restore it from a copy, or pass resume=False (or another store path) to start anew"
#: Names of the coordinate dimensions by landscape kind (used in files and xarray).
DIMENSIONS = {
    "line": ("x",),
    "plane": ("x", "y"),
    "interpolation": ("t",),
    "plane_through": ("x", "y"),
}
#: Names of the axes of every other kind (``grid``, sections, curvature maps), in order: ``x``,
#: ``y``, ``z``, then ``d3``, ``d4``, ... up to HDF5's 32 dimensions.
ND_DIMENSIONS = ("x", "y", "z", *(f"d{i}" for i in range(3, 32)))


def dimension_names(kind: str, ndim: int) -> tuple[str, ...]:
    """The dimension names of a landscape of ``kind`` with ``ndim`` axes (files and xarray)."""
    if kind in DIMENSIONS and len(DIMENSIONS[kind]) == ndim:
        return DIMENSIONS[kind]
    if ndim > len(ND_DIMENSIONS):
        raise StoreError(f"a surface file holds at most {len(ND_DIMENSIONS)} axes, got {ndim}")
    return ND_DIMENSIONS[:ndim]


def read_contents(path: Path) -> dict[str, Any]:
    """Everything in a native file, as :meth:`SurfaceStore.create`'s arguments (validated)."""
    with _hdf5.open_file(path, "r", what="surface file") as f:
        require_native(f, path)
        kind = str(f.attrs["kind"])
        dims = DIMENSIONS.get(kind) or _present_dimensions(f)
        coords = tuple(np.asarray(f[d][()], dtype=np.float64) for d in dims if d in f)
        if not coords or (kind in DIMENSIONS and len(coords) != len(dims)):
            missing = [d for d in dims if d not in f]
            raise StoreError(f"{str(path)!r} lacks its coordinate dataset(s) {missing}; {DAMAGED}")
        shape = tuple(len(c) for c in coords)
        names = value_names(f)
        for name in [*names, "computed"]:
            if f[name].shape != shape:
                raise StoreError(
                    f"{str(path)!r}: dataset {name!r} has shape {f[name].shape}, but the "
                    f"coordinates give {shape}; {DAMAGED}"
                )
        directions = []
        group = f["directions"]
        for key in sorted(group, key=lambda k: int(k) if str(k).isdigit() else -1):
            sub = group[key]
            tensors = {name: _direction_tensor(sub[name]) for name in sub}
            directions.append(Direction(tensors, attr_json(sub, "meta", path, {})))
        seed = int(f.attrs.get("seed", -1))
        return dict(
            kind=kind,
            coords=coords,
            value_names=names,
            values={name: f[name][()] for name in names},
            computed=f["computed"][()].astype(bool),
            directions=tuple(directions),
            settings=attr_json(f, "settings", path),
            axis_labels=tuple(attr_json(f, "axis_labels", path, [])),
            markers={k: tuple(v) for k, v in attr_json(f, "markers", path, {}).items()},
            seed=None if seed < 0 else seed,
            center=attr_json(f, "center", path, {}) or {},
            center_check=attr_json(f, "center_check", path, None),
            endpoints=attr_json(f, "endpoints", path, None),
            engine=attr_json(f, "engine", path, None),
            trajectory=f["trajectory"][()] if "trajectory" in f else None,
            created=text(f.attrs.get("created", "")) or None,
        )


def fields(contents: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """A ``Landscape``'s constructor arguments from a file's contents."""
    settings = dict(contents["settings"])
    if contents["engine"]:
        settings["engine"] = contents["engine"]
    out = {
        key: contents[key]
        for key in (
            "coords",
            "values",
            "directions",
            "center",
            "kind",
            "seed",
            "axis_labels",
            "markers",
            "computed",
            "center_check",
            "trajectory",
        )
    }
    out.update(settings=settings, path=path)
    out["endpoints"] = contents["endpoints"] or {}
    return out


def require_native(f: Any, path: Path) -> None:
    """Refuse a file that claims the format but lacks what every surface file has."""
    missing = [a for a in ("format_version", "kind", "settings") if a not in f.attrs]
    if missing:
        raise StoreError(f"{str(path)!r} lacks the attribute(s) {missing}; {DAMAGED}")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{str(path)!r} uses surface format {version}; this lossvista reads up to "
            f"{FORMAT_VERSION}: upgrade lossvista"
        )
    absent = [n for n in ("computed", "directions", "loss") if n not in f]
    if absent:
        raise StoreError(f"{str(path)!r} lacks the dataset(s) {absent}; {DAMAGED}")


def value_names(f: Any) -> list[str]:
    names = [n for n in f if n != "computed" and f[n].attrs.get("lossvista_metric") == 1]
    return sorted(names, key=lambda n: (n != "loss", n))


def attr_json(node: Any, name: str, path: Path, default: Any = ...) -> Any:
    if name not in node.attrs:
        if default is ...:
            raise StoreError(f"{str(path)!r} lacks the attribute {name!r}; {DAMAGED}")
        return default
    try:
        return _loads(text(node.attrs[name]).strip())
    except (ValueError, TypeError) as exc:
        raise StoreError(
            f"{str(path)!r}: the attribute {name!r} is not valid JSON ({exc}); {DAMAGED}"
        ) from exc


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return text(value.item())
    return str(value)


def _present_dimensions(f: Any) -> tuple[str, ...]:
    """The axes of a file of a kind without fixed dimensions: ``x``, ``y``, ``z``, ``d3``, ...
    as long as they are present (a metric dataset is never an axis)."""
    present = []
    for dim in ND_DIMENSIONS:
        if dim not in f or f[dim].attrs.get("lossvista_metric") == 1:
            break
        present.append(dim)
    return tuple(present) or ("x",)


def _direction_tensor(dataset: Any) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(dataset[()]))
    dtype = dataset.attrs.get("torch_dtype")
    if isinstance(dtype, bytes):
        dtype = dtype.decode()
    return tensor.to(getattr(torch, dtype)) if dtype else tensor
