"""Run an optimizer on a toy function, through ``torch.optim`` or the textbook update rule.

``run(fn, "adam", start=(-1, 2), steps=200, lr=0.05)`` returns an :class:`OptimizerPath` with
every point visited. The named optimizers exist twice: as ``torch.optim`` classes
(``implementation="torch"``, the default) and as the update rules written out in numpy
(``implementation="textbook"``, :mod:`lossvista.toys._textbook`); with the same
hyper-parameters the two give the same path (tested to 1e-10 in float64).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._checks import check_int
from ..errors import InputError
from . import _textbook
from ._toy_result import FunctionResult
from .functions import ToyFunction, as_point, function_from_state, function_state, get

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclasses.dataclass(frozen=True)
class _Optimizer:
    torch_class: type[torch.optim.Optimizer]
    rule: Callable[..., Any]
    defaults: dict[str, Any]
    #: ``lr`` default: the function's stable GD step, or this fraction of the plot's width.
    width_fraction: float | None = None


#: Gradient-noise standard deviation of ``"sgd"`` when ``noise`` is not given.
SGD_NOISE = 1.0
_OPTIMIZERS: dict[str, _Optimizer] = {
    "gd": _Optimizer(torch.optim.SGD, _textbook.SGDRule, {}),
    "sgd": _Optimizer(torch.optim.SGD, _textbook.SGDRule, {"noise": SGD_NOISE}),
    "momentum": _Optimizer(torch.optim.SGD, _textbook.SGDRule, {"momentum": 0.9}),
    "nesterov": _Optimizer(torch.optim.SGD, _textbook.SGDRule, {"momentum": 0.9, "nesterov": True}),
    "rmsprop": _Optimizer(torch.optim.RMSprop, _textbook.RMSpropRule, {}, 0.01),
    "adagrad": _Optimizer(torch.optim.Adagrad, _textbook.AdagradRule, {}, 0.1),
    "adam": _Optimizer(torch.optim.Adam, _textbook.AdamRule, {}, 0.01),
    "adamw": _Optimizer(torch.optim.AdamW, _textbook.adamw_rule, {"weight_decay": 1e-2}, 0.01),
}
IMPLEMENTATIONS = ("torch", "textbook")


def optimizer_names() -> tuple[str, ...]:
    """The optimizer names :func:`run` accepts."""
    return tuple(_OPTIMIZERS)


def default_hyperparameters(fn: ToyFunction | str, optimizer: str) -> dict[str, Any]:
    """The hyper-parameters ``run(fn, optimizer)`` uses when none are given.

    ``lr`` is ``fn.lr`` (a stable gradient-descent step, about ``1/L``) for ``gd``, ``sgd``,
    ``momentum`` and ``nesterov``. Adaptive methods move about ``lr`` per step whatever the
    gradient's size, so theirs is a fraction of the plot's width: 1% for ``rmsprop``, ``adam``
    and ``adamw``, 10% for ``adagrad`` (whose steps shrink like ``1/sqrt(t)``). ``momentum`` and
    ``nesterov`` use momentum 0.9; ``sgd`` adds Gaussian gradient noise of standard deviation
    ``noise = 1.0``; ``adamw`` has PyTorch's weight decay 1e-2. Everything else is PyTorch's
    default.
    """
    fn = get(fn)
    spec = _spec(optimizer)
    if spec.width_fraction is None:
        lr = fn.lr
    else:
        (xmin, xmax), (ymin, ymax) = fn.bounds
        lr = spec.width_fraction * max(xmax - xmin, ymax - ymin)
    return {"lr": lr, **spec.defaults}


@dataclasses.dataclass(eq=False, repr=False)
class OptimizerPath(FunctionResult):
    """The points an optimizer visited on a toy function.

    A result (kind ``"toy_optimizer_path"``): ``save`` writes an HDF5 file that
    ``lossvista.load`` reads back; the function is stored by its name and parameters, so
    ``save`` raises :class:`~lossvista.InputError` for a function made by hand (see
    :func:`~lossvista.toys.functions.check_registered`).

    Attributes:
        points: ``(steps + 1, 2)``, the start first.
        values: ``(steps + 1,)`` the function at ``points`` (float64).
        name: the label (in races, legends and tables).
        optimizer: the optimizer's name (or class name; ``"simulated_annealing"``, ...).
        hyperparameters: everything that set its steps (including ``noise`` when not 0).
        function: the toy function.
        implementation: ``"torch"``, ``"textbook"`` or ``"search"``.
        seed: the seed of the gradient noise (or of the search).
        wall_time: seconds the steps took.
    """

    points: np.ndarray
    values: np.ndarray
    name: str
    optimizer: str
    hyperparameters: dict[str, Any]
    function: ToyFunction
    implementation: str = "torch"
    seed: int | None = None
    wall_time: float = 0.0

    result_kind = "toy_optimizer_path"
    file_format = "hdf5"

    @property
    def steps(self) -> int:
        """Number of steps (``len(points) - 1``)."""
        return len(self.points) - 1

    @property
    def final_point(self) -> np.ndarray:
        """The last point ``(2,)``."""
        return self.points[-1]

    @property
    def final_value(self) -> float:
        """The function at the last point."""
        return float(self.values[-1])

    @property
    def best_value(self) -> float:
        """The smallest finite value on the path (NaN when there is none)."""
        finite = self.values[np.isfinite(self.values)]
        return float(finite.min()) if finite.size else math.nan

    def converged_step(self, tol: float = 1e-6, *, target: float | None = None) -> int | None:
        """The first step whose value is within ``tol`` of ``target``, or None.

        Args:
            tol: the allowed gap ``value - target``.
            target: by default the function's global minimum value (None for a function
                without minima, which never converges).
        """
        target = self.function.global_minimum_value if target is None else target
        if target is None:
            return None
        hits = np.flatnonzero(np.isfinite(self.values) & (self.values - target <= tol))
        return int(hits[0]) if hits.size else None

    def reached_minimum(self, fn: ToyFunction | None = None, *, tol: float = 1e-2) -> int | None:
        """Index (in ``fn.minima``) of the minimum the path ended within ``tol`` of, or None.

        Args:
            fn: the function whose minima count; the path's own by default.
            tol: the largest distance from the final point to the minimum.
        """
        return (self.function if fn is None else fn).nearest_minimum(self.final_point, tol)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The path over the function's contours (its bounds are the axis limits); returns the
        figure. Drawn by :func:`lossvista.plot.toys.plot_optimizer_path`."""
        from ..plot.toys import plot_optimizer_path

        return plot_optimizer_path(self, ax)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["function"] = function_state(self.function)
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> OptimizerPath:
        return cls(**{**state, "function": function_from_state(state["function"])})

    def _summary(self) -> list[tuple[str, Any]]:
        x, y = self.final_point
        settings = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters.items() if _number(v))
        return [
            ("name", self.name),
            ("function", self.function.name),
            ("optimizer", self.optimizer),
            ("hyperparameters", settings),
            ("steps", self.steps),
            ("final_value", self.final_value),
            ("final_point", f"({x:.6g}, {y:.6g})"),
            ("best_value", self.best_value),
            ("steps_to_tol (1e-6)", self.converged_step()),
            ("reached_minimum", self.reached_minimum()),
        ]


def run(
    fn: ToyFunction | str,
    optimizer: str | type[torch.optim.Optimizer],
    *,
    start: tuple[float, float] | None = None,
    steps: int = 100,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    implementation: str = "torch",
    name: str | None = None,
    **hyperparameters: Any,
) -> OptimizerPath:
    """Run ``steps`` optimizer steps on ``fn`` from ``start``.

    Args:
        fn: a :class:`ToyFunction` or its name.
        optimizer: ``"gd"``, ``"sgd"`` (gradient plus Gaussian noise), ``"momentum"``,
            ``"nesterov"``, ``"rmsprop"``, ``"adagrad"``, ``"adam"``, ``"adamw"``, or any
            ``torch.optim.Optimizer`` class (called with the point and ``hyperparameters``;
            closures are supported, so ``torch.optim.LBFGS`` works).
        start: the first point; ``fn.start`` by default.
        steps: number of optimizer steps (the path has ``steps + 1`` points).
        dtype: the floating-point type the optimizer works in.
        seed: seed of the gradient noise.
        implementation: ``"torch"`` (``torch.optim``) or ``"textbook"`` (the update rules in
            numpy; named optimizers only).
        name: the path's label; the optimizer's name by default.
        **hyperparameters: passed to the optimizer (``lr``, ``momentum``, ``betas``, ...), over
            :func:`default_hyperparameters` for named ones. ``noise`` (any optimizer) adds
            Gaussian noise of that standard deviation to every gradient, drawn from
            ``numpy.random.default_rng(seed)``.

    Returns:
        The :class:`OptimizerPath`; values are evaluated in float64 at the points visited.

    Raises:
        InputError: an unknown optimizer, implementation or hyper-parameter, a bad start or
            step count.
    """
    fn = get(fn)
    start_point = as_point(fn.start if start is None else start)
    steps = check_int(steps, "steps", 0)
    if implementation not in IMPLEMENTATIONS:
        raise InputError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if isinstance(optimizer, str):
        label = optimizer
        settings = {**default_hyperparameters(fn, optimizer), **hyperparameters}
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        if implementation != "torch":
            raise InputError(f"{optimizer.__name__} has no textbook rule; use a named optimizer")
        label, settings = optimizer.__name__.lower(), dict(hyperparameters)
    else:
        raise InputError(
            f"optimizer must be one of {list(optimizer_names())} or a torch.optim.Optimizer "
            f"class, got {optimizer!r}"
        )
    noise = float(settings.pop("noise", 0.0))
    if not (math.isfinite(noise) and noise >= 0):
        raise InputError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    gradient = _Gradient(fn, dtype, noise, seed)
    # A class with the textbook implementation was refused above: textbook means a name here.
    if implementation == "textbook" and isinstance(optimizer, str):
        rule = _build(_spec(optimizer).rule, settings, label)
        points, wall_time = _run_textbook(gradient, rule, start_point, steps)
    else:
        torch_class = _spec(optimizer).torch_class if isinstance(optimizer, str) else optimizer
        points, wall_time = _run_torch(gradient, torch_class, settings, start_point, steps, label)
    if noise:
        settings["noise"] = noise
    with np.errstate(all="ignore"):
        values = fn.evaluate(points)
    return OptimizerPath(
        points=points,
        values=values,
        name=label if name is None else name,
        optimizer=label,
        hyperparameters=settings,
        function=fn,
        implementation=implementation,
        seed=seed,
        wall_time=wall_time,
    )


# -- the two implementations ---------------------------------------------------------------------
class _Gradient:
    """The gradient of ``fn`` by autograd, plus seeded Gaussian noise; one draw per call."""

    def __init__(self, fn: ToyFunction, dtype: torch.dtype, noise: float, seed: int):
        self.fn, self.dtype, self.noise = fn, dtype, noise
        self.rng = np.random.default_rng(seed)

    def add_noise(self, grad: torch.Tensor) -> torch.Tensor:
        if self.noise:
            grad.add_(torch.as_tensor(self.rng.normal(0.0, self.noise, size=2), dtype=self.dtype))
        return grad

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.add_noise(self.fn.grad(torch.tensor(x, dtype=self.dtype))).numpy()


def _run_torch(
    gradient: _Gradient,
    torch_class: type[torch.optim.Optimizer],
    settings: dict[str, Any],
    start: np.ndarray,
    steps: int,
    label: str,
) -> tuple[np.ndarray, float]:
    """The points visited and the seconds the steps took (building the optimizer excluded: the
    first ``torch.optim`` object of a session takes a second of imports)."""
    x = torch.tensor(start, dtype=gradient.dtype, requires_grad=True)
    optimizer = _build(torch_class, {"params": [x], **settings}, label)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = gradient.fn(x)
        loss.backward()
        if x.grad is None:  # backward() fills it: the loss depends on x
            raise RuntimeError(f"{label}: the loss has no gradient with respect to the point")
        gradient.add_noise(x.grad)
        return loss

    points = np.empty((steps + 1, 2))
    points[0] = start
    began = time.perf_counter()
    for step in range(1, steps + 1):
        optimizer.step(closure)
        points[step] = x.detach().numpy()
    return points, time.perf_counter() - began


def _run_textbook(
    gradient: _Gradient, rule: Any, start: np.ndarray, steps: int
) -> tuple[np.ndarray, float]:
    x = start.astype(torch.empty(0, dtype=gradient.dtype).numpy().dtype)  # numpy's dtype
    points = np.empty((steps + 1, 2))
    points[0] = start
    began = time.perf_counter()
    with np.errstate(all="ignore"):  # a diverging path (x^2 - y^2) overflows to inf, as torch
        for step in range(1, steps + 1):
            x = rule.step(x, gradient(x))
            points[step] = x
    return points, time.perf_counter() - began


def _build(factory: Callable[..., Any], settings: dict[str, Any], label: str) -> Any:
    """``factory(**settings)``, with the optimizer's complaints re-raised as :class:`InputError`."""
    try:
        return factory(**settings)
    except (TypeError, ValueError) as exc:
        shown = {k: v for k, v in settings.items() if k != "params"}
        raise InputError(f"{label}: cannot use hyper-parameters {shown}: {exc}") from exc


def _spec(optimizer: str) -> _Optimizer:
    spec = _OPTIMIZERS.get(optimizer) if isinstance(optimizer, str) else None
    if spec is None:
        raise InputError(f"unknown optimizer {optimizer!r}; choose one of {list(_OPTIMIZERS)}")
    return spec


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
