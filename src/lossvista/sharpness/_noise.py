"""The average kind of sharpness: a Monte Carlo mean of the loss under seeded noise.

Each draw ``eps`` (Gaussian, or uniform on a sphere) is evaluated at ``theta + eps`` and, with
antithetic pairs, at ``theta - eps``; the pair mean is one sample. The points go through
:class:`~lossvista.engine.PointEvaluator` in blocks of draws, and the draws do not depend on the
block size.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._functional import TensorDict
from ..engine import PointEvaluator
from ..errors import NonFiniteLossWarning
from ..objective import Objective
from ._vectors import cast, gaussian, norm


def average(
    obj: Objective,
    rho: float,
    noise: str,
    samples: int,
    antithetic: bool,
    seed: int,
    block_bytes: int,
) -> tuple[float, float, float, int]:
    """``(L(theta), mean perturbed loss, its standard error, evaluations)``.

    ``block_bytes`` bounds the noise draws held (and copied by the engine) at one time. Warns
    (:class:`~lossvista.errors.NonFiniteLossWarning`) and returns NaN for the mean and its error
    when a loss is not finite. Meant to be called by :func:`lossvista.sharpness` itself, so that
    the warning points at the user's call.
    """
    theta = obj.parameters()
    generator = torch.Generator().manual_seed(int(seed))
    signs = (1.0, -1.0) if antithetic else (1.0,)
    nbytes = sum(t.numel() * t.element_size() for t in theta.values())
    block = max(1, min(samples, block_bytes // max(nbytes, 1)))
    base, means = math.nan, []
    for first in range(0, samples, block):
        draws = [
            _draw_noise(theta, noise, rho, generator) for _ in range(min(block, samples - first))
        ]
        rows = [sign * row for row in np.eye(len(draws)) for sign in signs]
        if first == 0:
            rows.insert(0, np.zeros(len(draws)))  # L(theta) through the same evaluation path
        values, _ = PointEvaluator(obj, theta, draws).run(np.array(rows), progress=False)
        losses = values["loss"]
        if first == 0:
            base, losses = float(losses[0]), losses[1:]
        means.append(losses.reshape(len(draws), len(signs)).mean(axis=1))
    pair_means = np.concatenate(means)
    evaluations = 1 + samples * len(signs)
    if not (np.all(np.isfinite(pair_means)) and math.isfinite(base)):
        warnings.warn(
            f"{int(np.sum(~np.isfinite(pair_means)))} of {samples} noise draws (or theta itself) "
            "gave a non-finite loss; the average sharpness is NaN",
            NonFiniteLossWarning,
            stacklevel=3,
        )
        return base, math.nan, math.nan, evaluations
    stderr = float(np.std(pair_means, ddof=1) / math.sqrt(samples))
    return base, float(np.mean(pair_means)), stderr, evaluations


def _draw_noise(
    theta: TensorDict, noise: str, rho: float, generator: torch.Generator
) -> TensorDict:
    """One noise vector over the selected parameters (float64 on the CPU, then cast)."""
    draw = gaussian(theta, generator)
    factor = rho / norm(draw) if noise == "sphere" else rho
    return cast({n: g * factor for n, g in draw.items()}, theta)
