"""Live monitoring inside a training loop: a small plane, lambda_max and sharpness on a schedule.

:class:`LandscapeProbe` is configured once and called at every step of the user's loop::

    probe = lv.LandscapeProbe(
        lambda: lv.Objective(model, F.cross_entropy, (x_val, y_val)),
        every=500, sinks=SummaryWriter("runs/probe"),
    )
    for step, (x, y) in enumerate(loader):
        ...  # forward, backward, optimizer.step()
        probe.maybe_run(step)

On a scheduled step it builds the objective (a zero-argument factory is called every time, so it
can take the current batch), draws two fresh filter-normalised random directions at the current
weights (seeded: the same Gaussian draw every time, normalised to the weights of the moment) and
computes, each with cheap defaults and each can be switched off with ``None``:

- a plane (``lv.plane``, ``plane=dict(steps=11, span=(-1, 1))``),
- the largest Hessian eigenvalue (``lv.hessian_eigs``, ``curvature=dict(k=1, tol=1e-3)``),
- the sharpness (``lv.sharpness``, ``sharpness=dict(kind="average", rho=0.01, samples=16)``).

It hands the :class:`ProbeResults` to its sinks (a TensorBoard ``SummaryWriter``, a Lightning
logger, a callable ``sink(step, results)``) and returns them. The model leaves bit for bit as it
came: parameters, buffers, ``requires_grad``, train/eval mode, ``.grad`` tensors, and the global
random state (so a training run with a probe draws the same dropout masks and batches as one
without), also when a computation raises. The first run states its cost before it starts
(points and products) and its measured time after (``progress=False`` silences both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from . import _tensorboard
from ._checks import axes, check_int, pair
from ._dist import single_process
from ._estimate import time_text
from ._restore import preserved
from .curvature import EigenResult, hessian_eigs
from .directions import random_directions
from .errors import InputError
from .landscape import Landscape
from .objective import Objective
from .sharpness import DEFAULT_ASCENT_STEPS, KINDS, Sharpness, sharpness
from .sharpness import _check_arguments as check_sharpness_arguments
from .slices import plane as plane_verb

__all__ = ["LandscapeProbe", "ProbeResults"]

#: The defaults of the three measurements (the probe's dict arguments update them).
PLANE_DEFAULTS: dict[str, Any] = {
    "steps": 11,
    "span": (-1.0, 1.0),
    "seed": 0,
    "norm": "filter",
    "ignore": ("bias", "bn"),
    "strategy": "loop",  # no timing trials inside a training loop; the same call, the same bits
}
CURVATURE_DEFAULTS: dict[str, Any] = {"k": 1, "which": "largest", "tol": 1e-3, "max_iter": 100}
SHARPNESS_DEFAULTS: dict[str, Any] = {"kind": "average", "rho": 0.01, "samples": 16}
_CURVATURE_KEYS = ("k", "which", "tol", "max_iter", "max_basis", "seed", "hvp_backend")
_SHARPNESS_SIGNATURE: inspect.Signature = inspect.signature(sharpness)
_SHARPNESS_KEYS = tuple(p for p in _SHARPNESS_SIGNATURE.parameters if p != "obj")


@dataclasses.dataclass(frozen=True)
class ProbeResults:
    """What one run of a :class:`LandscapeProbe` measured (``None`` where switched off).

    Attributes:
        step: the training step it ran at.
        plane: the 2-D :class:`~lossvista.Landscape` around the current weights.
        eigen: the :class:`~lossvista.EigenResult` (``eigen.largest[0]`` is lambda_max).
        sharpness: the :class:`~lossvista.Sharpness`.
        seconds: wall time of each part (``"plane"``, ``"curvature"``, ``"sharpness"``) and
            ``"total"``.
    """

    step: int
    plane: Landscape | None
    eigen: EigenResult | None
    sharpness: Sharpness | None
    seconds: dict[str, float]

    @property
    def lambda_max(self) -> float | None:
        """The largest Hessian eigenvalue, when it was computed."""
        if self.eigen is None or not len(self.eigen.largest):
            return None
        return float(self.eigen.largest[0])

    def parts(self) -> tuple[Any, ...]:
        """The results that were computed, in the order plane, eigen, sharpness."""
        return tuple(r for r in (self.plane, self.eigen, self.sharpness) if r is not None)


class LandscapeProbe:
    """Measure the landscape around the current weights on a schedule, inside training.

    Args:
        objective: an :class:`~lossvista.Objective`, or a zero-argument callable returning one
            (called at every run, e.g. to take the current batch).
        every: run at the steps divisible by ``every`` (step 0 included).
        at: run at these steps too (with or without ``every``).
        plane: ``None``/``False`` to skip; ``True`` or a dict updating
            :data:`PLANE_DEFAULTS`: ``steps`` (per axis, or a pair), ``span``, ``seed``,
            ``norm`` and ``ignore`` of the random directions, the engine ``strategy``.
        curvature: ``None``/``False`` to skip; ``True`` or a dict updating
            :data:`CURVATURE_DEFAULTS` (arguments of :func:`~lossvista.hessian_eigs`: ``k``,
            ``which``, ``tol``, ``max_iter``, ``max_basis``, ``seed``, ``hvp_backend``).
        sharpness: ``None``/``False`` to skip; ``True`` or a dict of
            :func:`~lossvista.sharpness` arguments. Without ``kind`` it is
            :data:`SHARPNESS_DEFAULTS` (average sharpness, 16 antithetic noise draws); another
            ``kind`` needs its own ``rho``.
        sinks: one sink or a list: a ``SummaryWriter`` (or a folder to create one in), a
            Lightning logger (its TensorBoard writer when it has one, else ``log_metrics`` of
            the scalars), or a callable ``sink(step, results)``.
        progress: state the cost of the first run before it (points, products) and its
            measured time after, on standard error.

    Raises:
        InputError: bad arguments (here, before any training step is spent).
    """

    def __init__(
        self,
        objective: Objective | Callable[[], Objective],
        *,
        every: int | None = None,
        at: Iterable[int] | None = None,
        plane: bool | Mapping[str, Any] | None = True,
        curvature: bool | Mapping[str, Any] | None = True,
        sharpness: bool | Mapping[str, Any] | None = True,
        sinks: Any = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(objective, Objective) and not callable(objective):
            raise InputError(
                "objective must be an lv.Objective or a zero-argument callable returning one, "
                f"got {type(objective).__name__}"
            )
        self.objective = objective
        self.every = None if every is None else check_int(every, "every", 1)
        self.at = frozenset(_steps(at))
        if self.every is None and not self.at:
            raise InputError("the probe needs a schedule: pass every=N (steps) and/or at=[...]")
        self.plane = _plane_options(plane)
        self.curvature = _curvature_options(curvature)
        self.sharpness = _sharpness_options(sharpness)
        if self.plane is None and self.curvature is None and self.sharpness is None:
            raise InputError("plane, curvature and sharpness are all off: nothing to measure")
        self.sinks = _tensorboard.sinks(sinks)
        if not isinstance(progress, bool):
            raise InputError(f"progress must be True or False, got {progress!r}")
        self.progress = progress
        self.runs_ = 0

    def scheduled(self, step: int) -> bool:
        """Whether :meth:`maybe_run` measures at ``step``."""
        step = check_int(step, "step", 0)
        return step in self.at or (self.every is not None and step % self.every == 0)

    def maybe_run(self, step: int) -> ProbeResults | None:
        """:meth:`run` when ``step`` is on the schedule, else ``None`` (and nothing is done)."""
        return self.run(step) if self.scheduled(step) else None

    def run(self, step: int) -> ProbeResults:
        """Measure now, whatever the schedule; log to the sinks and return the results."""
        step = check_int(step, "step", 0)
        results = self.measure(step)
        for sink in self.sinks:
            _tensorboard.log_results(sink, step, results)
        return results

    def measure(self, step: int = 0) -> ProbeResults:
        """Measure now without logging (the Lightning callback logs itself)."""
        step = check_int(step, "step", 0)
        obj = self.objective() if not isinstance(self.objective, Objective) else self.objective
        if not isinstance(obj, Objective):
            raise InputError(
                f"the objective factory returned a {type(obj).__name__}, not an lv.Objective"
            )
        self._check_against(obj)
        directions = None
        if self.plane is not None:
            options = self.plane
            directions = random_directions(
                obj, 2, norm=options["norm"], ignore=options["ignore"], seed=options["seed"]
            )
        if self.progress and self.runs_ == 0:
            print(self.estimate(obj), file=sys.stderr)
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        # One process measures: a probe runs where the training loop calls it (often rank 0 of a
        # DDP job only), so it must never wait for the other ranks (lossvista._dist).
        with _untouched(obj), single_process():
            landscape = eigen = sharp = None
            if self.plane is not None and directions is not None:
                with _timed(seconds, "plane"):
                    landscape = plane_verb(
                        obj,
                        directions,
                        span=self.plane["span"],
                        steps=self.plane["steps"],
                        strategy=self.plane["strategy"],
                        progress=False,
                    )
            if self.curvature is not None:
                with _timed(seconds, "curvature"):
                    eigen = hessian_eigs(obj, **self.curvature)
            if self.sharpness is not None:
                with _timed(seconds, "sharpness"):
                    sharp = sharpness(obj, **self.sharpness)
        seconds["total"] = time.perf_counter() - started
        results = ProbeResults(step, landscape, eigen, sharp, seconds)
        if self.progress and self.runs_ == 0:
            print(_measured(results), file=sys.stderr)
        self.runs_ += 1
        return results

    def estimate(self, obj: Objective) -> str:
        """The cost of one run, stated before the first: points, products, evaluations."""
        parts = []
        if self.plane is not None:
            nx, ny = pair(self.plane["steps"], "steps")
            parts.append(f"a {nx} x {ny} plane ({nx * ny + 2} loss evaluations)")
        if self.curvature is not None:
            c = self.curvature
            pairs = c["k"] * (2 if c["which"] == "both" else 1)
            most = c["max_iter"] if c["max_iter"] is not None else max(300, 30 * pairs)
            what = (
                "lambda_max" if pairs == 1 and c["which"] == "largest" else f"{pairs} eigenvalues"
            )
            parts.append(f"{what} by Lanczos (at most {most + pairs} Hessian-vector products)")
        if self.sharpness is not None:
            parts.append(_sharpness_cost(self.sharpness))
        size = sum(t.numel() for t in obj.parameters().values())
        samples = "its data" if obj.n_samples is None else f"{obj.n_samples:,} samples"
        return (
            f"lossvista probe: each run computes {', '.join(parts)}, over {size:,} parameters "
            f"and {samples}; the time follows the first run"
        )

    def _check_against(self, obj: Objective) -> None:
        """What needs the objective, checked before any evaluation."""
        if self.curvature is not None:
            size = sum(t.numel() for t in obj.parameters().values())
            pairs = self.curvature["k"] * (2 if self.curvature["which"] == "both" else 1)
            if pairs > size:
                raise InputError(
                    f"curvature asks for {pairs} eigenpairs of a Hessian of size {size}; pass "
                    "a smaller k"
                )
        if self.sharpness is not None:
            # lv.sharpness checks its arguments itself, but only after the plane and the
            # curvature would have been spent: the same checks, now.
            bound = _SHARPNESS_SIGNATURE.bind(obj, **self.sharpness)
            bound.apply_defaults()
            wanted = inspect.signature(check_sharpness_arguments).parameters
            check_sharpness_arguments(**{name: bound.arguments[name] for name in wanted})
            if bound.arguments["ascent_steps"] is not None:
                check_int(bound.arguments["ascent_steps"], "ascent_steps", 1)


# -- options --------------------------------------------------------------------------------------
def _options(
    value: Any, name: str, defaults: Mapping[str, Any], keys: Iterable[str]
) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be None, False, True or a dict of options, got {value!r}")
    allowed = tuple(keys)
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise InputError(f"{name} has unknown options {unknown}; it takes {list(allowed)}")
    return {**defaults, **value}


def _plane_options(value: Any) -> dict[str, Any] | None:
    options = _options(value, "plane", PLANE_DEFAULTS, PLANE_DEFAULTS)
    if options is not None:
        axes(pair(options["span"], "span"), pair(options["steps"], "steps"), 2)  # checks both
        check_int(options["seed"], "plane seed")
        if options["strategy"] not in ("auto", "loop", "vmap"):
            raise InputError(
                f"plane strategy must be 'auto', 'loop' or 'vmap', got {options['strategy']!r}"
            )
    return options


def _curvature_options(value: Any) -> dict[str, Any] | None:
    options = _options(value, "curvature", CURVATURE_DEFAULTS, _CURVATURE_KEYS)
    if options is not None:
        options["k"] = check_int(options["k"], "curvature k", 1)
        if options["which"] not in ("largest", "smallest", "both"):
            raise InputError(
                f"curvature which must be 'largest', 'smallest' or 'both', got {options['which']!r}"
            )
        for name in ("max_iter", "max_basis"):
            if options.get(name) is not None:
                check_int(options[name], f"curvature {name}", 1)
        tol = options["tol"]
        if tol is not None and not (_is_real(tol) and 0 < tol < float("inf")):
            raise InputError(f"curvature tol must be a positive number or None, got {tol!r}")
        check_int(options.get("seed", 0), "curvature seed")
    return options


def _sharpness_options(value: Any) -> dict[str, Any] | None:
    given = _options(value, "sharpness", {}, _SHARPNESS_KEYS)
    if given is None:
        return None
    kind = given.get("kind", SHARPNESS_DEFAULTS["kind"])
    if kind not in KINDS:
        raise InputError(f"sharpness kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == SHARPNESS_DEFAULTS["kind"]:
        return {**SHARPNESS_DEFAULTS, **given}
    if "rho" not in given:
        raise InputError(f"sharpness kind={kind!r} needs its radius: pass rho= in sharpness")
    return dict(given)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _steps(at: Iterable[int] | None) -> list[int]:
    if at is None:
        return []
    if isinstance(at, (str, bytes, Mapping)) or not isinstance(at, Iterable):
        raise InputError(f"at must be a list of steps, got {at!r}")
    return [check_int(s, "a step in at", 0) for s in at]


# -- running ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _untouched(obj: Objective) -> Iterator[None]:
    """The model as it came (``params.preserved`` and the ``.grad`` tensors), the global random
    state as it was, gradients enabled (curvature needs them, also under ``no_grad``)."""
    model = obj.model
    devices = [obj.device.index or 0] if obj.device.type == "cuda" else []
    with (
        _grads_kept(model),
        preserved(model),
        torch.random.fork_rng(devices=devices),
        torch.enable_grad(),
    ):
        yield


@contextlib.contextmanager
def _grads_kept(model: nn.Module) -> Iterator[None]:
    saved = [
        (p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, grad, value in saved:
                p.grad = grad
                if grad is not None and value is not None and not torch.equal(grad, value):
                    grad.copy_(value)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - started


#: lv.sharpness's own defaults, so that the stated cost follows them.
_SHARPNESS_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(sharpness).parameters.items()
}


def _sharpness_cost(options: Mapping[str, Any]) -> str:
    kind = options["kind"]

    def given(name: str) -> Any:
        return options.get(name, _SHARPNESS_DEFAULTS[name])

    if kind == "average":
        samples = given("samples")
        draws = 2 * samples if given("antithetic") else samples
        return f"average sharpness ({draws + 1} loss evaluations)"
    if kind == "hessian":
        return "hessian sharpness (a Lanczos run of up to 300 Hessian-vector products)"
    steps = given("ascent_steps") or DEFAULT_ASCENT_STEPS
    starts = 1 + given("restarts") + (2 if given("eigen_start") else 0)
    return f"{kind} sharpness (at most {starts * steps} loss-and-gradient evaluations)"


def _measured(results: ProbeResults) -> str:
    parts = [f"{name} {time_text(s)}" for name, s in results.seconds.items() if name != "total"]
    counts = []
    if results.eigen is not None:
        counts.append(f"{results.eigen.n_hvp} Hessian-vector products")
    if results.sharpness is not None:
        counts.append(f"{results.sharpness.n_evaluations} sharpness evaluations")
    detail = f"; {', '.join(counts)}" if counts else ""
    return (
        f"lossvista probe: the first run took {time_text(results.seconds['total'])} "
        f"({', '.join(parts)}{detail})"
    )
