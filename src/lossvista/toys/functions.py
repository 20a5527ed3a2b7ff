"""Analytic 2-D test functions with every minimum inside their bounds listed.

Each function is a :class:`ToyFunction`: callable on a tensor of shape ``(..., 2)``, with plot
bounds, a default start point, a stable gradient-descent step and its critical points. Minima
that have no closed form were found by Newton's method from every point of a dense grid (see
:func:`lossvista.toys._critical.critical_points`), checked to have a positive-definite Hessian and
hard-coded here to 15 decimals; ``tests/toys/test_functions.py`` repeats the search and proves
that none is missing and none is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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


# -- the expressions (module-level, so functions pickle for worker processes) ----------------------
def _quadratic(x: torch.Tensor, y: torch.Tensor, *, condition: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return 0.5 * (u**2 + condition * v**2)


def _sincos_bowl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(4 * x) * torch.cos(4 * y) + 2 * (x**2 + y**2)


def _rosenbrock(x: torch.Tensor, y: torch.Tensor, *, a: float, b: float) -> torch.Tensor:
    return (a - x) ** 2 + b * (y - x**2) ** 2


def _himmelblau(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _rastrigin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 20 + x**2 + y**2 - 10 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y))


def _beale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _six_hump_camel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def _saddle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x**2 - y**2


def _monkey_saddle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x**3 - 3 * x * y**2


# -- critical points found by grid + Newton polish (see the module docstring) ---------------------
def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each point followed by its reflection through the origin (odd-symmetric functions)."""
    return [q for x, y in points for q in ((x, y), (-x, -y))]


#: Rastrigin is separable: its 1-D part ``t^2 - 10 cos(2 pi t)`` has minima at 0 and +-R.
_RASTRIGIN_MIN = 0.994958637652335
#: ... and maxima at +-Q; a 2-D saddle pairs a 1-D minimum with a 1-D maximum.
_RASTRIGIN_MAX = 0.502546036554675
_RASTRIGIN_1D_MINIMA = (0.0, -_RASTRIGIN_MIN, _RASTRIGIN_MIN)

_SINCOS_MINIMA = [
    (-0.313088308500647, 0.0),  # global
    (0.292868954144870, -0.605957262645517),
    (0.292868954144870, 0.605957262645517),
    (0.898826216790387, 0.0),
]
_SINCOS_SADDLES = [
    (0.110122377207093, -0.423210685707740),
    (0.110122377207093, 0.423210685707740),
    (0.716079639852610, -0.182746576937777),
    (0.716079639852610, 0.182746576937777),
]
_HIMMELBLAU_MINIMA = [
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.283185991286170),
    (3.584428340330492, -1.848126526964404),
]
_HIMMELBLAU_SADDLES = [
    (3.385154183607021, 0.073851879837749),
    (0.086677504555396, 2.884254701174776),
    (-3.073025750764390, -0.081353044287968),
    (-0.127961346730680, -1.953714980244577),
]
_BEALE_SADDLES = [(0.0, 1.0), (0.100537937324158, -2.644513585023125)]
_CAMEL_MINIMA = _mirror(
    [
        (0.089842013100318, -0.712656403020740),  # the two global minima
        (1.703606714969981, -0.796083568672625),
        (1.607104752920197, 0.568651454884131),
    ]
)
_CAMEL_SADDLES = [
    (0.0, 0.0),
    *_mirror(
        [
            (1.109205336804787, -0.768268092509540),
            (1.638067984189779, 0.228674069044394),
            (1.296070267167109, 0.605084388038658),
        ]
    ),
]


def _rastrigin_points() -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    minima = [(x, y) for x in _RASTRIGIN_1D_MINIMA for y in _RASTRIGIN_1D_MINIMA]
    minima.sort(key=lambda p: (abs(p[0]) > 0.5) + (abs(p[1]) > 0.5))  # global (0, 0) first
    maxima_1d = (-_RASTRIGIN_MAX, _RASTRIGIN_MAX)
    saddles = [(a, b) for a in _RASTRIGIN_1D_MINIMA for b in maxima_1d]
    saddles += [(b, a) for a, b in saddles]
    return minima, saddles


# -- the registry --------------------------------------------------------------------------------
def _build_quadratic(condition: float = 10.0, angle: float = 0.0) -> ToyFunction:
    if not (isinstance(condition, (int, float)) and math.isfinite(condition) and condition >= 1):
        raise InputError(f"quadratic: condition must be a finite number >= 1, got {condition!r}")
    if not (isinstance(angle, (int, float)) and math.isfinite(angle)):
        raise InputError(f"quadratic: angle must be a finite number (radians), got {angle!r}")
    return ToyFunction(
        name="quadratic",
        formula=f"0.5*(u^2 + {condition:g}*v^2), (u, v) = (x, y) rotated by {angle:g} rad",
        expression=functools.partial(_quadratic, condition=float(condition), angle=float(angle)),
        bounds=((-2.0, 2.0), (-2.0, 2.0)),
        minima=[(0.0, 0.0)],
        saddles=[],
        start=(-1.5, 1.0),
        lr=1.0 / condition,  # the Hessian's eigenvalues are 1 and condition
        parameters={"condition": float(condition), "angle": float(angle)},
    )


def _build_rosenbrock(a: float = 1.0, b: float = 100.0) -> ToyFunction:
    if not (math.isfinite(a) and math.isfinite(b) and b > 0):
        raise InputError(f"rosenbrock: a must be finite and b > 0, got a={a!r}, b={b!r}")
    return ToyFunction(
        name="rosenbrock",
        formula=f"({a:g} - x)^2 + {b:g}*(y - x^2)^2",
        expression=functools.partial(_rosenbrock, a=float(a), b=float(b)),
        bounds=((-2.0, 2.0), (-1.0, 3.0)),
        minima=[(a, a * a)],
        saddles=[],
        start=(-1.2, 1.0),
        lr=float(f"{1 / (2 + 8 * b * a * a + 2 * b):.0e}"),  # ~1/trace(H) at the minimum: 1e-3
        log_scale=True,
        parameters={"a": float(a), "b": float(b)},
    )


def _fixed(**fields: Any) -> Callable[[], ToyFunction]:
    """A builder without parameters."""
    return lambda: ToyFunction(**fields)


_RASTRIGIN_MINIMA, _RASTRIGIN_SADDLES = _rastrigin_points()

_BUILDERS: dict[str, Callable[..., ToyFunction]] = {
    "quadratic": _build_quadratic,
    "sincos_bowl": _fixed(
        name="sincos_bowl",
        formula="sin(4x)*cos(4y) + 2*(x^2 + y^2)",
        expression=_sincos_bowl,
        bounds=((-1.5, 1.5), (-1.5, 1.5)),
        minima=_SINCOS_MINIMA,  # the only minima in the plane: |grad| > 0 beyond radius 1
        saddles=_SINCOS_SADDLES,
        start=(1.2, 1.2),
        lr=0.05,
    ),
    "rosenbrock": _build_rosenbrock,
    "himmelblau": _fixed(
        name="himmelblau",
        formula="(x^2 + y - 11)^2 + (x + y^2 - 7)^2",
        expression=_himmelblau,
        bounds=((-5.0, 5.0), (-5.0, 5.0)),
        minima=_HIMMELBLAU_MINIMA,
        saddles=_HIMMELBLAU_SADDLES,
        start=(0.0, 0.0),
        lr=0.01,
        log_scale=True,
    ),
    "rastrigin": _fixed(
        name="rastrigin",
        formula="20 + x^2 + y^2 - 10*(cos(2 pi x) + cos(2 pi y))",
        expression=_rastrigin,
        bounds=((-1.5, 1.5), (-1.5, 1.5)),
        minima=_RASTRIGIN_MINIMA,
        saddles=_RASTRIGIN_SADDLES,
        start=(1.3, 1.1),
        lr=0.0025,
    ),
    "beale": _fixed(
        name="beale",
        formula="(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
        expression=_beale,
        bounds=((-4.5, 4.5), (-4.5, 4.5)),
        minima=[(3.0, 0.5)],
        saddles=_BEALE_SADDLES,
        start=(1.0, 1.5),
        lr=0.001,
        log_scale=True,
    ),
    "six_hump_camel": _fixed(
        name="six_hump_camel",
        formula="(4 - 2.1x^2 + x^4/3)*x^2 + xy + (-4 + 4y^2)*y^2",
        expression=_six_hump_camel,
        bounds=((-2.0, 2.0), (-1.0, 1.0)),
        minima=_CAMEL_MINIMA,
        saddles=_CAMEL_SADDLES,
        start=(-1.5, 0.8),
        lr=0.01,
    ),
    "saddle": _fixed(
        name="saddle",
        formula="x^2 - y^2",
        expression=_saddle,
        bounds=((-2.0, 2.0), (-2.0, 2.0)),
        minima=[],
        saddles=[(0.0, 0.0)],
        start=(-1.5, 0.01),
        lr=0.05,
    ),
    "monkey_saddle": _fixed(
        name="monkey_saddle",
        formula="x^3 - 3xy^2",
        expression=_monkey_saddle,
        bounds=((-1.5, 1.5), (-1.5, 1.5)),
        minima=[],
        saddles=[(0.0, 0.0)],
        start=(1.0, 0.05),
        lr=0.05,
    ),
}


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts."""
    return tuple(_BUILDERS)


def get(name: str | ToyFunction, **parameters: Any) -> ToyFunction:
    """Build a test function by name.

    Args:
        name: one of :func:`names`; a :class:`ToyFunction` is returned as it is.
        **parameters: ``quadratic``: ``condition`` (default 10; the Hessian is
            ``R^T diag(1, condition) R``, so this is its condition number) and ``angle``
            (radians, default 0: the axes are not rotated); ``rosenbrock``: ``a`` (1) and ``b``
            (100), minimum at ``(a, a^2)``. The other functions take none.

    Raises:
        InputError: an unknown name or parameter.
    """
    if isinstance(name, ToyFunction):
        if parameters:
            raise InputError(f"parameters {sorted(parameters)} cannot change an existing {name}")
        return name
    builder = _BUILDERS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise InputError(f"unknown toy function {name!r}; choose one of {list(names())}")
    try:
        return builder(**parameters)
    except TypeError as exc:
        raise InputError(
            f"{name}: unexpected parameters {sorted(parameters)} ({exc}); see toys.get's docstring"
        ) from exc
