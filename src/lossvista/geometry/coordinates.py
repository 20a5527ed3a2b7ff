"""The loss over one or two chosen weights, in absolute values: :func:`coordinate_plane` and
:func:`coordinate_line`.

A weight is one scalar entry of a parameter, named ``"fc.weight[0, 1]"`` (a module path, then
the index; spaces and negative indices allowed; a 0-d or one-element parameter may be named
without an index) or ``("fc.weight", (0, 1))``. The coordinates of the grid *are* the entries'
values: the grid runs from an origin that is the model's parameters with the chosen entries set
to 0, along one-hot unit directions on those entries, so the point ``(a, b)`` holds exactly
``a`` and ``b`` there (``0 + a * 1 + b * 0``) and the model's own values everywhere else. This is
the classic linear-regression ``w1``/``w2`` bowl (the feature-scaling study in
:mod:`lossvista.toys.scaling` draws it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._checks import axes, check_finite, check_objective, check_reach, pair
from .._grid import Grid, RunOptions, run_grid
from ..directions import Direction
from ..engine import Strategy
from ..errors import InputError
from ..landscape import Landscape
from ..objective import Objective
from ..params import unwrapped_name

Span = tuple[float, float]
#: A weight: ``"fc.weight[0, 1]"`` or ``("fc.weight", (0, 1))`` (an ``int`` index for 1-D).
WeightName = str | tuple[str, int | Sequence[int]]

_PATTERN = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[([^\[\]]*)\])?\s*$")


@dataclasses.dataclass(frozen=True)
class Weight:
    """One scalar entry of a selected parameter: ``parameter[index]`` (non-negative index)."""

    parameter: str
    index: tuple[int, ...]
    value: float

    @property
    def label(self) -> str:
        """``"fc.weight[0, 1]"`` (the parameter's name alone for a 0-d parameter)."""
        if not self.index:
            return self.parameter
        return f"{self.parameter}[{', '.join(str(i) for i in self.index)}]"


def coordinate_plane(
    obj: Objective,
    x: WeightName,
    y: WeightName,
    *,
    span: Span | tuple[Span, Span] | None = None,
    steps: int | tuple[int, int] = (21, 21),
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
    """The loss over two chosen weights, the grid's coordinates being their values.

    ``values[i, j]`` is the loss with weight ``x`` equal to ``coords[0][i]`` and weight ``y``
    equal to ``coords[1][j]`` exactly, every other parameter keeping the model's value.

    Args:
        obj: the :class:`~lossvista.Objective`; both weights must be among its selected
            parameters (``params=``).
        x: the first weight, ``"fc.weight[0, 1]"`` or ``("fc.weight", (0, 1))``.
        y: the second weight (not ``x``).
        span: ``(min, max)`` of the values, one for both axes or one per axis; by default each
            weight's current value ``v`` ± ``max(1, |v|)``.
        steps: grid points per axis (>= 2), one for both or one per axis.
        store, resume, strategy, chunk_size, progress, check_center, distributed,
        distributed_mode, points_per_pass, precision: as in :func:`lv.line`. The
            centre check compares the engine with the objective at the grid's origin (both
            weights 0).

    Returns:
        A 2-D :class:`~lossvista.Landscape` of kind ``"coordinate_plane"`` whose axes are labelled
        with the weights' names. When the model's current point lies inside the span it carries
        the marker ``"model"`` there and ``endpoints["model"]``: the model's own loss and metrics,
        evaluated exactly (not read off the grid).

    Raises:
        InputError: a name that cannot be parsed, names no selected parameter or an entry out of
            range, ``x == y``, or bad spans or steps.
    """
    check_objective(obj)
    weights = (_resolve(obj, x, "x"), _resolve(obj, y, "y"))
    if weights[0].parameter == weights[1].parameter and weights[0].index == weights[1].index:
        raise InputError(f"x and y name the same weight {weights[0].label!r}; pick two entries")
    spans = pair(span, "span") if span is not None else tuple(_default_span(w) for w in weights)
    coords = axes(spans, pair(steps, "steps"), 2)
    options = RunOptions(store, resume, strategy, chunk_size, progress, check_center, None,
                         distributed, distributed_mode, points_per_pass, precision)  # fmt: skip
    return _run(obj, "coordinate_plane", weights, coords, options)


def coordinate_line(
    obj: Objective,
    x: WeightName,
    *,
    span: Span | None = None,
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
) -> Landscape:
    """The loss against one chosen weight's value (see :func:`coordinate_plane`).

    Returns:
        A 1-D :class:`~lossvista.Landscape` of kind ``"coordinate_line"``.
    """
    check_objective(obj)
    weight = _resolve(obj, x, "x")
    (coords,) = axes([span if span is not None else _default_span(weight)], [steps], 1)
    options = RunOptions(store, resume, strategy, chunk_size, progress, check_center, None,
                         distributed, distributed_mode, points_per_pass, precision)  # fmt: skip
    return _run(obj, "coordinate_line", (weight,), (coords,), options)


def parse_weight(name: WeightName, what: str = "weight") -> tuple[str, tuple[int, ...] | None]:
    """``(parameter, index)`` of a weight name; ``index`` is ``None`` when none was given.

    >>> parse_weight("fc.weight[0, -1]")
    ('fc.weight', (0, -1))
    >>> parse_weight(("bias", 2))
    ('bias', (2,))
    """
    if isinstance(name, tuple) and len(name) == 2 and isinstance(name[0], str):
        parameter, index = name
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return parameter, (int(index),)
        if isinstance(index, Sequence) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in index
        ):
            return parameter, tuple(int(i) for i in index)
        raise InputError(f"{what}={name!r}: the index must be an int or a tuple of ints")
    if not isinstance(name, str):
        raise InputError(
            f"{what} must name one entry of a parameter, as 'fc.weight[0, 1]' or "
            f"('fc.weight', (0, 1)); got {name!r}"
        )
    match = _PATTERN.match(name)
    if match is None:
        raise InputError(f"{what}={name!r} is not of the form 'fc.weight[0, 1]'")
    parameter, inside = match.group(1), match.group(2)
    if inside is None:
        return parameter, None
    parts = [p.strip() for p in inside.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]  # a trailing comma: "bias[3,]"
    if parts == [""]:
        return parameter, ()
    if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
        raise InputError(f"{what}={name!r}: the index must be integers, as in 'fc.weight[0, 1]'")
    return parameter, tuple(int(p) for p in parts)


# -- the machinery -------------------------------------------------------------------------------
def _run(
    obj: Objective,
    kind: str,
    weights: tuple[Weight, ...],
    coords: tuple[np.ndarray, ...],
    options: RunOptions,
) -> Landscape:
    own = obj.parameters()
    check_finite(own, "the model's parameters")
    origin = {n: t.detach().clone() for n, t in own.items()}
    directions = []
    for w in weights:
        origin[w.parameter][w.index] = 0.0
        unit = torch.zeros_like(own[w.parameter])
        unit[w.index] = 1.0
        directions.append(Direction({w.parameter: unit}, {"kind": "coordinate", "weight": w.label}))
    labels = tuple(w.label for w in weights)
    check_reach(directions, coords, labels, origin)
    current = tuple(w.value for w in weights)
    inside = all(c[0] <= v <= c[-1] for c, v in zip(coords, current))
    grid = Grid(
        kind=kind,
        coords=coords,
        directions=tuple(directions),
        origin=origin,
        axis_labels=labels,
        markers={"model": current} if inside else {},
        # The model's own point, evaluated exactly with the origin (kept in the surface file).
        endpoints={"model": current} if inside else None,
    )
    return run_grid(obj, grid, options, stacklevel=4)


def _resolve(obj: Objective, name: WeightName, what: str) -> Weight:
    """The selected parameter and entry that ``name`` designates, checked."""
    parameter, index = parse_weight(name, what)
    own = obj.parameters()
    found = parameter if parameter in own else None
    if found is None:  # through the prefixes of torch.compile / DataParallel
        bare = unwrapped_name(parameter)
        matches = [n for n in own if unwrapped_name(n) == bare]
        found = matches[0] if len(matches) == 1 else None
    if found is None:
        everything = {unwrapped_name(n) for n, _ in obj.model.named_parameters()}
        if unwrapped_name(parameter) in everything:
            raise InputError(
                f"{what}={name!r}: parameter {parameter!r} is not among the objective's selected "
                "parameters (frozen, or left out by params=); build the Objective with "
                f"params= including {parameter!r}"
            )
        listed = list(own)[:12]
        raise InputError(
            f"{what}={name!r}: the model has no parameter {parameter!r}; selected parameters: "
            f"{listed}{' ...' if len(own) > 12 else ''}"
        )
    tensor = own[found]
    if not tensor.is_floating_point():
        raise InputError(f"{what}={name!r}: parameter {found!r} is not floating point")
    shape = tuple(tensor.shape)
    if index is None or (index == () and tensor.numel() == 1):
        if tensor.numel() != 1:
            raise InputError(
                f"{what}={name!r}: parameter {found!r} has shape {list(shape)}; name one entry, "
                f"as in '{found}[{', '.join('0' for _ in shape)}]'"
            )
        index = (0,) * len(shape)
    if len(index) != len(shape):
        raise InputError(
            f"{what}={name!r}: parameter {found!r} has shape {list(shape)}, so an entry needs "
            f"{len(shape)} indices, got {len(index)}"
        )
    if not all(-n <= i < n for i, n in zip(index, shape)):
        raise InputError(
            f"{what}={name!r}: index {list(index)} is out of range for parameter {found!r} of "
            f"shape {list(shape)}"
        )
    normal = tuple(i % n for i, n in zip(index, shape))
    return Weight(found, normal, float(tensor[normal]))


def _default_span(weight: Weight) -> Span:
    half = max(1.0, abs(weight.value))
    return (weight.value - half, weight.value + half)


__all__ = ["Weight", "WeightName", "coordinate_line", "coordinate_plane", "parse_weight"]
