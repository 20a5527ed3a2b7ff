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


def layers(model: nn.Module) -> list[nn.Linear]:
    """The model's linear layers oneDNN may compute (see the module's description)."""
    found = []
    for module in model.modules():
        if (
            isinstance(module, nn.Linear)
            and type(module).forward is nn.Linear.forward
            and "forward" not in module.__dict__
            and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
        ):
            found.append(module)
    return found


def _forward(module: nn.Linear, x: Any) -> Any:
    weight, bias = module.weight, module.bias
    if (
        isinstance(x, torch.Tensor)
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.is_contiguous()
        and weight.is_contiguous()
        and not torch.is_grad_enabled()
    ):
        return _op()(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def is_forward(forward: Any) -> bool:
    """True for a forward :func:`linear` set (so another patch may wrap it and put it back)."""
    return isinstance(forward, functools.partial) and forward.func is _forward


@contextlib.contextmanager
def linear(model: nn.Module) -> Iterator[int]:
    """Inside, the model's eligible linear layers run through oneDNN; yields how many (none
    where this PyTorch lacks the operation, e.g. a file resumed on another installation)."""
    patched: list[nn.Linear] = []
    try:
        for layer in layers(model) if available() else []:
            object.__setattr__(layer, "forward", functools.partial(_forward, layer))
            patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            layer.__dict__.pop("forward", None)
