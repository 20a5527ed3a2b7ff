"""The one grid runner: every grid of points (slices, N-D grids, curvature maps, shards).

A grid is the set of points ``origin + sum_i c_i * d_i`` for ``c`` on the product of the
coordinate axes. :func:`run_grid` owns everything around evaluating it, in this order:

1. refusals that cost nothing: a store that cannot be written, a grid whose values cannot fit in
   memory or whose file cannot fit on its disk; then the store's lock (one writer per file);
2. the centre: the objective's own loss at the origin must be finite, and the engine's value
   there must equal it (a model or data that are not deterministic are refused);
3. the settings that identify the result (span, steps, objective, directions, origin, the
   fingerprints of data, buffers, loss and metrics, and what the solver adds), and the store:
   created, or resumed only when those settings and the recomputed centre match. Nothing is
   written to the file before every check has passed;
4. the missing points (with ``shard=(i, N)`` only those of that shard, see
   :mod:`lossvista.shards`), handed to a :class:`Solver` in order; every finished chunk goes to the
   store before the next is started, so an interruption loses at most one chunk (a long run is
   announced after its first chunk);
5. the report (non-finite points, engine configuration) and the resulting
   :class:`~lossvista.Landscape` (or :class:`~lossvista.Interpolation`).

A solver computes the values of some points. :class:`EngineSolver` (loss and metrics through the
engine) is the default; curvature maps add per-point eigenvalues with their own solver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import _dist
from ._compile import check_precision
from ._estimate import RunClock, check_request
from ._identity import nonfinite_inputs, objective_identity
from ._lock import store_lock
from ._strategies import check_points_per_pass
from ._version import __version__
from .directions import Direction
from .engine import EngineConfig, PointEvaluator, Sink, Strategy
from .errors import CenterMismatchError, DataError, NonFiniteLossWarning
from .landscape import Interpolation, Landscape
from .objective import Objective
from .params import fingerprint
from .shards import parse_shard, shard_mask
from .store import SurfaceStore, check_writable

#: Relative tolerance of the centre check by parameter dtype (others: 1e-2).
CENTER_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a grid is run (the keyword arguments every grid verb shares; see :func:`lv.line`)."""

    store: str | Path | None = None
    resume: bool | None = None
    strategy: Strategy = "auto"
    chunk_size: int | None = None
    progress: bool = True
    check_center: bool = True
    #: ``(i, N)`` or ``"i/N"``: evaluate only the points of shard ``i`` (``lossvista.shards``).
    shard: tuple[int, int] | str | None = None
    #: ``"auto"``: share the points between the ranks of a torchrun/srun job, ``False``: never
    #: (``lossvista._dist``); ``distributed_mode``: ``"auto"``, ``"points"`` or ``"data"``.
    distributed: bool | str = "auto"
    distributed_mode: str = "auto"
    #: Grid points per vmap forward pass (``None``: bounded by free memory; the engine).
    points_per_pass: int | None = None
    #: ``"bfloat16"``/``"float16"``: the grid's forwards under autocast (part of the identity).
    precision: str | None = None


@dataclasses.dataclass(frozen=True)
class Grid:
    """What is evaluated: the axes, the directions and their origin, and how to label them."""

    kind: str
    coords: tuple[np.ndarray, ...]
    directions: tuple[Direction, ...]
    origin: Mapping[str, torch.Tensor] | None = None  # None: the model's current parameters
    axis_labels: tuple[str, ...] = ()
    markers: Mapping[str, tuple[float, ...]] | None = None
    #: Named points evaluated exactly with the origin (e.g. the end points of an interpolation).
    endpoints: Mapping[str, tuple[float, ...]] | None = None
    seed: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    def points(self) -> np.ndarray:
        """All coefficient vectors, ``(prod(shape), ndim)`` in C order."""
        return self.points_at(np.arange(int(np.prod(self.shape))))

    def points_at(self, flat: np.ndarray) -> np.ndarray:
        """The coefficient vectors of the points at C-order indices ``flat``, ``(len(flat),
        ndim)``, built without the whole mesh (N-D grids grow fast)."""
        index = np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape)
        out = np.empty((len(flat), len(self.coords)), dtype=np.float64)
        for axis, (coords, at) in enumerate(zip(self.coords, index, strict=True)):
            out[:, axis] = coords[at]
        return out


class Solver(Protocol):
    """Computes the values of grid points (see :class:`EngineSolver`)."""

    #: Values it adds to the objective's (loss, metrics, stderr), e.g. eigenvalues.
    extra_names: tuple[str, ...]
    settings: dict[str, Any]

    @property
    def settings_key(self) -> str | None:
        """Where its ``settings`` are stored (``settings[settings_key]``, part of the resume
        identity); ``None``: it has none. Read only, so a solver may declare it ``str``."""

    def __call__(
        self,
        evaluator: PointEvaluator,
        points: np.ndarray,
        flat: np.ndarray,
        sink: Sink,
        *,
        options: RunOptions,
        config: EngineConfig | None,
        on_config: Callable[[EngineConfig], None],
        desc: str,
    ) -> EngineConfig | None: ...


class EngineSolver:
    """Loss and metrics through the engine (chunked, tuned, vectorised where it pays)."""

    extra_names: tuple[str, ...] = ()
    settings_key: str | None = None

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}

    def __call__(
        self,
        evaluator: PointEvaluator,
        points: np.ndarray,
        flat: np.ndarray,
        sink: Sink,
        *,
        options: RunOptions,
        config: EngineConfig | None,
        on_config: Callable[[EngineConfig], None],
        desc: str,
    ) -> EngineConfig | None:
        _, report = evaluator.run(
            points,
            flat,
            sink=sink,
            strategy=options.strategy,
            config=config,
            chunk_size=options.chunk_size,
            progress=options.progress,
            desc=desc,
            on_config=on_config,
            points_per_pass=options.points_per_pass,
            precision=options.precision,
        )
        return report.config


def run_grid(
    obj: Objective,
    grid: Grid,
    options: RunOptions,
    solver: Solver | None = None,
    *,
    stacklevel: int = 3,
) -> Landscape:
    """Evaluate ``grid`` (resuming ``options.store`` when it matches) and return the landscape.

    With a store, its lock (``<store>.lock``) is held from before the first evaluation until
    the result is built, also when the run fails or is interrupted. Under torchrun or srun the
    points are shared between the ranks (:mod:`lossvista._dist`): rank 0 alone holds the
    lock and writes the store, and every rank returns the same landscape.
    """
    solver = solver or EngineSolver()
    shard = parse_shard(options.shard, options.store)  # before any work
    if shard is not None:
        options = dataclasses.replace(options, shard=shard)
    _dist.check_options(options.distributed, options.distributed_mode)
    if options.points_per_pass is not None:
        check_points_per_pass(options.points_per_pass)
    check_precision(options.precision, obj.model)
    team = _dist.team_for(options.distributed, obj.device)
    path = None if options.store is None else Path(options.store)
    names = (*obj.value_names, *solver.extra_names)
    with contextlib.ExitStack() as stack:

        def refusals_and_lock() -> None:  # before any evaluation
            if path is not None:
                check_writable(path)
            resuming = path is not None and path.exists() and options.resume is not False
            kind, shape, n_names = grid.kind, grid.shape, len(names)
            check_request(kind, shape, n_names, grid.directions, path, creating=not resuming)
            if path is not None:
                stack.enter_context(store_lock(path))

        if team is None:
            refusals_and_lock()
        else:  # rank 0 checks and locks; its refusal is raised on every rank
            team.agree(refusals_and_lock)
        return _run(obj, grid, options, solver, names, path, team, stacklevel=stacklevel + 1)


def _run(
    obj: Objective,
    grid: Grid,
    options: RunOptions,
    solver: Solver,
    names: tuple[str, ...],
    path: Path | None,
    team: _dist.Team | None,
    *,
    stacklevel: int,
) -> Landscape:
    evaluator = PointEvaluator(
        obj, obj.parameters() if grid.origin is None else grid.origin, grid.directions
    )
    ndim = len(grid.coords)
    markers = (
        dict(grid.markers)
        if grid.markers is not None
        else ({"origin": (0.0,) * ndim} if _contains_zero(grid.coords) else {})
    )
    center = obj.evaluate(at=grid.origin)
    if options.check_center:
        check_finite_center(obj, center, evaluator.origin, grid.kind)
    # The origin (and exact end points) through the engine, compared with the plain forward:
    # always the default loop, so the values do not depend on tuning.
    special = {"origin": (0.0,) * ndim, **dict(grid.endpoints or {})}
    special_values, special_report = evaluator.run(
        np.array(list(special.values())), strategy="loop", progress=False
    )
    at = {
        key: {name: float(special_values[name][i]) for name in obj.value_names}
        for i, key in enumerate(special)
    }
    center_check = check_center(obj, center, at["origin"], options.check_center)
    endpoints = {k: at[k] for k in special if k != "origin"}
    settings = _settings(obj, grid, evaluator, solver, special_report.samples)
    settings["precision"] = options.precision  # autocast values never mix with full precision
    if team is not None:  # every rank must describe the same grid
        _dist.check_same(team, settings)
    if isinstance(options.shard, tuple):  # normalised by run_grid
        settings["shard"] = {"index": options.shard[0], "count": options.shard[1]}
    shape = grid.shape
    values = {name: np.full(shape, np.nan) for name in names}
    computed = np.zeros(shape, dtype=bool)
    config: EngineConfig | None = None

    # Every check passes before the file is written: a refused resume leaves it byte-identical.
    surface: SurfaceStore | None = None

    def open_store(path: Path) -> tuple[Any, ...]:
        nonlocal surface, computed, values, config, center, center_check, endpoints
        surface = SurfaceStore(path)
        if path.exists() and options.resume is not False:
            extra = (solver.settings_key,) if solver.settings_key else ()
            surface.check_matches(settings, names, extra_keys=extra)
            surface.check_center(center, center_rtol(obj), enforce=options.check_center)
            stored = surface.contents()
            computed = np.asarray(stored["computed"], dtype=bool).copy()
            for name in names:
                values[name] = np.asarray(stored["values"][name], dtype=np.float64).copy()
            config = EngineConfig.from_dict(stored["engine"]) if stored["engine"] else None
            if stored["center"]:  # the file's own header, not a re-evaluation of it
                center, center_check = stored["center"], stored["center_check"] or center_check
                endpoints = stored["endpoints"] or endpoints
            if not computed.all() and surface.needs_rebuild():
                surface.rebuild(
                    center=center, center_check=center_check, endpoints=endpoints or None
                )
        else:
            surface = SurfaceStore.create(
                path,
                kind=grid.kind,
                coords=grid.coords,
                value_names=names,
                directions=grid.directions,
                settings=settings,
                axis_labels=grid.axis_labels,
                markers=markers,
                seed=grid.seed,
                center=center,
                center_check=center_check,
                endpoints=endpoints or None,
            )
        return computed, values, config, center, center_check, endpoints

    if path is not None:  # rank 0 alone opens the store and tells the other ranks what it holds
        opening = functools.partial(open_store, path)
        state = opening() if team is None else team.agree(opening)
        computed, values, config, center, center_check, endpoints = state

    todo = ~computed
    if isinstance(options.shard, tuple):
        todo &= shard_mask(shape, *options.shard)
    missing = np.flatnonzero(todo.reshape(-1))
    if missing.size:
        clock = RunClock(grid.kind, shape, missing.size, len(names), grid.directions, path)

        def sink(flat: np.ndarray, chunk: dict[str, np.ndarray]) -> None:
            if surface is not None:
                surface.write(flat, chunk)
            index = np.unravel_index(flat, shape)
            for name, column in chunk.items():
                values[name][index] = column
            computed[index] = True
            clock.finished(len(flat))

        def remember(chosen: EngineConfig) -> None:
            if surface is not None and chosen != config:
                surface.write_engine(chosen.as_dict())

        with clock.running(team is None):  # the engine tells its speed once it has chosen
            if team is None:
                used = solver(
                    evaluator, grid.points_at(missing), missing, sink, options=options,
                    config=config, on_config=remember, desc=grid.kind,
                )  # fmt: skip
            else:  # shared between the ranks; rank 0 alone has the surface, so alone writes it
                used = _dist.solve(
                    team, solver, evaluator, grid, missing, sink, options=options, config=config,
                    on_config=remember,
                )  # fmt: skip
        if used is not None:
            settings["engine"] = used.as_dict()
    elif config is not None:
        settings["engine"] = config.as_dict()

    nonfinite = int(np.sum(computed & ~np.isfinite(values["loss"])))
    if nonfinite:
        warnings.warn(
            f"{nonfinite} of {computed.size} points gave a non-finite loss (NaN or inf); they "
            "are stored as NaN and masked in plots",
            NonFiniteLossWarning,
            stacklevel=stacklevel,
        )
    fields: dict[str, Any] = dict(
        coords=grid.coords,
        values=values,
        directions=grid.directions,
        center=center,
        kind=grid.kind,
        settings=settings,
        seed=grid.seed,
        axis_labels=grid.axis_labels,
        markers=markers,
        computed=computed,
        center_check=center_check,
        path=surface.path if surface is not None else None if team is None else path,
        endpoints=endpoints,
    )
    if grid.kind == "interpolation":
        return Interpolation(**fields)
    return Landscape(**fields)


def _settings(
    obj: Objective,
    grid: Grid,
    evaluator: PointEvaluator,
    solver: Solver,
    samples: int | None = None,
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "kind": grid.kind,
        "span": [[float(c[0]), float(c[-1])] for c in grid.coords],
        "steps": [len(c) for c in grid.coords],
        "objective": obj.settings(),
        "directions": [d.meta for d in grid.directions],
        "direction_fingerprints": [d.fingerprint() for d in grid.directions],
        "origin_fingerprint": fingerprint(evaluator.origin),
        "identity": objective_identity(obj, samples),
    }
    if solver.settings_key:
        settings[solver.settings_key] = dict(solver.settings)
    settings["lossvista_version"] = __version__
    return settings


def center_rtol(obj: Objective) -> float:
    """Relative tolerance of the centre check for the objective's parameter dtype."""
    dtype = next(iter(obj.parameters().values())).dtype
    return CENTER_RTOL.get(dtype, 1e-2)


def check_finite_center(
    obj: Objective, center: Mapping[str, float], origin: Mapping[str, torch.Tensor], kind: str
) -> None:
    """Refuse a grid whose centre loss is NaN or infinite, before any point is evaluated."""
    loss = center["loss"]
    if math.isfinite(loss):
        return
    found = nonfinite_inputs(obj, origin)
    raise DataError(
        f"the loss at the origin of the {kind} is {loss} (the objective's own forward pass), "
        "so every point of the grid would be suspect; nothing was evaluated. "
        + (f"Found: {'; '.join(found)}. " if found else "")
        + "Likely causes: NaN or inf in the data (inputs or targets), every label ignored by "
        "the loss (ignore_index), or parameters that are NaN/inf (a diverged checkpoint). Fix "
        "the input, or pass check_center=False to evaluate the grid anyway"
    )


def check_center(
    obj: Objective, center: dict[str, float], engine: dict[str, float], enforce: bool
) -> dict[str, Any]:
    """Compare the engine's loss at the origin with the objective's own; refuse a mismatch."""
    rtol = center_rtol(obj)
    expected, got = center["loss"], engine["loss"]
    error = abs(got - expected) / max(abs(expected), 1e-12)
    ok = bool(np.isclose(got, expected, rtol=rtol, atol=rtol * 1e-3)) or (
        not math.isfinite(expected) and not math.isfinite(got)
    )
    check = {"expected": expected, "engine": got, "relative_error": error, "rtol": rtol, "ok": ok}
    if enforce and not ok:
        raise CenterMismatchError(
            f"the engine's loss at the slice origin ({got:.8g}) differs from the objective's "
            f"own loss ({expected:.8g}; relative error {error:.2e} > {rtol:g}). The model or the "
            "data are not deterministic (dropout or BatchNorm in train mode inside forward, a "
            "loader with random augmentation or sampling); fix that, or pass "
            "check_center=False to proceed anyway"
        )
    return check


def _contains_zero(coords: Sequence[np.ndarray]) -> bool:
    return all(c[0] <= 0.0 <= c[-1] for c in coords)
