"""HDF5 surface files: create, resume, validate, read; import of 2018 ``loss-landscape`` files.

The schema is documented in ``docs/FORMAT.md``. Files are opened for each write and closed
again, so that at any moment the file on disk is complete up to the last finished chunk. The
store deals in fields (arrays, settings, directions), not in result objects: :func:`read_fields`
hands them to :mod:`lossvista.landscape`, which builds the :class:`~lossvista.Landscape`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _hdf5
from ._json import dumps as _json
from ._json import json_ready
from ._json import loads as _loads
from ._version import __version__
from .directions import Direction
from .errors import InputError, StoreError, StoreMismatchError

FORMAT = "lossvista-surface"
FORMAT_VERSION = 1
#: Settings that must agree for a file to be resumed (the rest is informative).
IDENTITY_KEYS = (
    "kind",
    "span",
    "steps",
    "objective",
    "direction_fingerprints",
    "origin_fingerprint",
)
_LEGACY_METRICS = {"train_loss": "loss", "train_acc": "accuracy"}
#: Names of the coordinate dimensions by landscape kind (used in files and xarray).
DIMENSIONS = {
    "line": ("x",),
    "plane": ("x", "y"),
    "interpolation": ("t",),
    "plane_through": ("x", "y"),
}
#: Names a surface file uses for its own datasets: a metric (or value) cannot have one of these.
RESERVED_NAMES = frozenset(
    {"computed", "directions", "trajectory", *(d for dims in DIMENSIONS.values() for d in dims)}
)


class SurfaceStore:
    """A surface file being filled chunk by chunk."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        kind: str,
        coords: Sequence[np.ndarray],
        value_names: Sequence[str],
        directions: Sequence[Direction],
        settings: Mapping[str, Any],
        axis_labels: Sequence[str] = (),
        markers: Mapping[str, Sequence[float]] | None = None,
        seed: int | None = None,
    ) -> SurfaceStore:
        """Write a new file (replacing any file at ``path``) with all values NaN, none computed."""
        path = Path(path)
        check_writable(path)
        dims = DIMENSIONS.get(kind, ("x", "y")[: len(coords)])
        shape = tuple(len(c) for c in coords)

        def fill(f: Any) -> None:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["lossvista_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            f.attrs["kind"] = kind
            f.attrs["settings"] = _json(settings)
            f.attrs["axis_labels"] = _json(list(axis_labels))
            f.attrs["markers"] = _json({k: list(v) for k, v in (markers or {}).items()})
            f.attrs["seed"] = -1 if seed is None else int(seed)
            f.attrs["center"] = _json({})
            f.attrs["center_check"] = _json(None)
            f.attrs["engine"] = _json(None)
            scales = []
            for dim, values in zip(dims, coords, strict=True):
                scale = f.create_dataset(dim, data=np.asarray(values, dtype=np.float64))
                scale.make_scale(dim)
                scales.append(scale)
            for name in value_names:
                _metric_dataset(f, name, shape, scales)
            computed = f.create_dataset("computed", shape=shape, dtype="u1", fillvalue=0)
            _attach(computed, scales)
            group = f.create_group("directions")
            for i, direction in enumerate(directions):
                sub = group.create_group(str(i))
                sub.attrs["meta"] = _json(direction.meta)
                for name, tensor in direction.items():
                    sub.create_dataset(name, data=tensor.detach().cpu().numpy())

        _hdf5.create_file(path, fill, what="surface file")
        return cls(path)

    # -- reading --------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        with self._open("r") as f:
            return {
                "kind": str(f.attrs["kind"]),
                "settings": _loads(f.attrs["settings"]),
                "value_names": _value_names(f),
            }

    def check_matches(
        self,
        settings: Mapping[str, Any],
        value_names: Sequence[str],
        *,
        extra_keys: Sequence[str] = (),
    ) -> None:
        """Refuse to resume a file made with other settings (names what differs).

        ``extra_keys`` are settings beyond :data:`IDENTITY_KEYS` that must agree too (such as a
        curvature map's eigensolver settings).
        """
        header = self.header()
        stored = json_ready(header["settings"])
        expected = json_ready(settings)
        differences = []
        for key in (*IDENTITY_KEYS, *extra_keys):
            old, new = stored.get(key), expected.get(key)
            if isinstance(old, dict) and isinstance(new, dict):
                differences += [
                    f"{key}.{sub}: file has {_short(old.get(sub))}, asked for {_short(new.get(sub))}"
                    for sub in sorted(set(old) | set(new))
                    if old.get(sub) != new.get(sub)
                ]
            elif old != new:
                differences.append(f"{key}: file has {_short(old)}, asked for {_short(new)}")
        missing = [n for n in value_names if n not in header["value_names"]]
        if missing:
            differences.append(f"metrics {missing} are not in the file")
        if differences:
            which = [k for k in extra_keys if stored.get(k) != expected.get(k)]
            adjective = "".join(f"{k} " for k in which)
            raise StoreMismatchError(
                f"{str(self.path)!r} was made with other {adjective}settings, so it cannot be "
                "resumed:\n  "
                + "\n  ".join(differences)
                + "\nPass another store path, or resume=False to overwrite it."
            )

    def engine_config(self) -> dict[str, Any] | None:
        with self._open("r") as f:
            return _loads(f.attrs["engine"])

    def missing(self) -> np.ndarray:
        """Flat indices (C order) of the points not computed yet."""
        with self._open("r") as f:
            return np.flatnonzero(f["computed"][()].reshape(-1) == 0)

    def read(self) -> dict[str, Any]:
        """The file's fields (see :func:`read_fields`)."""
        return _read_native(self.path)

    # -- writing --------------------------------------------------------------------------------
    def write_header(self, **attrs: Any) -> None:
        """Update JSON attributes such as ``center``, ``center_check`` or ``engine``."""
        with self._open("r+") as f:
            for key, value in attrs.items():
                f.attrs[key] = _json(value)

    def write_trajectory(self, coordinates: np.ndarray) -> None:
        """Store the coordinates ``(P, ndim)`` of a path drawn over the surface."""
        with self._open("r+") as f:
            if "trajectory" in f:
                del f["trajectory"]
            f.create_dataset("trajectory", data=np.asarray(coordinates, dtype=np.float64))

    def write(self, flat_indices: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Store the values of some points and mark them computed; flushed when this returns."""
        flat_indices = np.asarray(flat_indices, dtype=np.int64)
        order = np.argsort(flat_indices)
        flat_indices = flat_indices[order]
        with self._open("r+") as f:
            shape = f["computed"].shape
            index = np.unravel_index(flat_indices, shape)
            targets = [(name, np.asarray(values[name])[order]) for name in values]
            targets.append(("computed", np.ones(len(flat_indices), dtype="u1")))
            if len(shape) == 1:
                for name, column in targets:
                    f[name][flat_indices] = column
            else:
                rows = index[0]
                for row in np.unique(rows):
                    take = rows == row
                    cols = index[1][take]
                    for name, column in targets:
                        f[name][int(row), cols] = column[take]
            f.flush()

    def _open(self, mode: str) -> Any:
        return _hdf5.open_file(self.path, mode, what="surface file")


# -- whole-landscape save / load -------------------------------------------------------------------
def save_landscape(landscape: Any, path: str | Path) -> Path:
    """Write a complete landscape (its fields) to ``path``; ``lv.load`` gives it back equal."""
    store = SurfaceStore.create(
        path,
        kind=landscape.kind,
        coords=landscape.coords,
        value_names=list(landscape.values),
        directions=landscape.directions,
        settings=landscape.settings,
        axis_labels=landscape.axis_labels,
        markers=landscape.markers,
        seed=landscape.seed,
    )
    extra = {}
    if getattr(landscape, "endpoints", None) is not None:
        extra["endpoints"] = landscape.endpoints
    store.write_header(center=landscape.center, center_check=landscape.center_check, **extra)
    if landscape.trajectory is not None:
        store.write_trajectory(landscape.trajectory)
    flat = np.flatnonzero(np.asarray(landscape.computed).reshape(-1))
    store.write(flat, {n: a.reshape(-1)[flat] for n, a in landscape.values.items()})
    return store.path


def read_fields(path: str | Path) -> dict[str, Any]:
    """The fields of a surface file: lossvista's own, or one written by the 2018 ``loss-landscape``
    scripts (a ``Landscape``'s constructor arguments, ``endpoints`` for interpolations).

    Legacy files (``xcoordinates``, ``ycoordinates``, ``train_loss``, ``train_acc``, ...) are read
    with ``train_loss`` as ``"loss"`` and ``train_acc`` as ``"accuracy"``; their unfilled points
    (stored as -1) become NaN.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"surface file {str(path)!r} does not exist")
    with _hdf5.open_file(path, "r", what="surface file") as f:
        is_native = f.attrs.get("format") == FORMAT
        is_legacy = "xcoordinates" in f
    if is_native:
        return _read_native(path)
    if is_legacy:
        return _read_legacy(path)
    raise StoreError(
        f"{str(path)!r} is neither a lossvista surface file nor a loss-landscape (2018) file "
        "(no 'format' attribute, no 'xcoordinates' dataset)"
    )


def __getattr__(name: str) -> Any:
    if name == "load":  # the surface loader used to live here; lv.load reads every file
        warnings.warn(
            "lossvista.store.load is deprecated; use lossvista.load",
            DeprecationWarning,
            stacklevel=2,
        )
        from ._result import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_native(path: Path) -> dict[str, Any]:
    with _hdf5.open_file(path, "r", what="surface file") as f:
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{str(path)!r} uses surface format {version}; this lossvista reads up to "
                f"{FORMAT_VERSION}: upgrade lossvista"
            )
        kind = str(f.attrs["kind"])
        dims = DIMENSIONS.get(kind, ("x", "y"))
        coords = tuple(f[d][()] for d in dims if d in f)
        values = {name: f[name][()] for name in _value_names(f)}
        directions = []
        group = f["directions"]
        for key in sorted(group, key=int):
            sub = group[key]
            tensors = {name: torch.from_numpy(sub[name][()]) for name in sub}
            directions.append(Direction(tensors, _loads(sub.attrs["meta"])))
        seed = int(f.attrs["seed"])
        settings = _loads(f.attrs["settings"])
        engine = _loads(f.attrs["engine"])
        if engine:
            settings["engine"] = engine
        fields: dict[str, Any] = dict(
            coords=coords,
            values=values,
            directions=tuple(directions),
            center=_loads(f.attrs["center"]),
            kind=kind,
            settings=settings,
            seed=None if seed < 0 else seed,
            axis_labels=tuple(_loads(f.attrs["axis_labels"])),
            markers={k: tuple(v) for k, v in _loads(f.attrs["markers"]).items()},
            computed=f["computed"][()].astype(bool),
            center_check=_loads(f.attrs["center_check"]),
            path=path,
            trajectory=f["trajectory"][()] if "trajectory" in f else None,
        )
        if kind == "interpolation":
            fields["endpoints"] = _loads(f.attrs.get("endpoints", "{}"))
        return fields


def _read_legacy(path: Path) -> dict[str, Any]:
    h5py = _hdf5.h5py()
    with _hdf5.open_file(path, "r", what="surface file") as f:
        x = np.asarray(f["xcoordinates"][()], dtype=np.float64)
        y = np.asarray(f["ycoordinates"][()], dtype=np.float64) if "ycoordinates" in f else None
        coords = (x,) if y is None else (x, y)
        values: dict[str, np.ndarray] = {}
        for name in f:
            if name in ("xcoordinates", "ycoordinates") or not isinstance(f[name], h5py.Dataset):
                continue
            raw = np.asarray(f[name][()], dtype=np.float64)
            if raw.size != x.size * (1 if y is None else y.size):
                continue  # not a surface (e.g. a stored direction)
            if y is not None:
                # The scripts fill ``losses.ravel()`` in the order of np.meshgrid(x, y) (y
                # slowest), so the flat array is laid out (len(y), len(x)); ours is (x, y).
                raw = raw.reshape(-1).reshape(len(y), len(x)).T
            raw = np.where(raw == -1, np.nan, raw)  # the scripts pre-fill with -1
            values[name] = raw
        if not values:
            raise StoreError(f"{str(path)!r} has coordinates but no surface datasets")
        attrs = {k: _plain_attr(v) for k, v in f.attrs.items()}
    for legacy, ours in _LEGACY_METRICS.items():
        if legacy in values and ours not in values:
            values[ours] = values[legacy]
    if "loss" not in values:
        first = next(n for n in values if "loss" in n) if any("loss" in n for n in values) else None
        values["loss"] = values[first] if first else next(iter(values.values()))
    computed = np.isfinite(values["loss"])
    origin = tuple(0.0 for _ in coords)
    has_origin = all(c.min() <= 0.0 <= c.max() for c in coords)
    return dict(
        coords=coords,
        values=values,
        kind="legacy",
        settings={"source": "loss-landscape (2018)", "attrs": attrs},
        axis_labels=tuple(f"direction {i + 1}" for i in range(len(coords))),
        markers={"origin": origin} if has_origin else {},
        computed=computed,
        path=path,
    )


# -- helpers --------------------------------------------------------------------------------------
def check_writable(path: Path) -> None:
    """Fail early, with the reason, when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise StoreError(f"store path {str(path)!r} is a directory; name a file such as surf.h5")
    if not parent.exists():
        raise StoreError(
            f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"cannot write {str(path)!r}: permission denied; choose a writable path")


def _metric_dataset(f: Any, name: str, shape: tuple[int, ...], scales: list[Any]) -> None:
    dataset = f.create_dataset(name, shape=shape, dtype="f8", fillvalue=np.nan)
    dataset.attrs["lossvista_metric"] = 1
    _attach(dataset, scales)


def _attach(dataset: Any, scales: list[Any]) -> None:
    for axis, scale in enumerate(scales):
        dataset.dims[axis].attach_scale(scale)


def _value_names(f: Any) -> list[str]:
    names = [n for n in f if n != "computed" and f[n].attrs.get("lossvista_metric") == 1]
    return sorted(names, key=lambda n: (n != "loss", n))


def _plain_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
