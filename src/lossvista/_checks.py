"""Argument checks shared by every public function, so that they cannot drift apart.

A ``bool`` is never accepted where an integer is asked for (``True`` is an ``int`` in Python, but
``batch_size=True`` is a mistake, not a batch of one).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch

from .errors import DirectionError, InputError

if TYPE_CHECKING:
    from .directions import Direction

F = TypeVar("F", bound=Callable[..., Any])
_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def check_objective(obj: Any) -> None:
    """Refuse anything but an :class:`~lossvista.Objective` as a verb's first argument."""
    from .objective import Objective  # lazily: objective.py imports this module

    if not isinstance(obj, Objective):
        raise InputError(
            f"expected an lv.Objective as first argument, got {type(obj).__name__}; build one "
            "with lv.Objective(model, loss_fn, data)"
        )


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers accepted), at least ``minimum`` when given."""
    wanted = (
        "an integer"
        if minimum is None
        else "a positive integer"
        if minimum == 1
        else f"an integer >= {minimum}"
    )
    wrong_type = isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
    if wrong_type or (minimum is not None and value < minimum):
        raise InputError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_optional_int(value: Any, name: str, minimum: int | None = None) -> int | None:
    """Like :func:`check_int`, with ``None`` allowed (and returned)."""
    return None if value is None else check_int(value, name, minimum)


# -- grid axes ---------------------------------------------------------------------------------
#: Grid coordinates beyond this many direction lengths are refused: no model survives such a step,
#: and ±1e300 overflows the parameters (rescale the direction and use a smaller span instead).
MAX_COORDINATE = 1e6


def axes(spans: Sequence[Any], steps: Sequence[Any], n: int) -> tuple[np.ndarray, ...]:
    """``n`` coordinate axes ``linspace(lo, hi, count)``, checked."""
    out = []
    for i in range(n):
        count = check_int(steps[i], "steps", 2)
        lo, hi = _span(spans[i])
        out.append(np.linspace(lo, hi, count))
    return tuple(out)


def _span(span: Any) -> tuple[float, float]:
    """``(min, max)`` of a span: two finite real numbers (not a string), min < max, bounded."""
    if isinstance(span, (str, bytes)):
        raise InputError(f"span must be a pair (min, max) of numbers, got the string {span!r}")
    values = list(span) if isinstance(span, (Sequence, np.ndarray, torch.Tensor)) else None
    if values is None or len(values) != 2 or not all(_is_real(v) for v in values):
        raise InputError(f"span must be a pair (min, max) of numbers, got {span!r}")
    lo, hi = float(values[0]), float(values[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise InputError(f"span must have min < max (both finite), got ({lo}, {hi})")
    if max(abs(lo), abs(hi)) > MAX_COORDINATE:
        raise InputError(
            f"span ({lo:g}, {hi:g}) reaches beyond ±{MAX_COORDINATE:g} direction lengths, where "
            "the parameters overflow or mean nothing; rescale the direction and use a smaller span"
        )
    return lo, hi


def _is_real(value: Any) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return bool(
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        )
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return value.dtype != torch.bool and not value.dtype.is_complex
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def per_axis_span(span: Any, ndim: int) -> list[Any]:
    """One ``(min, max)`` for every axis, or one per axis (checked by ``axes``)."""
    if isinstance(span, (str, bytes)) or not isinstance(span, (Sequence, np.ndarray)):
        raise InputError(f"span must be (min, max) or one (min, max) per axis, got {span!r}")
    if len(span) == 2 and all(isinstance(v, (int, float, np.number)) for v in span):
        return [tuple(span)] * ndim
    if len(span) != ndim:
        raise InputError(
            f"span must be one (min, max) for every axis or {ndim} of them (one per direction), "
            f"got {len(span)}: {span!r}"
        )
    return list(span)


def per_axis_steps(steps: Any, ndim: int) -> list[Any]:
    """One count for every axis, or one per axis (checked by ``axes``)."""
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        return [steps] * ndim
    if isinstance(steps, (str, bytes)) or not isinstance(steps, (Sequence, np.ndarray)):
        raise InputError(f"steps must be an integer or one integer per axis, got {steps!r}")
    if len(steps) != ndim:
        raise InputError(
            f"steps must be one integer for every axis or {ndim} of them (one per direction), "
            f"got {len(steps)}: {steps!r}"
        )
    return list(steps)


def pair(value: Any, what: str) -> tuple[Any, Any]:
    """One value for both axes of a plane, or a pair (``span`` may be one ``(min, max)``)."""
    if isinstance(value, (str, bytes)):
        raise InputError(
            f"{what} must be one value for both axes or a pair, got the string {value!r}"
        )
    if isinstance(value, (int, np.integer)):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2:
        if all(isinstance(v, (int, float, np.number)) for v in value) and what == "span":
            return (tuple(value), tuple(value))
        return (value[0], value[1])
    raise InputError(f"{what} must be one value for both axes or a pair, got {value!r}")


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> float:
    """The largest ``|entry|`` of ``tensors``; NaN or inf entries are refused, named."""
    largest, bad = 0.0, []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad.append(f"{name} ({int((~finite).sum())} of {tensor.numel()} entries)")
            continue
        largest = max(largest, float(tensor.detach().abs().max()))
    if bad:
        raise DirectionError(
            f"{what} has NaN or infinite entries in {bad[:8]}{' ...' if len(bad) > 8 else ''}; "
            "every point built from it would be NaN: pass finite values (a model that diverged "
            "in training, or a direction computed from one, cannot be sliced)"
        )
    return largest


# -- directions and planes ---------------------------------------------------------------------------
#: Two directions whose cosine exceeds this (in absolute value) span no plane.
PARALLEL_COSINE = 1.0 - 1e-6
#: Models closer to a line than this share of their distance span no plane.
COLLINEAR_RATIO = 1e-6


def check_reach(
    directions: Sequence[Direction],
    coords: Sequence[np.ndarray],
    names: Sequence[str],
    origin: Mapping[str, torch.Tensor],
) -> None:
    """Refuse NaN/inf in the directions (``names``: how the caller passed them), and grids
    ``origin + sum_i c_i d_i`` whose parameters would overflow their dtype."""
    reach = sum(
        check_finite(d, name) * float(np.max(np.abs(c)))
        for d, c, name in zip(directions, coords, names, strict=True)
    )
    floats = [t for t in origin.values() if t.is_floating_point() and t.numel()]
    if not floats:
        return
    limit = min(torch.finfo(t.dtype).max for t in floats)
    largest = max(float(t.abs().max()) for t in floats)  # a non-finite origin: reported elsewhere
    if math.isfinite(largest) and reach + largest > limit / 2:
        raise InputError(
            f"the grid reaches parameter values of about {reach + largest:.3g} (largest |span| "
            f"times the largest direction entry), beyond what {floats[0].dtype} holds "
            f"({limit:.3g}); use a smaller span or rescale the directions"
        )


def check_not_parallel(d1: Direction, d2: Direction) -> None:
    """Two directions (nearly) parallel span a line, not a plane (cosine in float64)."""
    norms = d1.norm() * d2.norm()
    if norms == 0.0 or not math.isfinite(norms):
        return  # a zero direction is refused by the engine, naming it
    cosine = d1.dot(d2) / norms
    if abs(cosine) > PARALLEL_COSINE:
        raise DirectionError(
            f"the two directions are parallel (cosine {cosine:.9f}): they span a line, not a "
            "plane; use independent directions, e.g. lv.random_directions(obj, 2) (with "
            "orthogonalize=True for exactly orthogonal ones), or lv.line for one direction"
        )


def check_not_collinear(
    p0: Mapping[str, torch.Tensor],
    p1: Mapping[str, torch.Tensor],
    p2: Mapping[str, torch.Tensor],
    distance: float,
    off_line: float,
) -> None:
    """Refuse three models that span no plane: ``off_line`` (m2's distance from the line through
    m0 and m1) at most ``COLLINEAR_RATIO`` of ``distance`` (m0 to m1), or at the rounding level
    of the parameters' dtype (a float32 model on the line is off it by rounding noise)."""
    eps = max(torch.finfo(t.dtype).eps for t in p0.values() if t.is_floating_point())
    size = max(
        math.sqrt(sum(float((t.double() ** 2).sum()) for t in p.values())) for p in (p0, p1, p2)
    )
    noise = 16.0 * eps * size
    if off_line > max(COLLINEAR_RATIO * distance, noise):
        return
    why = (
        f"below the rounding noise of the parameters ({noise:.3g})"
        if noise >= COLLINEAR_RATIO * distance
        else f"at most {COLLINEAR_RATIO:g} of that distance"
    )
    raise DirectionError(
        f"the three models are (nearly) collinear: they span no plane. m2 lies {off_line:.3g} "
        f"from the line through m0 and m1, {off_line / distance:.3g} times their distance "
        f"{distance:.3g} ({why}); use lv.interpolate(obj, m0, m1) for the path, or a third "
        "model off that line"
    )


# -- renamed keywords ------------------------------------------------------------------------------
def renamed(**renames: str) -> Callable[[F], F]:
    """Keep old keyword names working: ``@renamed(hvp_method="hvp_backend")`` accepts
    ``hvp_method=`` with a :class:`DeprecationWarning` naming ``hvp_backend`` (pointing at the
    caller's line), and refuses the old and the new name together, also when the new one was
    passed by position. The decorated function's signature shows only the new names."""

    def decorate(function: F) -> F:
        where = function.__qualname__.removesuffix(".__init__")
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                given = signature.bind_partial(*args).arguments
                if new in kwargs or new in given:
                    raise InputError(
                        f"{where}: got both {new}= and {old}=; pass only {new}= ({old}= is its "
                        "deprecated old name)"
                    )
                warnings.warn(
                    f"{where}: the keyword {old}= is deprecated; use {new}= instead",
                    DeprecationWarning,
                    stacklevel=caller_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the calling function point at the
    first frame outside lossvista: the user's line, however many wrappers (and ``contextlib``
    frames of lossvista's context managers) lie between."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and _inside_lossvista(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def _inside_lossvista(filename: str) -> bool:
    return filename == contextlib.__file__ or os.path.abspath(filename).startswith(_PACKAGE)
