"""A differentiable, functional view of an :class:`~lossvista.Objective`.

Curvature and sharpness need the loss as a function of the selected parameters, with gradients.
This view computes it with ``torch.func.functional_call`` (the model's own tensors are never
written) and keeps the objective's exact weighting (the shared kernel of
:mod:`lossvista._averaging`): the loss is ``sum_b n_b * loss_b(theta) / N`` over the objective's
batches, ``n_b`` the items of batch ``b`` (samples, tokens or the objective's ``count``) and ``N``
their total. Inputs go to the model as the objective's data give them: a tensor, positional
inputs or keyword inputs (dict batches).

Use it as a context manager: inside, the model is in eval mode (BatchNorm uses running
statistics; with ``bn="recompute"`` they are re-estimated once at the current parameters on entry
and treated as constants), and everything is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from . import _allocator
from ._data import Batch, call_functional
from .errors import DataError
from .objective import Objective
from .params import preserved

TensorDict = dict[str, torch.Tensor]


class FunctionalObjective:
    """The objective's loss as a function of a dict of its selected parameters.

    Attributes:
        objective: the wrapped :class:`~lossvista.Objective`.
        names: the selected parameter names, in model order.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        self.names = objective.param_names
        self._stack: contextlib.ExitStack | None = None
        self._batches: list[tuple[Any, torch.Tensor, float]] | None = None
        self._frozen: TensorDict = {}

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> FunctionalObjective:
        stack = contextlib.ExitStack()
        model = self.objective.model
        stack.enter_context(preserved(model))
        model.eval()
        _allocator.warm(self.objective.device)  # activations and gradients kept in the heap
        if self.objective.bn == "recompute":
            with torch.no_grad():
                self.objective._recompute_batchnorm()
        selected = set(self.names)
        self._frozen = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
        self._frozen.update({n: b.detach() for n, b in model.named_buffers()})
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # -- data -----------------------------------------------------------------------------------
    def batches(self) -> list[tuple[Any, torch.Tensor, float]]:
        """``(inputs, target, weight)`` with ``weight = n_b / N`` (cached after the first call).

        ``n_b`` are the batch's items by the objective's ``count`` (a callable count reads the
        model's output at the current parameters, once). Batches without items are left out:
        their mean is undefined and their weight zero.
        """
        if self._batches is None:
            objective = self.objective
            averaging = objective._averaging
            pairs: list[Batch] = list(objective._batches())
            items = []
            for inputs, target in pairs:
                output = None
                if averaging.needs_output:
                    with torch.no_grad():
                        state = {**self._frozen, **objective.parameters()}
                        output = call_functional(objective.model, state, inputs)
                items.append(averaging.items(target, output))
            total = sum(items)
            if total == 0:
                raise DataError(averaging.no_items_message())
            self._batches = [
                (x, t, n / total) for (x, t), n in zip(pairs, items, strict=True) if n > 0
            ]
        return self._batches

    # -- values ---------------------------------------------------------------------------------
    def params(self) -> TensorDict:
        """Detached copies of the selected parameters at the model's current values."""
        return {n: t.detach().clone() for n, t in self.objective.parameters().items()}

    def batch_loss(self, params: Mapping[str, torch.Tensor], inputs: Any, target: torch.Tensor):
        """The loss of one batch (its mean) at ``params``; differentiable with respect to them."""
        output = call_functional(self.objective.model, {**self._frozen, **params}, inputs)
        return self.objective._averaging.batch_loss(output, target)

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The exact item-weighted loss over all batches (differentiable; one graph per batch)."""
        total = None
        for inputs, target, weight in self.batches():
            term = self.batch_loss(params, inputs, target) * weight
            total = term if total is None else total + term
        if total is None:  # batches() refuses data without samples
            raise DataError("the data yielded no samples; pass a non-empty data set")
        return total

    def loss_and_grad(self, params: Mapping[str, torch.Tensor]) -> tuple[float, TensorDict]:
        """Loss and its gradient at ``params``, accumulated batch by batch (memory of one batch)."""
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        value = 0.0
        grads = {n: torch.zeros_like(t) for n, t in leaves.items()}
        with torch.enable_grad():
            for inputs, target, weight in self.batches():
                loss = self.batch_loss(leaves, inputs, target)
                parts = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                for grad_sum, part in zip(grads.values(), parts):
                    if part is not None:
                        grad_sum.add_(part, alpha=weight)
                value += float(loss.detach()) * weight
        return value, grads


@contextlib.contextmanager
def functional(objective: Objective) -> Iterator[FunctionalObjective]:
    """``with functional(obj) as f: f.loss_and_grad(f.params())``."""
    with FunctionalObjective(objective) as view:
        yield view
