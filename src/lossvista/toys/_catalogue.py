"""The catalogue of the toy lab's analytic 2-D functions, with every minimum inside their bounds.

Minima that have no closed form were found by Newton's method from every point of a dense grid
(see :func:`lossvista.toys._critical.critical_points`), checked to have a positive-definite
Hessian and hard-coded here to 15 decimals; ``tests/toys/test_functions.py`` repeats the search
and proves that none is missing and none is wrong. :func:`lossvista.toys.get` builds a function
by its name in :data:`BUILDERS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .toy_function import ToyFunction


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


#: Rastrigin is separable: its 1-D part ``h(t) = t^2 - 10 cos(2 pi t)`` is stationary where
#: ``2t + 20 pi sin(2 pi t) = 0``: minima at 0 and +-R_k, maxima at +-Q_k (Newton in float64).
#: These are all of them in ``|t| <= 5.12``, the benchmark's usual domain (the next maximum is
#: near 5.53).
_RASTRIGIN_1D_MINIMA_POSITIVE = (
    0.994958637652335,
    1.989912233708550,
    2.984855701039481,
    3.979783860300754,
    4.974691390895051,
)
_RASTRIGIN_1D_MAXIMA_POSITIVE = (
    0.502546036554675,
    1.507640731870358,
    2.512743318200085,
    3.517859138170441,
    4.522993659584519,
)
_RASTRIGIN_1D_MINIMA = (0.0, *(sign * r for r in _RASTRIGIN_1D_MINIMA_POSITIVE for sign in (-1, 1)))
_RASTRIGIN_1D_MAXIMA = tuple(sign * q for q in _RASTRIGIN_1D_MAXIMA_POSITIVE for sign in (-1, 1))
_RASTRIGIN_BOUND = 5.12

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
    """Minima pair two 1-D minima (the global one, (0, 0), first); a saddle pairs a 1-D minimum
    with a 1-D maximum."""

    def h(t: float) -> float:
        return t * t - 10 * math.cos(2 * math.pi * t)

    minima = [(x, y) for x in _RASTRIGIN_1D_MINIMA for y in _RASTRIGIN_1D_MINIMA]
    minima.sort(key=lambda p: h(p[0]) + h(p[1]))  # stable: ties keep the listed order
    saddles = [(a, b) for a in _RASTRIGIN_1D_MINIMA for b in _RASTRIGIN_1D_MAXIMA]
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
        minima=np.array([(0.0, 0.0)]),
        saddles=np.empty((0, 2)),
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
        minima=np.array([(a, a * a)]),
        saddles=np.empty((0, 2)),
        start=(-1.2, 1.0),
        lr=float(f"{1 / (2 + 8 * b * a * a + 2 * b):.0e}"),  # ~1/trace(H) at the minimum: 1e-3
        log_scale=True,
        parameters={"a": float(a), "b": float(b)},
    )


def _fixed(**fields: Any) -> Callable[[], ToyFunction]:
    """A builder without parameters."""
    return lambda: ToyFunction(**fields)


_RASTRIGIN_MINIMA, _RASTRIGIN_SADDLES = _rastrigin_points()

#: name -> builder; :func:`lossvista.toys.get` calls it with the user's parameters.
BUILDERS: dict[str, Callable[..., ToyFunction]] = {
    "quadratic": _build_quadratic,
    "sincos_bowl": _fixed(
        name="sincos_bowl",
        formula="sin(4x)*cos(4y) + 2*(x^2 + y^2)",
        expression=_sincos_bowl,
        bounds=((-2.0, 2.0), (-2.0, 2.0)),
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
        bounds=((-_RASTRIGIN_BOUND, _RASTRIGIN_BOUND), (-_RASTRIGIN_BOUND, _RASTRIGIN_BOUND)),
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
