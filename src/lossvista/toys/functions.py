"""Analytic 2-D test functions with every minimum inside their bounds listed: the registry.

Each function is a :class:`ToyFunction` (:mod:`lossvista.toys.toy_function`): callable on a
tensor of shape ``(..., 2)``, with plot bounds, a default start point, a stable gradient-descent
step and its critical points. :func:`get` builds one by name from the catalogue
(:mod:`lossvista.toys._catalogue`, where the minima and how they were found are listed);
:func:`names` lists the names. Results store their function by name and parameters
(:func:`function_state`), which is how ``lossvista.load`` rebuilds it; a function made by hand
has no name to store (:func:`check_registered`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from ._catalogue import BUILDERS
from .toy_function import (
    VALUE_TIES,
    Bounds,
    Expression,
    ToyFunction,
    as_point,
    bounds_holding,
    grid_axes,
)

__all__ = [
    "VALUE_TIES",
    "Bounds",
    "Expression",
    "ToyFunction",
    "as_point",
    "bounds_holding",
    "check_registered",
    "function_from_state",
    "function_state",
    "get",
    "grid_axes",
    "names",
]


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts."""
    return tuple(BUILDERS)


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
    builder = BUILDERS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise InputError(f"unknown toy function {name!r}; choose one of {list(names())}")
    try:
        return builder(**parameters)
    except TypeError as exc:
        raise InputError(
            f"{name}: unexpected parameters {sorted(parameters)} ({exc}); see toys.get's docstring"
        ) from exc


# -- a function by its name, in result files -------------------------------------------------------
def function_state(fn: ToyFunction) -> dict[str, Any]:
    """What a result file stores of ``fn``: its name and parameters (and, for readers, its
    formula)."""
    return {"name": fn.name, "parameters": dict(fn.parameters), "formula": fn.formula}


def function_from_state(state: Mapping[str, Any]) -> ToyFunction:
    """The function :func:`function_state` described, rebuilt by :func:`get`."""
    return get(state["name"], **dict(state.get("parameters") or {}))


def check_registered(fn: ToyFunction) -> None:
    """Raise :class:`InputError` unless ``get(fn.name, **fn.parameters)`` builds ``fn`` again.

    A file names its function rather than pickling the expression, so a result on a function
    built by hand cannot be saved: loading could not rebuild it.
    """
    advice = (
        "a saved result names its function so that lossvista.load can rebuild it; save results "
        "on functions from lossvista.toys.get(name, ...), or keep the arrays of this one "
        "yourself (result.as_dict())"
    )
    if fn.name not in BUILDERS:
        raise InputError(
            f"toy function {fn.name!r} is not in the registry {list(names())}: {advice}"
        )
    try:
        again = get(fn.name, **fn.parameters)
    except InputError as exc:
        raise InputError(f"toy function {fn!r} cannot be rebuilt ({exc}): {advice}") from exc
    if not _same_function(fn, again):
        raise InputError(
            f"toy function {fn!r} differs from toys.get({fn.name!r}, **{fn.parameters}), the "
            f"function of that name: {advice}"
        )


def _same_function(a: ToyFunction, b: ToyFunction) -> bool:
    """Equal settings, critical points and values at those points, the start and the corners."""
    settings = ("formula", "bounds", "start", "lr", "log_scale")
    if any(getattr(a, field) != getattr(b, field) for field in settings):
        return False
    if not (np.array_equal(a.minima, b.minima) and np.array_equal(a.saddles, b.saddles)):
        return False
    (xmin, xmax), (ymin, ymax) = a.bounds
    probes = np.concatenate(
        [a.minima, a.saddles, [a.start, (xmin, ymin), (xmax, ymax), (xmin, ymax), (xmax, ymin)]]
    )
    return bool(np.array_equal(a.evaluate(probes), b.evaluate(probes), equal_nan=True))
