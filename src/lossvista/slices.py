"""The slicing verbs: :func:`line`, :func:`plane`, :func:`interpolate`, :func:`plane_through`,
and :func:`suggest_span` (grids of any number of directions: :mod:`lossvista.ndgrid`).

Each verb builds a grid of coefficients and hands it to the engine. Every slice first evaluates
its origin twice, once with the objective's plain forward pass and once through the engine, and
refuses to go on when the two disagree (a non-deterministic model, a data loader with random
augmentation...), so the centre of every picture is the model's own loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ._checks import (
    axes,
    check_finite,
    check_not_collinear,
    check_not_parallel,
    check_objective,
    check_reach,
    pair,
    renamed,
)
from ._grid import Grid, RunOptions, run_grid
from ._span import suggest_span as suggest_span  # public here since 0.1
from .directions import Direction, as_direction, check_same_layout
from .engine import Strategy
from .errors import DirectionError, InputError
from .landscape import Interpolation, Landscape
from .objective import Objective
from .params import align_names, parameters_of
from .store import SurfaceStore

Span = tuple[float, float]
ModelLike = nn.Module | Mapping[str, torch.Tensor]


def line(
    obj: Objective,
    direction: Mapping[str, torch.Tensor],
    *,
    span: Span = (-1.0, 1.0),
    steps: int = 51,
    store: str | Path | None = None,
    resume: bool | None = None,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    check_center: bool = True,
    shard: tuple[int, int] | str | None = None,
    distributed: bool | str = "auto",
    distributed_mode: str = "auto",
    points_per_pass: int | None = None,
    precision: str | None = None,
) -> Landscape:
    """The loss along ``theta + alpha * d`` for ``steps`` values of alpha in ``span``.

    Args:
        obj: the :class:`~lossvista.Objective`; its model's current parameters are the origin.
        direction: a :class:`~lossvista.Direction` (or mapping name -> tensor).
        span: ``(min, max)`` of alpha.
        steps: number of grid points (>= 2), both ends included.
        store: an HDF5 file to fill chunk by chunk (see ``docs/FORMAT.md``).
        resume: with an existing ``store``: ``None``/``True`` computes only the missing points
            (refusing a file made with other settings), ``False`` overwrites it.
        strategy: engine strategy, ``"auto"`` (measure), ``"loop"`` or ``"vmap"``.
        chunk_size: points per stored chunk (default: a few seconds of work).
        progress: progress bar on a terminal.
        check_center: compare the engine's value at the origin with ``obj.evaluate()``.
        shard: ``(i, N)`` or ``"i/N"``: evaluate only the points with flat index ``k % N == i``
            into ``store`` (required), to be joined by :func:`lossvista.merge`; the others are
            NaN with ``computed`` False (:mod:`lossvista.shards`).
        distributed: ``"auto"`` shares the work between the ranks of a ``torchrun``/``srun``
            job (rank 0 writes the store; the result is the single-process one), ``False``
            evaluates in this process alone, ``True`` requires a job (``docs/CLUSTER.md``).
        distributed_mode: ``"points"`` (each rank evaluates its share of the points, bit for
            bit the single-process values), ``"data"`` (every rank evaluates each point on its
            share of the batches, sums added over the ranks) or ``"auto"`` (data only when
            there are fewer points than ranks).
        points_per_pass: grid points evaluated by one vectorised (vmap) forward pass; default:
            bounded by the free memory. Ignored by the loop strategy.
        precision: ``"bfloat16"`` or ``"float16"``: the grid's forward passes run under
            autocast (for accelerators; losses in float32, sums in float64), the centre check and
            named end points in the model's own dtype; part of the file's identity, so a resume
            never mixes precisions. ``None`` (default): the model's dtype.

    Returns:
        A 1-D :class:`~lossvista.Landscape`.
    """
    check_objective(obj)
    d = as_direction(direction)
    (x,) = axes([span], [steps], 1)
    check_reach((d,), (x,), ("direction",), obj.parameters())
    return _slice(
        obj,
        kind="line",
        origin=None,
        directions=(d,),
        coords=(x,),
        axis_labels=(_direction_label(d, 1),),
        options=RunOptions(
            store,
            resume,
            strategy,
            chunk_size,
            progress,
            check_center,
            shard,
            distributed,
            distributed_mode,
            points_per_pass,
            precision,
        ),
    )


@renamed(path="trajectory")
def plane(
    obj: Objective,
    directions: Sequence[Mapping[str, torch.Tensor]],
    *,
    span: Span | tuple[Span, Span] | None = None,
    steps: int | tuple[int, int] = (21, 21),
    trajectory: Any = None,
    margin: float = 0.2,
    store: str | Path | None = None,
    resume: bool | None = None,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    check_center: bool = True,
    shard: tuple[int, int] | str | None = None,
    distributed: bool | str = "auto",
    distributed_mode: str = "auto",
    points_per_pass: int | None = None,
    precision: str | None = None,
) -> Landscape:
    """The loss on ``theta + alpha * d1 + beta * d2`` over a ``steps[0] x steps[1]`` grid.

    ``span`` is one ``(min, max)`` for both axes or one per axis (default ``(-1, 1)``); ``steps``
    likewise. The returned values are indexed ``[i, j]`` = ``(alpha_i, beta_j)``.

    ``trajectory`` (a :class:`~lossvista.Trajectory`, or a ``(P, 2)`` array of coordinates) is
    projected onto the plane through the model's current parameters and kept in
    ``.trajectory``, so plots draw it; without ``span`` the grid then covers the path with
    ``margin`` (a fraction of its extent) on every side. With :func:`~lossvista.pca_directions`
    the axes are labelled with the variance they explain. ``path=`` is the deprecated name of
    ``trajectory=``. Other arguments as in :func:`line`.
    """
    check_objective(obj)
    if not isinstance(directions, Sequence) or isinstance(directions, (Mapping, str)):
        raise InputError(
            f"plane() takes a pair of directions (d1, d2), got {type(directions).__name__}"
        )
    if len(directions) != 2:
        raise InputError(f"plane() takes exactly 2 directions, got {len(directions)}")
    dirs = tuple(as_direction(d, f"directions[{i}]") for i, d in enumerate(directions))
    names = ("directions[0]", "directions[1]")
    for d, name in zip(dirs, names):
        check_finite(d, name)
    check_not_parallel(*dirs)
    coordinates = _project_path(obj, trajectory, directions)
    grid_span: Span | Sequence[Span]
    if span is not None:
        grid_span = span
    elif coordinates is None:
        grid_span = (-1.0, 1.0)
    else:
        from .trajectory import span_covering

        grid_span = span_covering(coordinates, margin)
    spans = pair(grid_span, "span")
    step_pair = pair(steps, "steps")
    coords = axes(spans, step_pair, 2)
    check_reach(dirs, coords, names, obj.parameters())
    labels = getattr(directions, "axis_labels", None)
    result = _slice(
        obj,
        kind="plane",
        origin=None,
        directions=dirs,
        coords=coords,
        axis_labels=tuple(labels or (_direction_label(d, i + 1) for i, d in enumerate(dirs))),
        options=RunOptions(
            store,
            resume,
            strategy,
            chunk_size,
            progress,
            check_center,
            shard,
            distributed,
            distributed_mode,
            points_per_pass,
            precision,
        ),
    )
    if coordinates is not None:
        result.trajectory = coordinates
        if result.path is not None:
            SurfaceStore(result.path).write_trajectory(coordinates)
    return result


def interpolate(
    obj: Objective,
    model_a: ModelLike,
    model_b: ModelLike,
    *,
    span: Span = (0.0, 1.0),
    steps: int = 51,
    store: str | Path | None = None,
    resume: bool | None = None,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    check_center: bool = True,
    distributed: bool | str = "auto",
    distributed_mode: str = "auto",
    points_per_pass: int | None = None,
    precision: str | None = None,
) -> Interpolation:
    """The loss on the straight path ``theta(t) = (1 - t) theta_a + t theta_b``.

    ``model_a`` and ``model_b`` are models or state dicts with the objective's parameter names;
    ``t`` outside ``[0, 1]`` extrapolates. The objective's model supplies everything else
    (buffers, parameters outside ``params=``). With BatchNorm, ``bn="recompute"`` on the objective
    re-estimates the statistics along the path, which is usually what a barrier study wants.

    Returns:
        An :class:`~lossvista.landscape.Interpolation` with ``.barrier`` and the exact end-point
        values in ``.endpoints``.
    """
    check_objective(obj)
    (t,) = axes([span], [steps], 1)
    pa, pb = _selected(obj, model_a, "model_a"), _selected(obj, model_b, "model_b")
    direction = Direction({n: pb[n] - pa[n] for n in pa}, {"kind": "between"})
    check_reach((direction,), (t,), ("model_b - model_a",), pa)
    if direction.norm() == 0.0:
        raise DirectionError("model_a and model_b are identical on the selected parameters")
    if obj.batchnorm_modules and obj.bn == "eval":
        warnings.warn(
            "the model has BatchNorm and bn='eval': every point of the path uses the running "
            "statistics of the objective's model; Objective(..., bn='recompute') re-estimates them",
            stacklevel=2,
        )
    landscape = _slice(
        obj,
        kind="interpolation",
        origin=pa,
        directions=(direction,),
        coords=(t,),
        axis_labels=("t  (θ = (1−t)·θ_a + t·θ_b)",),
        markers={"a": (0.0,), "b": (1.0,)},
        endpoints={"a": (0.0,), "b": (1.0,)},
        options=RunOptions(
            store,
            resume,
            strategy,
            chunk_size,
            progress,
            check_center,
            None,
            distributed,
            distributed_mode,
            points_per_pass,
            precision,
        ),
    )
    return cast(Interpolation, landscape)  # run_grid builds an Interpolation for this kind


def plane_through(
    obj: Objective,
    m0: ModelLike,
    m1: ModelLike,
    m2: ModelLike,
    *,
    span: tuple[Span, Span] | None = None,
    steps: int | tuple[int, int] = (21, 21),
    margin: float = 0.25,
    store: str | Path | None = None,
    resume: bool | None = None,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    check_center: bool = True,
    distributed: bool | str = "auto",
    distributed_mode: str = "auto",
    points_per_pass: int | None = None,
    precision: str | None = None,
) -> Landscape:
    """The plane through three models (Garipov et al., 2018), in Euclidean coordinates.

    The axes are orthonormal: ``e1 = (theta_1 - theta_0) / |theta_1 - theta_0|`` and ``e2`` the
    normalised part of ``theta_2 - theta_0`` orthogonal to ``e1``, so distances in the picture
    are distances in parameter space. ``m0`` is at ``(0, 0)``, ``m1`` at ``(|theta_1 - theta_0|,
    0)``; the three positions are in ``.markers``. Without ``span`` the grid covers the three
    models with ``margin`` (a fraction of their extent) on every side.
    """
    check_objective(obj)
    p0, p1, p2 = (_selected(obj, m, f"m{i}") for i, m in enumerate((m0, m1, m2)))
    u = {n: (p1[n] - p0[n]).double() for n in p0}
    v = {n: (p2[n] - p0[n]).double() for n in p0}
    u_norm = math.sqrt(sum(float((t * t).sum()) for t in u.values()))
    if u_norm == 0.0:
        raise DirectionError("m0 and m1 are identical on the selected parameters")
    e1 = {n: t / u_norm for n, t in u.items()}
    v_along = sum(float((v[n] * e1[n]).sum()) for n in v)
    v_perp = {n: v[n] - v_along * e1[n] for n in v}
    v_perp_norm = math.sqrt(sum(float((t * t).sum()) for t in v_perp.values()))
    check_not_collinear(p0, p1, p2, u_norm, v_perp_norm)
    e2 = {n: t / v_perp_norm for n, t in v_perp.items()}
    dtypes = {n: p0[n].dtype for n in p0}
    d1 = Direction({n: t.to(dtypes[n]) for n, t in e1.items()}, {"kind": "plane_through"})
    d2 = Direction({n: t.to(dtypes[n]) for n, t in e2.items()}, {"kind": "plane_through"})
    positions = {"m0": (0.0, 0.0), "m1": (u_norm, 0.0), "m2": (v_along, v_perp_norm)}
    if span is None:
        xs = [p[0] for p in positions.values()]
        ys = [p[1] for p in positions.values()]
        pad_x, pad_y = margin * (max(xs) - min(xs)), margin * (max(ys) - min(ys))
        span = ((min(xs) - pad_x, max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y))
    coords = axes(pair(span, "span"), pair(steps, "steps"), 2)
    check_reach((d1, d2), coords, ("the first axis", "the second axis"), p0)
    return _slice(
        obj,
        kind="plane_through",
        origin=p0,
        directions=(d1, d2),
        coords=coords,
        axis_labels=("distance along θ1 − θ0", "distance orthogonal, towards θ2"),
        markers=positions,
        options=RunOptions(
            store,
            resume,
            strategy,
            chunk_size,
            progress,
            check_center,
            None,
            distributed,
            distributed_mode,
            points_per_pass,
            precision,
        ),
    )


# -- the shared machinery --------------------------------------------------------------------------
def _slice(
    obj: Objective,
    *,
    kind: str,
    origin: Mapping[str, torch.Tensor] | None,
    directions: tuple[Direction, ...],
    coords: tuple[np.ndarray, ...],
    axis_labels: tuple[str, ...],
    options: RunOptions,
    markers: Mapping[str, tuple[float, ...]] | None = None,
    endpoints: Mapping[str, tuple[float, ...]] | None = None,
) -> Landscape:
    seeds = [d.meta.get("seed") for d in directions if d.meta.get("seed") is not None]
    grid = Grid(
        kind=kind,
        coords=coords,
        directions=directions,
        origin=origin,
        axis_labels=axis_labels,
        markers=markers,
        endpoints=endpoints,
        seed=seeds[0] if seeds else None,
    )
    return run_grid(obj, grid, options, stacklevel=4)


def _selected(obj: Objective, model: ModelLike, what: str) -> dict[str, torch.Tensor]:
    """The objective's selected parameters taken from another model or state dict."""
    try:
        given = parameters_of(model)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
    own = obj.parameters()
    given = align_names(given, own)  # through the torch.compile / DataParallel prefixes
    missing = [n for n in own if n not in given]
    if missing:
        raise DirectionError(
            f"{what} lacks parameters of the objective's model: {missing[:10]}; both must come "
            "from the same architecture"
        )
    picked = {n: given[n].detach() for n in own}
    check_same_layout(own, picked, "the objective's model", what)
    check_finite(picked, what)
    return {n: t.to(own[n].device) for n, t in picked.items()}


def _project_path(obj: Objective, trajectory: Any, directions: Sequence[Any]) -> np.ndarray | None:
    """Coordinates ``(P, 2)`` of a path: given directly, or a trajectory projected on the plane."""
    if trajectory is None:
        return None
    from .trajectory import Trajectory, project

    if isinstance(trajectory, Trajectory):
        coordinates = project(trajectory, directions, origin=obj.parameters()).coordinates
    else:
        coordinates = np.asarray(trajectory, dtype=np.float64)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2 or len(coordinates) == 0:
        raise InputError(
            f"trajectory must be a Trajectory or a (P, 2) array of coordinates, got shape "
            f"{coordinates.shape}"
        )
    return coordinates


def _direction_label(direction: Direction, index: int) -> str:
    norm = direction.meta.get("norm", "unknown")
    kind = direction.meta.get("kind", "user")
    if kind == "random":
        return f"direction {index} ({norm}-normalised)" if norm else f"direction {index} (raw)"
    return f"direction {index} ({kind})"
