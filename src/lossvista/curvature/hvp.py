"""Hessian-vector products of an objective's loss: three backends, a measured ``"auto"`` choice,
and :class:`HessianOperator` for the many products of Lanczos and Hutchinson.

The Hessian is that of the exact sample-weighted mean loss over all the objective's data (weights
``n_b / N``), with respect to its selected parameters, so with several batches
``H v = sum_b (n_b / N) H_b v``. Backends:

- ``"double_backward"``: reverse over reverse (Pearlmutter 1994): the gradient with
  ``create_graph=True``, then ``autograd.grad(g, theta, grad_outputs=v)``. An operator keeps the
  gradient graph of each batch while it fits ``max_graph_bytes`` and re-uses it for every product
  (one backward pass per product instead of forward + two backward passes).
- ``"forward_over_reverse"``: ``torch.func.jvp`` of ``torch.func.grad``.
- ``"finite_difference"``: ``(g(theta + h v) - g(theta - h v)) / 2h`` with the dtype-aware step
  ``h = eps^(1/3) * max(1, |theta|) / |v|`` (relative error about ``eps^(2/3)``: 2e-5 in float32,
  5e-11 in float64; far more where ReLU kinks are crossed: 6% on the float32 ReLU MLP of
  ``benchmarks/bench_hessian.py``). The fallback for models whose kernels have no second
  derivative in either mode.

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

from .._functional import FunctionalObjective, functional
from ..directions import Direction
from ..errors import InputError
from ..objective import Objective
from ._common import HessianWarning, check_objective
from ._vectors import Layout, norm, rademacher

Method = Literal["auto", "double_backward", "forward_over_reverse", "finite_difference"]
METHODS = ("double_backward", "forward_over_reverse", "finite_difference")
EXACT_METHODS = ("double_backward", "forward_over_reverse")
#: Default memory budget for gradient graphs an operator keeps for re-use (bytes of saved tensors).
GRAPH_BYTES = 2 * 1024**3
#: An exact backend differing from finite differences by more than this (relative) is distrusted.
FD_DISAGREEMENT = 0.2


@dataclasses.dataclass
class HvpChoice:
    """What ``method="auto"`` measured for one objective.

    Attributes:
        working: exact backends that ran and passed the cross-check, fastest first.
        seconds: seconds per product for every backend that ran (measured at the objective's
            parameters when the choice was made).
        failures: backend -> why it was rejected (the exception, or the failed cross-check).
        fastest: the fastest working exact backend, ``"finite_difference"`` when none works.
    """

    working: tuple[str, ...]
    seconds: dict[str, float]
    failures: dict[str, str]

    @property
    def fastest(self) -> str:
        return self.working[0] if self.working else "finite_difference"

    def as_dict(self) -> dict[str, Any]:
        return {
            "working": list(self.working),
            "seconds": dict(self.seconds),
            "failures": dict(self.failures),
            "fastest": self.fastest,
        }


# Keyed by the objective itself, so the measurement lives exactly as long as the objective and no
# attribute is written into a class this package does not own. An objective's data, parameter
# selection and device are fixed at construction, which is what the timing depends on.
_CHOICES: weakref.WeakKeyDictionary[Objective, HvpChoice] = weakref.WeakKeyDictionary()


def hvp(obj: Objective, v: Mapping[str, torch.Tensor], *, method: Method = "auto") -> Direction:
    """The Hessian-vector product ``H v`` of the objective's loss at the model's parameters.

    Args:
        obj: the :class:`~lossvista.Objective`; ``H`` is the Hessian of its sample-weighted mean
            loss over all data, with respect to its selected parameters (``params=``).
        v: a :class:`~lossvista.Direction` or mapping name -> tensor over (a subset of) the
            selected parameters; missing names count as zero.
        method: ``"auto"`` (the fastest exact backend that works, measured once per objective),
            ``"double_backward"``, ``"forward_over_reverse"`` or ``"finite_difference"``.

    Returns:
        ``H v`` as a :class:`~lossvista.Direction` over all selected parameters (their dtype and
        device), ``meta={"kind": "hvp", "method": <backend used>}``.

    Raises:
        DirectionError: ``v`` names parameters the objective does not select, or shapes differ.
        InputError: unknown ``method``.
    """
    _check_method(method)
    with HessianOperator(obj, method=method, max_graph_bytes=0) as op:
        flat = op.layout.flatten(v, what="v")
        return op.layout.direction(op.matvec(flat), {"kind": "hvp", "method": op.method})


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
        method: a backend name or ``"auto"`` (see the module docstring). With ``"auto"`` or
            ``"double_backward"`` the gradient graph of each batch is kept for re-use while the
            tensors it saves fit ``max_graph_bytes``; batches beyond that are recomputed per
            product.
        max_graph_bytes: memory budget for kept graphs (``0``: keep none).

    Attributes:
        method: the backend actually used.
        n_hvp: products computed so far (not counting the one-off ``"auto"`` measurement).
        graph_bytes: bytes saved by the kept graphs; ``kept_batches`` of ``n_batches`` are kept.
    """

    def __init__(
        self, obj: Objective, *, method: Method = "auto", max_graph_bytes: int = GRAPH_BYTES
    ) -> None:
        _check_method(method)
        check_objective(obj)
        self.objective = obj
        self.requested = method
        self.max_graph_bytes = int(max_graph_bytes)
        self.method: str = method
        self.n_hvp = 0
        self.graph_bytes = 0
        self.kept_batches = 0
        self.n_batches = 0
        self._stack: contextlib.ExitStack | None = None
        self._view: FunctionalObjective | None = None
        self._graphs: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        self._recomputed: list[tuple[Any, torch.Tensor, float]] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> HessianOperator:
        stack = contextlib.ExitStack()
        try:
            view = stack.enter_context(functional(self.objective))
            self._bind(view, view.params())
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
    def at(
        cls,
        obj: Objective,
        view: FunctionalObjective,
        params: Mapping[str, torch.Tensor],
        *,
        method: Method = "auto",
        max_graph_bytes: int = GRAPH_BYTES,
    ) -> HessianOperator:
        """An operator at other parameter values, inside an already open functional view.

        The caller owns the view (and its restore guard); call :meth:`release` when done.
        """
        op = cls(obj, method=method, max_graph_bytes=max_graph_bytes)
        op._bind(view, {n: t.detach() for n, t in params.items()})
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
        self.method = self._resolve(view)
        batches = view.batches()
        self.n_batches = len(batches)
        self._recomputed = list(batches)
        if self.method == "double_backward" and self.max_graph_bytes > 0:
            self._keep_graphs(view, batches)

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
        kept, rest = [], []
        for inputs, target, weight in batches:
            if rest:
                rest.append((inputs, target, weight))
                continue
            leaves = [t.detach().requires_grad_(True) for t in self.params.values()]
            named = dict(zip(self.layout.names, leaves))
            counter = _SavedBytes()
            with (
                torch.enable_grad(),
                torch.autograd.graph.saved_tensors_hooks(counter.pack, _unpack),
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
            total.add_(_flat(_second_derivative(grads, leaves, parts, retain=True)), alpha=weight)
        backend = _BATCH_BACKENDS[self.method]
        for inputs, target, weight in self._recomputed:
            product = backend(self._view, self.params, inputs, target, parts)
            total.add_(_flat(product), alpha=weight)
        return total

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The loss and its (flat) gradient at the operator's parameters."""
        if self._view is None:
            raise InputError("use the operator inside `with HessianOperator(obj) as H:`")
        loss, grads = self._view.loss_and_grad(self.params)
        return loss, self.layout.flatten(grads)

    def settings(self) -> dict[str, Any]:
        """The backend and graph re-use, for the ``settings`` of results."""
        return {
            "hvp_method": self.method,
            "graph_batches_kept": self.kept_batches,
            "batches": self.n_batches,
        }


# -- backends ---------------------------------------------------------------------------------------
def _double_backward(view, params, inputs, target, v_parts):
    leaves = [t.detach().requires_grad_(True) for t in params.values()]
    with torch.enable_grad():
        loss = view.batch_loss(dict(zip(params, leaves)), inputs, target)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        return _second_derivative(list(grads), leaves, v_parts, retain=False)


def _second_derivative(grads, leaves, v_parts, *, retain: bool) -> list[torch.Tensor]:
    """``d(g . v)/d theta``; gradient entries without a graph (constant in theta) contribute 0."""
    pairs = [(g, u) for g, u in zip(grads, v_parts) if g is not None and g.requires_grad]
    if not pairs:
        return [torch.zeros_like(t) for t in leaves]
    with torch.enable_grad():
        out = torch.autograd.grad(
            [g for g, _ in pairs],
            leaves,
            grad_outputs=[u for _, u in pairs],
            retain_graph=retain,
            allow_unused=True,
        )
    return [torch.zeros_like(t) if o is None else o for o, t in zip(out, leaves)]


def _forward_over_reverse(view, params, inputs, target, v_parts):
    def batch_loss(p):
        return view.batch_loss(p, inputs, target)

    tangents = dict(zip(params, v_parts))
    _, out = torch.func.jvp(torch.func.grad(batch_loss), (dict(params),), (tangents,))
    return [out[n] for n in params]


def _finite_difference(view, params, inputs, target, v_parts, step_scale: float = 1.0):
    """Central difference of the batch gradient along ``v`` (step: module docstring, times
    ``step_scale``)."""
    names = list(params)
    theta = _flat(list(params.values()))
    v = _flat(v_parts)
    v_norm = norm(v)
    if v_norm == 0.0:
        return [torch.zeros_like(t) for t in params.values()]
    step = step_scale * torch.finfo(theta.dtype).eps ** (1.0 / 3.0) * max(1.0, norm(theta)) / v_norm

    def gradient(sign: float) -> list[torch.Tensor]:
        leaves = [
            (t + sign * step * u).requires_grad_(True) for t, u in zip(params.values(), v_parts)
        ]
        with torch.enable_grad():
            loss = view.batch_loss(dict(zip(names, leaves)), inputs, target)
            parts = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(parts, leaves)]

    return [(a - b) / (2.0 * step) for a, b in zip(gradient(1.0), gradient(-1.0))]


_BATCH_BACKENDS = {
    "double_backward": _double_backward,
    "forward_over_reverse": _forward_over_reverse,
    "finite_difference": _finite_difference,
}


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts])


class _SavedBytes:
    """Counts the bytes of distinct storages an autograd graph saves (its memory cost)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            self.bytes += tensor.numel() * tensor.element_size()
        return tensor


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


# -- the "auto" measurement ---------------------------------------------------------------------------
def _measure(view: FunctionalObjective, params: Mapping[str, torch.Tensor]) -> HvpChoice:
    """Time each exact backend on the first batch (twice when fast), cross-check, rank."""
    layout = Layout(params)
    parts = list(layout.unflatten(rademacher(layout, 0, "hvp-auto", 0)).values())
    inputs, target, _ = view.batches()[0]

    def timed(method: str) -> tuple[float, torch.Tensor]:
        _synchronize(layout.device)
        start = time.perf_counter()
        product = _flat(_BATCH_BACKENDS[method](view, params, inputs, target, parts)).detach()
        _synchronize(layout.device)
        return time.perf_counter() - start, product

    products: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    for method in EXACT_METHODS:
        try:
            seconds[method], products[method] = timed(method)
            if seconds[method] < 1.0:  # the first call pays one-off costs; time a second one
                seconds[method], products[method] = timed(method)
        except Exception as exc:  # a kernel without this derivative: any exception type
            failures[method] = f"{type(exc).__name__}: {_first_line(exc)}"
    working = [m for m in EXACT_METHODS if m in products]
    tolerance = math.sqrt(torch.finfo(layout.dtype).eps)
    if len(working) == 2 and _relative(*products.values()) > tolerance:
        seconds["finite_difference"], reference = timed("finite_difference")
        errors = {m: _relative(products[m], reference) for m in working}
        bad = max(working, key=errors.get)
        failures[bad] = (
            f"disagrees with {min(working, key=errors.get)} (relative difference "
            f"{_relative(*products.values()):.2e}) and is further from finite differences"
        )
        working.remove(bad)
        warnings.warn(
            f"Hessian-vector backends disagree: {failures[bad]}; using the other one",
            HessianWarning,
            stacklevel=4,
        )
    elif len(working) == 1:
        (only,) = working
        seconds["finite_difference"], reference = timed("finite_difference")
        error = _relative(products[only], reference)
        if error > FD_DISAGREEMENT:
            # Finite differences are only a referee where they are themselves stable: across the
            # kinks of ReLU or max-pooling they change with the step, and then prove nothing.
            finer = _flat(_finite_difference(view, params, inputs, target, parts, 0.125))
            if _relative(reference, finer) > FD_DISAGREEMENT / 2:
                warnings.warn(
                    f"{only} could not be checked: finite differences differ from it by "
                    f"{error:.1%} but also change with their step (a piecewise-linear model); "
                    f"keeping {only}. If the model uses a custom autograd.Function that is not "
                    "twice differentiable, pass method='finite_difference'",
                    HessianWarning,
                    stacklevel=4,
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
            + "; ".join(f"{m}: {why}" for m, why in failures.items())
            + "); using finite differences (relative error ~eps^(2/3) of the dtype). Pass "
            "method=... explicitly to override",
            HessianWarning,
            stacklevel=4,
        )
    working.sort(key=seconds.get)
    return HvpChoice(working=tuple(working), seconds=seconds, failures=failures)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(norm(a), norm(b))
    return 0.0 if scale == 0.0 else norm(a - b) / scale


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "(no message)"


def _check_method(method: str) -> None:
    if method != "auto" and method not in METHODS:
        raise InputError(f"method must be 'auto' or one of {list(METHODS)}, got {method!r}")
