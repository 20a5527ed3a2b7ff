"""The result of every slice: :class:`Landscape` (and :class:`Interpolation` for model-to-model paths).

A landscape holds numbers, not a model: coordinates, values per metric, the directions and the
settings that produced them. Plotting, saving and xarray conversion delegate to other modules
that are imported only when used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .directions import Direction
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import xarray
    from matplotlib.figure import Figure

#: Names of the coordinate dimensions by landscape kind (used in files and xarray).
DIMENSIONS = {
    "line": ("x",),
    "plane": ("x", "y"),
    "interpolation": ("t",),
    "plane_through": ("x", "y"),
}


@dataclasses.dataclass(eq=False, repr=False)
class Landscape:
    """Loss (and metrics) on a 1-D or 2-D grid of points ``origin + sum_i coords_i * d_i``.

    Attributes:
        coords: one 1-D array per axis.
        values: metric name -> array of shape ``tuple(len(c) for c in coords)``; ``"loss"`` is
            always present. Points not computed yet, or whose loss was NaN/inf, hold NaN.
        directions: the directions of the axes (empty for imported legacy files).
        center: metric -> value at the origin (all coordinates 0), from the objective itself.
        kind: ``"line"``, ``"plane"``, ``"interpolation"``, ``"plane_through"`` or ``"legacy"``.
        settings: everything that produced the values (span, steps, objective, directions,
            engine configuration, library version), JSON-serialisable.
        seed: the seed of random directions, when there was one.
        axis_labels: human-readable axis names.
        markers: named points in coordinates (``"origin"``, models of a path or plane).
        computed: boolean mask of the points already evaluated.
        center_check: the engine's value at the origin against ``center``.
        path: the surface file, when the landscape was stored.
        trajectory: coordinates ``(P, ndim)`` of a training path projected onto the directions
            (``lv.plane(..., path=trajectory)``); plots draw it unless told otherwise.
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
        return DIMENSIONS.get(self.kind, ("x", "y")[: self.ndim])

    @property
    def complete(self) -> bool:
        return bool(np.all(self.computed))

    @property
    def nonfinite(self) -> int:
        """Computed points whose loss was NaN or infinite (stored as NaN)."""
        return int(np.sum(self.computed & ~np.isfinite(self.values["loss"])))

    def __repr__(self) -> str:
        loss = self.values["loss"]
        finite = loss[np.isfinite(loss)]
        rng = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "[no finite values]"
        done = int(np.sum(self.computed))
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
                ``"heatmap"`` or ``"surface3d"``.
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
        from .store import save_landscape

        return save_landscape(self, path)

    def to_xarray(self) -> xarray.Dataset:
        """An ``xarray.Dataset`` with one variable per metric (needs the ``xarray`` extra)."""
        try:
            import xarray as xr
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_xarray() needs xarray: pip install 'lossvista[xarray]'") from exc
        coords = {dim: c for dim, c in zip(self.dims, self.coords, strict=True)}
        data = {name: (self.dims, array) for name, array in self.values.items()}
        attrs = {
            "kind": self.kind,
            "settings": json.dumps(self.settings, sort_keys=True, default=str),
            "center": json.dumps(self.center),
            "axis_labels": json.dumps(list(self.axis_labels)),
        }
        return xr.Dataset(data, coords=coords, attrs=attrs)


@dataclasses.dataclass(eq=False, repr=False)
class Interpolation(Landscape):
    """A 1-D landscape on the straight path ``theta(t) = (1 - t) theta_a + t theta_b``.

    ``endpoints`` holds the values at ``t = 0`` (``"a"``) and ``t = 1`` (``"b"``), evaluated
    exactly even when the grid does not contain them.
    """

    endpoints: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

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
