"""Derivative-free search on a toy function: simulated annealing and (parallel) grid search.

Both return a :class:`SearchResult` with ``best_params``, ``best_value`` and the ``history``;
``result.as_path()`` turns it into an :class:`~lossvista.toys.optimizers.OptimizerPath` so that
it can join an optimizer race.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import pickle
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._checks import check_int
from .._result import Result
from ..errors import InputError, LossvistaError
from ._toy_result import FunctionResult
from .functions import (
    Bounds,
    ToyFunction,
    as_point,
    bounds_holding,
    function_from_state,
    function_state,
    get,
    grid_axes,
)
from .optimizers import OptimizerPath

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Schedule = str | Callable[[int], float]
SCHEDULES = ("exponential", "linear")
#: Grid points evaluated per task: a fixed block, so results do not depend on ``workers``.
_BLOCK_POINTS = 16384


@dataclasses.dataclass(eq=False, repr=False)
class AnnealingHistory(Result):
    """Every state of a simulated-annealing chain (a result of kind ``"toy_annealing_history"``,
    saved as HDF5).

    Attributes:
        points: ``(steps + 1, 2)`` the chain's state after each step, the start first.
        values: ``(steps + 1,)`` the function there.
        temperatures: ``(steps,)`` the temperature of each step.
        accepted: ``(steps,)`` whether the step's proposal was accepted.
        proposals: ``(steps, 2)`` the proposed points.
    """

    points: np.ndarray
    values: np.ndarray
    temperatures: np.ndarray
    accepted: np.ndarray
    proposals: np.ndarray

    result_kind = "toy_annealing_history"
    file_format = "hdf5"

    @property
    def acceptance_rate(self) -> float:
        """The share of proposals accepted."""
        return float(self.accepted.mean()) if self.accepted.size else math.nan

    def _summary(self) -> list[tuple[str, Any]]:
        finite = self.values[np.isfinite(self.values)]
        return [
            ("steps", len(self.temperatures)),
            ("acceptance_rate", self.acceptance_rate),
            ("first_temperature", float(self.temperatures[0]) if self.temperatures.size else None),
            ("last_temperature", float(self.temperatures[-1]) if self.temperatures.size else None),
            ("final_value", float(self.values[-1])),
            ("lowest_value", float(finite.min()) if finite.size else None),
        ]


@dataclasses.dataclass(eq=False, repr=False)
class GridHistory(Result):
    """The values of a grid search: ``values[i, j] = f(xs[i], ys[j])`` (a result of kind
    ``"toy_grid_history"``, saved as HDF5)."""

    xs: np.ndarray
    ys: np.ndarray
    values: np.ndarray

    result_kind = "toy_grid_history"
    file_format = "hdf5"

    def _summary(self) -> list[tuple[str, Any]]:
        finite = self.values[np.isfinite(self.values)]
        return [
            ("points", f"{len(self.xs)} x {len(self.ys)}"),
            ("x", f"[{self.xs[0]:.6g}, {self.xs[-1]:.6g}]"),
            ("y", f"[{self.ys[0]:.6g}, {self.ys[-1]:.6g}]"),
            ("lowest_value", float(finite.min()) if finite.size else None),
        ]


#: ``SearchResult.method`` -> the type of its history.
_HISTORIES: dict[str, type[AnnealingHistory] | type[GridHistory]] = {
    "simulated_annealing": AnnealingHistory,
    "grid_search": GridHistory,
}


@dataclasses.dataclass(eq=False, repr=False)
class SearchResult(FunctionResult):
    """The outcome of :func:`simulated_annealing` or :func:`grid_search`.

    A result (kind ``"toy_search"``): ``save`` writes an HDF5 file, history included, that
    ``lossvista.load`` reads back; the function is stored by its name and parameters, so
    ``save`` raises :class:`~lossvista.InputError` for a function made by hand. A schedule given
    as a callable is stored by its name only.

    Attributes:
        method: ``"simulated_annealing"`` or ``"grid_search"``.
        best_params: ``(2,)`` the best point found.
        best_value: the function there.
        history: an :class:`AnnealingHistory` or a :class:`GridHistory`.
        function: the toy function.
        settings: the arguments that produced the result.
        evaluations: function evaluations spent.
        wall_time: seconds taken.
    """

    method: str
    best_params: np.ndarray
    best_value: float
    history: AnnealingHistory | GridHistory
    function: ToyFunction
    settings: dict[str, Any]
    evaluations: int
    wall_time: float

    result_kind = "toy_search"
    file_format = "hdf5"

    def as_path(self, name: str | None = None) -> OptimizerPath:
        """This search as a path, for races.

        Simulated annealing: the chain's states. Grid search: the best point so far after each
        evaluation, in the order a single process evaluates them (``xs`` outer, ``ys`` inner).
        """
        if isinstance(self.history, AnnealingHistory):
            points, values = self.history.points, self.history.values
        else:
            grid = np.stack(np.meshgrid(self.history.xs, self.history.ys, indexing="ij"), -1)
            flat = self.history.values.ravel()
            best = _running_argmin(np.where(np.isnan(flat), np.inf, flat))
            points, values = grid.reshape(-1, 2)[best], flat[best]
        label = {"simulated_annealing": "annealing", "grid_search": "grid"}[self.method]
        return OptimizerPath(
            points=points,
            values=values,
            name=label if name is None else name,
            optimizer=self.method,
            hyperparameters={k: v for k, v in self.settings.items() if _plain(v)},
            function=self.function,
            implementation="search",
            seed=self.settings.get("seed"),
            wall_time=self.wall_time,
        )

    def plot(self, ax: Axes | None = None) -> Figure:
        """The function's contours with the chain (annealing) or the grid's points (grid search),
        and the best point found; returns the figure. Drawn by
        :func:`lossvista.plot.toys.plot_search`."""
        from ..plot.toys import plot_search

        return plot_search(self, ax)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["history"] = self.history._state()
        state["function"] = function_state(self.function)
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> SearchResult:
        history = _HISTORIES.get(state["method"])
        if history is None:
            raise ValueError(f"unknown search method {state['method']!r}")
        return cls(
            **{
                **state,
                "history": history._from_state(state["history"]),
                "function": function_from_state(state["function"]),
            }
        )

    def _summary(self) -> list[tuple[str, Any]]:
        x, y = self.best_params
        rows: list[tuple[str, Any]] = [
            ("method", self.method),
            ("function", self.function.name),
            ("best_value", self.best_value),
            ("best_params", f"({x:.6g}, {y:.6g})"),
            ("evaluations", self.evaluations),
        ]
        if isinstance(self.history, AnnealingHistory):
            rows.append(("acceptance_rate", self.history.acceptance_rate))
        else:
            rows.append(("grid", f"{len(self.history.xs)} x {len(self.history.ys)}"))
        return rows


# -- simulated annealing -------------------------------------------------------------------------
def simulated_annealing(
    fn: ToyFunction | str,
    *,
    start: tuple[float, float] | None = None,
    steps: int = 2000,
    schedule: Schedule = "exponential",
    t0: float = 1.0,
    t_end: float = 1e-3,
    step_size: float | None = None,
    seed: int = 0,
    confine: bool = True,
    shrink: bool = True,
) -> SearchResult:
    """Metropolis simulated annealing with Gaussian proposals (Kirkpatrick et al., 1983).

    Step ``k`` (``0 <= k < steps``) proposes ``x' = x + s_k * N(0, I)`` and accepts it when
    ``f(x') <= f(x)``, or else with probability ``exp(-(f(x') - f(x)) / T_k)``. With ``shrink``
    the proposal width ``s_k = step_size * sqrt(T_k / T_0)`` narrows as the temperature falls,
    which keeps the acceptance rate in a quadratic basin about constant (an increase there is
    ``~ curvature * s_k^2``) and lets the cold chain settle to the bottom; without it
    ``s_k = step_size`` (the plain Metropolis chain).

    Args:
        fn: a :class:`ToyFunction` or its name.
        start: the first state; ``fn.start`` by default. A start outside ``fn.bounds`` is
            taken as it is: the region the chain is confined to grows to hold it (with a
            margin of 5% of the plot's width on the sides it crosses).
        steps: number of proposals.
        schedule: ``"exponential"`` (``T_k = t0 * (t_end / t0) ** (k / (steps - 1))``),
            ``"linear"`` (from ``t0`` down to ``t_end``) or a callable ``k -> T_k``. A
            temperature of 0 accepts improvements only.
        t0: first temperature (in units of the function's values).
        t_end: last temperature of the built-in schedules.
        step_size: standard deviation of the proposals; 5% of the plot's width by default.
        seed: seed of the ``numpy.random.default_rng`` that draws proposals and acceptances.
        confine: reject proposals outside ``fn.bounds`` (grown to hold the start; recorded
            in ``settings["bounds"]``). Rejected proposals are not evaluated.
        shrink: narrow the proposals with the temperature (see above).

    Returns:
        A :class:`SearchResult` whose history is an :class:`AnnealingHistory`.
    """
    fn = get(fn)
    x = as_point(fn.start if start is None else start)
    check_int(steps, "steps", 1)
    (xmin, xmax), (ymin, ymax) = fn.bounds
    if step_size is None:
        step_size = 0.05 * max(xmax - xmin, ymax - ymin)
    region = bounds_holding(fn.bounds, x)  # a start outside the plot still moves
    (xmin, xmax), (ymin, ymax) = region
    if not (math.isfinite(step_size) and step_size > 0):
        raise InputError(f"step_size must be a positive number, got {step_size!r}")
    temperatures = _temperatures(schedule, steps, t0, t_end)
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    widths = np.full(steps, step_size)
    if shrink and temperatures[0] > 0:
        widths *= np.sqrt(temperatures / temperatures[0])
    proposals_noise = widths[:, None] * rng.standard_normal((steps, 2))
    uniforms = rng.random(steps)
    points, values = np.empty((steps + 1, 2)), np.empty(steps + 1)
    proposals, accepted = np.empty((steps, 2)), np.zeros(steps, dtype=bool)
    points[0], values[0] = x, fn.evaluate(x)
    evaluations = 1
    for k in range(steps):
        proposals[k] = proposal = points[k] + proposals_noise[k]
        inside = xmin <= proposal[0] <= xmax and ymin <= proposal[1] <= ymax
        if confine and not inside:
            points[k + 1], values[k + 1] = points[k], values[k]
            continue
        value = float(fn.evaluate(proposal))
        evaluations += 1
        accepted[k] = _metropolis(value - values[k], temperatures[k], uniforms[k])
        points[k + 1], values[k + 1] = (proposal, value) if accepted[k] else (points[k], values[k])
    best = int(np.nanargmin(values))
    history = AnnealingHistory(points, values, temperatures, accepted, proposals)
    settings = {
        "start": tuple(points[0]),
        "steps": steps,
        "schedule": schedule if isinstance(schedule, str) else getattr(schedule, "__name__", ""),
        "t0": t0,
        "t_end": t_end,
        "step_size": step_size,
        "seed": seed,
        "confine": confine,
        "shrink": shrink,
        "bounds": region,
    }
    return SearchResult(
        method="simulated_annealing",
        best_params=points[best].copy(),
        best_value=float(values[best]),
        history=history,
        function=fn,
        settings=settings,
        evaluations=evaluations,
        wall_time=time.perf_counter() - began,
    )


def _temperatures(schedule: Schedule, steps: int, t0: float, t_end: float) -> np.ndarray:
    fraction = np.arange(steps) / max(steps - 1, 1)
    if schedule == "exponential":
        if not (t0 > 0 and t_end > 0):
            raise InputError(f"an exponential schedule needs t0 > 0 and t_end > 0: {t0}, {t_end}")
        temperatures = t0 * (t_end / t0) ** fraction
    elif schedule == "linear":
        temperatures = t0 + (t_end - t0) * fraction
    elif callable(schedule):
        temperatures = np.array([float(schedule(k)) for k in range(steps)])
    else:
        raise InputError(
            f"schedule must be one of {SCHEDULES} or a callable step -> temperature, "
            f"got {schedule!r}"
        )
    if not np.all(np.isfinite(temperatures) & (temperatures >= 0)):
        raise InputError(
            f"temperatures must be finite and >= 0; the schedule gave values in "
            f"[{np.nanmin(temperatures):g}, {np.nanmax(temperatures):g}] (t0={t0}, t_end={t_end})"
        )
    return temperatures


def _metropolis(increase: float, temperature: float, uniform: float) -> bool:
    if not math.isfinite(increase):
        return bool(increase < 0)
    if increase <= 0:
        return True
    return temperature > 0 and uniform < math.exp(-increase / temperature)


# -- grid search ---------------------------------------------------------------------------------
def grid_search(
    fn: ToyFunction | str,
    bounds: Bounds | None = None,
    n: int | tuple[int, int] = 101,
    *,
    workers: int = 1,
) -> SearchResult:
    """Evaluate ``fn`` on an ``n`` by ``n`` grid and return its smallest value.

    With ``workers > 1`` blocks of grid rows go to a pool of ``workers`` processes started with
    the ``spawn`` method (safe next to PyTorch's threads). The function object travels by
    pickle, so a custom :class:`ToyFunction` needs a module-level ``expression``, and a script
    that calls this must guard its top level with ``if __name__ == "__main__":`` (each worker
    imports the main script). The blocks are the same whatever ``workers`` is, so the values
    are bit-for-bit the same too.

    Args:
        fn: a :class:`ToyFunction` or its name.
        bounds: ``((xmin, xmax), (ymin, ymax))``; ``fn.bounds`` by default.
        n: points per axis, or ``(nx, ny)`` (grid ends included).
        workers: number of processes (1: evaluate here).

    Returns:
        A :class:`SearchResult` whose history is a :class:`GridHistory`; ties go to the first
        point in ``xs``-major order, NaN values never win.
    """
    fn = get(fn)
    bounds = fn.bounds if bounds is None else bounds
    xs, ys = grid_axes(bounds, n)
    check_int(workers, "workers", 1)
    began = time.perf_counter()
    rows = max(1, _BLOCK_POINTS // len(ys))
    blocks = [xs[i : i + rows] for i in range(0, len(xs), rows)]
    if workers == 1 or len(blocks) == 1:
        parts = [_evaluate_rows(fn, block, ys) for block in blocks]
    else:
        parts = _evaluate_in_processes(fn, blocks, ys, workers)
    values = np.concatenate(parts, axis=0)
    if np.all(np.isnan(values)):
        raise InputError(f"{fn.name} is NaN everywhere on the grid over {bounds}")
    i, j = np.unravel_index(np.nanargmin(values), values.shape)
    return SearchResult(
        method="grid_search",
        best_params=np.array([xs[i], ys[j]]),
        best_value=float(values[i, j]),
        history=GridHistory(xs, ys, values),
        function=fn,
        settings={"bounds": bounds, "n": (len(xs), len(ys)), "workers": workers},
        evaluations=values.size,
        wall_time=time.perf_counter() - began,
    )


def _evaluate_rows(fn: ToyFunction, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``f`` on the grid ``xs`` by ``ys``; runs in worker processes too."""
    return fn.evaluate(np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1))


def _single_thread() -> None:
    torch.set_num_threads(1)  # workers are the parallelism; avoid oversubscribing the cores


def _evaluate_in_processes(
    fn: ToyFunction, blocks: list[np.ndarray], ys: np.ndarray, workers: int
) -> list[np.ndarray]:
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise InputError(
            f"{fn.name} cannot be sent to worker processes ({exc}); give it a module-level "
            "expression (not a lambda or a local function), or use workers=1"
        ) from exc
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(blocks)), mp_context=context, initializer=_single_thread
        ) as pool:
            return list(pool.map(_evaluate_rows, [fn] * len(blocks), blocks, [ys] * len(blocks)))
    except concurrent.futures.process.BrokenProcessPool as exc:
        raise LossvistaError(
            "a grid-search worker process died. Worker processes start by importing your main "
            'script: put the call under `if __name__ == "__main__":`, or use workers=1'
        ) from exc


def _running_argmin(values: np.ndarray) -> np.ndarray:
    """Index of the smallest of ``values[: k + 1]`` for every ``k`` (first index on ties)."""
    running = np.minimum.accumulate(values)
    improved = np.r_[True, running[1:] < running[:-1]]
    return np.maximum.accumulate(np.where(improved, np.arange(values.size), 0))


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, tuple))
