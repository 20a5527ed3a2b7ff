"""The ascent kinds of sharpness (worst, adaptive, epsilon): monotone projected gradient ascent.

The ball is parametrised as ``eps = T * delta`` with ``||delta||_p <= rho`` (``T = 1`` for
``"worst"``, ``|theta| + eta`` for ``"adaptive"``, ``|theta| + 1`` for ``"epsilon"``). Every start
(the zero perturbation, then seeded random points inside the ball) climbs with an adaptive step
and the best loss found anywhere is kept; see :mod:`lossvista.sharpness` for why the step adapts.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._functional import FunctionalObjective, TensorDict, functional
from ..errors import NonFiniteLossWarning
from ..objective import Objective
from ._vectors import cast, gaussian, norm

#: Ascent step bounds, in units of ``rho``.
MAX_STEP = 4.0
MIN_STEP = 1e-6


class Ball:
    """``{eps = scale * delta : ||delta||_p <= radius}``: projection and steps in ``delta``."""

    def __init__(self, radius: float, p: str, scale: TensorDict | None):
        self.radius, self.p, self.scale = radius, p, scale

    def point(self, theta: TensorDict, delta: TensorDict) -> TensorDict:
        if self.scale is None:
            return {n: theta[n] + delta[n] for n in theta}
        return {n: theta[n] + self.scale[n] * delta[n] for n in theta}

    def project(self, delta: TensorDict) -> TensorDict:
        if self.p == "linf":
            return {n: d.clamp(-self.radius, self.radius) for n, d in delta.items()}
        length = norm(delta)
        if length <= self.radius:
            return delta
        return {n: d * (self.radius / length) for n, d in delta.items()}

    def ascent_direction(self, grad: TensorDict) -> TensorDict | None:
        """Steepest ascent in ``delta`` for the ball's norm; ``None`` where the gradient is 0."""
        g = grad if self.scale is None else {n: self.scale[n] * grad[n] for n in grad}
        if self.p == "linf":
            signs = {n: t.sign() for n, t in g.items()}
            return signs if any(bool(s.any()) for s in signs.values()) else None
        length = norm(g)
        if not length > 0.0:
            return None
        return {n: t / length for n, t in g.items()}

    def random_start(self, like: TensorDict, generator: torch.Generator) -> TensorDict:
        """A point uniform in the ball (drawn in float64 on the CPU, so seeds repeat anywhere)."""
        if self.p == "linf":
            raw = {
                n: torch.rand(t.shape, generator=generator, dtype=torch.float64)
                for n, t in like.items()
            }
            return cast({n: (2.0 * r - 1.0) * self.radius for n, r in raw.items()}, like)
        draw = gaussian(like, generator)
        size = sum(t.numel() for t in like.values())
        uniform = float(torch.rand((), generator=generator, dtype=torch.float64))
        radius = self.radius * uniform ** (1.0 / size)  # uniform in volume, not in radius
        return cast({n: g * (radius / norm(draw)) for n, g in draw.items()}, like)


def worst_case(
    obj: Objective,
    kind: str,
    rho: float,
    p: str,
    ascent_steps: int,
    restarts: int,
    first_step: float,
    eta: float,
    seed: int,
) -> tuple[float, float, int]:
    """``(L(theta), best loss found, evaluations)`` over the zero start and random restarts.

    Warns (:class:`~lossvista.errors.NonFiniteLossWarning`) and returns a NaN best loss when
    ``L(theta)`` itself is not finite. Meant to be called by :func:`lossvista.sharpness` itself,
    so that the warning points at the user's call.
    """
    generator = torch.Generator().manual_seed(int(seed))
    with functional(obj) as f:
        theta = f.params()
        ball = Ball(rho, p, _scale(theta, kind, eta))
        zero = {n: torch.zeros_like(t) for n, t in theta.items()}
        starts = [zero] + [ball.random_start(theta, generator) for _ in range(restarts)]
        base, best, evaluations = math.nan, -math.inf, 0
        for index, start in enumerate(starts):
            first, loss, count = _ascend(f, theta, ball, start, ascent_steps, first_step)
            if index == 0:
                base = first  # the zero start: L(theta)
            if not math.isnan(loss):
                best = max(best, loss)
            evaluations += count
    if not math.isfinite(base):  # otherwise best >= base: the zero start only ever rises
        warnings.warn(
            f"the loss at theta is {base}; the {kind} sharpness is NaN",
            NonFiniteLossWarning,
            stacklevel=3,
        )
        return base, math.nan, evaluations
    return base, max(best, base), evaluations


def _ascend(
    f: FunctionalObjective,
    theta: TensorDict,
    ball: Ball,
    start: TensorDict,
    ascent_steps: int,
    first_step: float,
) -> tuple[float, float, int]:
    """Monotone projected ascent: ``(loss at the start, best loss, evaluations)``."""
    delta = ball.project(start)
    loss, grad = f.loss_and_grad(ball.point(theta, delta))
    start_loss, evaluations, step = loss, 1, first_step
    for _ in range(ascent_steps):
        direction = ball.ascent_direction(grad)
        if direction is None:
            break  # a critical point inside the ball: nothing to follow
        candidate = ball.project({n: d + step * direction[n] for n, d in delta.items()})
        if norm({n: c - delta[n] for n, c in candidate.items()}) <= 1e-12 * ball.radius:
            break  # the ball's boundary blocks every ascent direction
        trial, trial_grad = f.loss_and_grad(ball.point(theta, candidate))
        evaluations += 1
        if trial > loss:
            delta, loss, grad = candidate, trial, trial_grad
            step = min(2.0 * step, MAX_STEP * ball.radius)
        else:
            step *= 0.5
            if step < MIN_STEP * ball.radius:
                break
    return start_loss, loss, evaluations


def _scale(theta: TensorDict, kind: str, eta: float) -> TensorDict | None:
    """``T`` of the ball ``eps = T * delta``: none, ``|theta| + eta`` or ``|theta| + 1``."""
    if kind == "adaptive":
        return {n: t.abs() + eta for n, t in theta.items()}
    if kind == "epsilon":
        return {n: t.abs() + 1.0 for n, t in theta.items()}
    return None
