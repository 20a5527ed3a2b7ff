"""The ascent kinds of sharpness (worst, adaptive, epsilon): monotone projected gradient ascent.

The ball is parametrised as ``eps = T * delta`` with ``||delta||_p <= rho`` (``T = 1`` for
``"worst"``, ``|theta| + eta`` for ``"adaptive"``, ``|theta| + 1`` for ``"epsilon"``). Every start
(the zero perturbation, the top eigenvector of the Hessian in ``delta`` on the ball's boundary
with both signs, then seeded random points inside the ball) climbs with an adaptive step and the
best loss found anywhere is kept; see :mod:`lossvista.sharpness` for why the step adapts.

An ascent stops when the gradient vanishes, when the ball's boundary blocks every ascent
direction, when no step of at least ``MIN_STEP * rho`` raises the loss, or after
``ascent_steps`` steps. It has **converged** when it stopped on its own, or when at its last point
the relative Frank-Wolfe gap ``1 - <g, delta> / (rho ||g||_*)`` (``g`` the gradient in ``delta``,
``||.||_*`` the dual norm: L2 for the L2 ball, L1 for the box) is at most ``tol``. The gap is 0
exactly where no first-order move inside the ball can raise the loss (the KKT conditions of the
ball), and to first order it is the relative shortfall of the value. The gap only judges; it does
not stop the ascent early, so more steps never give a lower value.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import NamedTuple, cast

import torch

from .. import _dist
from .._checks import caller_stacklevel
from .._functional import FunctionalObjective, TensorDict, functional
from ..curvature.hvp import Backend, HessianOperator
from ..curvature.lanczos import eigs_of
from ..errors import LossvistaError, LossvistaWarning, NonFiniteLossWarning
from ..objective import Objective
from ._vectors import cast as cast_like
from ._vectors import gaussian, norm

#: Ascent step bounds, in units of ``rho``.
MAX_STEP = 4.0
MIN_STEP = 1e-6
#: Lanczos steps (Hessian-vector products) of the eigenvector start at most.
EIGEN_START_STEPS = 40
#: Exact Hessian-vector backends tried for the eigenvector start, in order.
_EIGEN_BACKENDS = ("double_backward", "forward_over_reverse")


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

    def gradient(self, grad: TensorDict) -> TensorDict:
        """The gradient with respect to ``delta`` (``T`` times the gradient in ``theta``)."""
        return grad if self.scale is None else {n: self.scale[n] * grad[n] for n in grad}

    def ascent_direction(self, grad: TensorDict) -> TensorDict | None:
        """Steepest ascent in ``delta`` for the ball's norm; ``None`` where the gradient is 0."""
        g = self.gradient(grad)
        if self.p == "linf":
            signs = {n: t.sign() for n, t in g.items()}
            return signs if any(bool(s.any()) for s in signs.values()) else None
        length = norm(g)
        if not length > 0.0:
            return None
        return {n: t / length for n, t in g.items()}

    def gap(self, delta: TensorDict, grad: TensorDict) -> float | None:
        """The relative Frank-Wolfe gap ``1 - <g, delta> / (radius ||g||_*)`` in ``[0, 2]``.

        ``max_{||s|| <= radius} <g, s - delta>``, the most a first-order move inside the ball can
        gain, over ``radius ||g||_*``, the most it can gain from the centre: 0 exactly at a KKT
        point on the boundary. ``None`` where the gradient is 0 (or not finite).
        """
        g = self.gradient(grad)
        if self.p == "linf":
            dual = sum(float(t.double().abs().sum()) for t in g.values())
        else:
            dual = norm(g)
        if not (math.isfinite(dual) and dual > 0.0):
            return None
        inner = sum(float((g[n].double() * delta[n].double()).sum()) for n in g)
        return 1.0 - inner / (self.radius * dual)

    def on_boundary(self, vector: TensorDict, sign: float) -> TensorDict:
        """``sign * vector`` scaled onto the ball's boundary (its largest entry to the radius
        for the box)."""
        if self.p == "linf":
            size = max(float(t.abs().max()) for t in vector.values())
        else:
            size = norm(vector)
        return {n: t * (sign * self.radius / size) for n, t in vector.items()}

    def random_start(self, like: TensorDict, generator: torch.Generator) -> TensorDict:
        """A point uniform in the ball (drawn in float64 on the CPU, so seeds repeat anywhere)."""
        if self.p == "linf":
            raw = {
                n: torch.rand(t.shape, generator=generator, dtype=torch.float64)
                for n, t in like.items()
            }
            return cast_like({n: (2.0 * r - 1.0) * self.radius for n, r in raw.items()}, like)
        draw = gaussian(like, generator)
        size = sum(t.numel() for t in like.values())
        uniform = float(torch.rand((), generator=generator, dtype=torch.float64))
        radius = self.radius * uniform ** (1.0 / size)  # uniform in volume, not in radius
        return cast_like({n: g * (radius / norm(draw)) for n, g in draw.items()}, like)


class Climb(NamedTuple):
    """One ascent: the loss at its start, the best loss, its evaluations, and convergence."""

    start_loss: float
    loss: float
    evaluations: int
    converged: bool


class Outcome(NamedTuple):
    """What :func:`worst_case` found."""

    base: float  # L(theta)
    best: float  # the largest loss found (NaN when L(theta) is not finite)
    evaluations: int  # loss-and-gradient evaluations plus Hessian-vector products
    converged: bool  # the ascent that found ``best`` converged (see the module docstring)


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
    tol: float,
    eigen_start: bool,
) -> Outcome:
    """The best loss over the zero start, the eigenvector starts and the random restarts.

    Warns (:class:`~lossvista.errors.NonFiniteLossWarning`) and returns a NaN best loss when
    ``L(theta)`` itself is not finite. Meant to be called by :func:`lossvista.sharpness` itself,
    so that the warning points at the user's call.
    """
    generator = torch.Generator().manual_seed(int(seed))
    team = _dist.hessian_team(obj)  # under torchrun: the ranks share the batches
    with functional(obj) as view, _dist.data_share(team) if team else contextlib.nullcontext():
        f = view if team is None else _Shared(view, team)
        theta = view.params()
        ball = Ball(rho, p, _scale(theta, kind, eta))
        zero = {n: torch.zeros_like(t) for n, t in theta.items()}
        randoms = [ball.random_start(theta, generator) for _ in range(restarts)]
        first = _ascend(f, theta, ball, zero, ascent_steps, first_step, tol)
        base, evaluations = first.start_loss, first.evaluations
        if not math.isfinite(base):
            warnings.warn(
                f"the loss at theta is {base}; the {kind} sharpness is NaN",
                NonFiniteLossWarning,
                stacklevel=caller_stacklevel(),
            )
            return Outcome(base, math.nan, evaluations, False)
        climbs = [first]
        starts = randoms
        if eigen_start:
            vector, products = _top_eigenvector(obj, view, theta, ball, seed)
            evaluations += products
            if vector is not None:
                starts = [ball.on_boundary(vector, 1.0), ball.on_boundary(vector, -1.0), *randoms]
        for start in starts:
            climbs.append(_ascend(f, theta, ball, start, ascent_steps, first_step, tol))
            evaluations += climbs[-1].evaluations
    # The zero start only ever rises, so best >= base; ties go to a converged climb.
    finite = [c for c in climbs if not math.isnan(c.loss)]
    best = max(finite, key=lambda c: (c.loss, c.converged))
    return Outcome(base, best.loss, evaluations, best.converged)


class _Shared:
    """The loss and gradient of a functional view whose batches are this rank's share, summed
    over the ranks of ``team`` (each rank's mean weighted by its items, over all the items): the
    single-process values up to the rounding of the sum, identical on every rank."""

    def __init__(self, view: FunctionalObjective, team: _dist.Team):
        self.view, self.team = view, team
        self.mine, self.total = _dist.shared_items(team, view, view.params())

    def loss_and_grad(self, params: TensorDict) -> tuple[float, TensorDict]:
        loss, grads = self.view.loss_and_grad(params)
        names = list(grads)
        parts = [torch.tensor([loss], dtype=torch.float64)]
        parts += [grads[n].detach().reshape(-1).to(torch.float64).cpu() for n in names]
        summed = self.team.sum_tensor(torch.cat(parts) * self.mine) / self.total
        out, offset = {}, 1
        for n in names:
            size = grads[n].numel()
            piece = summed[offset : offset + size].reshape(grads[n].shape)
            out[n] = piece.to(dtype=grads[n].dtype, device=grads[n].device)
            offset += size
        return float(summed[0]), out


def _ascend(
    f: FunctionalObjective | _Shared,
    theta: TensorDict,
    ball: Ball,
    start: TensorDict,
    ascent_steps: int,
    first_step: float,
    tol: float,
) -> Climb:
    """Monotone projected ascent from ``start`` (see the module docstring for convergence)."""
    delta = ball.project(start)
    loss, grad = f.loss_and_grad(ball.point(theta, delta))
    start_loss, evaluations, step = loss, 1, first_step
    if not math.isfinite(loss):
        return Climb(start_loss, loss, evaluations, False)
    for _ in range(ascent_steps):
        direction = ball.ascent_direction(grad)
        if direction is None:
            return Climb(start_loss, loss, evaluations, True)  # a critical point inside the ball
        candidate = ball.project({n: d + step * direction[n] for n, d in delta.items()})
        if norm({n: c - delta[n] for n, c in candidate.items()}) <= 1e-12 * ball.radius:
            return Climb(start_loss, loss, evaluations, True)  # the boundary blocks every ascent
        trial, trial_grad = f.loss_and_grad(ball.point(theta, candidate))
        evaluations += 1
        if trial > loss:
            delta, loss, grad = candidate, trial, trial_grad
            step = min(2.0 * step, MAX_STEP * ball.radius)
        else:
            step *= 0.5
            if step < MIN_STEP * ball.radius:
                return Climb(start_loss, loss, evaluations, True)  # no step raises the loss
    gap = ball.gap(delta, grad)
    return Climb(start_loss, loss, evaluations, gap is None or gap <= tol)


def _scale(theta: TensorDict, kind: str, eta: float) -> TensorDict | None:
    """``T`` of the ball ``eps = T * delta``: none, ``|theta| + eta`` or ``|theta| + 1``."""
    if kind == "adaptive":
        return {n: t.abs() + eta for n, t in theta.items()}
    if kind == "epsilon":
        return {n: t.abs() + 1.0 for n, t in theta.items()}
    return None


# -- the eigenvector start ------------------------------------------------------------------------
class _BallHessian(HessianOperator):
    """``T H T``: the Hessian with respect to ``delta`` of the ball ``eps = T * delta``."""

    scale: torch.Tensor | None = None

    @classmethod
    def on(
        cls, obj: Objective, f: FunctionalObjective, theta: TensorDict, ball: Ball, backend: str
    ) -> _BallHessian:
        """The operator at ``theta`` inside the open view ``f``, products by ``backend``."""
        op = cast(_BallHessian, cls.at(obj, f, theta, backend=cast(Backend, backend)))
        if ball.scale is not None:
            op.scale = op.layout.flatten(ball.scale)
        return op

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return super().matvec(v)
        v = v.to(dtype=self.layout.dtype, device=self.layout.device)
        return self.scale * super().matvec(self.scale * v)


def _top_eigenvector(
    obj: Objective, f: FunctionalObjective, theta: TensorDict, ball: Ball, seed: int
) -> tuple[TensorDict | None, int]:
    """The top eigenvector of ``T H T`` (the Hessian in ``delta``) and the products it took.

    On a quadratic at its minimum the maximiser over an L2 ball lies along it, so the ascent
    starts at the answer; elsewhere it is where the loss curves up fastest. The solver of
    :func:`lossvista.curvature.hessian_eigs` (Lanczos) runs at most :data:`EIGEN_START_STEPS`
    steps with an exact backend; a start is only a start, so an unconverged vector is used as it
    is. ``None`` when no exact backend works for the model (with a warning).
    """
    failures, products = [], 0
    for backend in _EIGEN_BACKENDS:
        op: _BallHessian | None = None
        try:
            op = _BallHessian.on(obj, f, theta, ball, backend)
            result = eigs_of(op, 1, max_iter=EIGEN_START_STEPS, seed=seed, warn=False)
        except LossvistaError:
            raise  # the user's own error (data, model), already explained
        except Exception as exc:  # a kernel without this derivative: any exception type
            failures.append(f"{backend}: {type(exc).__name__}: {str(exc).strip()[:200]}")
            continue
        finally:
            if op is not None:
                products += op.n_hvp
                op.release()
        vector = dict(result.vectors[0])
        if all(bool(torch.isfinite(t).all()) for t in vector.values()):
            return cast_like(vector, theta), products
        failures.append(f"{backend}: the eigenvector is not finite")
    warnings.warn(
        "sharpness: the Hessian eigenvector start was skipped ("
        + "; ".join(failures)
        + "); the ascent started from zero and the random points only",
        LossvistaWarning,
        stacklevel=caller_stacklevel(),
    )
    return None, products
