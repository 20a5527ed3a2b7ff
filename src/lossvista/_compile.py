"""The model's forward wrapped for one evaluation run: ``torch.compile`` and autocast.

Both wrap ``model.forward`` through an instance attribute that is removed on exit, so the model
(its parameters, buffers and class) is never changed, and the engine's in-place parameter
updates reach the compiled graph (parameters are graph inputs, not constants).

- Compile (loop strategy): ``torch.compile(forward, dynamic=False)``: fixed shapes, one graph
  per batch shape (the full batches and at most one shorter last batch), which keeps the graphs
  CUDA-graph friendly. Compiling takes seconds to minutes, so the engine's tuning tries it only
  for grids whose estimated work repays it (:mod:`lossvista._tuning`); a failure to compile (no
  C++ compiler, an unsupported operation) is caught there and the eager forward is used.
- Precision ``"bfloat16"``/``"float16"``: the forward runs under ``torch.autocast`` and a
  floating-point output is cast to float32 before the loss, so losses are computed in float32
  and accumulated in float64 (:class:`~lossvista._averaging.Averaging`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .errors import InputError

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(precision: Any, model: nn.Module | None = None) -> str | None:
    """``None``, ``"bfloat16"`` or ``"float16"``, else an :class:`~lossvista.InputError`; with
    ``model``, also refuses a half precision for a model whose floating-point parameters are not
    all float32 (autocast leaves other dtypes alone: the values would silently be full ones)."""
    if precision is not None and precision not in PRECISIONS:
        raise InputError(
            f"precision must be None (the model's own dtype), 'bfloat16' or 'float16', got "
            f"{precision!r}"
        )
    if precision is not None and model is not None:
        dtypes = {str(p.dtype) for p in model.parameters() if p.is_floating_point()}
        if dtypes - {"torch.float32"}:
            raise InputError(
                f"precision={precision!r} runs float32 operations under autocast, but this "
                f"model's parameters are {sorted(dtypes)}: autocast would leave them as they are. "
                f"Convert the model to float32 (model.float()), or use model.to(torch.{precision}) "
                "and precision=None for a model stored in half precision"
            )
    return precision


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_to_float32(v) for v in value)
    return value


def autocast_forward(forward: Callable[..., Any], device: torch.device, precision: str):
    """``forward`` run under ``torch.autocast(device.type, dtype)``, its output in float32."""
    dtype = PRECISIONS[precision]

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=dtype):
            output = forward(*args, **kwargs)
        return _to_float32(output)

    return run


@contextlib.contextmanager
def wrapped_forward(
    model: nn.Module, device: torch.device, *, compile: bool, precision: str | None
) -> Iterator[None]:
    """Inside, ``model(...)`` runs the compiled and/or autocast forward; restored on exit."""
    if not compile and precision is None:
        yield
        return
    had = "forward" in model.__dict__
    previous = model.__dict__.get("forward")
    forward: Any = model.forward
    if precision is not None:
        forward = autocast_forward(forward, device, precision)
    if compile:
        forward = torch.compile(forward, dynamic=False)
    object.__setattr__(model, "forward", forward)
    try:
        yield
    finally:
        if had:
            object.__setattr__(model, "forward", previous)
        else:
            model.__dict__.pop("forward", None)
