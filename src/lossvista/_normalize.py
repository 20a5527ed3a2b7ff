"""Normalisation of random directions (Li et al., 2018): groups of entries rescaled together.

A *group* is a set of entries of one parameter rescaled to the norm of the matching weights:
every filter of a weight under ``norm="filter"`` (its slices along the filter axis: 0 for a
Linear or Conv weight, 1 for a weight stored as ``(in, out)`` such as HuggingFace's
``Conv1D``), the whole tensor otherwise. ``norm="model"`` and ``None`` have no groups: the whole
direction is one vector. BatchNorm running statistics (``bn="perturb"``) are 1-D tensors here,
so each is one group rescaled to its own norm.

Norms and projections are computed in float64 (float32 on a device without float64): a
half-precision tensor's sum of squares overflows float16 long before its entries do (100,000
entries of 1000.0 square-sum to 1e11; float16 stops at 65504), and bfloat16 would round it.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from .errors import InputError, LossvistaWarning
from .params import TensorDict


class Group:
    """Entries rescaled together: a parameter's filters along ``axis`` or (``axis=None``) the
    whole tensor. ``size`` counts the entries of one filter (of the whole tensor)."""

    __slots__ = ("axis", "name", "param", "size")

    def __init__(self, name: str, param: str, axis: int | None, size: int):
        self.name, self.param, self.axis, self.size = name, param, axis, size

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a matrix with one row per group member."""
        if self.axis is None:
            return t.reshape(1, -1)
        return t.movedim(self.axis, 0).reshape(t.shape[self.axis], -1)

    def unrows(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return rows.reshape(like.shape)
        return rows.reshape(like.movedim(self.axis, 0).shape).movedim(0, self.axis)


def filter_axes(
    weights: TensorDict,
    active: Sequence[str],
    given: Mapping[str, int] | None,
    transposed: Collection[str],
) -> dict[str, int]:
    """The filter axis of every active parameter with 2 or more dimensions whose axis is not 0:
    the known transposed layers (axis 1), then ``given`` (names or globs -> axis)."""
    axes = {n: 1 for n in active if n in transposed and weights[n].dim() == 2}
    if given is None:
        return axes
    if not isinstance(given, Mapping):
        raise InputError(
            f"filter_axis must be a mapping name or glob -> axis, got {type(given).__name__}; "
            "e.g. filter_axis={'*.c_attn.weight': 1}"
        )
    for pattern, axis in given.items():
        hits = [n for n in weights if n == pattern or fnmatch.fnmatchcase(n, str(pattern))]
        if not hits:
            raise InputError(
                f"filter_axis pattern {pattern!r} matches no parameter; parameters: "
                f"{list(weights)[:12]}"
            )
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise InputError(f"filter_axis[{pattern!r}] must be an int axis, got {axis!r}")
        for name in hits:
            dim = weights[name].dim()
            if not -dim <= axis < dim:
                raise InputError(
                    f"filter_axis[{pattern!r}] = {axis} is out of range for {name!r} of shape "
                    f"{tuple(weights[name].shape)}"
                )
            if name in active and dim >= 2:
                axes[name] = axis % dim
    return {n: a for n, a in axes.items() if a != 0}


def groups(
    weights: TensorDict, active: Sequence[str], norm: Any, axes: Mapping[str, int]
) -> list[Group] | None:
    if norm is None or norm == "model":
        return None
    out = []
    for name in active:
        w = weights[name]
        if norm == "filter" and w.dim() >= 2:
            axis = axes.get(name, 0)
            out.append(Group(f"{name}[filters]", name, axis, w.numel() // max(w.shape[axis], 1)))
        else:
            out.append(Group(name, name, None, w.numel()))
    return out


def normalize(
    raw: TensorDict,
    weights: TensorDict,
    norm: Any,
    group_list: list[Group] | None,
    previous: list[TensorDict],
) -> TensorDict:
    """Orthogonalise ``raw`` against ``previous`` inside each group, then rescale each group.

    Computed in float64 (:func:`wide`); the result has the dtype of ``raw``.
    """
    dtypes = {n: t.dtype for n, t in raw.items()}
    raw = {n: wide(t) for n, t in raw.items()}
    previous = [{n: wide(t) for n, t in p.items()} for p in previous]
    weights = {n: wide(weights[n].detach()) for n in raw}
    out = _normalize_wide(raw, weights, norm, group_list, previous)
    return {n: t.to(dtypes[n]) for n, t in out.items()}


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 (float32 on an Apple MPS device, which has no float64)."""
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def wide_norm(t: torch.Tensor) -> torch.Tensor:
    """The 2-norm of all entries of ``t``, computed in float64 (:func:`wide`): finite for any
    finite half-precision tensor."""
    return torch.linalg.vector_norm(wide(t))


def _normalize_wide(
    raw: TensorDict,
    weights: TensorDict,
    norm: Any,
    group_list: list[Group] | None,
    previous: list[TensorDict],
) -> TensorDict:
    if group_list is None:  # one group: the whole model (norm="model") or nothing to scale (None)
        flat_raw = torch.cat([raw[n].reshape(-1) for n in raw])
        flat_prev = [torch.cat([p[n].reshape(-1) for n in raw]) for p in previous]
        flat = project_out(flat_raw[None, :], [q[None, :] for q in flat_prev])[0]
        if norm is None:  # keep a Gaussian's length after projection
            target = flat_raw.norm()
        else:
            target = torch.cat([weights[n].detach().double().reshape(-1).cpu() for n in raw]).norm()
        flat = flat * (target / flat.norm().clamp_min(1e-300))
        out, offset = {}, 0
        for n in raw:
            size = raw[n].numel()
            out[n] = flat[offset : offset + size].reshape(raw[n].shape)
            offset += size
        return out
    out = {}
    for group in group_list:
        w = weights[group.param].detach().double().cpu()
        d = raw[group.param]
        rows = group.rows
        d_rows = project_out(rows(d), [rows(p[group.param]) for p in previous])
        w_norms = rows(w).norm(dim=1, keepdim=True)
        d_norms = d_rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
        out[group.param] = group.unrows(d_rows * (w_norms / d_norms), d)
    return out


def project_out(rows: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
    """Gram-Schmidt of every row of ``rows`` against the matching rows of ``previous``.

    ``previous`` rows are already mutually orthogonal (they were produced by this function), so
    one pass per previous vector is exact up to rounding; a second pass removes the rounding.
    """
    out = rows.clone()
    for _ in range(2):
        for prev in previous:
            denom = (prev * prev).sum(dim=1, keepdim=True)
            coef = (out * prev).sum(dim=1, keepdim=True) / denom.clamp_min(1e-300)
            out = out - torch.where(denom > 0, coef, torch.zeros_like(coef)) * prev
    return out


def warn_zeroed(shaped: TensorDict, norm: Any, stacklevel: int) -> None:
    """Warn when normalisation zeroes a whole parameter that is not ignored: its weights are
    zero (a LoRA ``lora_B`` at initialisation), so the slice would never move it."""
    zeroed = [name for name, t in shaped.items() if t.numel() and not bool(t.any())]
    if not zeroed:
        return
    shown = ", ".join(repr(n) for n in zeroed[:8]) + (" ..." if len(zeroed) > 8 else "")
    warnings.warn(
        f"norm={norm!r} gives a zero direction to {len(zeroed)} parameter(s) that are not "
        "ignored, because their weights are all zero (a LoRA B matrix or a bias at "
        f"initialisation?): {shown}. The slice never moves them, and a plane that moves nothing "
        "else that matters is exactly flat. Pass norm='model' (the whole direction scaled to "
        "the weights' norm) or norm=None to give them a direction, or ignore=[...] them knowingly",
        LossvistaWarning,
        stacklevel=stacklevel,
    )
