"""The arithmetic and the training of curves between two models (Garipov et al., 2018).

A curve is a list of control points ``P_0 .. P_n`` (mappings name -> tensor over the objective's
selected parameters), ``P_0`` and ``P_n`` the two fixed end points and ``P_1 .. P_{n-1}`` the
bends. :func:`curve_point` gives the point at ``t`` in ``[0, 1]``; :func:`fit_bends` trains the
bends by minimising ``E_{t ~ U(0, 1)} L(theta(t))`` with one minibatch and one uniformly drawn
``t`` per step, through ``torch.func.functional_call`` (the model's tensors are never written).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._data import call_functional
from ..objective import Objective
from ..params import preserved

TensorDict = dict[str, torch.Tensor]
KINDS = ("bezier", "polychain")


def bezier_weights(degree: int, t: float) -> list[float]:
    """Bernstein weights ``C(n, k) t^k (1 - t)^(n - k)``, ``k = 0..n``, of a degree-``n`` curve.

    At ``t = 0`` and ``t = 1`` they are exactly ``[1, 0, ..., 0]`` and ``[0, ..., 0, 1]``, so the
    curve passes through its end points bit for bit.
    """
    return [math.comb(degree, k) * t**k * (1.0 - t) ** (degree - k) for k in range(degree + 1)]


def curve_point(points: Sequence[Mapping[str, torch.Tensor]], kind: str, t: float) -> TensorDict:
    """The curve's parameters at ``t`` in ``[0, 1]`` (differentiable in the control points).

    ``"bezier"``: ``sum_k b_k(t) P_k`` with the Bernstein weights of degree ``len(points) - 1``.
    ``"polychain"``: piecewise linear through the control points at ``t = k / n``.
    """
    n = len(points) - 1
    if kind == "bezier":
        weights = bezier_weights(n, t)
        return {
            name: sum((w * p[name] for w, p in zip(weights[1:], points[1:])), weights[0] * value)
            for name, value in points[0].items()
        }
    segment = min(math.floor(t * n), n - 1)
    s = t * n - segment
    left, right = points[segment], points[segment + 1]
    # (1 - s) P_i + s P_{i+1}: exactly P_n at t = 1 (P_i + s (P_{i+1} - P_i) need not be)
    return {name: (1.0 - s) * left[name] + s * right[name] for name in left}


def straight_bends(a: TensorDict, b: TensorDict, bends: int) -> list[TensorDict]:
    """Control points ``a, a + k/n (b - a), ..., b``: both kinds of curve are then the line."""
    n = bends + 1
    middle = [{name: a[name] + (k / n) * (b[name] - a[name]) for name in a} for k in range(1, n)]
    return [dict(a), *middle, dict(b)]


def fit_bends(
    obj: Objective,
    points: list[TensorDict],
    *,
    kind: str,
    steps: int,
    lr: float,
    batch_size: int | None,
    bn: str,
    seed: int,
    progress: bool,
) -> tuple[list[TensorDict], np.ndarray]:
    """Train the bends (``points[1:-1]``) with Adam; returns the new control points (end points
    kept as given) and the minibatch loss of every step, float64 ``(steps,)``.

    Each step draws ``t ~ U(0, 1)`` from a generator seeded by ``seed`` and takes the next batch
    of the objective's data (``batch_size``, cycling through the data in its order), whose loss
    is the objective's batch mean. The model runs in eval mode; with ``bn="recompute"`` its
    BatchNorm layers run in train mode (batch statistics at ``t``) on copies of the buffers, as
    in Garipov et al.; everything is restored on exit.
    """
    model = obj.model
    generator = torch.Generator().manual_seed(seed)
    selected = set(obj.param_names)
    bends = [
        {n: t.detach().clone().requires_grad_(True) for n, t in p.items()} for p in points[1:-1]
    ]
    optimizer = torch.optim.Adam([t for p in bends for t in p.values()], lr=lr)
    losses = np.empty(steps, dtype=np.float64)
    from tqdm.auto import tqdm  # lazily: importing tqdm costs time at package import

    with preserved(model), torch.enable_grad():
        model.eval()
        if bn == "recompute":
            for module in obj.batchnorm_modules:
                module.train()
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
        # copies: a train-mode BatchNorm updates the running statistics it is given
        frozen.update({n: b.detach().clone() for n, b in model.named_buffers()})
        batches = _cycle(obj, batch_size)
        with tqdm(total=steps, desc="fitting curve", disable=None if progress else True) as bar:
            for step in range(steps):
                t = float(torch.rand((), generator=generator, dtype=torch.float64))
                inputs, target = next(batches)
                at = curve_point([points[0], *bends, points[-1]], kind, t)
                output = call_functional(model, {**frozen, **at}, inputs)
                loss = obj._averaging.batch_loss(output, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses[step] = float(loss.detach())
                bar.update(1)
    fitted = [{n: t.detach() for n, t in p.items()} for p in bends]
    return [points[0], *fitted, points[-1]], losses


def _cycle(obj: Objective, batch_size: int | None) -> Any:
    """The objective's batches, again and again."""
    while True:
        empty = True
        for batch in obj._batches(batch_size):
            empty = False
            yield batch
        if empty:
            from ..errors import DataError

            raise DataError("the data yielded no batches; pass a non-empty data set")


def evaluator(obj: Objective, bn: str) -> Objective:
    """``obj`` itself, or a shallow copy (same model and data) with the BatchNorm policy ``bn``."""
    if obj.bn == bn:
        return obj
    other = copy.copy(obj)
    other.bn = bn  # type: ignore[assignment]
    return other


def recompute_batchnorm(obj: Objective, model: nn.Module) -> None:
    """Re-estimate the BatchNorm statistics of ``model`` (a copy) on the objective's data, in
    place; momentum and train/eval modes are left as they were."""
    other = copy.copy(obj)
    other.model = model
    modules = other.batchnorm_modules
    momentum = [m.momentum for m in modules]
    training = [m.training for m in modules]
    with torch.no_grad():
        other._recompute_batchnorm()
    for m, mom, mode in zip(modules, momentum, training):
        m.momentum = mom
        m.train(mode)
