"""Fingerprints of what an objective computes: the resume identity of a surface file.

A surface file may only be resumed by the objective that filled it. Names are not enough (two
functions called ``loss``, two data sets of the same size), so :func:`objective_identity`
fingerprints the content:

- ``data``: tensors are hashed byte for byte (once per objective: the digest is cached);
  loaders and other iterables are identified by their sample count only (their order may be
  shuffled), and the recomputed centre value guards the rest;
- ``buffers``: the model's buffers (BatchNorm statistics, ...), like parameters are fingerprinted
  by :func:`~lossvista.params.fingerprint`; under ``bn="recompute"`` BatchNorm statistics are
  re-estimated at every point and left out;
- ``loss_fn`` and ``metrics``: a callable's module and qualified name plus a hash of its code,
  closure, defaults and tensors; an ``nn.Module`` adds its hyper-parameters and state. Functions
  of ``torch`` and ``lossvista`` are identified by name alone, so a library upgrade does not
  orphan a file. Plain numbers held by a callable object are left out (a call counter must not
  change the identity); the recomputed centre catches a changed factor.

:func:`tuning_signature` is the key under which the engine remembers its tuning choice: the
model's architecture and parameter shapes, the data's shapes, the device and the request.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import socket
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__

#: Callables from these packages are identified by module and name alone.
_LIBRARY_PACKAGES = frozenset({"torch", "lossvista", "builtins", "numpy"})
_DATA_DIGESTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_SCALARS = (bool, int, float, complex, str, bytes, type(None))
_HASH_SLICE = 64 * 1024 * 1024  # bytes hashed per slice
_MAX_DEPTH = 6


def objective_identity(objective: Any, samples: int | None = None) -> dict[str, Any]:
    """The fingerprints that, with the objective's settings, identify what it computes.

    ``samples`` is the item count the engine saw, used when the data are a stream whose size
    is not known otherwise.
    """
    return {
        "data": data_identity(objective, samples),
        "buffers": buffers_fingerprint(objective.model, objective.bn),
        "loss_fn": callable_identity(objective.loss_fn),
        "metrics": {name: callable_identity(fn) for name, fn in objective.metric_fns.items()},
    }


def data_identity(objective: Any, samples: int | None = None) -> dict[str, Any]:
    """``{"kind": "tensors", "samples", "sha256"}`` or ``{"kind": "batches", "samples"}``."""
    source = objective._data
    cached = _DATA_DIGESTS.get(source)
    if cached is not None:
        return dict(cached)
    tensors = getattr(source, "_tensors", None)
    if tensors is not None:
        digest = hashlib.sha256()
        _update_with_value(digest, tensors[0])
        _update_with_value(digest, tensors[1])
        identity: dict[str, Any] = {
            "kind": "tensors",
            "samples": int(tensors[1].shape[0]),
            "sha256": digest.hexdigest(),
        }
        _DATA_DIGESTS[source] = identity
        return dict(identity)
    count = objective.n_samples if objective.n_samples is not None else samples
    return {"kind": "batches", "samples": None if count is None else int(count)}


def buffers_fingerprint(model: nn.Module, bn: str = "eval") -> str:
    """SHA-256 over the model's buffers (names, shapes, dtypes, values)."""
    skip: set[str] = set()
    if bn == "recompute":
        for prefix, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                skip |= {
                    f"{prefix}.{name}" if prefix else name
                    for name, _ in module.named_buffers(recurse=False)
                }
    digest = hashlib.sha256()
    for name, buffer in sorted(model.named_buffers()):
        if name not in skip:
            digest.update(name.encode())
            _update_with_tensor(digest, buffer)
    return digest.hexdigest()


def callable_identity(fn: Any) -> str:
    """``"module.qualname"`` for library callables, ``"module.qualname#<hash>"`` otherwise."""
    name = _qualified_name(fn)
    if name.split(".", 1)[0] in _LIBRARY_PACKAGES and not isinstance(fn, nn.Module):
        return name  # (a partial is named "partial(...)": it is hashed with its arguments)
    digest = hashlib.sha256()
    _update_with_callable(digest, fn, depth=0, seen=set())
    return f"{name}#{digest.hexdigest()[:16]}"


def tuning_signature(evaluator: Any, strategy: str) -> str:
    """A key for the engine's tuning choice: architecture, shapes, data shapes, device, request.

    Everything that changes the speed of a configuration (or which configurations exist) is
    part of it; the values of parameters and data are not.
    """
    objective = evaluator.objective
    model = objective.model
    device = torch.device(objective.device)
    parts: list[Any] = [
        "lossvista-tuning-2",  # 2: the oneDNN linear option
        __version__,
        torch.__version__,
        strategy,
        [(n, f"{type(m).__module__}.{type(m).__qualname__}") for n, m in model.named_modules()],
        [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()],
        [(n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers()],
        sorted(evaluator.stacks),
        evaluator.n_directions,
        _data_shapes(objective),
        objective.n_samples,
        objective.batch_size,
        objective.bn,
        objective.subset is not None,
        _qualified_name(objective.loss_fn),
        sorted(objective.metric_fns),
        str(device),
        _device_name(device),
        torch.get_num_threads(),
        platform.machine(),
        platform.processor(),
        socket.gethostname(),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def nonfinite_inputs(objective: Any, origin: Mapping[str, torch.Tensor]) -> list[str]:
    """What holds NaN or inf among the parameters at the origin and the data tensors."""
    found = []
    params = {**dict(objective.model.named_parameters()), **origin}
    bad = [n for n, p in params.items() if p.is_floating_point() and not bool(p.isfinite().all())]
    if bad:
        found.append(f"parameters with NaN/inf: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    tensors = getattr(objective._data, "_tensors", None)
    if tensors is not None:
        for what, value in (("inputs", tensors[0]), ("targets", tensors[1])):
            if _has_nonfinite(value):
                found.append(f"the data's {what} hold NaN/inf")
    return found


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(value.isfinite().all())
    if isinstance(value, Mapping):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(_has_nonfinite(v) for v in value)
    return False


# -- helpers --------------------------------------------------------------------------------------
def _qualified_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_qualified_name(fn.func)})"
    target: Any = type(fn)
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        target = fn
    elif isinstance(fn, types.MethodType):
        target = fn.__func__
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", "?")
    return f"{module}.{qualname}"


def _update_with_callable(digest: Any, fn: Any, *, depth: int, seen: set[int]) -> None:
    digest.update(_qualified_name(fn).encode())
    if depth > _MAX_DEPTH or id(fn) in seen:
        return
    seen.add(id(fn))
    if isinstance(fn, functools.partial):
        _update_with_callable(digest, fn.func, depth=depth + 1, seen=seen)
        for value in (*fn.args, *(v for _, v in sorted(fn.keywords.items()))):
            _update_with_value(digest, value, depth=depth + 1, seen=seen, scalars=True)
        digest.update(repr(sorted(fn.keywords)).encode())
        return
    if isinstance(fn, types.MethodType):
        _update_with_callable(digest, fn.__func__, depth=depth + 1, seen=seen)
        _update_with_object(digest, fn.__self__, depth=depth + 1, seen=seen)
        return
    if isinstance(fn, types.FunctionType):
        _update_with_function(digest, fn, depth=depth, seen=seen)
        return
    if isinstance(fn, types.BuiltinFunctionType):
        return
    _update_with_object(digest, fn, depth=depth, seen=seen)


def _update_with_function(
    digest: Any, fn: types.FunctionType, *, depth: int, seen: set[int]
) -> None:
    _update_with_code(digest, fn.__code__)
    for value in fn.__defaults__ or ():
        _update_with_value(digest, value, depth=depth + 1, seen=seen, scalars=True)
    for key, value in sorted((fn.__kwdefaults__ or {}).items()):
        digest.update(key.encode())
        _update_with_value(digest, value, depth=depth + 1, seen=seen, scalars=True)
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _update_with_value(digest, content, depth=depth + 1, seen=seen, scalars=True)


def _update_with_object(digest: Any, obj: Any, *, depth: int, seen: set[int]) -> None:
    """A callable object: its class's code, its tensors and the callables it holds."""
    cls = type(obj)
    call = getattr(cls, "forward" if isinstance(obj, nn.Module) else "__call__", None)
    if isinstance(call, types.FunctionType) and not _is_library(call):
        _update_with_code(digest, call.__code__)
    if isinstance(obj, nn.Module):
        # Hyper-parameters (reduction, ignore_index, ...) and the module's own state.
        for key, value in sorted(vars(obj).items()):
            if not key.startswith("_") and key != "training":
                digest.update(key.encode())
                _update_with_value(digest, value, depth=depth + 1, seen=seen, scalars=True)
        for key, tensor in sorted(obj.state_dict().items()):
            digest.update(key.encode())
            _update_with_tensor(digest, tensor)
        return
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, Mapping):
        for key, value in sorted(attributes.items(), key=lambda item: str(item[0])):
            if isinstance(value, _SCALARS):
                continue  # counters and flags: see the module docstring
            digest.update(str(key).encode())
            _update_with_value(digest, value, depth=depth + 1, seen=seen, scalars=False)


def _update_with_value(
    digest: Any,
    value: Any,
    *,
    depth: int = 0,
    seen: set[int] | None = None,
    scalars: bool = True,
) -> None:
    """Tensors, arrays and callables always count; numbers only where ``scalars`` (closures,
    defaults, ``partial`` arguments, module hyper-parameters), never inside mutable containers
    (a list a loss appends to is state, not identity)."""
    seen = set() if seen is None else seen
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, torch.Tensor):
        _update_with_tensor(digest, value)
    elif isinstance(value, np.ndarray):
        _update_with_tensor(digest, torch.from_numpy(np.ascontiguousarray(value)))
    elif isinstance(value, _SCALARS):
        if scalars:
            digest.update(repr(value).encode())
    elif isinstance(value, tuple):
        digest.update(f"tuple{len(value)}".encode() if scalars else b"tuple")
        for item in value:
            _update_with_value(digest, item, depth=depth + 1, seen=seen, scalars=scalars)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            if not isinstance(value[key], _SCALARS):
                digest.update(str(key).encode())
                _update_with_value(digest, value[key], depth=depth + 1, seen=seen, scalars=False)
    elif isinstance(value, (list, set, frozenset)):
        for item in value if isinstance(value, list) else sorted(value, key=repr):
            _update_with_value(digest, item, depth=depth + 1, seen=seen, scalars=False)
    elif callable(value) and not isinstance(value, type):
        _update_with_callable(digest, value, depth=depth, seen=seen)
    else:
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Shape, dtype and the exact bytes, in slices (a large tensor on a GPU is not copied whole)."""
    t = tensor.detach()
    digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
    if not t.numel():
        return
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), _HASH_SLICE):
        digest.update(flat[start : start + _HASH_SLICE].cpu().numpy())


def _update_with_code(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_argcount, code.co_kwonlyargcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _update_with_code(digest, const)
        elif isinstance(const, frozenset):
            digest.update(repr(sorted(const, key=repr)).encode())
        else:
            digest.update(repr(const).encode())


def _is_library(fn: Callable[..., Any]) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module.split(".", 1)[0] in _LIBRARY_PACKAGES


def _data_shapes(objective: Any) -> Any:
    tensors = getattr(objective._data, "_tensors", None)
    if tensors is None:
        return ("batches", objective._is_sliceable())

    def shapes(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape[1:]), str(value.dtype))
        if isinstance(value, Mapping):
            return sorted((str(k), shapes(v)) for k, v in value.items())
        return [shapes(v) for v in value]

    return ("tensors", shapes(tensors[0]), shapes(tensors[1]))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return torch.cuda.get_device_name(device)
        except Exception:  # a device that went away: the name only refines the key
            return "cuda"
    return device.type
