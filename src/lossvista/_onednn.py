"""Linear layers through oneDNN's inner product on the CPU (``EngineConfig.onednn_linear``).

PyTorch runs a float32 ``nn.Linear`` on the CPU through its BLAS (MKL in the standard wheels).
On CPUs where that BLAS does not use the fastest vector units (MKL on AMD processors runs its
AVX2 code), oneDNN, which PyTorch ships for its convolutions, computes the same product up to
two times faster: a 4096x1024x1024 product at 461 against 219 GFLOP/s on the project's AMD
EPYC, a small ViT's forward pass 1.4x faster. The result differs from the BLAS one by rounding
only (another summation order, about 1e-6 relative in float32), like a folded BatchNorm.

The engine's tuning measures it like its other options and keeps it only where it is faster
(:mod:`lossvista._tuning`); on a CPU whose BLAS is already fast it is not chosen.

Only modules that are exactly ``nn.Linear`` (or a subclass that keeps its ``forward``) with
float32 weights on the CPU and no forward of their own are patched, through an instance
attribute removed on exit; hooks still run (``Module.__call__`` calls them around the patched
forward). A call that oneDNN cannot take as it is (gradients on, another dtype or device, an
input that is not contiguous or has fewer than 2 dimensions) runs the layer's own forward.

HuggingFace's ``Conv1D`` (GPT-2's attention and MLP layers: ``x @ weight + bias`` with the
weight stored as ``(in, out)``) is taken too, found by its class's name and package so that
transformers need not be imported. Its ``torch.addmm`` runs on the same BLAS, 2x slower than
oneDNN here on GPT-2's shapes (768x2304 on 1,024 tokens: 38 against 18 ms). oneDNN takes the
weight as ``(out, in)``: the transposed copy is made once per point, when the weight changed
(its version counter, which every in-place write such as the engine's moves, or its storage),
and held while the run lasts (one more copy of these weights: 340 MB for GPT-2 small).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

F = nn.functional


def _op() -> Any:
    return torch.ops.mkldnn._linear_pointwise


@functools.cache
def available() -> bool:
    """True when this PyTorch has oneDNN's linear operation and it gives ``F.linear``'s values
    on a small probe (checked once per process)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((5, 3, 8), (4, 8), (4,)))
        with torch.no_grad():
            got = _op()(x, w, b, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, w, b), rtol=1e-5, atol=1e-6))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def is_conv1d(module: nn.Module) -> bool:
    """True for HuggingFace's own ``Conv1D`` (not a subclass with another forward) with a
    2-D ``(in, out)`` weight."""
    cls, weight = type(module), getattr(module, "weight", None)
    return (
        cls.__name__ == "Conv1D"
        and cls.__module__.split(".")[0] == "transformers"
        and "forward" in cls.__dict__
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def layers(model: nn.Module) -> list[nn.Module]:
    """The model's linear layers oneDNN may compute (see the module's description)."""
    found = []
    for module in model.modules():
        linear = isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
        if (
            (linear or is_conv1d(module))
            and "forward" not in module.__dict__
            and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
        ):
            found.append(module)
    return found


def _takes(x: Any, weight: torch.Tensor) -> bool:
    """True when oneDNN's linear computes this call as it is."""
    return (
        isinstance(x, torch.Tensor)
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.is_contiguous()
        and weight.is_contiguous()
        and not torch.is_grad_enabled()
    )


def _forward(module: nn.Linear, x: Any) -> Any:
    weight, bias = module.weight, module.bias
    if _takes(x, weight):
        return _op()(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _conv1d_forward(module: nn.Module, transposed: dict[str, Any], x: Any) -> Any:
    """A ``Conv1D``'s forward through oneDNN, with its weight's ``(out, in)`` copy in
    ``transposed``, made again when the weight's version or storage changed."""
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # checked by is_conv1d
    if not _takes(x, weight):
        return type(module).forward(module, x)
    key = (weight._version, weight.data_ptr())
    if transposed.get("key") != key:
        transposed["weight"], transposed["key"] = weight.t().contiguous(), key
    return _op()(x, transposed["weight"], module.bias, "none", [], "")


def is_forward(forward: Any) -> bool:
    """True for a forward :func:`linear` set (so another patch may wrap it and put it back)."""
    return isinstance(forward, functools.partial) and forward.func in (_forward, _conv1d_forward)


@contextlib.contextmanager
def linear(model: nn.Module) -> Iterator[int]:
    """Inside, the model's eligible linear layers run through oneDNN; yields how many (none
    where this PyTorch lacks the operation, e.g. a file resumed on another installation)."""
    patched: list[nn.Module] = []
    try:
        for layer in layers(model) if available() else []:
            forward = (
                functools.partial(_forward, layer)
                if isinstance(layer, nn.Linear)
                else functools.partial(_conv1d_forward, layer, {})
            )
            object.__setattr__(layer, "forward", forward)
            patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            layer.__dict__.pop("forward", None)
