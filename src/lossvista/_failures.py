"""Failures of the caller's model, loss or metric on a batch, as errors that show the batch.

:func:`batch_failure` turns an exception into a :class:`~lossvista.DataError` (also of the
exception's builtin class) with the batch, the shapes and dtypes seen, and a remedy from
:func:`forward_hint` or :func:`loss_hint`; :func:`describe` is the one-line view of a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import DataError, translated


def describe(obj: Any, limit: int = 160) -> str:
    """``float32 (65, 8)`` for a tensor, the same inside tuples and dicts, else the type name."""
    kind = type(obj).__name__
    if isinstance(obj, torch.Tensor):
        text = f"{str(obj.dtype).removeprefix('torch.')} {tuple(obj.shape)}"
    elif isinstance(obj, Mapping):
        inner = "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
        text = inner if kind == "dict" else f"{kind} {inner}"
    elif isinstance(obj, (tuple, list)) and len(obj) > 4:
        text = f"{kind} of {len(obj)} {', '.join(sorted({type(v).__name__ for v in obj}))}"
    elif isinstance(obj, (tuple, list)):
        inner = "(" + ", ".join(describe(v) for v in obj) + ")"
        text = inner if kind == "tuple" else f"{kind} {inner}"
    else:
        text = kind
    return text if len(text) <= limit else text[: limit - 3] + "..."


def batch_failure(
    what: str,
    exc: Exception,
    *,
    batch: int | str | None,
    inputs: Any = None,
    target: Any = None,
    output: Any = None,
    hint: str = "",
) -> DataError:
    """A :class:`DataError` (also of ``exc``'s builtin class) for ``raise ... from exc``.

    ``batch``: its index (counting from 0) or a description; ``None`` entries are not shown.
    The error's ``output_type`` names the type of an ``output`` that is not a tensor (``None``
    otherwise) and ``failed_part`` is ``what``, so the command line can point at ``--loss``.
    """
    where = "a batch" if batch is None else batch if isinstance(batch, str) else f"batch {batch}"
    named = (("inputs", inputs), ("target", target), ("model output", output))
    seen = [f"{name} {describe(value)}" for name, value in named if value is not None]
    reason = str(exc).strip().rstrip(".")
    message = f"{what} failed on {where}: {', '.join(seen)}: {type(exc).__name__}: {reason}"
    error = translated(DataError, f"{message}. {hint}" if hint else message, exc)
    tensor = output is None or isinstance(output, torch.Tensor)
    error.output_type = None if tensor else type(output).__name__  # type: ignore[attr-defined]
    error.failed_part = what  # type: ignore[attr-defined]
    return error


def forward_hint(model: nn.Module, inputs: Any) -> str:
    """What to check when ``model(inputs)`` fails: a dtype that differs from the parameters'."""
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    given = {t.dtype for t in _tensors(inputs) if t.is_floating_point()}
    if len(floats) == 1 and given and given != floats:
        (dtype,) = floats
        name = str(dtype).removeprefix("torch.")
        return (
            f"The model's parameters are {name} but X is "
            f"{', '.join(sorted(str(d).removeprefix('torch.') for d in given))}: convert X with "
            f"X.to(torch.{name}) (numpy: X.astype(np.{name}))"
        )
    return "Check that X has the shape and dtype the model expects"


def loss_hint(what: str, output: Any, target: Any) -> str:
    """What to check when ``loss_fn(output, target)`` (or a metric) fails."""
    if not isinstance(output, torch.Tensor):
        return (
            f"The model returns a {type(output).__name__}, not a tensor: pass a {what} that picks "
            "the logits, e.g. lambda out, y: F.cross_entropy(out.logits, y) (or out[0])"
        )
    if (
        isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and target.numel()
        and output.dim() == 2
    ):
        low, high, classes = int(target.min()), int(target.max()), output.shape[1]
        if high >= classes or (low < 0 and low != -100):  # -100: cross_entropy's ignore_index
            return (
                f"y holds labels from {low} to {high} but the model outputs {classes} classes: "
                f"class labels must lie in [0, {classes - 1}]"
            )
    return f"Check that y has the shape, dtype and values {what} expects for this output"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []
