"""``suggest_span``: a span along a direction whose ends are where the loss reaches a target
(a factor of the loss at the origin), found by doubling then narrowing the distance."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from ._checks import check_finite, check_objective
from .directions import as_direction
from .engine import PointEvaluator
from .errors import InputError
from .objective import Objective

Span = tuple[float, float]


def suggest_span(
    obj: Objective,
    direction: Mapping[str, torch.Tensor],
    *,
    factor: float = 2.0,
    target: float | None = None,
    max_distance: float = 64.0,
    progress: bool = False,
) -> Span:
    """A span ``(lo, hi)`` along ``direction`` whose ends are where the loss reaches a target.

    The target is ``factor * L(theta)`` (or ``target``). The search doubles the distance from
    1/64 up to ``max_distance`` on both sides, then narrows the first crossing to about 1%.
    A side that never reaches the target gets ``max_distance`` (with a warning).
    """
    check_objective(obj)
    d = as_direction(direction)
    check_finite(d, "direction")
    center = obj.evaluate()["loss"]
    if target is None:
        if not factor > 1.0:
            raise InputError(f"factor must be > 1, got {factor!r}")
        if center <= 0.0:
            raise InputError(
                f"the loss at the origin is {center:.4g} <= 0, so factor*loss is no rise; "
                "pass target= explicitly"
            )
        target = factor * center
    if not target > center:
        raise InputError(f"target {target:.4g} must exceed the loss at the origin ({center:.4g})")
    if not max_distance > 0:
        raise InputError(f"max_distance must be positive, got {max_distance!r}")
    evaluator = PointEvaluator(obj, obj.parameters(), (d,))

    def losses(alphas: np.ndarray) -> np.ndarray:
        values, _ = evaluator.run(alphas[:, None], strategy="loop", progress=progress)
        return values["loss"]

    distances = 2.0 ** np.arange(-6, math.ceil(math.log2(max_distance)) + 1)
    distances = np.unique(np.clip(distances, None, max_distance))
    both = losses(np.concatenate([distances, -distances]))
    ends = []
    for sign, values in ((1.0, both[: len(distances)]), (-1.0, both[len(distances) :])):
        crossed = np.flatnonzero(~(values < target))  # NaN/inf count as "risen"
        if crossed.size == 0:
            warnings.warn(
                f"the loss stays below {target:.4g} up to distance {max_distance} on the "
                f"{'positive' if sign > 0 else 'negative'} side",
                stacklevel=2,
            )
            ends.append(sign * max_distance)
            continue
        k = int(crossed[0])
        lo, hi = (0.0 if k == 0 else distances[k - 1]), distances[k]
        for _ in range(3):  # narrow the bracket 8x per round
            probe = np.linspace(lo, hi, 9)[1:-1]
            inner = losses(sign * probe)
            above = np.flatnonzero(~(inner < target))
            if above.size:
                j = int(above[0])
                lo, hi = (lo if j == 0 else probe[j - 1]), probe[j]
            else:
                lo = probe[-1]
        ends.append(sign * hi)
    return (float(ends[1]), float(ends[0]))
