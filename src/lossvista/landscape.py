"""The result of every slice: :class:`Landscape` (and :class:`Interpolation` for model-to-model paths).

A landscape holds numbers, not a model: coordinates, values per metric, the directions and the
settings that produced them. It follows the result protocol (:mod:`lossvista._result`); its file
is the resumable surface file of :mod:`lossvista.store`, which hands plain fields to
:meth:`Landscape.from_file` (the store never builds results). Plotting and xarray conversion
delegate to modules imported only when used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _json
from ._result import Result, register_reader
from ._surface_read import dimension_names
from .directions import Direction
from .errors import InputError, MissingDependencyError
from .store import DIMENSIONS, FORMAT, read_fields, save_landscape

if TYPE_CHECKING:  # pragma: no cover
    import xarray
    from matplotlib.figure import Figure

__all__ = ["DIMENSIONS", "Interpolation", "Landscape"]


@dataclasses.dataclass(eq=False, repr=False)
class Landscape(Result):
    """Loss (and metrics) on a grid of points ``origin + sum_i coords_i * d_i`` (any number of
    axes; :meth:`section` takes a lower-dimensional section of it).

    Attributes:
        coords: one 1-D array per axis.
        values: metric name -> array of shape ``tuple(len(c) for c in coords)``; ``"loss"`` is
            always present. Points not computed yet, or whose loss was NaN/inf, hold NaN.
        directions: the directions of the axes (empty for imported legacy files).
        center: metric -> value at the origin (all coordinates 0), from the objective itself.
        kind: ``"line"``, ``"plane"``, ``"grid"`` (:func:`~lossvista.slices.grid`),
            ``"section"`` (:meth:`section`), ``"interpolation"``, ``"plane_through"`` or
            ``"legacy"``.
        settings: everything that produced the values (span, steps, objective, directions,
            engine configuration, library version), JSON-serialisable.
        seed: the seed of random directions, when there was one.
        axis_labels: human-readable axis names.
        markers: named points in coordinates (``"origin"``, models of a path or plane).
        computed: boolean mask of the points already evaluated.
        center_check: the engine's value at the origin against ``center``.
        path: the surface file, when the landscape was stored.
        trajectory: coordinates ``(P, ndim)`` of a training path projected onto the directions
            (``lv.plane(..., trajectory=...)``); plots draw it unless told otherwise.
        endpoints: named points evaluated exactly besides the grid, metric -> value by name
            (an interpolation's ``"a"`` and ``"b"``, a coordinate plane's ``"model"``).
    """

    coords: tuple[np.ndarray, ...]
    values: dict[str, np.ndarray]
    directions: tuple[Direction, ...] = ()
    center: dict[str, float] = dataclasses.field(default_factory=dict)
    kind: str = "plane"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    axis_labels: tuple[str, ...] = ()
    markers: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    computed: np.ndarray | None = None
    center_check: dict[str, Any] | None = None
    path: Path | None = None
    trajectory: np.ndarray | None = None
    endpoints: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    # A landscape's file is the surface file (format ``lossvista-surface``), written by ``save``
    # and read by ``from_file``, so it needs no ``result_kind``.
    file_format = "hdf5"

    def __post_init__(self) -> None:
        self.coords = tuple(np.asarray(c, dtype=np.float64) for c in self.coords)
        shape = self.shape
        if "loss" not in self.values:
            raise InputError("a landscape needs a 'loss' array")
        for name, array in list(self.values.items()):
            array = np.asarray(array, dtype=np.float64)
            if array.shape != shape:
                raise InputError(f"values[{name!r}] has shape {array.shape}, expected {shape}")
            self.values[name] = array
        if self.computed is None:
            self.computed = np.isfinite(self.values["loss"])
        if not self.axis_labels:
            self.axis_labels = tuple(f"direction {i + 1}" for i in range(self.ndim))

    # -- shape ----------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def metrics(self) -> list[str]:
        """Names of the value arrays, ``"loss"`` first."""
        return ["loss", *(m for m in self.values if m != "loss")]

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the axes in files and xarray: by kind, else ``x``, ``y``, ``z``, ``d3``, ..."""
        return dimension_names(self.kind, self.ndim)

    @property
    def complete(self) -> bool:
        return bool(np.all(self._computed_mask()))

    @property
    def nonfinite(self) -> int:
        """Computed points whose loss was NaN or infinite (stored as NaN)."""
        return int(np.sum(self._computed_mask() & ~np.isfinite(self.values["loss"])))

    def _computed_mask(self) -> np.ndarray:
        """``computed``, which the constructor fills in; ``None`` (only if set so afterwards)
        means what it means to the constructor: the points with a finite loss."""
        if self.computed is None:
            return np.isfinite(self.values["loss"])
        return self.computed

    def __repr__(self) -> str:
        loss = self.values["loss"]
        finite = loss[np.isfinite(loss)]
        rng = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "[no finite values]"
        done = int(np.sum(self._computed_mask()))
        where = f", file={str(self.path)!r}" if self.path else ""
        return (
            f"{type(self).__name__}({self.kind}, shape={self.shape}, metrics={self.metrics}, "
            f"loss in {rng}, center loss={self.center.get('loss', float('nan')):.6g}, "
            f"computed {done}/{loss.size}{where})"
        )

    def argmin(self, metric: str = "loss") -> tuple[float, ...]:
        """Coordinates of the smallest finite value of ``metric``."""
        array = self.values[metric]
        if not np.isfinite(array).any():
            raise InputError(f"{metric!r} has no finite value")
        index = np.unravel_index(np.nanargmin(array), array.shape)
        return tuple(float(c[i]) for c, i in zip(self.coords, index, strict=True))

    def section(
        self,
        at: Mapping[int | str, float] | None = None,
        /,
        *,
        indices: Mapping[int | str, int] | None = None,
        **coordinates: float,
    ) -> Landscape:
        """A lower-dimensional section: some axes held fixed, the others kept.

        Axes are named by position (``0``, ``1``, ...) or by dimension name (:attr:`dims`:
        ``"x"``, ``"y"``, ``"z"``, ``"d3"``, ...). A coordinate picks the nearest grid value
        (it must lie within the axis' span, up to half a step); ``indices`` picks grid indices::

            surf.section(z=0.0)              # the plane of a 3-D grid at z = 0
            surf.section({2: 0.0, 3: 0.5})   # a plane of a 4-D grid
            surf.section(indices={"z": 4})   # the fifth value of the third axis

        Returns:
            A new :class:`Landscape` of kind ``"section"``: values and ``computed`` sliced, the
            fixed axes' directions, coordinates and labels dropped, markers kept where they lie
            on the section, ``center`` unchanged (the value at the grid's origin), and
            ``settings["section"]`` recording the original kind and shape and every fixed axis
            (``axis``, ``dim``, ``index``, ``value``); per-axis settings (``span``, ``steps``,
            ``directions``, ``direction_fingerprints``) keep the remaining axes only.

        Raises:
            InputError: an unknown axis, an axis given twice, a coordinate outside its span, an
                index out of range, or every axis fixed.
        """
        fixed: dict[int, int] = {}
        requests = [(key, value, False) for key, value in dict(at or {}).items()]
        requests += [(key, value, False) for key, value in coordinates.items()]
        requests += [(key, value, True) for key, value in dict(indices or {}).items()]
        for key, value, is_index in requests:
            axis = self._axis(key)
            if axis in fixed:
                raise InputError(f"axis {key!r} ({self.dims[axis]}) is fixed twice")
            fixed[axis] = self._index(axis, value, is_index)
        if not fixed:
            raise InputError("section() needs at least one axis to fix, e.g. section(z=0.0)")
        keep = [axis for axis in range(self.ndim) if axis not in fixed]
        if not keep:
            raise InputError(
                f"section() fixed every axis of this {self.ndim}-D landscape; leave at least one"
            )
        where = tuple(fixed.get(axis, slice(None)) for axis in range(self.ndim))
        chosen = {axis: float(self.coords[axis][index]) for axis, index in fixed.items()}
        settings = dict(self.settings)
        for key in ("span", "steps", "directions", "direction_fingerprints"):
            entry = settings.get(key)
            if isinstance(entry, (list, tuple)) and len(entry) == self.ndim:
                settings[key] = [entry[axis] for axis in keep]
        settings["section"] = {
            "kind": self.kind,
            "shape": list(self.shape),
            "fixed": [
                {"axis": a, "dim": self.dims[a], "index": fixed[a], "value": chosen[a]}
                for a in sorted(fixed)
            ],
        }
        markers = {
            name: tuple(point[a] for a in keep)
            for name, point in self.markers.items()
            if len(point) == self.ndim
            and all(self._on_grid_value(a, point[a], fixed[a]) for a in fixed)
        }
        return Landscape(
            coords=tuple(self.coords[a] for a in keep),
            values={name: np.array(array[where]) for name, array in self.values.items()},
            directions=tuple(self.directions[a] for a in keep if a < len(self.directions)),
            center=dict(self.center),
            kind="section",
            settings=settings,
            seed=self.seed,
            axis_labels=tuple(self.axis_labels[a] for a in keep),
            markers=markers,
            computed=np.array(self._computed_mask()[where]),
            center_check=None if self.center_check is None else dict(self.center_check),
        )

    def _axis(self, key: int | str) -> int:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if -self.ndim <= key < self.ndim:
                return int(key) % self.ndim
        elif isinstance(key, str) and key in self.dims:
            return self.dims.index(key)
        raise InputError(
            f"unknown axis {key!r}: this {self.ndim}-D landscape has axes 0..{self.ndim - 1} "
            f"named {list(self.dims)}"
        )

    def _index(self, axis: int, value: Any, is_index: bool) -> int:
        coords = self.coords[axis]
        name = self.dims[axis]
        if is_index:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"indices[{name!r}] must be an integer, got {value!r}")
            if not -len(coords) <= value < len(coords):
                raise InputError(
                    f"indices[{name!r}] = {value} is out of range for {len(coords)} grid values"
                )
            return int(value) % len(coords)
        try:
            target = float(value)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"the coordinate of axis {name!r} must be a number, got {value!r}"
            ) from exc
        half_step = 0.5 * float(np.min(np.diff(coords))) if len(coords) > 1 else 0.0
        if not coords[0] - half_step <= target <= coords[-1] + half_step:
            raise InputError(
                f"coordinate {target:g} of axis {name!r} lies outside its span "
                f"[{coords[0]:g}, {coords[-1]:g}]"
            )
        return int(np.argmin(np.abs(coords - target)))

    def _on_grid_value(self, axis: int, value: float, index: int) -> bool:
        """Whether a marker's coordinate ``value`` on ``axis`` is nearest to grid ``index``."""
        coords = self.coords[axis]
        return bool(np.argmin(np.abs(coords - value)) == index) and (
            len(coords) < 2 or abs(value - coords[index]) <= 0.5 * float(np.min(np.diff(coords)))
        )

    # -- output ---------------------------------------------------------------------------------
    def plot(
        self,
        ax: Any = None,
        kind: str | None = None,
        *,
        metric: str = "loss",
        log: bool = False,
        vmax: float | None = None,
        **kwargs: Any,
    ) -> Figure:
        """Draw the landscape; returns the matplotlib figure.

        Args:
            ax: an existing axes to draw into (a 3-D axes for ``kind="surface3d"``).
            kind: 1-D: ``"line"``; 2-D: ``"contour"`` (default, labelled levels), ``"filled"``,
                ``"heatmap"`` or ``"surface3d"``; 3-D: the 2-D kinds but ``"surface3d"``, drawn
                as small multiples, one plane per value of the third axis (``panels=`` picks
                some by index). 4-D and more: take a :meth:`section` first.
            metric: which value to draw (1-D plots add the other metrics on a twin axis).
            log: logarithmic colour/value scale.
            vmax: clip values above this (drawn as the maximum, or masked in contours).
            **kwargs: passed to :func:`lossvista.plot.plot_landscape` (``levels``, ``title``,
                ``path`` to overlay a trajectory, ``markers``...).
        """
        from .plot import plot_landscape

        if self.trajectory is not None and self.ndim == 2:
            kwargs.setdefault("path", self.trajectory)
        return plot_landscape(self, ax=ax, kind=kind, metric=metric, log=log, vmax=vmax, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the landscape to an HDF5 surface file (schema: ``docs/FORMAT.md``)."""
        return save_landscape(self, path)

    def export(
        self,
        path: str | Path,
        *,
        metric: str = "loss",
        log: bool = False,
        clip: float | None = None,
    ) -> Path:
        """Write the landscape for other tools, the format picked by the extension: ``.vtp``
        (ParaView), ``.obj``, ``.stl`` (2-D surfaces, height = ``metric``, ``clip``-ped then
        ``log``-ged) or ``.csv`` (any landscape); see :func:`lossvista.export.export`."""
        from .export import export

        return export(self, path, metric=metric, log=log, clip=clip)

    @classmethod
    def from_file(cls, path: str | Path) -> Landscape:
        """Read a surface file (lossvista's own or a 2018 ``loss-landscape`` file).

        ``lossvista.load`` calls this for surface files; an interpolation comes back as an
        :class:`Interpolation`.
        """
        fields = read_fields(path)
        if fields.get("kind") == "interpolation":
            return Interpolation(**fields)
        return Landscape(**fields)

    # -- result protocol ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # ``path`` says where the object was read from, not what it is: equal landscapes may
        # live in different files.
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state.pop("path")
        return state

    def as_dict(self) -> dict[str, Any]:
        """Strict JSON of the landscape; directions are described (meta, fingerprint, norm), not
        listed entry by entry (``save`` keeps their tensors)."""
        state = self._state()
        state["directions"] = [
            {"meta": d.meta, "fingerprint": d.fingerprint(), "norm": d.norm()}
            for d in self.directions
        ]
        state["path"] = None if self.path is None else str(self.path)
        return _json.json_ready(state)

    def _summary(self) -> list[tuple[str, Any]]:
        loss = self.values["loss"]
        finite = loss[np.isfinite(loss)]
        rows: list[tuple[str, Any]] = [
            ("kind", self.kind),
            ("shape", "x".join(str(n) for n in self.shape)),
            ("metrics", ", ".join(self.metrics)),
            ("center loss", self.center.get("loss")),
            ("min loss", float(finite.min()) if finite.size else None),
            ("max loss", float(finite.max()) if finite.size else None),
            ("computed", f"{int(np.sum(self._computed_mask()))}/{loss.size}"),
        ]
        if self.seed is not None:
            rows.append(("seed", self.seed))
        if self.path is not None:
            rows.append(("file", str(self.path)))
        return rows

    def to_xarray(self) -> xarray.Dataset:
        """An ``xarray.Dataset`` with one variable per metric (needs the ``xarray`` extra)."""
        try:
            import xarray as xr
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "to_xarray() needs xarray: pip install 'lossvista[xarray]'"
            ) from exc
        coords = {dim: c for dim, c in zip(self.dims, self.coords, strict=True)}
        data = {name: (self.dims, array) for name, array in self.values.items()}
        attrs = {
            "kind": self.kind,
            "settings": json.dumps(_json.json_ready(self.settings), sort_keys=True),
            "center": json.dumps(_json.json_ready(self.center)),
            "axis_labels": json.dumps(list(self.axis_labels)),
        }
        return xr.Dataset(data, coords=coords, attrs=attrs)


@dataclasses.dataclass(eq=False, repr=False)
class Interpolation(Landscape):
    """A 1-D landscape on the straight path ``theta(t) = (1 - t) theta_a + t theta_b``.

    ``endpoints`` holds the values at ``t = 0`` (``"a"``) and ``t = 1`` (``"b"``), evaluated
    exactly even when the grid does not contain them.
    """

    def _summary(self) -> list[tuple[str, Any]]:
        rows = super()._summary()
        if self.endpoints:
            rows += [
                ("loss at a", self.endpoints["a"].get("loss")),
                ("loss at b", self.endpoints["b"].get("loss")),
                ("barrier", self.barrier),
                ("barrier at t", self.barrier_t),
            ]
        return rows

    def _excess(self, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        t = self.coords[0]
        inside = (t >= 0.0) & (t <= 1.0)
        a, b = self.endpoints["a"][metric], self.endpoints["b"][metric]
        excess = self.values[metric][inside] - ((1.0 - t[inside]) * a + t[inside] * b)
        return t[inside], excess

    @property
    def barrier(self) -> float:
        """Loss barrier: ``max_{t in [0, 1]} L(theta_t) - ((1 - t) L(theta_a) + t L(theta_b))``.

        The maximum runs over the grid points in ``[0, 1]`` and the two end points (where the
        excess is 0), so the barrier is never negative; NaN points are skipped.
        """
        return self.barrier_of("loss")

    def barrier_of(self, metric: str = "loss") -> float:
        """The same barrier for another metric (for accuracy, a *negative* excess is the dip)."""
        _, excess = self._excess(metric)
        finite = excess[np.isfinite(excess)]
        return float(max(0.0, finite.max())) if finite.size else 0.0

    @property
    def barrier_t(self) -> float:
        """Where on the path the barrier is reached (0 when the path is convex)."""
        t, excess = self._excess("loss")
        finite = np.isfinite(excess)
        if not finite.any() or np.nanmax(excess) <= 0:
            return 0.0
        return float(t[finite][np.argmax(excess[finite])])


register_reader(FORMAT, Landscape.from_file)
