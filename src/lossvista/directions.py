"""Directions in parameter space: the :class:`Direction` type, random and model-to-model directions.

Normalisation (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets") removes the
scale invariance of ReLU networks by giving the direction the size of the weights it perturbs:

- ``"filter"``: every output filter of a weight with 2 or more dimensions (its slice along dim 0:
  a row of a Linear weight, one kernel of a Conv weight) is rescaled to the norm of the matching
  filter of the weights. Weights stored as ``(in, out)`` (HuggingFace's ``Conv1D`` in GPT-2,
  found by class name) are cut along dim 1, and ``filter_axis=`` sets the axis of any parameter.
  A **1-D parameter** (a bias, a BatchNorm scale) that is not ignored is treated as a single
  filter: the whole vector is rescaled to the norm of the whole weight vector
  (the 2018 scripts instead copy the weights into the direction; we keep a random direction so
  that two directions stay independent). A 0-D parameter is its own filter.
- ``"layer"``: every parameter tensor is rescaled to the norm of its weights.
- ``"model"``: the whole direction is rescaled to the norm of all (not ignored) weights.
- ``None``: raw standard Gaussian entries.

Ignored parameters get a zero direction, and so do frozen ones (``requires_grad=False``) unless
``params="all"`` asks for them. A parameter whose weights are all zero (a LoRA ``lora_B`` at
initialisation) gets a zero direction from ``"filter"`` and ``"layer"``, with a warning that
names it (``"model"`` and ``None`` move it). With ``orthogonalize=True`` each direction is made
orthogonal to the previous ones *inside every normalisation group* before that group is rescaled,
so orthogonality survives normalisation exactly (rescaling a group does not change the sign-free
zero inner product of that group).

**BatchNorm buffers** (``bn="perturb"``): directions made for an Objective with ``bn="perturb"``
also hold its BatchNorm ``running_mean`` and ``running_var`` (the 2018 scripts' ``dir_type=states``;
``num_batches_tracked`` never). Each buffer is normalised as a 1-D parameter: under ``"filter"``
and ``"layer"`` the whole buffer is one group, rescaled to the buffer's own norm; under ``"model"``
the buffers count in the one vector rescaled to the norm of all weights and buffers; ``None``
keeps raw Gaussian entries. The ``"bias"``, ``"bn"``/``"norm"`` and ``"biasbn"`` tokens of
``ignore`` cover parameters only, so the default ``ignore=("bias", "bn")`` keeps BatchNorm's
weight and bias still while its running statistics move (the 2018 scripts' ``biasbn`` zeroed every
1-D entry, the statistics included); a glob such as ``"*.running_var"`` ignores buffers. A
``running_mean`` that is all zero (a layer that has seen no data) gets a zero direction under
``"filter"``/``"layer"``, with the usual warning. Directions made from a bare model or mapping
hold parameters only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from . import _normalize
from ._checks import check_finite, check_int
from ._hdf5 import atomic_write
from ._json import json_ready
from .errors import DirectionError, InputError
from .params import (
    TensorDict,
    align_names,
    fingerprint,
    ignored_names,
    norm_layer_parameter_names,
    parameters_of,
    select_names,
    select_parameters,
    transposed_weight_names,
    without_tied_copies,
)

Norm = Literal["filter", "layer", "model"] | None
_NORMS = ("filter", "layer", "model", None)
_FORMAT = "lossvista-direction"


class Direction(Mapping[str, torch.Tensor]):
    """An immutable mapping parameter name -> tensor, plus how it was made.

    A direction can be applied to any model whose parameters have the same names and shapes.
    Arithmetic (``+``, ``-``, scalar ``*``), :meth:`dot` and :meth:`norm` treat it as one long
    vector. ``meta`` records how it was made (kind, norm, ignore, seed, ...).
    """

    __slots__ = ("_tensors", "meta")

    def __init__(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None):
        if not isinstance(tensors, Mapping):
            raise DirectionError(_not_a_mapping("a Direction", tensors))
        self._tensors: TensorDict = {}
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise DirectionError(
                    f"direction entry {name!r} is a {type(value).__name__}, not a tensor; a "
                    "direction maps parameter names to tensors of the parameters' shapes"
                )
            self._tensors[name] = value.detach()
        self.meta: dict[str, Any] = dict(meta or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        kind = self.meta.get("kind", "user")
        return (
            f"Direction({kind}, {len(self)} tensors, {self.numel()} entries, "
            f"norm={self.norm():.4g}, normalization={self.meta.get('norm')!r})"
        )

    # -- vector algebra -------------------------------------------------------------------------
    def numel(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def dot(self, other: Mapping[str, torch.Tensor]) -> float:
        """Inner product over the shared names, accumulated in float64."""
        return float(
            sum(
                (self._tensors[n].double() * other[n].double()).sum()
                for n in self._tensors
                if n in other
            )
        )

    def norm(self) -> float:
        return math.sqrt(max(self.dot(self), 0.0))

    def _combine(self, other: Mapping[str, torch.Tensor], sign: float) -> Direction:
        other = align_names(other, self._tensors)  # one made on a compiled/wrapped model
        if set(other) != set(self._tensors):
            raise DirectionError("cannot combine directions over different parameter names")
        return Direction({n: t + sign * other[n] for n, t in self._tensors.items()})

    def __add__(self, other: Mapping[str, torch.Tensor]) -> Direction:
        return self._combine(other, 1.0)

    def __sub__(self, other: Mapping[str, torch.Tensor]) -> Direction:
        return self._combine(other, -1.0)

    def __mul__(self, scale: float) -> Direction:
        return Direction({n: t * float(scale) for n, t in self._tensors.items()}, self.meta)

    __rmul__ = __mul__

    def __neg__(self) -> Direction:
        return self * -1.0

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy on another device / dtype (floating-point entries only are cast)."""
        return Direction(
            {
                n: t.to(device=device, dtype=dtype if t.is_floating_point() else None)
                for n, t in self._tensors.items()
            },
            self.meta,
        )

    def fingerprint(self) -> str:
        return fingerprint(self._tensors)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the direction to ``path`` (a ``torch.save`` file loadable with weights_only)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "version": 1,
            "tensors": {n: t.cpu() for n, t in self._tensors.items()},
            "meta": json_ready(self.meta),
        }
        return atomic_write(path, lambda handle: torch.save(payload, handle), what="direction file")

    @classmethod
    def load(cls, path: str | Path, *, weights_only: bool = True) -> Direction:
        """Read a direction written by :meth:`save` (or a plain ``{name: tensor}`` file).

        A file that holds something else (a tensor, a list, a training checkpoint, a pickled
        model) is refused with a :class:`~lossvista.DirectionError` saying what it holds.
        """
        where = f"direction file {str(path)!r}"
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=weights_only)
        except FileNotFoundError as exc:
            raise DirectionError(f"{where} does not exist") from exc
        except IsADirectoryError as exc:
            raise DirectionError(f"{where} is a folder; pass the file") from exc
        except Exception as exc:  # torch raises pickle, runtime and value errors alike here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DirectionError(
                f"{where} cannot be read as a direction ({type(exc).__name__}: {first[:200]}). "
                + (
                    "It holds Python objects that weights_only loading refuses (a whole pickled "
                    "model?): save directions with Direction.save or torch.save({name: tensor}); "
                    "pass weights_only=False only for a file you trust"
                    if weights_only and "weights only" in str(exc).lower().replace("_", " ")
                    else "It is not a torch.save file"
                )
            ) from exc
        if isinstance(payload, Mapping) and payload.get("format") == _FORMAT:
            return cls(payload["tensors"], payload.get("meta"))
        if isinstance(payload, Mapping) and payload:
            others = {k: v for k, v in payload.items() if not isinstance(v, torch.Tensor)}
            if not others:
                return cls(payload, {"kind": "user", "source": str(path)})
            nested = [k for k, v in others.items() if isinstance(v, Mapping)]
            raise DirectionError(
                f"{where} holds a mapping with entries that are not tensors: "
                f"{[f'{k!r} ({type(v).__name__})' for k, v in list(others.items())[:6]]}; a "
                "direction maps parameter names to tensors"
                + (
                    f" (a training checkpoint? its parameters may be under {nested[0]!r}: "
                    f"Direction(torch.load(path, weights_only=True)[{nested[0]!r}]))"
                    if nested
                    else ""
                )
            )
        what = _held(payload)
        raise DirectionError(
            f"{where} holds {what}, not a direction (a mapping parameter name -> tensor); save "
            "one with Direction.save or torch.save({name: tensor})"
        )


def _held(payload: Any) -> str:
    if isinstance(payload, torch.Tensor):
        return f"a tensor of shape {tuple(payload.shape)} (no parameter names)"
    if isinstance(payload, Mapping):
        return "an empty mapping"
    if isinstance(payload, (list, tuple)):
        return f"a {type(payload).__name__} of {len(payload)} items"
    return f"a {type(payload).__name__}"


def _not_a_mapping(what: str, value: Any) -> str:
    hint = (
        "; a model's parameters are a point, not a direction: use "
        "lv.direction_between(model_a, model_b)"
        if isinstance(value, nn.Module)
        else "; give every parameter its own tensor: Direction({name: tensor, ...})"
        if isinstance(value, torch.Tensor)
        else ""
    )
    return (
        f"{what} must be a Direction or a mapping parameter name -> tensor (e.g. from "
        f"lv.random_directions(obj)), got {_held(value).removeprefix('a ')}{hint}"
    )


def as_direction(
    value: Mapping[str, torch.Tensor] | Direction, what: str = "direction"
) -> Direction:
    """``value`` as a :class:`Direction`; anything but a mapping name -> tensor is refused."""
    if isinstance(value, Direction):
        return value
    if not isinstance(value, Mapping):
        raise DirectionError(_not_a_mapping(what, value))
    return Direction(value, {"kind": "user"})


def random_directions(
    model_or_params: nn.Module | Mapping[str, torch.Tensor] | Any,
    n: int = 2,
    *,
    norm: Norm = "filter",
    ignore: str | Iterable[str] | None = ("bias", "bn"),
    orthogonalize: bool = False,
    seed: int = 0,
    params: str | Iterable[str] | None = None,
    filter_axis: Mapping[str, int] | None = None,
) -> tuple[Direction, ...]:
    """``n`` seeded Gaussian directions, normalised to the weights (see the module docstring).

    Args:
        model_or_params: an ``nn.Module``, an :class:`~lossvista.Objective` (its selected
            parameters, and its BatchNorm running statistics under ``bn="perturb"``: see the
            module docstring) or a mapping name -> tensor.
        n: how many directions.
        norm: ``"filter"`` (Li et al. 2018), ``"layer"``, ``"model"`` or ``None``.
        ignore: parameters whose direction is zero: ``"bias"``, ``"norm"`` (every normalisation
            layer: BatchNorm, LayerNorm, RMSNorm, GroupNorm, ...; ``"bn"`` is the same), globs,
            or ``()``.
        orthogonalize: make every direction orthogonal to the previous ones (exactly, after
            normalisation).
        seed: the random seed; the same seed gives the same directions on any device.
        params: for a model, which parameters may move, as for :class:`~lossvista.Objective`:
            by default the trainable ones (frozen parameters get a zero direction), ``"all"``,
            or names/globs. For a mapping: names/globs (default all). Not for an Objective,
            which has its own selection.
        filter_axis: ``{name or glob: axis}``, the axis along which ``norm="filter"`` cuts a
            parameter into filters (default 0; 1 for weights stored as ``(in, out)``, found for
            HuggingFace ``Conv1D``). Recorded in ``meta["filter_axis"]`` when not 0.

    Returns:
        A tuple of ``n`` :class:`Direction` objects with the dtype and device of the parameters.
        A :class:`~lossvista.LossvistaWarning` names the parameters that normalisation gives a
        zero direction (all-zero weights, such as LoRA's ``lora_B`` at initialisation).
    """
    n = check_int(n, "n", 1)
    if norm not in _NORMS:
        raise InputError(f"norm must be one of 'filter', 'layer', 'model' or None, got {norm!r}")
    if filter_axis is not None and norm != "filter":
        raise InputError(f"filter_axis applies to norm='filter' only, not norm={norm!r}")
    source = _source(model_or_params, params)
    weights = source.weights
    skipped = ignored_names(weights, ignore, source.norm_names)
    active = [name for name in source.selected if name not in skipped]
    if not active:
        raise DirectionError(
            f"ignore={ignore!r} leaves no parameter to perturb; pass ignore=() to include them"
        )
    axes = _normalize.filter_axes(weights, active, filter_axis, source.transposed)
    generator = torch.Generator().manual_seed(int(seed))
    groups = _normalize.groups(weights, active, norm, axes if norm == "filter" else {})
    if orthogonalize and groups is not None:
        small = [g.name for g in groups if g.size < n]
        if small:
            raise DirectionError(
                f"cannot orthogonalize {n} directions inside normalisation groups of fewer than {n} "
                f"entries: {small[:8]}; ignore those parameters or use norm='layer'/'model'"
            )
    meta: dict[str, Any] = {
        "kind": "random",
        "norm": norm,
        "ignore": json_ready(ignore),
        "orthogonalize": bool(orthogonalize),
        "seed": int(seed),
    }
    if source.label is not None:
        meta["params"] = source.label
    buffer_names = [n for n in getattr(model_or_params, "buffer_names", ()) if n in weights]
    if buffer_names:
        meta["buffers"] = buffer_names
    if axes and norm == "filter":
        meta["filter_axis"] = axes
    previous: list[TensorDict] = []
    results = []
    for index in range(n):
        raw = {
            name: torch.randn(weights[name].shape, generator=generator, dtype=torch.float64)
            for name in active
        }
        shaped = _normalize.normalize(raw, weights, norm, groups, previous if orthogonalize else [])
        previous.append(shaped)
        tensors = {}
        for name, w in weights.items():
            value = shaped.get(name)
            tensors[name] = (
                torch.zeros_like(w.detach())
                if value is None
                else value.to(dtype=w.dtype, device=w.device)
            )
        direction = Direction(tensors, {**meta, "index": index})
        if direction.norm() == 0.0:
            raise DirectionError(
                "normalisation produced a zero direction: every weight it scales to is zero; use "
                "norm=None or include other parameters"
            )
        if index == 0:  # zero weights give zero entries in every direction: warn once
            _normalize.warn_zeroed(shaped, norm, stacklevel=3)
        results.append(direction)
    return tuple(results)


def direction_between(
    a: nn.Module | Mapping[str, torch.Tensor], b: nn.Module | Mapping[str, torch.Tensor]
) -> Direction:
    """The direction ``b - a`` over the parameters of two models (or state dicts).

    Names are matched through the prefixes of ``torch.compile`` (``_orig_mod.``) and
    DataParallel/DDP (``module.``), so a bare and a wrapped model fit; the direction has the
    names of ``a``. A state dict that lists a tied copy (``lm_head.weight`` tied to
    ``embed.weight``, which the model's ``named_parameters()`` lists once) fits when the copy
    equals its twin. Otherwise names and shapes must match; a mismatch names the offending keys.
    """
    pa, pb = parameters_of(a), parameters_of(b)
    pb = without_tied_copies(pb, a, pa, "second model (b)")
    pa = without_tied_copies(pa, b, pb, "first model (a)")
    pb = align_names(pb, pa)
    check_same_layout(pa, pb, "first model", "second model")
    check_finite(pa, "the first model (a)")
    check_finite(pb, "the second model (b)")
    return Direction(
        {n: pb[n].detach() - pa[n].detach().to(pb[n].device) for n in pa},
        {"kind": "between"},
    )


def check_same_layout(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], a_name: str, b_name: str
) -> None:
    only_a = [n for n in a if n not in b]
    only_b = [n for n in b if n not in a]
    if only_a or only_b:
        raise DirectionError(
            f"parameter names differ: only in {a_name}: {only_a[:10]}, only in {b_name}: "
            f"{only_b[:10]}; both must come from the same architecture"
        )
    shapes = [
        f"{n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}" for n in a if a[n].shape != b[n].shape
    ]
    if shapes:
        raise DirectionError(f"parameter shapes differ ({a_name} vs {b_name}): {shapes[:10]}")


class _Source(NamedTuple):
    """What random directions are made over: the direction's tensors (``weights``), the names
    that may move (``selected``), what is known of the layers, how the selection reads."""

    weights: TensorDict
    selected: tuple[str, ...]
    norm_names: set[str] | None = None
    transposed: Collection[str] = frozenset()
    label: Any = None


def _source(source: Any, params: str | Iterable[str] | None) -> _Source:
    # An Objective exposes its model and the selected parameter names.
    model = getattr(source, "model", None)
    names = getattr(source, "param_names", None)
    if isinstance(model, nn.Module) and names is not None:
        if params is not None:
            raise InputError(
                "params= is for a model or a mapping; an Objective has its own selection: pass "
                "params= to lv.Objective(...)"
            )
        all_params: TensorDict = dict(model.named_parameters())
        label = getattr(source, "param_selection", None)
        norm_names, transposed = norm_layer_parameter_names(model), transposed_weight_names(model)
        # bn="perturb": the BatchNorm running statistics are moved too (1-D "parameters" that
        # no ignore token but a glob covers: norm_names holds parameter names only).
        perturbed = getattr(source, "perturbed_buffers", None)
        buffers: TensorDict = perturbed() if callable(perturbed) else {}
        moved = {**{n: all_params[n] for n in names}, **buffers}
        return _Source(moved, (*names, *buffers), norm_names, transposed, label)
    if isinstance(source, nn.Module):
        selection = select_parameters(source, params)
        weights: TensorDict = dict(source.named_parameters())
        norm_names, transposed = norm_layer_parameter_names(source), transposed_weight_names(source)
        return _Source(weights, selection.names, norm_names, transposed, selection.label)
    weights = parameters_of(source)
    label = None if params is None else ([params] if isinstance(params, str) else list(params))
    return _Source(weights, select_names(list(weights), params), label=label)
