"""Numbers that describe a computed line or plane: roughness, slope, convexity, critical points, basin.

Everything is computed on the finite values of one metric; NaN and infinite values (points not
computed yet, or whose loss overflowed) are left out and counted in ``nan_count``. Coordinates
are the landscape's own (``landscape.coords``), so slopes and widths are in those units; grids
need not be evenly spaced.

Definitions, for values ``z`` on the grid:

- **roughness**: the mean of ``|z - G(z)|`` over the finite points, where ``G`` is a Gaussian
  smoothing with standard deviation ``s = smoothing`` grid cells. ``G`` is a Gaussian-weighted
  local fit linear in the coordinates: where the whole kernel lies inside an evenly spaced grid
  it *is* the Gaussian average, and at the edges, next to missing points (which get no weight,
  so NaN never spreads) and on uneven grids it still reproduces a plane exactly. So a plane has
  roughness 0, a sinusoid of amplitude ``a`` and angular frequency ``w`` per cell has roughness
  close to ``(2 / pi) a (1 - exp(-w^2 s^2 / 2))``, and a smooth bowl has a small roughness,
  ``s^2 h^2 z'' / 2`` per axis in the interior (``h`` the spacing).
- **mean_abs_slope**: along every axis, the mean of ``|z[i+1] - z[i]| / (c[i+1] - c[i])`` over
  neighbouring pairs that are both finite; ``mean_abs_slope`` is the mean over the axes.
- **convexity_ratio**: along every axis, the share of positive second differences
  ``(z[i+1] - z[i]) / h[i] - (z[i] - z[i-1]) / h[i-1]`` among those whose three points are finite;
  differences below ``1e-12`` of the size of the values involved count as zero (not positive).
  The overall ratio pools the second differences of all axes.
- **minima**: grid points strictly below every finite neighbour (8 in 2-D, 2 in 1-D) and with at
  least one finite neighbour.
- **saddles** (2-D only): grid points whose 8 neighbours are all finite and, walked around in a
  ring, change sign relative to the point (``sign(z_neighbour - z)``; neighbours with the same
  value are skipped) at least four times: two or more separate arcs above the point and below it
  (the "lower link" test of discrete Morse theory). It is the grid's version of a critical point
  whose curvature has opposite signs along two directions: a point that is a strict minimum
  along one axis and a strict maximum along the other always passes, and so does a saddle turned
  by 45 degrees (``z = xy``), which an axis-only test misses. A degenerate saddle (a monkey
  saddle ``x^3 - 3xy^2``) may show at a few neighbouring points.
- Points on the edge of the grid are never reported as minima or saddles: the surface may go on
  falling beyond it. ``lowest`` gives the smallest finite value wherever it is (``on_edge`` says
  whether it lies on the edge).
- **basin_width**: along every axis, through the *basin centre* (the grid point nearest to the
  origin, coordinates 0; on an axis whose range does not contain 0, its middle point), the basin
  extends in both directions while the values are finite and ``<= z_centre + delta``; the width is
  the distance between the outermost points reached, so it underestimates the continuous width
  by less than two grid spacings. ``basin_hits_edge`` says whether it reached the end of the grid
  (then the true basin is wider). ``delta`` defaults to 10 % of the range of the finite values.
- **n_basins**: the basins of the 0-dimensional sublevel-set persistence
  (:func:`lossvista.persistence`, axis-aligned neighbours) whose persistence ``death - birth`` is
  above ``persistence_threshold`` (default 1 % of the range of the finite values), the essential
  class of every connected piece of the finite points always counted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._result import Result
from .errors import InputError
from .geometry.topology import persistence_pairs
from .landscape import Landscape

#: Default ``delta`` of the basin width: this share of the range of the finite values.
DEFAULT_DELTA_SHARE = 0.1
#: Default persistence threshold of ``n_basins``: this share of the range of the finite values.
DEFAULT_PERSISTENCE_SHARE = 0.01
#: Second differences smaller than this share of the values involved count as zero.
CURVATURE_RTOL = 1e-12

# The 8 neighbours of a 2-D point, in order around a ring.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))

Point = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SurfaceMetrics(Result):
    """Shape descriptors of one metric of a landscape (see the module docstring for definitions).

    ``save`` writes a JSON ``lossvista-result`` file (kind ``"surface_metrics"``) that
    ``lossvista.load`` reads back; ``as_dict()`` is strict JSON (NaN values become ``None``).
    There is no ``plot``: the numbers describe a landscape, so draw the landscape itself.

    Attributes:
        metric: the metric described (``"loss"`` by default).
        shape: the grid shape.
        roughness: mean ``|z - G(z)|`` over finite points, in value units.
        smoothing: standard deviation of the Gaussian ``G``, in grid cells.
        mean_abs_slope: mean absolute slope, averaged over the axes (value per coordinate unit).
        mean_abs_slope_per_axis: the same for every axis.
        convexity_ratio: share of positive second differences, all axes pooled (NaN if none).
        convexity_ratio_per_axis: the same for every axis.
        minima: ``{"coords", "index", "value"}`` of every interior grid local minimum, lowest
            first.
        saddles: the same for every interior grid saddle (always empty in 1-D).
        lowest: ``{"coords", "index", "value", "on_edge"}`` of the smallest finite value.
        basin_center: ``{"coords", "index", "value"}`` of the point the basin grows from.
        delta: the basin threshold above the centre value.
        basin_width: width of the basin along every axis, in coordinate units (NaN when the
            centre value is not finite).
        basin_bounds: ``(lower, upper)`` coordinates of the outermost points reached per axis.
        basin_hits_edge: whether the basin reached an end of the grid along every axis.
        nan_count: grid points whose value is NaN or infinite (left out of everything).
        finite_count: grid points with a finite value.
        n_basins: basins whose persistence is above ``persistence_threshold`` (essential ones
            included); ``None`` in files written before it existed.
        persistence_threshold: the threshold used, in value units.
    """

    metric: str
    shape: tuple[int, ...]
    roughness: float
    smoothing: float
    mean_abs_slope: float
    mean_abs_slope_per_axis: tuple[float, ...]
    convexity_ratio: float
    convexity_ratio_per_axis: tuple[float, ...]
    minima: list[Point]
    saddles: list[Point]
    lowest: Point
    basin_center: Point
    delta: float
    basin_width: tuple[float, ...]
    basin_bounds: tuple[tuple[float, float], ...]
    basin_hits_edge: tuple[bool, ...]
    nan_count: int
    finite_count: int
    n_basins: int | None = None
    persistence_threshold: float | None = None

    result_kind = "surface_metrics"
    file_format = "json"

    def _summary(self) -> list[tuple[str, Any]]:
        lowest = self.lowest
        where = _numbers(lowest["coords"]) + (" (on the edge)" if lowest["on_edge"] else "")
        return [
            ("metric", self.metric),
            ("shape", " x ".join(map(str, self.shape))),
            ("finite_count", self.finite_count),
            ("nan_count", self.nan_count),
            ("roughness", self.roughness),
            ("smoothing", self.smoothing),
            ("mean_abs_slope", self.mean_abs_slope),
            ("mean_abs_slope_per_axis", _numbers(self.mean_abs_slope_per_axis)),
            ("convexity_ratio", self.convexity_ratio),
            ("convexity_ratio_per_axis", _numbers(self.convexity_ratio_per_axis)),
            ("minima", len(self.minima)),
            ("saddles", len(self.saddles)),
            ("lowest", lowest["value"]),
            ("lowest_at", where),
            ("delta", self.delta),
            ("basin_width", _numbers(self.basin_width)),
            ("basin_hits_edge", ", ".join("yes" if hit else "no" for hit in self.basin_hits_edge)),
            ("n_basins", self.n_basins),
            ("persistence_threshold", self.persistence_threshold),
        ]

    def __repr__(self) -> str:
        def numbers(values: tuple[float, ...]) -> str:
            return ", ".join(f"{v:.4g}" for v in values)

        return (
            f"SurfaceMetrics({self.metric}, shape={self.shape}, roughness={self.roughness:.4g}, "
            f"mean_abs_slope={self.mean_abs_slope:.4g} ({numbers(self.mean_abs_slope_per_axis)}), "
            f"convexity_ratio={self.convexity_ratio:.3g} "
            f"({numbers(self.convexity_ratio_per_axis)}), minima={len(self.minima)}, "
            f"saddles={len(self.saddles)}, basin_width=({numbers(self.basin_width)}) "
            f"at delta={self.delta:.4g}, nan_count={self.nan_count})"
        )


def surface_metrics(
    landscape: Landscape,
    *,
    metric: str = "loss",
    delta: float | None = None,
    smoothing: float = 1.0,
    persistence_threshold: float | None = None,
) -> SurfaceMetrics:
    """Roughness, slope, convexity, grid minima and saddles, and basin width of a line or plane.

    Args:
        landscape: a 1-D or 2-D :class:`~lossvista.Landscape` (complete or not: missing points are
            NaN and are left out).
        metric: which value array to describe.
        delta: basin threshold above the centre value, in value units; default 10 % of the range
            (max - min) of the finite values.
        smoothing: standard deviation of the Gaussian smoothing behind ``roughness``, in grid
            cells (0 gives roughness 0).
        persistence_threshold: basins less persistent than this (value units) are not counted
            in ``n_basins``; default 1 % of the range of the finite values.

    Returns:
        A :class:`SurfaceMetrics`.

    Raises:
        InputError: not a 1-D/2-D landscape, an unknown metric, no finite value, or a negative or
            non-finite ``delta``/``smoothing``.

    Example::

        landscape = lv.plane(obj, lv.random_directions(obj, 2), steps=41)
        metrics = lv.surface_metrics(landscape, delta=0.1)
        metrics.basin_width, metrics.convexity_ratio, metrics.saddles
    """
    z, coords = _values(landscape, metric)
    finite = np.isfinite(z)
    z = np.where(finite, z, np.nan)
    if delta is None:
        delta = DEFAULT_DELTA_SHARE * float(np.nanmax(z) - np.nanmin(z))
    _non_negative("delta", delta)
    _non_negative("smoothing", smoothing)
    value_range = float(np.nanmax(z) - np.nanmin(z))
    if persistence_threshold is None:
        persistence_threshold = DEFAULT_PERSISTENCE_SHARE * value_range
    _non_negative("persistence_threshold", persistence_threshold)
    pairs = persistence_pairs(z)[0]
    slopes = tuple(_mean_abs_slope(z, coords, axis) for axis in range(z.ndim))
    curvature = [_curvature_counts(z, coords, axis) for axis in range(z.ndim)]
    centre = _basin_centre(z, coords)
    basins = [_basin(z, coords, centre["index"], axis, delta) for axis in range(z.ndim)]
    return SurfaceMetrics(
        metric=metric,
        shape=z.shape,
        roughness=_roughness(z, coords, finite, float(smoothing)),
        smoothing=float(smoothing),
        mean_abs_slope=_nanmean(slopes),
        mean_abs_slope_per_axis=slopes,
        convexity_ratio=_ratio(sum(p for p, _ in curvature), sum(n for _, n in curvature)),
        convexity_ratio_per_axis=tuple(_ratio(p, n) for p, n in curvature),
        minima=_minima(z, coords),
        saddles=_saddles(z, coords) if z.ndim == 2 else [],
        lowest=_lowest(z, coords),
        basin_center=centre,
        delta=float(delta),
        basin_width=tuple(b[0] for b in basins),
        basin_bounds=tuple(b[1] for b in basins),
        basin_hits_edge=tuple(b[2] for b in basins),
        nan_count=int(np.sum(~finite)),
        finite_count=int(np.sum(finite)),
        n_basins=int(np.sum(pairs[:, 1] - pairs[:, 0] > persistence_threshold)),
        persistence_threshold=float(persistence_threshold),
    )


# -- inputs ---------------------------------------------------------------------------------------
def _values(landscape: Any, metric: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    if not isinstance(landscape, Landscape):
        raise InputError(
            f"surface_metrics needs a Landscape (from lv.line, lv.plane, lv.load...), got "
            f"{type(landscape).__name__}"
        )
    if landscape.ndim not in (1, 2):
        raise InputError(f"surface_metrics works on lines and planes, got {landscape.ndim} axes")
    if metric not in landscape.values:
        raise InputError(f"metric {metric!r} is not in the landscape; it has {landscape.metrics}")
    z = np.asarray(landscape.values[metric], dtype=np.float64)
    if not np.isfinite(z).any():
        raise InputError(
            f"{metric!r} has no finite value ({z.size} points, all NaN or infinite); compute the "
            "landscape first or pick a span where the loss is finite"
        )
    return z, landscape.coords


def _non_negative(name: str, value: Any) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{name} must be finite and >= 0, got {value!r}")


# -- smoothness -----------------------------------------------------------------------------------
def _roughness(
    z: np.ndarray, coords: tuple[np.ndarray, ...], finite: np.ndarray, sigma: float
) -> float:
    if sigma == 0.0:
        return 0.0
    smooth = _local_linear_smoothing(z, coords, finite, sigma)
    return float(np.mean(np.abs(z[finite] - smooth)))


def _local_linear_smoothing(
    z: np.ndarray, coords: tuple[np.ndarray, ...], finite: np.ndarray, sigma: float
) -> np.ndarray:
    """Gaussian-weighted local linear fit at every finite point (values at ``finite`` only).

    The weights are a Gaussian of ``sigma`` grid cells; the fit is linear in the coordinates.
    With the whole kernel inside an evenly spaced grid and no missing point, the fit equals the
    Gaussian average (a symmetric kernel gives the linear terms no weight); at the edges, next to
    missing points and on uneven grids it still reproduces a plane exactly, where a renormalised
    average would not.
    """
    from scipy.ndimage import gaussian_filter  # lazily: only roughness needs scipy

    def blur(array: np.ndarray) -> np.ndarray:
        return gaussian_filter(array, sigma, mode="constant", cval=0.0)[finite]

    weight = finite.astype(np.float64)
    values = np.where(finite, z, 0.0)
    # Basis 1, x_1, ..., x_d with every coordinate centred and scaled (for conditioning).
    axes = np.meshgrid(*coords, indexing="ij")
    basis = [np.ones(z.shape)] + [(x - x.mean()) / max(float(np.ptp(x)), 1e-300) for x in axes]
    k = len(basis)
    moments = np.empty((int(finite.sum()), k, k))
    for a in range(k):
        for b in range(a, k):
            moments[:, a, b] = moments[:, b, a] = blur(weight * basis[a] * basis[b])
    rhs = np.stack([blur(values * basis[a]) for a in range(k)], axis=1)
    coefficients = np.einsum("pab,pb->pa", np.linalg.pinv(moments, hermitian=True), rhs)
    at_point = np.stack([b[finite] for b in basis], axis=1)
    return np.sum(coefficients * at_point, axis=1)


def _mean_abs_slope(z: np.ndarray, coords: tuple[np.ndarray, ...], axis: int) -> float:
    moved = np.moveaxis(z, axis, 0)
    spacing = _along(np.diff(coords[axis]), moved.ndim)
    slopes = np.abs(np.diff(moved, axis=0) / spacing)
    return _nanmean(slopes)


def _curvature_counts(z: np.ndarray, coords: tuple[np.ndarray, ...], axis: int) -> tuple[int, int]:
    """``(positive, all)`` second differences along ``axis`` with three finite points."""
    moved = np.moveaxis(z, axis, 0)
    if moved.shape[0] < 3:
        return 0, 0
    h = np.diff(coords[axis])
    low, mid, high = moved[:-2], moved[1:-1], moved[2:]
    h1, h2 = _along(h[:-1], moved.ndim), _along(h[1:], moved.ndim)
    second = (high - mid) / h2 - (mid - low) / h1
    size = (np.abs(low) + np.abs(mid) + np.abs(high)) * (1.0 / h1 + 1.0 / h2)
    valid = np.isfinite(second)
    positive = valid & (second > CURVATURE_RTOL * size)
    return int(positive.sum()), int(valid.sum())


# -- critical points ------------------------------------------------------------------------------
def _minima(z: np.ndarray, coords: tuple[np.ndarray, ...]) -> list[Point]:
    offsets = [(-1,), (1,)] if z.ndim == 1 else _RING
    neighbours = _neighbours(z, offsets)
    known = np.isfinite(neighbours)
    below = np.all(~known | (z < neighbours), axis=0)
    found = np.isfinite(z) & below & known.any(axis=0) & _interior(z.shape)
    return _points(z, coords, np.argwhere(found))


def _saddles(z: np.ndarray, coords: tuple[np.ndarray, ...]) -> list[Point]:
    ring = np.sign(_neighbours(z, _RING) - z)  # (8, *shape); NaN where a neighbour is missing
    complete = np.all(np.isfinite(ring), axis=0) & np.isfinite(z) & _interior(z.shape)
    # At least two neighbours above and two below is necessary for four sign changes.
    candidates = complete & ((ring > 0).sum(axis=0) >= 2) & ((ring < 0).sum(axis=0) >= 2)
    found = [(i, j) for i, j in np.argwhere(candidates) if _sign_changes(ring[:, i, j]) >= 4]
    return _points(z, coords, np.array(found, dtype=int).reshape(-1, 2))


def _sign_changes(signs: np.ndarray) -> int:
    """Sign changes around a ring of signs, zeros (ties) skipped."""
    seq = signs[signs != 0]
    return int(np.sum(seq != np.roll(seq, 1))) if seq.size else 0


def _neighbours(z: np.ndarray, offsets: Any) -> np.ndarray:
    """``out[k][index] = z[index + offsets[k]]`` (NaN outside the grid)."""
    padded = np.pad(z, 1, mode="constant", constant_values=np.nan)
    shape = z.shape
    out = []
    for offset in offsets:
        window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, shape, strict=True))
        out.append(padded[window])
    return np.stack(out)


def _interior(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(1, n - 1) for n in shape)] = True
    return mask


def _lowest(z: np.ndarray, coords: tuple[np.ndarray, ...]) -> Point:
    index = tuple(int(i) for i in np.unravel_index(np.nanargmin(z), z.shape))
    point = _point(z, coords, index)
    point["on_edge"] = not bool(_interior(z.shape)[index])
    return point


# -- basin ----------------------------------------------------------------------------------------
def _basin_centre(z: np.ndarray, coords: tuple[np.ndarray, ...]) -> Point:
    index = tuple(
        int(np.argmin(np.abs(c))) if c.min() <= 0.0 <= c.max() else len(c) // 2 for c in coords
    )
    return _point(z, coords, index)


def _basin(
    z: np.ndarray, coords: tuple[np.ndarray, ...], centre: tuple[int, ...], axis: int, delta: float
) -> tuple[float, tuple[float, float], bool]:
    """``(width, (lower, upper), hits_edge)`` along ``axis`` through the centre point."""
    line = z[tuple(slice(None) if a == axis else i for a, i in enumerate(centre))]
    start = centre[axis]
    if not np.isfinite(line[start]):
        return math.nan, (math.nan, math.nan), False
    inside = np.isfinite(line) & (line <= line[start] + delta)
    lo = start
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    hi = start
    while hi < len(line) - 1 and inside[hi + 1]:
        hi += 1
    c = coords[axis]
    return float(c[hi] - c[lo]), (float(c[lo]), float(c[hi])), lo == 0 or hi == len(line) - 1


# -- small helpers --------------------------------------------------------------------------------
def _numbers(values: Any) -> str:
    """``"0.5, 1.25"``: one number per axis, as the notebook view shows single numbers."""
    return ", ".join(f"{float(v):.6g}" for v in values)


def _points(z: np.ndarray, coords: tuple[np.ndarray, ...], indices: np.ndarray) -> list[Point]:
    points = [_point(z, coords, tuple(int(i) for i in index)) for index in indices]
    return sorted(points, key=lambda p: p["value"])


def _point(z: np.ndarray, coords: tuple[np.ndarray, ...], index: tuple[int, ...]) -> Point:
    return {
        "coords": tuple(float(c[i]) for c, i in zip(coords, index, strict=True)),
        "index": tuple(int(i) for i in index),
        "value": float(z[index]),
    }


def _along(vector: np.ndarray, ndim: int) -> np.ndarray:
    """``vector`` shaped to broadcast along the first axis of an ``ndim`` array."""
    return vector.reshape((-1,) + (1,) * (ndim - 1))


def _nanmean(values: Any) -> float:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def _ratio(positive: int, total: int) -> float:
    return positive / total if total else math.nan
