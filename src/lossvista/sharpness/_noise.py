"""The average kind of sharpness: a Monte Carlo mean of the loss under seeded noise.

Each draw ``eps`` (Gaussian, or uniform on a sphere) is evaluated at ``theta + eps`` and, with
antithetic pairs, at ``theta - eps``; the pair mean is one sample. The points go through
:class:`~lossvista.engine.PointEvaluator` in blocks of draws, and the draws do not depend on the
block size. Under torchrun/srun (:mod:`lossvista._dist`) the blocks are shared between the
ranks: every rank draws every block (so the draws are the single-process ones), evaluates its
own blocks, and the pair means are gathered in block order.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._dist import single_process, team_for
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
    team = team_for("auto", obj.device)
    rank, world = (0, 1) if team is None else (team.rank, team.world)
    if world > 1:
        block = min(block, -(-samples // world))  # at least one block per rank
    mine: list[tuple[float, np.ndarray]] = []  # (L(theta) or NaN, pair means) of own blocks
    failure: BaseException | None = None
    for index, first in enumerate(range(0, samples, block)):
        draws = [
            _draw_noise(theta, noise, rho, generator) for _ in range(min(block, samples - first))
        ]
        if index % world != rank or failure is not None:
            continue
        rows = [sign * row for row in np.eye(len(draws)) for sign in signs]
        if first == 0:
            rows.insert(0, np.zeros(len(draws)))  # L(theta) through the same evaluation path
        try:
            with single_process():
                values, _ = PointEvaluator(obj, theta, draws).run(np.array(rows), progress=False)
        except Exception as exc:  # raised on every rank after the gather
            failure = exc
            continue
        losses, own_base = values["loss"], math.nan
        if first == 0:
            own_base, losses = float(losses[0]), losses[1:]
        mine.append((own_base, losses.reshape(len(draws), len(signs)).mean(axis=1)))
    if team is None:
        if failure is not None:
            raise failure
        blocks = mine
    else:  # block k was evaluated by rank k % world, as its (k // world)-th block
        shares = team.gather_or_raise(mine, failure)
        blocks = [shares[k % world][k // world] for k in range(-(-samples // block))]
    base = blocks[0][0]
    pair_means = np.concatenate([means for _, means in blocks])
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
