"""Nested structures of tensors: a batch's inputs and a model's outputs.

Inputs (a tensor, a tuple of positional inputs, a dict of keyword inputs) are moved, measured,
kept and sliced by sample (:func:`to_device`, :func:`nbytes`, :func:`kept`,
:func:`select_samples`). Outputs that are not tensors keep their type when sliced, and their
logits can be read (:func:`slice_output`, :func:`logits_of`).

Models from HuggingFace ``transformers`` (and many others) return a ``ModelOutput``, a dataclass
or a dict holding ``logits`` among other tensors. Wherever lossvista takes some samples of an
output (the halves of the first-batch check, the per-sample values of a subset's standard error)
it rebuilds the same type with every tensor that has the batch's leading sample dimension
sliced, so a loss written as ``F.cross_entropy(out.logits, y)`` reads the slice like the whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import DataError, InputError


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside it, containers rebuilt with their type.

    Dataclasses (``ModelOutput`` included, which is also a mapping) are rebuilt from their
    fields, mappings with their own type where it accepts a dict (else as a dict), named tuples,
    tuples and lists with theirs; anything else is kept as it is.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: map_tensors(getattr(obj, f.name), fn)
            for f in dataclasses.fields(obj)
            if f.init and hasattr(obj, f.name)
        }
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, Mapping):
        items = {k: map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:
            return type(obj)(items)  # type: ignore[call-arg]
        except Exception:  # a mapping type that cannot be built from a dict
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside ``obj`` (tensors, dataclasses, mappings, tuples and lists)."""
    found: list[torch.Tensor] = []

    def visit(tensor: torch.Tensor) -> torch.Tensor:
        found.append(tensor)
        return tensor

    map_tensors(obj, visit)
    return found


def has_sample_dim(output: Any, n: int) -> bool:
    """True when every tensor of ``output`` has ``n`` rows (so it can be split by sample)."""
    tensors = tensors_in(output)
    return bool(tensors) and all(t.dim() > 0 and t.shape[0] == n for t in tensors)


def slice_output(output: Any, index: Any, n: int) -> Any:
    """The samples ``index`` (a slice or index tensor) of a model output of ``n`` samples.

    Tensors with ``n`` rows are sliced; others (a scalar auxiliary loss, say) are kept whole.
    The output keeps its type: a ``ModelOutput`` stays one, so ``out.logits`` still works.
    """
    return map_tensors(output, lambda t: t[index] if t.dim() > 0 and t.shape[0] == n else t)


def logits_of(output: Any, what: str = "the metric") -> torch.Tensor:
    """The prediction tensor of a model output: the output itself, ``.logits``, ``["logits"]``
    or the first element of a tuple (``return_dict=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise InputError(
            f"{what} needs the model's logits, but the model returns a {type(output).__name__} "
            "without a tensor under .logits or ['logits']; pass your own metric "
            "f(output, target) that picks the prediction"
        )
    return logits


# -- inputs ----------------------------------------------------------------------------------------
def nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v) for v in obj)
    return 0


def kept(obj: Any) -> Any:
    """``obj`` fit to keep: tensors made under ``torch.inference_mode`` (a loader read during an
    evaluation) are copied, so that gradients and curvature can use the cached batches later."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_inference():
            return obj
        with torch.inference_mode(False):
            return obj.clone()
    if isinstance(obj, Mapping):
        return {k: kept(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(kept(v) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def select_samples(obj: Any, index: Any, *, top: bool = True) -> Any:
    """The samples ``index`` (a slice or index tensor) of inputs: tensors, tuples or dicts.

    Other values inside a tuple or dict (``use_cache=False``, ``None``) are kept as they are.
    """
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, Mapping):
        return {k: select_samples(v, index, top=False) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(select_samples(v, index, top=False) for v in obj)
    if not top:
        return obj
    raise DataError(f"inputs of type {type(obj).__name__} cannot be indexed by sample")
