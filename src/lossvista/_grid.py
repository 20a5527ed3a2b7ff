"""The one grid runner: every grid of points (slices, curvature maps, later N-D and sharded grids).

A grid is the set of points ``origin + sum_i c_i * d_i`` for ``c`` on the product of the
coordinate axes. :func:`run_grid` owns everything around evaluating it:

1. the settings that identify the result (span, steps, objective, directions, origin and what the
   solver adds), and the store: created, or resumed only when those settings match;
2. the centre check: the value at the origin through the engine must equal the objective's own
   loss (a model or data that are not deterministic are refused before any work);
3. the missing points, handed to a :class:`Solver` in order; every finished chunk goes to the
   store before the next is started, so an interruption loses at most one chunk;
4. the report (non-finite points, engine configuration) and the resulting
   :class:`~lossvista.Landscape` (or :class:`~lossvista.Interpolation`).

A solver computes the values of some points. :class:`EngineSolver` (loss and metrics through the
engine) is the default; curvature maps add per-point eigenvalues with their own solver.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._version import __version__
from .directions import Direction
from .engine import EngineConfig, PointEvaluator, Sink, Strategy
from .errors import CenterMismatchError, NonFiniteLossWarning
from .landscape import Interpolation, Landscape
from .objective import Objective
from .params import fingerprint
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
        mesh = np.meshgrid(*self.coords, indexing="ij")
        return np.stack(mesh, axis=-1).reshape(-1, len(self.coords))


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
    """Evaluate ``grid`` (resuming ``options.store`` when it matches) and return the landscape."""
    solver = solver or EngineSolver()
    if options.store is not None:
        check_writable(Path(options.store))  # before any evaluation
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
    settings = _settings(obj, grid, evaluator, solver)
    shape = grid.shape
    names = (*obj.value_names, *solver.extra_names)
    values = {name: np.full(shape, np.nan) for name in names}
    computed = np.zeros(shape, dtype=bool)
    config: EngineConfig | None = None

    surface: SurfaceStore | None = None
    if options.store is not None:
        surface = SurfaceStore(Path(options.store))
        if surface.path.exists() and options.resume is not False:
            extra = (solver.settings_key,) if solver.settings_key else ()
            surface.check_matches(settings, names, extra_keys=extra)
            previous = surface.read()
            computed = np.asarray(previous["computed"], dtype=bool).copy()
            for name in names:
                values[name] = previous["values"][name].copy()
            stored_config = surface.engine_config()
            config = EngineConfig.from_dict(stored_config) if stored_config else None
        else:
            surface = SurfaceStore.create(
                surface.path,
                kind=grid.kind,
                coords=grid.coords,
                value_names=names,
                directions=grid.directions,
                settings=settings,
                axis_labels=grid.axis_labels,
                markers=markers,
                seed=grid.seed,
            )

    # The origin (and exact end points) through the engine, compared with the plain forward.
    endpoints = dict(grid.endpoints or {})
    special = {"origin": (0.0,) * ndim, **endpoints}
    special_values, _ = evaluator.run(
        np.array(list(special.values())),
        strategy="loop" if config is None else "auto",
        config=config,
        progress=False,
    )
    at = {
        key: {name: float(special_values[name][i]) for name in obj.value_names}
        for i, key in enumerate(special)
    }
    center_check = check_center(obj, center, at["origin"], options.check_center)
    if surface is not None:
        extra_header = {"endpoints": {k: at[k] for k in endpoints}} if endpoints else {}
        surface.write_header(center=center, center_check=center_check, **extra_header)

    missing = np.flatnonzero(~computed.reshape(-1))
    if missing.size:

        def sink(flat: np.ndarray, chunk: dict[str, np.ndarray]) -> None:
            if surface is not None:
                surface.write(flat, chunk)
            index = np.unravel_index(flat, shape)
            for name, column in chunk.items():
                values[name][index] = column
            computed[index] = True

        def remember(chosen: EngineConfig) -> None:
            if surface is not None:
                surface.write_header(engine=chosen.as_dict())

        used = solver(
            evaluator,
            grid.points()[missing],
            missing,
            sink,
            options=options,
            config=config,
            on_config=remember,
            desc=grid.kind,
        )
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
        path=None if surface is None else surface.path,
    )
    if grid.kind == "interpolation":
        return Interpolation(**fields, endpoints={k: at[k] for k in endpoints})
    return Landscape(**fields)


def _settings(
    obj: Objective, grid: Grid, evaluator: PointEvaluator, solver: Solver
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "kind": grid.kind,
        "span": [[float(c[0]), float(c[-1])] for c in grid.coords],
        "steps": [len(c) for c in grid.coords],
        "objective": obj.settings(),
        "directions": [d.meta for d in grid.directions],
        "direction_fingerprints": [d.fingerprint() for d in grid.directions],
        "origin_fingerprint": fingerprint(evaluator.origin),
    }
    if solver.settings_key:
        settings[solver.settings_key] = dict(solver.settings)
    settings["lossvista_version"] = __version__
    return settings


def check_center(
    obj: Objective, center: dict[str, float], engine: dict[str, float], enforce: bool
) -> dict[str, Any]:
    """Compare the engine's loss at the origin with the objective's own; refuse a mismatch."""
    dtype = next(iter(obj.parameters().values())).dtype
    rtol = CENTER_RTOL.get(dtype, 1e-2)
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
