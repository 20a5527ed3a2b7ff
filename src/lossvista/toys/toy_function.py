"""The type of the toy lab's test functions: :class:`ToyFunction`, a function of two variables
with its bounds, a default start, a stable step and its critical points.

The catalogue of functions is in :mod:`lossvista.toys._catalogue`; :func:`lossvista.toys.get`
builds them by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InputError

Bounds = tuple[tuple[float, float], tuple[float, float]]
Expression = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Two minima whose values differ by less than this are equally good (ties for "global").
VALUE_TIES = 1e-9


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ToyFunction:
    """A function of two variables with known minima and saddles.

    Attributes:
        name: the registry name (``get(name)`` builds it).
        formula: the definition, readable as text.
        expression: ``f(x, y)`` on tensors of any (broadcastable) shape, written with torch
            operations so autograd gives gradients and Hessians. It must be picklable (a
            module-level function or a ``functools.partial`` of one) for parallel grid search.
        bounds: ``((xmin, xmax), (ymin, ymax))``, the region drawn and searched.
        minima: ``(k, 2)`` every local minimum inside ``bounds``, the global one(s) first.
        saddles: ``(m, 2)`` the saddle points inside ``bounds`` (empty where none is listed).
        start: a default start point for optimizers, away from the minima.
        lr: a stable constant gradient-descent step near the minima and the start (about
            ``1 / L`` with ``L`` the largest Hessian eigenvalue there); optimizer defaults use it.
        log_scale: contour levels are spaced logarithmically above the minimum (narrow
            curved valleys such as Rosenbrock's).
        parameters: the keyword arguments ``get`` was called with.
        minimum_values: ``(k,)`` the function at ``minima`` (computed in float64).
    """

    name: str
    formula: str
    expression: Expression
    bounds: Bounds
    minima: np.ndarray
    saddles: np.ndarray
    start: tuple[float, float]
    lr: float
    log_scale: bool = False
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    minimum_values: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        (xmin, xmax), (ymin, ymax) = self.bounds
        if not (xmin < xmax and ymin < ymax):
            raise InputError(f"bounds must be ((xmin, xmax), (ymin, ymax)), got {self.bounds}")
        bounds = ((float(xmin), float(xmax)), (float(ymin), float(ymax)))
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "start", tuple(float(v) for v in self.start))
        for field in ("minima", "saddles"):
            points = np.asarray(getattr(self, field), dtype=np.float64).reshape(-1, 2)
            points.setflags(write=False)
            object.__setattr__(self, field, points)
        values = self.evaluate(self.minima) if len(self.minima) else np.empty(0)
        values.setflags(write=False)
        object.__setattr__(self, "minimum_values", values)

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        """The function at ``xy`` of shape ``(..., 2)``; returns shape ``(...)``.

        Non-tensor input (lists, numpy arrays) is converted to a float64 tensor.
        """
        xy = _as_tensor(xy)
        if xy.ndim == 0 or xy.shape[-1] != 2:
            raise InputError(
                f"{self.name}: expected points of shape (..., 2), got shape {tuple(xy.shape)}"
            )
        return self.expression(xy[..., 0], xy[..., 1])

    def evaluate(self, points: Any) -> np.ndarray:
        """The function at ``points`` (array-like ``(..., 2)``) as a float64 numpy array."""
        with torch.no_grad():
            return self(_as_tensor(points)).numpy()

    def grad(self, xy: Any) -> torch.Tensor:
        """The gradient at ``xy`` of shape ``(..., 2)`` (float64 unless a tensor is given)."""
        point = _as_tensor(xy).detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self(point).sum(), point)
        return gradient

    def hessian(self, xy: Any) -> torch.Tensor:
        """The Hessian at ``xy`` of shape ``(..., 2)``; returns shape ``(..., 2, 2)``.

        Double backward over the batch: each point's value depends on that point alone, so the
        gradient of the summed gradient component ``i`` is row ``i`` of every point's Hessian.
        """
        point = _as_tensor(xy).detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self(point).sum(), point, create_graph=True)
            if not gradient.requires_grad:  # a linear function
                return torch.zeros(*point.shape, 2, dtype=point.dtype)
            rows = [
                torch.autograd.grad(
                    gradient[..., i].sum(), point, retain_graph=True, materialize_grads=True
                )[0]
                for i in range(2)
            ]
        return torch.stack(rows, dim=-2).detach()

    def grid(
        self, n: int | tuple[int, int] = 101, bounds: Bounds | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values on a regular grid, for contour plots and grid search.

        Args:
            n: points per axis, or ``(nx, ny)``.
            bounds: the region; this function's ``bounds`` by default.

        Returns:
            ``(xs, ys, values)``: ``xs`` of shape ``(nx,)``, ``ys`` of shape ``(ny,)`` and
            ``values[i, j] = f(xs[i], ys[j])`` (``"ij"`` indexing, as in lossvista's plots).
        """
        xs, ys = grid_axes(self.bounds if bounds is None else bounds, n)
        points = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
        return xs, ys, self.evaluate(points)

    # -- minima -------------------------------------------------------------------------------
    @property
    def global_minimum(self) -> np.ndarray | None:
        """The first global minimum ``(2,)``, or None for a function without minima."""
        return self.minima[0] if len(self.minima) else None

    @property
    def global_minimum_value(self) -> float | None:
        """The smallest value at a listed minimum, or None for a function without minima."""
        return float(self.minimum_values.min()) if len(self.minima) else None

    @property
    def global_minima(self) -> np.ndarray:
        """``(g, 2)`` every listed minimum whose value ties with the smallest."""
        if not len(self.minima):
            return self.minima
        lowest = self.minimum_values.min()
        return self.minima[self.minimum_values <= lowest + VALUE_TIES]

    def nearest_minimum(self, point: Any, tol: float = 1e-2) -> int | None:
        """Index of the listed minimum within distance ``tol`` of ``point``, or None."""
        if not len(self.minima):
            return None
        point = np.asarray(point, dtype=np.float64)
        if not np.all(np.isfinite(point)):
            return None
        distances = np.linalg.norm(self.minima - point, axis=1)
        index = int(np.argmin(distances))
        return index if distances[index] <= tol else None

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.parameters.items())
        return (
            f"ToyFunction({self.name!r}{settings}: {self.formula}; bounds={self.bounds}, "
            f"{len(self.minima)} minima, {len(self.saddles)} saddles)"
        )


def grid_axes(bounds: Bounds, n: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The two axes ``np.linspace(lo, hi, n)`` of a grid over ``bounds``."""
    counts = (n, n) if isinstance(n, (int, np.integer)) else tuple(np.atleast_1d(n))
    whole = all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts)
    if len(counts) != 2 or not whole or min(counts) < 2:
        raise InputError(f"n must be a whole number >= 2 or a pair of them, got {n!r}")
    (xmin, xmax), (ymin, ymax) = bounds
    if not (xmin < xmax and ymin < ymax):
        raise InputError(f"bounds must be ((xmin, xmax), (ymin, ymax)) with min < max: {bounds}")
    return np.linspace(xmin, xmax, int(counts[0])), np.linspace(ymin, ymax, int(counts[1]))


def bounds_holding(bounds: Bounds, point: np.ndarray, margin: float = 0.05) -> Bounds:
    """``bounds`` grown, on the sides ``point`` lies beyond, to hold it with a margin of
    ``margin`` times that axis's width; unchanged when ``point`` is inside."""
    grown = []
    for (low, high), value in zip(bounds, point):
        pad = margin * (high - low)
        low = min(low, float(value) - pad) if value < low else low
        high = max(high, float(value) + pad) if value > high else high
        grown.append((float(low), float(high)))
    return (grown[0], grown[1])


def as_point(value: Any, what: str = "start") -> np.ndarray:
    """``value`` as a float64 array of shape ``(2,)``; :class:`InputError` naming ``what`` if not."""
    try:
        point = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        point = np.empty(0)
    if point.shape != (2,) or not np.all(np.isfinite(point)):
        raise InputError(f"{what} must be two finite numbers (x, y), got {value!r}")
    return point


def _as_tensor(xy: Any) -> torch.Tensor:
    """A tensor as it is; anything else as a new float64 tensor."""
    return xy if isinstance(xy, torch.Tensor) else torch.tensor(np.asarray(xy, dtype=np.float64))
