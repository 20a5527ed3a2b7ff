"""Sharpness: how much the loss rises in a neighbourhood of the parameters.

One convention for every kind: the value is a **loss increase** over the loss at the parameters
``theta`` themselves, measured over the objective's selected parameters (``params=``) only;
positive values mean sharper.

- ``"worst"``: ``max_{||eps||_p <= rho} L(theta + eps) - L(theta)`` over an L2 (``norm="l2"``)
  or L-infinity (``norm="linf"``) ball.
- ``"adaptive"`` (Kwon et al. 2021, "ASAM"): the same maximum over the scale-invariant ball
  ``{eps : ||T^-1 eps||_p <= rho}`` with ``T = diag(|theta| + eta)``. Rescaling the weights of a
  ReLU network so that its function does not change (``W1 -> a W1``, ``W2 -> W2 / a``) rescales
  the ball with them, so the value does not change either, unlike the Hessian.
- ``"epsilon"`` (Keskar et al. 2017): the maximum over the box
  ``{eps : |eps_i| <= rho (|theta_i| + 1)}``; ``.keskar`` also gives their normalised number
  ``100 (max L - L) / (1 + L)``.
- ``"average"``: ``E_eps[L(theta + eps)] - L(theta)`` with Gaussian noise of standard deviation
  ``rho`` on every parameter (``noise="gaussian"``) or noise uniform on the sphere of radius
  ``rho`` (``noise="sphere"``); a Monte Carlo mean with its standard error.
- ``"hessian"``: ``rho^2 lambda_max / 2``, the second-order prediction of the worst-case L2 value
  at a minimum; ``.lambda_max`` holds the top Hessian eigenvalue itself.

**The maxima are lower bounds.** They come from projected gradient ascent (exact gradients over
all the data, :func:`lossvista._functional.functional`): from the zero perturbation and from
``restarts`` seeded random points inside the ball, each start takes up to ``steps`` steps, and the
best loss found anywhere is reported. Their ``stderr`` is 0, which means "not a Monte Carlo
estimate", not "exact". The ball is parametrised as ``eps = T * delta`` with ``||delta||_p <= rho``
(``T = 1`` for ``"worst"``); a step moves ``delta`` along the normalised gradient (L2) or its sign
(L-infinity; Keskar et al. used L-BFGS-B on the box) and projects back onto the ball. The
random starts matter at a critical point, where the gradient vanishes and the zero start cannot
move.

The step length adapts: it starts at ``step_size * rho``, doubles (up to ``4 rho``) after a step
that raised the loss and halves after one that did not, which is then not taken, so the loss
rises monotonically. A fixed schedule such as ``2.5 rho / steps`` (Madry et al. 2018) moves at most
``2.5 rho`` in total: enough to reach the boundary along a steady gradient, but at a minimum the
maximiser is found by turning on the sphere, and a capped total path leaves a fixed error however
many steps are taken. With large steps on the sphere the ascent becomes a power iteration, so on a
quadratic it converges to ``rho^2 lambda_max / 2`` geometrically.

**Average sharpness** uses antithetic pairs by default: every noise draw ``eps`` is evaluated at
``theta + eps`` and ``theta - eps`` and the pair mean is one sample. The pair cancels every odd
term of the Taylor expansion (the gradient term above all), so the estimate of a quadratic has
no first-order noise at all; the standard error is the spread of the pair means over the draws.
The points are evaluated by :class:`~lossvista.engine.PointEvaluator`, in blocks of draws that
fit :data:`NOISE_BLOCK_BYTES`; the draws do not depend on the block size.

Every kind is seeded (``seed``) and leaves the model exactly as it was, also after an exception.
For ``bn="recompute"`` the ascent kinds use BatchNorm statistics recomputed once at ``theta`` and
held fixed; the average kind recomputes them at every noisy point (as slices do).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from ._functional import FunctionalObjective, TensorDict, functional
from .engine import PointEvaluator
from .errors import InputError, NonFiniteLossWarning
from .objective import Objective

Kind = Literal["worst", "adaptive", "average", "epsilon", "hessian"]
KINDS: tuple[str, ...] = ("worst", "adaptive", "average", "epsilon", "hessian")
NORMS: tuple[str, ...] = ("l2", "linf")
NOISES: tuple[str, ...] = ("gaussian", "sphere")

#: Noise draws of one evaluation block take at most this many bytes (the engine copies them).
NOISE_BLOCK_BYTES = 128 * 1024**2
#: Ascent step bounds, in units of ``rho``.
MAX_STEP = 4.0
MIN_STEP = 1e-6

_ASCENT_KINDS = ("worst", "adaptive", "epsilon")


@dataclasses.dataclass(frozen=True, repr=False)
class Sharpness:
    """A sharpness value and everything that produced it.

    Attributes:
        value: the loss increase (see the module docstring for each kind). A lower bound for
            ``"worst"``, ``"adaptive"`` and ``"epsilon"``; a Monte Carlo mean for ``"average"``;
            ``rho^2 lambda_max / 2`` for ``"hessian"``.
        stderr: standard error of ``value`` for ``"average"``; 0 for the other kinds (the ascent
            kinds are lower bounds, not estimates with a spread).
        kind: ``"worst"``, ``"adaptive"``, ``"average"``, ``"epsilon"`` or ``"hessian"``.
        rho: the radius (ball kinds), the noise standard deviation per parameter
            (``"average"`` with Gaussian noise) or the sphere radius (``noise="sphere"``).
        settings: the other settings (norm, steps, restarts, step size, eta, noise, samples,
            antithetic, tol, seed, params), JSON-serialisable.
        base_loss: ``L(theta)``.
        perturbed_loss: the largest loss found (ascent kinds), the mean perturbed loss
            (``"average"``) or the predicted ``base_loss + value`` (``"hessian"``).
        n_evaluations: passes over the data: loss-and-gradient evaluations (ascent kinds), loss
            evaluations (``"average"``), or one loss evaluation plus the eigensolver's
            Hessian-vector products (``"hessian"``).
        lambda_max: the largest Hessian eigenvalue (``"hessian"`` only).
        keskar: ``100 (perturbed_loss - base_loss) / (1 + base_loss)`` (``"epsilon"`` only).
    """

    value: float
    stderr: float
    kind: str
    rho: float
    settings: dict[str, Any]
    base_loss: float
    perturbed_loss: float
    n_evaluations: int
    lambda_max: float | None = None
    keskar: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def __repr__(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in self.settings.items() if k != "params")
        extra = ""
        if self.lambda_max is not None:
            extra += f", lambda_max={self.lambda_max:.6g}"
        if self.keskar is not None:
            extra += f", keskar={self.keskar:.6g}"
        spread = f" ± {self.stderr:.2g}" if self.kind == "average" else ""
        return (
            f"Sharpness({self.kind}, value={self.value:.6g}{spread} (loss increase), "
            f"rho={self.rho:g}, base_loss={self.base_loss:.6g}, "
            f"perturbed_loss={self.perturbed_loss:.6g}{extra}, "
            f"{self.n_evaluations} evaluations, {detail})"
        )


def sharpness(
    obj: Objective,
    *,
    kind: Kind,
    rho: float,
    norm: Literal["l2", "linf"] | None = None,
    steps: int = 20,
    restarts: int = 2,
    step_size: float = 1.0,
    eta: float = 0.0,
    noise: Literal["gaussian", "sphere"] = "gaussian",
    samples: int = 100,
    antithetic: bool = True,
    tol: float = 1e-6,
    seed: int = 0,
) -> Sharpness:
    """The sharpness of an objective at its model's parameters, as a loss increase.

    Args:
        obj: the :class:`~lossvista.Objective`; only its selected parameters (``params=``) move.
        kind: ``"worst"``, ``"adaptive"``, ``"average"``, ``"epsilon"`` or ``"hessian"`` (see
            the module docstring for the exact definitions).
        rho: the ball radius (``"worst"``, ``"hessian"``), the radius in units of
            ``|theta| + eta`` (``"adaptive"``) or of ``|theta| + 1`` (``"epsilon"``), the noise
            standard deviation per parameter (``"average"``, Gaussian) or the sphere radius
            (``"average"``, ``noise="sphere"``). Must be positive.
        norm: ``"l2"`` (default) or ``"linf"`` ball for ``"worst"`` and ``"adaptive"``;
            ``"epsilon"`` is always a box (``"linf"``); other kinds take none.
        steps: ascent steps tried per start (each one loss-and-gradient evaluation).
        restarts: random starting points inside the ball, besides the zero perturbation.
        step_size: the first ascent step, in units of ``rho``.
        eta: added to ``|theta|`` in the adaptive scale ``T`` (Kwon et al. use 0.01); with 0 a
            parameter that is exactly zero cannot move.
        noise: ``"gaussian"`` or ``"sphere"`` (``"average"`` only).
        samples: noise draws (``"average"``; at least 2). With ``antithetic`` each draw costs
            two evaluations.
        antithetic: evaluate every draw at ``+eps`` and ``-eps`` (see the module docstring).
        tol: convergence tolerance of the eigensolver (``"hessian"``).
        seed: seed of the random starts, the noise and the eigensolver.

    Returns:
        A :class:`Sharpness`.

    Raises:
        InputError: an argument is out of range or does not apply to ``kind``.

    Example::

        obj = lv.Objective(model, F.cross_entropy, (X, y))
        lv.sharpness(obj, kind="worst", rho=0.05).value  # largest rise in an L2 ball (a bound)
        lv.sharpness(obj, kind="adaptive", rho=0.5, eta=0.01)  # the same, scale-invariant
        lv.sharpness(obj, kind="average", rho=0.01, samples=200)  # mean rise under noise ± stderr
    """
    _check_arguments(
        obj, kind, rho, norm, steps, restarts, step_size, eta, noise, samples, tol, seed
    )
    rho = float(rho)
    common = {"seed": int(seed), "params": list(obj.param_names)}
    if kind in _ASCENT_KINDS:
        p = "linf" if kind == "epsilon" else norm or "l2"
        settings = {"norm": p, "steps": steps, "restarts": restarts, "step_size": step_size}
        if kind == "adaptive":
            settings["eta"] = float(eta)
        base, best, evaluations = _worst_case(
            obj, kind, rho, p, steps, restarts, step_size * rho, eta, seed
        )
        keskar = 100.0 * (best - base) / (1.0 + base) if kind == "epsilon" else None
        return Sharpness(
            best - base, 0.0, kind, rho, {**settings, **common}, base, best, evaluations,
            keskar=keskar,
        )  # fmt: skip
    if kind == "average":
        settings = {"noise": noise, "samples": samples, "antithetic": bool(antithetic)}
        base, mean, stderr, evaluations = _average(obj, rho, noise, samples, antithetic, seed)
        return Sharpness(
            mean - base, stderr, kind, rho, {**settings, **common}, base, mean, evaluations
        )
    return _hessian(obj, rho, tol, seed, {"tol": tol, **common})


# -- worst case: projected gradient ascent ---------------------------------------------------------
class _Ball:
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
        length = _norm(delta)
        if length <= self.radius:
            return delta
        return {n: d * (self.radius / length) for n, d in delta.items()}

    def ascent_direction(self, grad: TensorDict) -> TensorDict | None:
        """Steepest ascent in ``delta`` for the ball's norm; ``None`` where the gradient is 0."""
        g = grad if self.scale is None else {n: self.scale[n] * grad[n] for n in grad}
        if self.p == "linf":
            signs = {n: t.sign() for n, t in g.items()}
            return signs if any(bool(s.any()) for s in signs.values()) else None
        length = _norm(g)
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
            return _cast({n: (2.0 * r - 1.0) * self.radius for n, r in raw.items()}, like)
        gauss = _gaussian(like, generator)
        size = sum(t.numel() for t in like.values())
        uniform = float(torch.rand((), generator=generator, dtype=torch.float64))
        radius = self.radius * uniform ** (1.0 / size)  # uniform in volume, not in radius
        return _cast({n: g * (radius / _norm(gauss)) for n, g in gauss.items()}, like)


def _worst_case(
    obj: Objective,
    kind: str,
    rho: float,
    p: str,
    steps: int,
    restarts: int,
    first_step: float,
    eta: float,
    seed: int,
) -> tuple[float, float, int]:
    """``(L(theta), best loss found, evaluations)`` over the zero start and random restarts."""
    generator = torch.Generator().manual_seed(int(seed))
    with functional(obj) as f:
        theta = f.params()
        ball = _Ball(rho, p, _scale(theta, kind, eta))
        zero = {n: torch.zeros_like(t) for n, t in theta.items()}
        starts = [zero] + [ball.random_start(theta, generator) for _ in range(restarts)]
        base, best, evaluations = math.nan, -math.inf, 0
        for index, start in enumerate(starts):
            first, loss, count = _ascend(f, theta, ball, start, steps, first_step)
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
    ball: _Ball,
    start: TensorDict,
    steps: int,
    first_step: float,
) -> tuple[float, float, int]:
    """Monotone projected ascent: ``(loss at the start, best loss, evaluations)``."""
    delta = ball.project(start)
    loss, grad = f.loss_and_grad(ball.point(theta, delta))
    start_loss, evaluations, step = loss, 1, first_step
    for _ in range(steps):
        direction = ball.ascent_direction(grad)
        if direction is None:
            break  # a critical point inside the ball: nothing to follow
        candidate = ball.project({n: d + step * direction[n] for n, d in delta.items()})
        if _norm({n: c - delta[n] for n, c in candidate.items()}) <= 1e-12 * ball.radius:
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


# -- average case: Monte Carlo over noise ----------------------------------------------------------
def _average(
    obj: Objective, rho: float, noise: str, samples: int, antithetic: bool, seed: int
) -> tuple[float, float, float, int]:
    """``(L(theta), mean perturbed loss, its standard error, evaluations)``."""
    theta = obj.parameters()
    generator = torch.Generator().manual_seed(int(seed))
    signs = (1.0, -1.0) if antithetic else (1.0,)
    nbytes = sum(t.numel() * t.element_size() for t in theta.values())
    block = max(1, min(samples, NOISE_BLOCK_BYTES // max(nbytes, 1)))
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


def _draw_noise(theta: TensorDict, noise: str, rho: float, generator: torch.Generator):
    """One noise vector over the selected parameters (float64 on the CPU, then cast)."""
    gauss = _gaussian(theta, generator)
    factor = rho / _norm(gauss) if noise == "sphere" else rho
    return _cast({n: g * factor for n, g in gauss.items()}, theta)


# -- Hessian-based ---------------------------------------------------------------------------------
def _hessian(obj: Objective, rho: float, tol: float, seed: int, settings: dict) -> Sharpness:
    from .curvature import hessian_eigs  # lazily: the eigensolver is only needed here

    eigs = hessian_eigs(obj, k=1, which="largest", tol=tol, seed=seed)
    lambda_max = float(np.asarray(eigs.values, dtype=np.float64)[0])
    base = obj.loss()
    value = 0.5 * rho**2 * lambda_max
    evaluations = 1 + int(getattr(eigs, "n_hvp", 0))  # one loss pass, then the products
    return Sharpness(
        value, 0.0, "hessian", rho, settings, base, base + value, evaluations, lambda_max=lambda_max
    )


# -- helpers ---------------------------------------------------------------------------------------
def _norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a dict of tensors seen as one vector (accumulated in float64)."""
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def _gaussian(like: Mapping[str, torch.Tensor], generator: torch.Generator) -> TensorDict:
    return {
        n: torch.randn(t.shape, generator=generator, dtype=torch.float64) for n, t in like.items()
    }


def _cast(tensors: TensorDict, like: Mapping[str, torch.Tensor]) -> TensorDict:
    return {n: t.to(dtype=like[n].dtype, device=like[n].device) for n, t in tensors.items()}


def _check_arguments(
    obj: Any,
    kind: Any,
    rho: Any,
    norm: Any,
    steps: Any,
    restarts: Any,
    step_size: Any,
    eta: Any,
    noise: Any,
    samples: Any,
    tol: Any,
    seed: Any,
) -> None:
    if not isinstance(obj, Objective):
        raise InputError(
            f"sharpness needs an Objective, got {type(obj).__name__}; build one with "
            "lv.Objective(model, loss_fn, data)"
        )
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    _positive("rho", rho)
    if norm is not None and norm not in NORMS:
        raise InputError(f"norm must be 'l2', 'linf' or None; got {norm!r}")
    if norm is not None and kind in ("average", "hessian"):
        raise InputError(
            f"norm= does not apply to kind={kind!r} (only to 'worst', 'adaptive' and 'epsilon'); "
            "leave it out"
        )
    if kind == "epsilon" and norm not in (None, "linf"):
        raise InputError(
            "kind='epsilon' is a box (Keskar et al. 2017): norm must be 'linf' or None"
        )
    if not _is_int(steps) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not _is_int(restarts) or restarts < 0:
        raise InputError(f"restarts must be an integer >= 0, got {restarts!r}")
    _positive("step_size", step_size)
    if not _is_real(eta) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    if noise not in NOISES:
        raise InputError(f"noise must be 'gaussian' or 'sphere', got {noise!r}")
    if not _is_int(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if not _is_int(samples) or samples < 2:
        raise InputError(
            f"samples must be an integer >= 2 (the standard error needs two), got {samples!r}"
        )
    _positive("tol", tol)


def _positive(name: str, value: Any) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
