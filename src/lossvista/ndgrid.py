"""Grids of any number of directions: :func:`grid` (1-D and 2-D equal :func:`~lossvista.line`
and :func:`~lossvista.plane`; file layout in ``docs/FORMAT.md``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ._checks import (
    axes,
    check_finite,
    check_not_parallel,
    check_objective,
    check_reach,
    per_axis_span,
    per_axis_steps,
)
from ._grid import RunOptions
from .directions import as_direction
from .engine import Strategy
from .errors import InputError
from .landscape import Landscape
from .objective import Objective
from .slices import Span, _direction_label, _slice

__all__ = ["grid"]


def grid(
    obj: Objective,
    directions: Sequence[Mapping[str, torch.Tensor]],
    *,
    span: Span | Sequence[Span],
    steps: int | Sequence[int],
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
    """The loss on ``theta + sum_i c_i * d_i`` over the product of one axis per direction.

    With one or two directions the values are those of :func:`line` and :func:`plane` (the same
    points, evaluated the same way); with more, the grid grows as the product of the steps, so
    its memory and file size are checked before any work: a grid that cannot fit in memory or on
    the store's disk is refused, and one of more than
    :data:`lossvista._estimate.LARGE_GRID_POINTS` points is announced (a
    :class:`~lossvista.errors.LongRunWarning` with the numbers) before it starts. Values are
    indexed ``[i, j, k, ...]`` = ``(c_0[i], c_1[j], c_2[k], ...)``; a 3-D result plots as small
    multiples of planes, and :meth:`Landscape.section` takes lower-dimensional sections. The
    centre check compares the engine with the objective at the all-zero point; it is marked
    ``"origin"`` when it lies inside every axis' span.

    Args:
        obj: the :class:`~lossvista.Objective`; its model's current parameters are the origin.
        directions: a sequence of one or more directions (:class:`~lossvista.Direction` or
            mapping name -> tensor); no two may be parallel.
        span: one ``(min, max)`` for every axis, or one per axis.
        steps: points per axis (>= 2, both ends included): one for every axis, or one per axis.
        store, resume, strategy, chunk_size, progress, check_center, shard: as in
            :func:`line`; a stored grid resumes like any other (file layout:
            ``docs/FORMAT.md``).

    Returns:
        A :class:`~lossvista.Landscape` of kind ``"grid"`` with ``len(directions)`` axes.
    """
    check_objective(obj)
    if not isinstance(directions, Sequence) or isinstance(directions, (Mapping, str)):
        raise InputError(
            f"grid() takes a sequence of directions (d1, d2, ...), got {type(directions).__name__}"
        )
    ndim = len(directions)
    if ndim < 1:
        raise InputError("grid() needs at least one direction")
    dirs = tuple(as_direction(d, f"directions[{i}]") for i, d in enumerate(directions))
    names = tuple(f"directions[{i}]" for i in range(ndim))
    for d, name in zip(dirs, names):
        check_finite(d, name)
    for i in range(ndim):
        for j in range(i + 1, ndim):
            check_not_parallel(dirs[i], dirs[j])
    coords = axes(per_axis_span(span, ndim), per_axis_steps(steps, ndim), ndim)
    check_reach(dirs, coords, names, obj.parameters())
    labels = getattr(directions, "axis_labels", None)
    if labels is None or len(labels) != ndim:
        labels = tuple(_direction_label(d, i + 1) for i, d in enumerate(dirs))
    return _slice(
        obj,
        kind="grid",
        origin=None,
        directions=dirs,
        coords=coords,
        axis_labels=tuple(labels),
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
