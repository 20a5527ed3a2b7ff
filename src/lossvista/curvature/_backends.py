"""The three Hessian-vector product backends, each on one batch of an objective's data.

Every backend computes ``H_b v`` for one batch ``b`` at given parameter values, through the
functional view of :mod:`lossvista._functional` (the model is never written to). The operator
of :mod:`lossvista.curvature.hvp` weights and sums them over the batches.

- ``"double_backward"``: reverse over reverse (Pearlmutter 1994): the gradient with
  ``create_graph=True``, then ``autograd.grad(g, theta, grad_outputs=v)``. The operator keeps the
  gradient graph of each batch while it fits its memory budget and re-uses it for every product
  (one backward pass per product instead of forward + two backward passes).
- ``"forward_over_reverse"``: ``torch.func.jvp`` of ``torch.func.grad``.
- (The two exact backends run attention through the math kernel: :func:`exact_attention`.)
- ``"finite_difference"``: ``(g(theta + h v) - g(theta - h v)) / 2h`` with the dtype-aware step
  ``h = eps^(1/3) * max(1, |theta|) / |v|`` (relative error about ``eps^(2/3)``: 2e-5 in float32,
  5e-11 in float64; far more where ReLU kinks are crossed: 6% on the float32 ReLU MLP of
  ``benchmarks/bench_hessian.py``). The fallback for models whose kernels have no second
  derivative in either mode.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from .._functional import FunctionalObjective
from ._vectors import norm

#: Every backend, and the exact ones (no truncation error), in the order "auto" tries them.
BACKENDS = ("double_backward", "forward_over_reverse", "finite_difference")
EXACT_BACKENDS = ("double_backward", "forward_over_reverse")

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def exact_attention() -> Iterator[None]:
    """Run ``F.scaled_dot_product_attention`` through PyTorch's math kernel inside the block.

    The fused kernels (flash / memory-efficient, the default of HF transformers and timm on CPU
    and GPU) have neither a double backward nor forward-mode AD, so the exact backends would
    fail on them and "auto" would fall back to finite differences. The math kernel computes the
    same attention with ordinary differentiable operations.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3 has no backend switch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def with_exact_attention(function: F) -> F:
    """Decorate a second-order computation so that attention inside it is differentiable twice."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exact_attention():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


#: ``(view, params, inputs, target, v_parts) -> H_b v`` as one tensor per parameter.
BatchProduct = Callable[
    [FunctionalObjective, Mapping[str, torch.Tensor], Any, torch.Tensor, list[torch.Tensor]],
    list[torch.Tensor],
]


@with_exact_attention
def double_backward(view, params, inputs, target, v_parts) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_(True) for t in params.values()]
    with torch.enable_grad():
        loss = view.batch_loss(dict(zip(params, leaves)), inputs, target)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        return second_derivative(list(grads), leaves, v_parts, retain=False)


def second_derivative(grads, leaves, v_parts, *, retain: bool) -> list[torch.Tensor]:
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


@with_exact_attention
def forward_over_reverse(view, params, inputs, target, v_parts) -> list[torch.Tensor]:
    def batch_loss(p):
        return view.batch_loss(p, inputs, target)

    tangents = dict(zip(params, v_parts))
    # (output, jvp_out): the 3-tuple of jvp's return type is for has_aux=True only
    out = torch.func.jvp(torch.func.grad(batch_loss), (dict(params),), (tangents,))[1]
    return [out[n] for n in params]


def finite_difference(
    view, params, inputs, target, v_parts, step_scale: float = 1.0
) -> list[torch.Tensor]:
    """Central difference of the batch gradient along ``v`` (step: module docstring, times
    ``step_scale``)."""
    names = list(params)
    theta = flat(list(params.values()))
    v = flat(v_parts)
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


BATCH_PRODUCTS: dict[str, BatchProduct] = {
    "double_backward": double_backward,
    "forward_over_reverse": forward_over_reverse,
    "finite_difference": finite_difference,
}


def flat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts])


class SavedBytes:
    """Counts the bytes of distinct storages an autograd graph saves (its memory cost); use
    ``pack`` and ``unpack`` as ``torch.autograd.graph.saved_tensors_hooks``."""

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

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(norm(a), norm(b))
    return 0.0 if scale == 0.0 else norm(a - b) / scale


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "(no message)"
