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
all the data, :func:`lossvista._functional.functional`): from the zero perturbation, from the top
eigenvector of the Hessian placed on the ball's boundary with both signs (``eigen_start``), and
from ``restarts`` seeded random points inside the ball; each start takes up to ``ascent_steps``
steps, and the best loss found anywhere is reported. Their ``stderr`` is 0, which means "not a
Monte Carlo estimate", not "exact". The ball is parametrised as ``eps = T * delta`` with
``||delta||_p <= rho`` (``T = 1`` for ``"worst"``); a step moves ``delta`` along the normalised
gradient (L2) or its sign (L-infinity; Keskar et al. used L-BFGS-B on the box) and projects back
onto the ball. At a critical point the gradient vanishes and the zero start cannot move; there
the eigenvector start (the top eigenvector of ``T H T``, the Hessian in ``delta``, from at most
:data:`EIGEN_START_STEPS` Lanczos steps) is where the loss curves up fastest. At the minimum of a
quadratic the L2 maximiser lies along it, so the value is exact to the ascent's tolerance; the
random starts cover what the second-order picture misses. ``settings["converged"]`` (also
:attr:`Sharpness.converged`) says whether the ascent that found the value ended at a stationary
point of the ball (the relative Frank-Wolfe gap ``1 - <g, delta> / (rho ||g||_*)`` at most
``tol``, or a point no step can improve; see :mod:`._ascent`); when it did not, more
``ascent_steps`` may raise the value.

The step length adapts: it starts at ``step_size * rho``, doubles (up to ``4 rho``) after a step
that raised the loss and halves after one that did not, which is then not taken, so the loss
rises monotonically. A fixed schedule such as ``2.5 rho / ascent_steps`` (Madry et al. 2018)
moves at most ``2.5 rho`` in total: enough to reach the boundary along a steady gradient, but at a
minimum the maximiser is found by turning on the sphere, and a capped total path leaves a fixed
error however many steps are taken. With large steps on the sphere the ascent becomes a power iteration, so on a
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

This module holds the result and the verb; the estimators are private: projected ascent in
:mod:`._ascent`, the Monte Carlo average in :mod:`._noise`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from .._checks import check_int, renamed
from .._result import Result
from ..errors import InputError
from ..objective import Objective
from ._ascent import EIGEN_START_STEPS, MAX_STEP, MIN_STEP, worst_case
from ._noise import average

__all__ = [
    "DEFAULT_ASCENT_STEPS",
    "EIGEN_START_STEPS",
    "KINDS",
    "MAX_STEP",
    "MIN_STEP",
    "NOISES",
    "NOISE_BLOCK_BYTES",
    "NORMS",
    "Kind",
    "Sharpness",
    "sharpness",
]

Kind = Literal["worst", "adaptive", "average", "epsilon", "hessian"]
KINDS: tuple[str, ...] = ("worst", "adaptive", "average", "epsilon", "hessian")
NORMS: tuple[str, ...] = ("l2", "linf")
NOISES: tuple[str, ...] = ("gaussian", "sphere")

#: Noise draws of one evaluation block take at most this many bytes (the engine copies them).
NOISE_BLOCK_BYTES = 128 * 1024**2
#: Gradient-ascent steps per start when ``ascent_steps`` is not given.
DEFAULT_ASCENT_STEPS = 20

_ASCENT_KINDS = ("worst", "adaptive", "epsilon")
#: What ``value`` is, per kind (a row of the notebook view).
_MEANING = {
    "worst": "a lower bound (projected gradient ascent)",
    "adaptive": "a lower bound (projected gradient ascent)",
    "epsilon": "a lower bound (projected gradient ascent)",
    "average": "a Monte Carlo mean (± stderr)",
    "hessian": "rho^2 lambda_max / 2 (second-order prediction)",
}
#: Labels of settings whose recorded key is not the argument's name. ``"steps"`` stays the key
#: (summaries written by older versions and the command line's JSON use it); the argument is
#: ``ascent_steps``, because ``steps`` means grid points everywhere else in lossvista.
_SETTING_LABELS = {"steps": "ascent_steps"}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Sharpness(Result):
    """A sharpness value and everything that produced it.

    ``save`` writes a JSON ``lossvista-result`` file (kind ``"sharpness"``) that
    ``lossvista.load`` reads back; ``as_dict()`` is strict JSON (a NaN value becomes ``None``).

    Attributes:
        value: the loss increase (see the module docstring for each kind). A lower bound for
            ``"worst"``, ``"adaptive"`` and ``"epsilon"``; a Monte Carlo mean for ``"average"``;
            ``rho^2 lambda_max / 2`` for ``"hessian"``.
        stderr: standard error of ``value`` for ``"average"``; 0 for the other kinds (the ascent
            kinds are lower bounds, not estimates with a spread).
        kind: ``"worst"``, ``"adaptive"``, ``"average"``, ``"epsilon"`` or ``"hessian"``.
        rho: the radius (ball kinds), the noise standard deviation per parameter
            (``"average"`` with Gaussian noise) or the sphere radius (``noise="sphere"``).
        settings: the other settings, JSON-serialisable: ``norm``, ``steps`` (the
            ``ascent_steps`` argument), ``restarts``, ``step_size``, ``eigen_start`` and ``eta``
            (ascent kinds), ``noise``, ``samples`` and ``antithetic`` (``"average"``), ``tol``
            (ascent kinds and ``"hessian"``), ``seed`` and ``params`` (every kind); and how it
            went: ``converged`` (ascent kinds and ``"hessian"``, see :attr:`converged`).
        base_loss: ``L(theta)``.
        perturbed_loss: the largest loss found (ascent kinds), the mean perturbed loss
            (``"average"``) or the predicted ``base_loss + value`` (``"hessian"``).
        n_evaluations: passes over the data: loss-and-gradient evaluations plus the
            Hessian-vector products of the eigenvector start (ascent kinds), loss evaluations
            (``"average"``), or one loss evaluation plus the eigensolver's Hessian-vector
            products (``"hessian"``).
        lambda_max: the largest Hessian eigenvalue (``"hessian"`` only).
        keskar: ``100 (perturbed_loss - base_loss) / (1 + base_loss)`` (``"epsilon"`` only).
    """

    result_kind = "sharpness"
    file_format = "json"

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

    @property
    def converged(self) -> bool | None:
        """Whether the ascent that found ``value`` converged (ascent kinds), or the eigensolver
        did (``"hessian"``); ``None`` for ``"average"`` and results saved before it was
        recorded. An ascent that did not converge may find more with more ``ascent_steps``."""
        converged = self.settings.get("converged")
        return None if converged is None else bool(converged)

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [("kind", self.kind), ("value", self.value)]
        if self.kind == "average":
            rows.append(("stderr", self.stderr))
        rows.append(("value is", _MEANING.get(self.kind, "a loss increase")))
        rows.append(("rho", self.rho))
        if "norm" in self.settings:
            rows.append(("norm", self.settings["norm"]))
        rows += [("base_loss", self.base_loss), ("perturbed_loss", self.perturbed_loss)]
        if self.lambda_max is not None:
            rows.append(("lambda_max", self.lambda_max))
        if self.keskar is not None:
            rows.append(("keskar", self.keskar))
        rows.append(("n_evaluations", self.n_evaluations))
        rows += [
            (_SETTING_LABELS.get(key, key), value)
            for key, value in self.settings.items()
            if key not in ("norm", "params")
        ]
        if "params" in self.settings:
            rows.append(("params", ", ".join(map(str, self.settings["params"]))))
        return rows

    def __repr__(self) -> str:
        detail = ", ".join(
            f"{_SETTING_LABELS.get(k, k)}={v}" for k, v in self.settings.items() if k != "params"
        )
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
            f"{self.n_evaluations} evaluations{', ' + detail if detail else ''})"
        )


@renamed(steps="ascent_steps")
def sharpness(
    obj: Objective,
    *,
    kind: Kind,
    rho: float,
    norm: Literal["l2", "linf"] | None = None,
    ascent_steps: int | None = None,
    restarts: int = 2,
    step_size: float = 1.0,
    eta: float = 0.0,
    noise: Literal["gaussian", "sphere"] = "gaussian",
    samples: int = 100,
    antithetic: bool = True,
    tol: float = 1e-6,
    seed: int = 0,
    eigen_start: bool = True,
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
        ascent_steps: gradient-ascent steps tried per start (each one loss-and-gradient
            evaluation); default :data:`DEFAULT_ASCENT_STEPS` (20). Recorded in ``settings`` as
            ``"steps"``.
        restarts: random starting points inside the ball, besides the zero perturbation.
        step_size: the first ascent step, in units of ``rho``.
        eta: added to ``|theta|`` in the adaptive scale ``T`` (Kwon et al. use 0.01); with 0 a
            parameter that is exactly zero cannot move.
        noise: ``"gaussian"`` or ``"sphere"`` (``"average"`` only).
        samples: noise draws (``"average"``; at least 2). With ``antithetic`` each draw costs
            two evaluations.
        antithetic: evaluate every draw at ``+eps`` and ``-eps`` (see the module docstring).
        tol: convergence tolerance of the eigensolver (``"hessian"``) and of the ascent (the
            relative Frank-Wolfe gap; ascent kinds).
        seed: seed of the random starts, the noise and the eigensolvers.
        eigen_start: also start the ascent from the top Hessian eigenvector of the ball's
            coordinates, on the boundary with both signs (ascent kinds; at most
            :data:`EIGEN_START_STEPS` Hessian-vector products, counted in ``n_evaluations``).

    ``steps=`` is the deprecated name of ``ascent_steps`` (in lossvista ``steps`` means grid
    points); it warns with a :class:`DeprecationWarning`.

    Returns:
        A :class:`Sharpness`.

    Raises:
        InputError: an argument is out of range or does not apply to ``kind``, or both
            ``ascent_steps`` and ``steps`` were given.

    Example::

        obj = lv.Objective(model, F.cross_entropy, (X, y))
        lv.sharpness(obj, kind="worst", rho=0.05).value  # largest rise in an L2 ball (a bound)
        lv.sharpness(obj, kind="adaptive", rho=0.5, eta=0.01)  # the same, scale-invariant
        lv.sharpness(obj, kind="average", rho=0.01, samples=200)  # mean rise under noise ± stderr
    """
    ascent_steps = DEFAULT_ASCENT_STEPS if ascent_steps is None else ascent_steps
    _check_arguments(
        obj, kind, rho, norm, restarts, step_size, eta, noise, samples, tol, seed, eigen_start
    )
    ascent_steps = check_int(ascent_steps, "ascent_steps", minimum=1)
    rho = float(rho)
    common = {"seed": int(seed), "params": list(obj.param_names)}
    if kind in _ASCENT_KINDS:
        p = "linf" if kind == "epsilon" else norm or "l2"
        settings: dict[str, Any] = {
            "norm": p,
            "steps": ascent_steps,
            "restarts": restarts,
            "step_size": step_size,
        }
        if kind == "adaptive":
            settings["eta"] = float(eta)
        settings.update(tol=float(tol), eigen_start=bool(eigen_start))
        outcome = worst_case(
            obj, kind, rho, p, ascent_steps, restarts, step_size * rho, eta, seed, float(tol),
            bool(eigen_start),
        )  # fmt: skip
        base, best = outcome.base, outcome.best
        keskar = 100.0 * (best - base) / (1.0 + base) if kind == "epsilon" else None
        settings = {**settings, **common, "converged": outcome.converged}
        return Sharpness(
            best - base, 0.0, kind, rho, settings, base, best, outcome.evaluations, keskar=keskar
        )
    if kind == "average":
        settings = {"noise": noise, "samples": samples, "antithetic": bool(antithetic)}
        # NOISE_BLOCK_BYTES is read here, at call time, so that it can be changed on this module.
        base, mean, stderr, evaluations = average(
            obj, rho, noise, samples, antithetic, seed, NOISE_BLOCK_BYTES
        )
        return Sharpness(
            mean - base, stderr, kind, rho, {**settings, **common}, base, mean, evaluations
        )
    return _hessian(obj, rho, tol, seed, {"tol": tol, **common})


# -- Hessian-based ---------------------------------------------------------------------------------
def _hessian(obj: Objective, rho: float, tol: float, seed: int, settings: dict) -> Sharpness:
    from ..curvature import hessian_eigs  # lazily: the eigensolver is only needed here

    eigs = hessian_eigs(obj, k=1, which="largest", tol=tol, seed=seed)
    lambda_max = float(np.asarray(eigs.values, dtype=np.float64)[0])
    base = obj.loss()
    value = 0.5 * rho**2 * lambda_max
    evaluations = 1 + int(getattr(eigs, "n_hvp", 0))  # one loss pass, then the products
    settings = {**settings, "converged": bool(eigs.converged[0])}
    return Sharpness(
        value, 0.0, "hessian", rho, settings, base, base + value, evaluations, lambda_max=lambda_max
    )


# -- argument checks -------------------------------------------------------------------------------
def _check_arguments(
    obj: Any,
    kind: Any,
    rho: Any,
    norm: Any,
    restarts: Any,
    step_size: Any,
    eta: Any,
    noise: Any,
    samples: Any,
    tol: Any,
    seed: Any,
    eigen_start: Any,
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
    check_int(restarts, "restarts", minimum=0)
    _positive("step_size", step_size)
    if not _is_real(eta) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    if noise not in NOISES:
        raise InputError(f"noise must be 'gaussian' or 'sphere', got {noise!r}")
    check_int(seed, "seed")
    if (
        isinstance(samples, (bool, np.bool_))
        or not isinstance(samples, (int, np.integer))
        or (samples < 2)
    ):
        raise InputError(
            f"samples must be an integer >= 2 (the standard error needs two), got {samples!r}"
        )
    _positive("tol", tol)
    if not isinstance(eigen_start, (bool, np.bool_)):
        raise InputError(f"eigen_start must be True or False, got {eigen_start!r}")


def _positive(name: str, value: Any) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
