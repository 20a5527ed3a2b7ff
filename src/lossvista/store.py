"""HDF5 surface files: create, resume, validate, read (2018 ``loss-landscape`` files: ``_legacy``).

The schema is documented in ``docs/FORMAT.md``. The store deals in fields (arrays, settings,
directions), not in result objects: :func:`read_fields` hands them to
:mod:`lossvista.landscape`, which builds the :class:`~lossvista.Landscape`.

Nothing finished is ever lost, also when the disk fills up or the process is killed:

- a file is created complete under a temporary name and moved into place (``_hdf5.create_file``),
  with the space of every value and of the ``computed`` flags allocated (and filled) then, and
  everything known before the grid starts (centre, centre check, end points) written then;
- a chunk of points is written in place into that space (values first, ``computed`` last),
  and the engine configuration into an attribute of fixed size, so a write never needs new
  disk space and never moves HDF5 metadata;
- anything that changes the file's layout (a trajectory, a file of an older layout that is
  resumed) writes a complete new copy and replaces the file only once the copy is complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _hdf5
from . import _surface_read as _read
from ._hdf5 import check_writable as check_writable  # the store's old place for it
from ._json import dumps as _json
from ._json import json_ready
from ._legacy import read_legacy
from ._lock import store_lock
from ._surface_read import DIMENSIONS, FORMAT, FORMAT_VERSION, ND_DIMENSIONS, dimension_names
from ._version import __version__
from .directions import Direction
from .errors import InputError, LossvistaWarning, StoreError, StoreMismatchError

#: Settings that must agree for a file to be resumed (the rest is informative).
IDENTITY_KEYS = (
    "kind",
    "span",
    "steps",
    "objective",
    "direction_fingerprints",
    "origin_fingerprint",
    "identity",
    "shard",
    "precision",
)
#: Identity settings newer than some files: a file without them is compared on the rest and on
#: its recomputed centre (which a run with other data, loss or buffers does not reproduce).
LATER_IDENTITY_KEYS = frozenset({"identity"})
#: Objective settings added after files were first written (their old default is what older
#: files computed); a file that lacks one is not compared on it.
LATER_OBJECTIVE_KEYS = frozenset({"objective.count", "objective.param_selection"})
#: Names a surface file uses for its own datasets: a metric (or value) cannot have one of these.
RESERVED_NAMES = frozenset(
    {
        "computed",
        "directions",
        "trajectory",
        *(d for dims in DIMENSIONS.values() for d in dims),
        *ND_DIMENSIONS,
    }
)
#: Size of the ``engine`` attribute: fixed, so choosing the configuration rewrites it in place.
ENGINE_BYTES = 1024


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
        center: Mapping[str, float] | None = None,
        center_check: Mapping[str, Any] | None = None,
        endpoints: Mapping[str, Any] | None = None,
        engine: Mapping[str, Any] | None = None,
        values: Mapping[str, np.ndarray] | None = None,
        computed: np.ndarray | None = None,
        trajectory: np.ndarray | None = None,
        created: str | None = None,
    ) -> SurfaceStore:
        """Write a new file atomically (replacing any file at ``path``).

        Values default to NaN and ``computed`` to 0; their space is allocated now.
        """
        path = Path(path)
        check_writable(path)
        dims = dimension_names(kind, len(coords))
        shape = tuple(len(c) for c in coords)
        values = values or {}

        def fill(f: Any) -> None:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["lossvista_version"] = __version__
            f.attrs["created"] = created or _dt.datetime.now(_dt.timezone.utc).isoformat()
            f.attrs["kind"] = kind
            f.attrs["settings"] = _json(settings)
            f.attrs["axis_labels"] = _json(list(axis_labels))
            f.attrs["markers"] = _json({k: list(v) for k, v in (markers or {}).items()})
            f.attrs["seed"] = -1 if seed is None else int(seed)
            f.attrs["center"] = _json(dict(center or {}))
            f.attrs["center_check"] = _json(center_check)
            f.attrs["engine"] = _fixed_json(engine)
            if endpoints is not None:
                f.attrs["endpoints"] = _json(endpoints)
            scales = []
            for dim, axis in zip(dims, coords, strict=True):
                scale = f.create_dataset(
                    dim, data=np.asarray(axis, dtype=np.float64), track_times=False
                )
                scale.make_scale(dim)
                scales.append(scale)
            for name in value_names:
                data = values.get(name)
                dataset = _hdf5.allocated_dataset(
                    f,
                    name,
                    shape=shape,
                    dtype="f8",
                    fillvalue=np.nan,
                    data=None if data is None else np.asarray(data, dtype=np.float64),
                )
                dataset.attrs["lossvista_metric"] = 1
                _attach(dataset, scales)
            flags = None if computed is None else np.asarray(computed).astype("u1")
            _attach(
                _hdf5.allocated_dataset(
                    f, "computed", shape=shape, dtype="u1", fillvalue=0, data=flags
                ),
                scales,
            )
            group = f.create_group("directions")
            for i, direction in enumerate(directions):
                sub = group.create_group(str(i))
                sub.attrs["meta"] = _json(direction.meta)
                for name, tensor in direction.items():
                    _hdf5.write_tensor(sub, name, tensor)
            if trajectory is not None:
                f.create_dataset(
                    "trajectory", data=np.asarray(trajectory, dtype=np.float64), track_times=False
                )

        _hdf5.create_file(path, fill, what="surface file")
        return cls(path)

    # -- reading --------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        with self._open("r") as f:
            _read.require_native(f, self.path)
            return {
                "kind": str(f.attrs["kind"]),
                "settings": _read.attr_json(f, "settings", self.path),
                "value_names": _read.value_names(f),
                "center": _read.attr_json(f, "center", self.path, {}) or {},
                "computed": int(np.count_nonzero(f["computed"][()])) if "computed" in f else 0,
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
        curvature map's eigensolver settings). Keys of :data:`LATER_IDENTITY_KEYS` that an older
        file lacks are not compared (its recomputed centre is: :meth:`check_center`).
        """
        header = self.header()
        stored = json_ready(header["settings"])
        expected = json_ready(settings)
        differences = []
        for key in (*IDENTITY_KEYS, *extra_keys):
            if key in LATER_IDENTITY_KEYS and key not in stored:
                continue
            differences += _differences(key, stored.get(key), expected.get(key))
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

    def check_center(
        self, center: Mapping[str, float], rtol: float, *, enforce: bool = True
    ) -> None:
        """Refuse to resume when this objective's value at the origin differs from the stored
        centre beyond ``rtol`` (other data, loss, metrics or buffers); warn when not ``enforce``.
        """
        stored = self.header()["center"]
        differences = []
        for name in sorted(set(stored) & set(center)):
            old, new = _number(stored[name]), _number(center[name])
            if (math.isnan(old) and math.isnan(new)) or math.isclose(
                old, new, rel_tol=rtol, abs_tol=rtol * 1e-3
            ):
                continue
            differences.append(f"{name}: the file has {old:.10g}, this objective gives {new:.10g}")
        if not differences:
            return
        message = (
            f"{str(self.path)!r} holds the landscape of another objective: at the same origin, "
            f"its stored centre differs from this objective's value beyond the centre check's "
            f"tolerance (rtol {rtol:g}):\n  "
            + "\n  ".join(differences)
            + "\nThe data, the loss function, a metric or the model's buffers differ from the "
            "run that made the file. Pass another store path, or resume=False to overwrite it."
        )
        if enforce:
            raise StoreMismatchError(message)
        warnings.warn(
            message + " Resuming anyway because check_center=False.",
            LossvistaWarning,
            stacklevel=5,
        )

    def engine_config(self) -> dict[str, Any] | None:
        with self._open("r") as f:
            return _read.attr_json(f, "engine", self.path, None)

    def missing(self) -> np.ndarray:
        """Flat indices (C order) of the points not computed yet."""
        with self._open("r") as f:
            return np.flatnonzero(f["computed"][()].reshape(-1) == 0)

    def contents(self) -> dict[str, Any]:
        """Everything in the file, as :meth:`create`'s arguments (``engine``, ``center``, ...)."""
        return _read.read_contents(self.path)

    def read(self) -> dict[str, Any]:
        """The file's fields (see :func:`read_fields`)."""
        return _read.fields(_read.read_contents(self.path), self.path)

    def needs_rebuild(self) -> bool:
        """True for a file of an older layout whose space is not allocated yet: writing into
        it would need disk space, so it is copied into the current layout first."""
        with self._open("r") as f:
            return not all(_hdf5.is_allocated(f[n]) for n in [*_read.value_names(f), "computed"])

    # -- writing --------------------------------------------------------------------------------
    def rebuild(self, **changes: Any) -> None:
        """Write the file anew in the current layout, with ``changes`` (create's arguments),
        atomically: until the new copy is complete, the old file stays as it was."""
        contents = _read.read_contents(self.path)
        contents.update(changes)
        SurfaceStore.create(self.path, **contents)

    def write_engine(self, engine: Mapping[str, Any] | None) -> None:
        """Record the engine configuration (in place: the attribute has a fixed size)."""
        text = _json(engine).encode()
        with self._open("r+") as f:
            capacity = _engine_capacity(f)
            if capacity >= len(text):
                f.attrs.modify("engine", np.bytes_(text.ljust(capacity)))
                return
        self.rebuild(engine=engine)

    def write_header(self, **attrs: Any) -> None:
        """Update ``center``, ``center_check``, ``endpoints`` (a new copy) or ``engine``."""
        if "engine" in attrs:
            self.write_engine(attrs.pop("engine"))
        if attrs:
            self.rebuild(**attrs)

    def write_trajectory(self, coordinates: np.ndarray) -> None:
        """Store the coordinates ``(P, ndim)`` of a path drawn over the surface (a new copy of
        the file, unless it holds that path already)."""
        coordinates = np.asarray(coordinates, dtype=np.float64)
        with store_lock(self.path):
            with self._open("r") as f:
                if "trajectory" in f and np.array_equal(f["trajectory"][()], coordinates):
                    return
            self.rebuild(trajectory=coordinates)

    def write(self, flat_indices: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Store the values of some points and mark them computed (in place; the values of
        every point first, their ``computed`` flags last), flushed when this returns."""
        flat_indices = np.asarray(flat_indices, dtype=np.int64)
        order = np.argsort(flat_indices)
        flat_indices = flat_indices[order]
        with self._open("r+") as f:
            shape = f["computed"].shape
            targets = [(name, np.asarray(values[name])[order]) for name in values]
            targets.append(("computed", np.ones(len(flat_indices), dtype="u1")))
            for name, column in targets:
                _write_points(f[name], shape, flat_indices, column)
            f.flush()

    def _open(self, mode: str) -> Any:
        return _hdf5.open_file(self.path, mode, what="surface file")


# -- whole-landscape save / load -------------------------------------------------------------------
def save_landscape(landscape: Any, path: str | Path) -> Path:
    """Write a complete landscape (its fields) to ``path``; ``lv.load`` gives it back equal."""
    settings = dict(landscape.settings)
    engine = settings.pop("engine", None)
    with store_lock(Path(path)):
        store = SurfaceStore.create(
            path,
            kind=landscape.kind,
            coords=landscape.coords,
            value_names=list(landscape.values),
            directions=landscape.directions,
            settings=settings,
            axis_labels=landscape.axis_labels,
            markers=landscape.markers,
            seed=landscape.seed,
            center=landscape.center,
            center_check=landscape.center_check,
            endpoints=getattr(landscape, "endpoints", None),
            engine=engine,
            values=landscape.values,
            computed=np.asarray(landscape.computed),
            trajectory=landscape.trajectory,
        )
    return store.path


def read_fields(path: str | Path) -> dict[str, Any]:
    """The fields of a surface file: lossvista's own, or one written by the 2018 ``loss-landscape``
    scripts (a ``Landscape``'s constructor arguments, ``endpoints`` for interpolations).

    Legacy files are read by :func:`lossvista._legacy.read_legacy`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"surface file {str(path)!r} does not exist")
    with _hdf5.open_file(path, "r", what="surface file") as f:
        is_native = _read.text(f.attrs.get("format", "")) == FORMAT
        is_legacy = "xcoordinates" in f
    if is_native:
        return _read.fields(_read.read_contents(path), path)
    if is_legacy:
        return read_legacy(path)
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


# -- helpers --------------------------------------------------------------------------------------
def _write_points(
    dataset: Any, shape: tuple[int, ...], flat: np.ndarray, column: np.ndarray
) -> None:
    """Write ``column`` at the C-order indices ``flat`` (sorted): one write per run of points
    that share every index but the last (h5py takes one list of indices per selection)."""
    if len(shape) == 1:
        dataset[flat] = column
        return
    leading, last = np.divmod(flat, shape[-1])
    for row in np.unique(leading):
        take = leading == row
        key = (*(int(i) for i in np.unravel_index(int(row), shape[:-1])), last[take])
        dataset[key] = column[take]


def _attach(dataset: Any, scales: list[Any]) -> None:
    for axis, scale in enumerate(scales):
        dataset.dims[axis].attach_scale(scale)


def _fixed_json(value: Any) -> np.bytes_:
    text = _json(value).encode()
    return np.bytes_(text.ljust(max(ENGINE_BYTES, len(text))))


def _engine_capacity(f: Any) -> int:
    """Bytes the ``engine`` attribute holds when it has a fixed size (0: older files)."""
    if "engine" not in f.attrs:
        return 0
    dtype = f.attrs.get_id("engine").dtype
    return int(dtype.itemsize) if dtype.kind == "S" else 0


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _differences(key: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for sub in sorted(set(old) | set(new)):
            if f"{key}.{sub}" in LATER_OBJECTIVE_KEYS and sub not in old:
                continue
            out += _differences(f"{key}.{sub}", old.get(sub), new.get(sub))
        return out
    return [] if old == new else [f"{key}: file has {_short(old)}, asked for {_short(new)}"]


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
