"""Hessian-vector products of an objective's loss: the public :func:`hvp`, the measured
``"auto"`` choice of backend, and :class:`HessianOperator` for the many products of Lanczos and
Hutchinson.

The Hessian is that of the exact sample-weighted mean loss over all the objective's data (weights
``n_b / N``), with respect to its selected parameters, so with several batches
``H v = sum_b (n_b / N) H_b v``. The backends (``"double_backward"``,
``"forward_over_reverse"``, ``"finite_difference"``) are described in
:mod:`lossvista.curvature._backends`.

Under torchrun or srun the ranks share the batches (:func:`lossvista._dist.hessian_team`):
the sums ``sum_b n_b H_b v`` and item counts of the ranks are added up (all-reduce), so every rank
gets the single-process product up to rounding (seeded probes are the same on every rank).

``"auto"`` measures once per objective (see :func:`hvp_choice`): it times both exact backends on
the first batch, cross-checks them against each other (and against finite differences when only
one runs), and keeps the fastest one that works. Some custom ``autograd.Function``s (those marked
``@once_differentiable``) make double backward *silently* drop terms under ``autograd.grad``; the
cross-check catches that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import torch

from .. import _dist
from .._functional import FunctionalObjective, functional
from .._result import Result
from ..directions import Direction
from ..errors import InputError
from ..objective import Objective
from ._backends import (
    BACKENDS,
    BATCH_PRODUCTS,
    EXACT_BACKENDS,
    SavedBytes,
    _first_line,
    _relative,
    _synchronize,
    exact_attention,
    finite_difference,
    flat,
    second_derivative,
)
from ._common import HessianWarning, caller_stacklevel, check_objective, renamed
from ._vectors import Layout, rademacher

Backend = Literal["auto", "double_backward", "forward_over_reverse", "finite_difference"]
#: Old names of :data:`Backend` and of the backend tuples (kept for existing imports).
Method = Backend
METHODS = BACKENDS
EXACT_METHODS = EXACT_BACKENDS
#: Default memory budget for gradient graphs an operator keeps for re-use (bytes of saved tensors).
GRAPH_BYTES = 2 * 1024**3
#: An exact backend differing from finite differences by more than this (relative) is distrusted.
FD_DISAGREEMENT = 0.2


@dataclasses.dataclass(eq=False, repr=False)
class HvpChoice(Result):
    """What ``backend="auto"`` measured for one objective.

    Attributes:
        working: exact backends that ran and passed the cross-check, fastest first.
        seconds: seconds per product for every backend that ran (measured at the objective's
            parameters when the choice was made).
        failures: backend -> why it was rejected (the exception, or the failed cross-check).
        fastest: the fastest working exact backend, ``"finite_difference"`` when none works.
    """

    result_kind = "hvp_choice"
    file_format = "json"

    working: tuple[str, ...]
    seconds: dict[str, float]
    failures: dict[str, str]

    @property
    def fastest(self) -> str:
        return self.working[0] if self.working else "finite_difference"

    def as_dict(self) -> dict[str, Any]:
        """The measurement as strict JSON, with ``fastest`` added."""
        return {**super().as_dict(), "fastest": self.fastest}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> HvpChoice:
        return cls(tuple(state["working"]), dict(state["seconds"]), dict(state["failures"]))

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("fastest", self.fastest),
            ("working", "[" + ", ".join(self.working) + "]"),
        ]
        rows += [(f"ms_per_product[{b}]", 1e3 * s) for b, s in self.seconds.items()]
        rows += [(f"failed[{b}]", why) for b, why in self.failures.items()]
        return rows


# Keyed by the objective itself, so the measurement lives exactly as long as the objective and no
# attribute is written into a class this package does not own. An objective's data, parameter
# selection and device are fixed at construction, which is what the timing depends on.
_CHOICES: weakref.WeakKeyDictionary[Objective, HvpChoice] = weakref.WeakKeyDictionary()


@renamed(method="backend")
def hvp(obj: Objective, v: Mapping[str, torch.Tensor], *, backend: Backend = "auto") -> Direction:
    """The Hessian-vector product ``H v`` of the objective's loss at the model's parameters.

    Args:
        obj: the :class:`~lossvista.Objective`; ``H`` is the Hessian of its sample-weighted mean
            loss over all data, with respect to its selected parameters (``params=``).
        v: a :class:`~lossvista.Direction` or mapping name -> tensor over (a subset of) the
            selected parameters; missing names count as zero.
        backend: ``"auto"`` (the fastest exact backend that works, measured once per objective),
            ``"double_backward"``, ``"forward_over_reverse"`` or ``"finite_difference"``. The
            old name ``method=`` still works, with a ``DeprecationWarning``.

    Returns:
        ``H v`` as a :class:`~lossvista.Direction` over all selected parameters (their dtype and
        device), ``meta={"kind": "hvp", "backend": <backend used>}``.

    Raises:
        DirectionError: ``v`` names parameters the objective does not select, or shapes differ.
        InputError: unknown ``backend``.
    """
    _check_backend(backend)
    with HessianOperator(obj, backend=backend, max_graph_bytes=0) as op:
        vector = op.layout.flatten(v, what="v")
        return op.layout.direction(op.matvec(vector), {"kind": "hvp", "backend": op.backend})


def hvp_choice(obj: Objective) -> HvpChoice:
    """Measure (once per objective, then cached) which exact HVP backends work and how fast."""
    check_objective(obj)
    choice = _CHOICES.get(obj)
    if choice is None:
        with functional(obj) as view:
            choice = _measure(view, view.params())
        _CHOICES[obj] = choice
    return choice


class HessianOperator:
    """The Hessian of an objective's loss as a linear operator on flat vectors.

    Use it as a context manager; inside, the model is in the state of the functional view (eval
    mode, see :mod:`lossvista._functional`) and everything is restored on exit::

        with HessianOperator(obj) as H:
            w = H.matvec(v)          # v, w: 1-D tensors of length H.size
            d = H.layout.direction(w, {"kind": "user"})

    Vectors are flat: the selected parameters in ``obj.param_names`` order, each flattened
    row-major (:class:`~lossvista.curvature._vectors.Layout`).

    Args:
        obj: the :class:`~lossvista.Objective`.
        backend: a backend name or ``"auto"`` (see the module docstring). With ``"auto"`` or
            ``"double_backward"`` the gradient graph of each batch is kept for re-use while the
            tensors it saves fit ``max_graph_bytes``; batches beyond that are recomputed per
            product. The old name ``method=`` still works, with a ``DeprecationWarning``.
        max_graph_bytes: memory budget for kept graphs (``0``: keep none).

    Attributes:
        backend: the backend actually used.
        n_hvp: products computed so far (not counting the one-off ``"auto"`` measurement).
        graph_bytes: bytes saved by the kept graphs; ``kept_batches`` of ``n_batches`` are kept.
    """

    @renamed(method="backend")
    def __init__(
        self, obj: Objective, *, backend: Backend = "auto", max_graph_bytes: int = GRAPH_BYTES
    ) -> None:
        _check_backend(backend)
        check_objective(obj)
        self.objective = obj
        self.requested = backend
        self.max_graph_bytes = int(max_graph_bytes)
        self.backend: str = backend
        self.n_hvp = 0
        self.graph_bytes = 0
        self.kept_batches = 0
        self.n_batches = 0
        self._stack: contextlib.ExitStack | None = None
        self._view: FunctionalObjective | None = None
        self._graphs: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        self._recomputed: list[tuple[Any, torch.Tensor, float]] = []
        self._team: _dist.Team | None = None
        self._items = (1.0, 1.0)  # this rank's items and all ranks' (the data they share)

    @property
    def method(self) -> str:
        """Deprecated name of :attr:`backend`."""
        warnings.warn(
            "HessianOperator.method is deprecated; use HessianOperator.backend",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.backend

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> HessianOperator:
        stack = contextlib.ExitStack()
        try:
            view = stack.enter_context(functional(self.objective))
            team = _dist.hessian_team(self.objective)
            with _dist.data_share(team) if team else contextlib.nullcontext():
                self._bind(view, view.params())  # the view reads this rank's batches
            if team is not None:
                self._share(team)
        except BaseException:
            self._graphs = []
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    @classmethod
    @renamed(method="backend")
    def at(
        cls,
        obj: Objective,
        view: FunctionalObjective,
        params: Mapping[str, torch.Tensor],
        *,
        backend: Backend = "auto",
        max_graph_bytes: int = GRAPH_BYTES,
    ) -> HessianOperator:
        """An operator at other parameter values, inside an already open functional view.

        The caller owns the view (and its restore guard); call :meth:`release` when done.
        """
        op = cls(obj, backend=backend, max_graph_bytes=max_graph_bytes)
        op._bind(view, {n: t.detach() for n, t in params.items()})
        team = _dist.active_team()  # a grid in the data mode: the view reads a share
        if team is not None:
            op._share(team)
        return op

    def release(self) -> None:
        """Free the kept graphs; the operator cannot be used afterwards."""
        self._graphs = []
        self._recomputed = []
        self._view = None

    def _bind(self, view: FunctionalObjective, params: Mapping[str, torch.Tensor]) -> None:
        self._view = view
        self.params = dict(params)
        self.layout = Layout(self.params)
        self.backend = self._resolve(view)
        batches = view.batches()
        self.n_batches = len(batches)
        self._recomputed = list(batches)
        if self.backend == "double_backward" and self.max_graph_bytes > 0:
            self._keep_graphs(view, batches)

    def _share(self, team: _dist.Team) -> None:
        """Sum the products over the ranks of ``team``, each over its own batches."""
        if self._view is not None:
            self._team = team
            self._items = _dist.shared_items(team, self._view, self.params)
        self.backend = team.broadcast(self.backend)  # one backend for all ranks: rank 0's

    def _summed(self, local: torch.Tensor) -> torch.Tensor:
        """This rank's weighted mean over its batches as the mean over all ranks' data."""
        if self._team is None:
            return local
        mine, total = self._items
        return self._team.sum_tensor(local * mine) / total

    def _resolve(self, view: FunctionalObjective) -> str:
        if self.requested != "auto":
            return self.requested
        choice = _CHOICES.get(self.objective)
        if choice is None:
            choice = _measure(view, view.params())
            _CHOICES[self.objective] = choice
        if "double_backward" in choice.working and self.max_graph_bytes > 0:
            return "double_backward"  # with kept graphs: one backward pass per product
        return choice.fastest

    def _keep_graphs(
        self, view: FunctionalObjective, batches: list[tuple[Any, torch.Tensor, float]]
    ) -> None:
        """Build and keep each batch's gradient graph while the saved tensors fit the budget."""
        kept: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        rest: list[tuple[Any, torch.Tensor, float]] = []
        for inputs, target, weight in batches:
            if rest:
                rest.append((inputs, target, weight))
                continue
            leaves = [t.detach().requires_grad_(True) for t in self.params.values()]
            named = dict(zip(self.layout.names, leaves))
            counter = SavedBytes()
            with (
                torch.enable_grad(),
                exact_attention(),
                torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack),
            ):
                loss = view.batch_loss(named, inputs, target)
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            if self.graph_bytes + counter.bytes > self.max_graph_bytes:
                rest.append((inputs, target, weight))
                continue
            self.graph_bytes += counter.bytes
            kept.append((list(grads), leaves, weight))
        self._graphs = kept
        self._recomputed = rest
        self.kept_batches = len(kept)

    # -- the product ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of selected parameter entries ``P`` (vectors have this length)."""
        return self.layout.size

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`size`, in the parameters' dtype."""
        if self._view is None:
            raise InputError("use the operator inside `with HessianOperator(obj) as H:`")
        v = v.to(dtype=self.layout.dtype, device=self.layout.device)
        self.n_hvp += 1
        parts = list(self.layout.unflatten(v).values())
        total = torch.zeros_like(v)
        for grads, leaves, weight in self._graphs:
            total.add_(flat(second_derivative(grads, leaves, parts, retain=True)), alpha=weight)
        product = BATCH_PRODUCTS[self.backend]
        for inputs, target, weight in self._recomputed:
            total.add_(flat(product(self._view, self.params, inputs, target, parts)), alpha=weight)
        return self._summed(total)

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The loss and its (flat) gradient at the operator's parameters."""
        if self._view is None:
            raise InputError("use the operator inside `with HessianOperator(obj) as H:`")
        loss, grads = self._view.loss_and_grad(self.params)
        if self._team is None:
            return loss, self.layout.flatten(grads)
        pair = self._summed(torch.cat([torch.tensor([loss]), self.layout.flatten(grads).cpu()]))
        return float(pair[0]), pair[1:].to(self.layout.device, self.layout.dtype)

    def settings(self) -> dict[str, Any]:
        """The backend and graph re-use, for the ``settings`` of results."""
        return {
            "hvp_backend": self.backend,
            "graph_batches_kept": self.kept_batches,
            "batches": self.n_batches,
        }


# -- the "auto" measurement ---------------------------------------------------------------------------
def _measure(view: FunctionalObjective, params: Mapping[str, torch.Tensor]) -> HvpChoice:
    """Time each exact backend on the first batch (twice when fast), cross-check, rank."""
    layout = Layout(params)
    parts = list(layout.unflatten(rademacher(layout, 0, "hvp-auto", 0)).values())
    inputs, target, _ = view.batches()[0]

    def timed(backend: str) -> tuple[float, torch.Tensor]:
        _synchronize(layout.device)
        start = time.perf_counter()
        product = flat(BATCH_PRODUCTS[backend](view, params, inputs, target, parts)).detach()
        _synchronize(layout.device)
        return time.perf_counter() - start, product

    products: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    for backend in EXACT_BACKENDS:
        try:
            seconds[backend], products[backend] = timed(backend)
            if seconds[backend] < 1.0:  # the first call pays one-off costs; time a second one
                seconds[backend], products[backend] = timed(backend)
        except Exception as exc:  # a kernel without this derivative: any exception type
            failures[backend] = f"{type(exc).__name__}: {_first_line(exc)}"
    working = [b for b in EXACT_BACKENDS if b in products]
    tolerance = math.sqrt(torch.finfo(layout.dtype).eps)
    if len(working) == 2 and _relative(*products.values()) > tolerance:
        seconds["finite_difference"], reference = timed("finite_difference")
        errors = {b: _relative(products[b], reference) for b in working}
        bad = max(working, key=errors.__getitem__)
        failures[bad] = (
            f"disagrees with {min(working, key=errors.__getitem__)} (relative difference "
            f"{_relative(*products.values()):.2e}) and is further from finite differences"
        )
        working.remove(bad)
        warnings.warn(
            f"Hessian-vector backends disagree: {failures[bad]}; using the other one",
            HessianWarning,
            stacklevel=caller_stacklevel(),
        )
    elif len(working) == 1:
        (only,) = working
        seconds["finite_difference"], reference = timed("finite_difference")
        error = _relative(products[only], reference)
        if error > FD_DISAGREEMENT:
            # Finite differences are only a referee where they are themselves stable: across the
            # kinks of ReLU or max-pooling they change with the step, and then prove nothing.
            finer = flat(finite_difference(view, params, inputs, target, parts, 0.125))
            if _relative(reference, finer) > FD_DISAGREEMENT / 2:
                warnings.warn(
                    f"{only} could not be checked: finite differences differ from it by "
                    f"{error:.1%} but also change with their step (a piecewise-linear model); "
                    f"keeping {only}. If the model uses a custom autograd.Function that is not "
                    "twice differentiable, pass hvp_backend='finite_difference'",
                    HessianWarning,
                    stacklevel=caller_stacklevel(),
                )
            else:
                failures[only] = (
                    f"differs from finite differences by {error:.1%} (a custom autograd.Function "
                    "that is not twice differentiable, e.g. @once_differentiable, makes double "
                    "backward drop terms silently)"
                )
                working = []
    if not working:
        if "finite_difference" not in seconds:  # an error of the model or loss itself raises here
            seconds["finite_difference"], _ = timed("finite_difference")
        warnings.warn(
            "no exact Hessian-vector backend works for this model ("
            + "; ".join(f"{b}: {why}" for b, why in failures.items())
            + "); using finite differences (relative error ~eps^(2/3) of the dtype). Pass "
            "hvp_backend=... (backend=... to lv.hvp) explicitly to override",
            HessianWarning,
            stacklevel=caller_stacklevel(),
        )
    working.sort(key=seconds.__getitem__)
    return HvpChoice(working=tuple(working), seconds=seconds, failures=failures)


def _check_backend(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise InputError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
