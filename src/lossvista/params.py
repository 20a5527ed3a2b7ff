"""Named-parameter views of a model: selection, ignore rules, fingerprints, and a restore guard.

Everything in lossvista addresses parameters by their ``model.named_parameters()`` name, so a
direction computed on one model applies to any model with the same names and shapes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_LAYER_TYPES = (*NORM_LAYER_TYPES, nn.RMSNorm)

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

TensorDict = dict[str, torch.Tensor]


def parameters_of(source: nn.Module | Mapping[str, torch.Tensor]) -> TensorDict:
    """Return ``{name: tensor}`` for a model's parameters or a mapping of tensors (not copied).

    For a mapping (a state dict), only floating-point entries that are not BatchNorm buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``) are kept.
    """
    if isinstance(source, nn.Module):
        return dict(source.named_parameters())
    if isinstance(source, Mapping):
        out = {}
        for name, value in source.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(
                    f"entry {name!r} is a {type(value).__name__}, not a tensor; pass a model or a "
                    "mapping of parameter name -> tensor (a state dict)"
                )
            if value.is_floating_point() and not name.endswith(_BUFFER_SUFFIXES):
                out[name] = value
        return out
    raise InputError(
        f"expected an nn.Module or a mapping of parameter name -> tensor, got {type(source).__name__}"
    )


def select_names(available: Sequence[str], patterns: str | Iterable[str] | None) -> tuple[str, ...]:
    """Names from ``available`` that match any of ``patterns`` (exact names or fnmatch globs).

    ``None`` selects everything. A pattern that matches nothing is an error, because it is almost
    always a typo.
    """
    if patterns is None:
        return tuple(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise InputError("params= is empty; pass None to use every parameter")
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in available if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InputError(
                f"params pattern {pattern!r} matches no parameter; available: {_preview(available)}"
            )
        chosen.update(hits)
    return tuple(n for n in available if n in chosen)


def norm_layer_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters owned by normalisation layers (BatchNorm, LayerNorm, GroupNorm...)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_LAYER_TYPES):
            for pname, _ in module.named_parameters(recurse=False):
                names.add(f"{prefix}.{pname}" if prefix else pname)
    return names


def ignored_names(
    tensors: Mapping[str, torch.Tensor],
    ignore: str | Iterable[str] | None,
    norm_names: set[str] | None = None,
) -> set[str]:
    """Resolve an ``ignore`` specification to the set of parameter names it covers.

    Tokens:
      - ``"bias"``: parameters whose last name component is ``bias``;
      - ``"bn"``: parameters of normalisation layers. Found by module type when the model is
        known (``norm_names``); for a bare mapping, every 1-D tensor that is not a bias;
      - ``"biasbn"``: both (the spelling of the 2018 ``loss-landscape`` scripts);
      - anything else: an fnmatch glob on the parameter name.
    """
    if ignore is None:
        return set()
    tokens = [ignore] if isinstance(ignore, str) else list(ignore)
    out: set[str] = set()
    for token in tokens:
        if token in ("", "none"):
            continue
        if token == "biasbn":
            out |= ignored_names(tensors, ("bias", "bn"), norm_names)
        elif token == "bias":
            out |= {n for n in tensors if n.rsplit(".", 1)[-1] == "bias"}
        elif token == "bn":
            if norm_names is not None:
                out |= {n for n in tensors if n in norm_names}
            else:
                out |= {
                    n for n, t in tensors.items() if t.dim() <= 1 and n.rsplit(".", 1)[-1] != "bias"
                }
        else:
            out |= {n for n in tensors if fnmatch.fnmatchcase(n, token)}
    return out


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 over names, shapes, dtypes and exact values (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(np.ascontiguousarray(t.cpu().numpy()).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore parameters, buffers, ``requires_grad``, train/eval mode and BatchNorm momentum on
    exit, whatever happens.

    Values are copied back in place (so optimisers holding references keep working), also when
    the body raises or is interrupted with Ctrl-C. The restoring itself cannot be interrupted
    half-way: in the main thread a Ctrl-C (SIGINT) that arrives while it runs is held back and
    delivered to the program's own handler once the model is whole again, so the
    ``KeyboardInterrupt`` still reaches the caller, after the restoring.
    """
    saved = _Snapshot(model)
    try:
        yield model
    finally:
        _run_uninterrupted(saved.restore)


class _Snapshot:
    """Everything :func:`preserved` puts back, copied on entry."""

    def __init__(self, model: nn.Module):
        self.params = [(p, p.detach().clone(), p.requires_grad) for p in model.parameters()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.modes = [(m, m.training) for m in model.modules()]
        self.momenta = [
            (m, m.momentum)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def restore(self) -> None:
        """Put everything back (idempotent, so it can simply run again after an interruption)."""
        with torch.no_grad():
            for p, saved, requires_grad in self.params:
                p.copy_(saved)
                p.requires_grad_(requires_grad)
            for b, saved in self.buffers:
                b.copy_(saved)
        for m, training in self.modes:
            m.training = training
        for m, momentum in self.momenta:
            m.momentum = momentum


def _run_uninterrupted(work: Callable[[], None]) -> None:
    """Run ``work`` to its end even when Ctrl-C arrives meanwhile, then deliver the interrupt.

    In the main thread SIGINT goes to a handler that only records it while ``work`` runs;
    afterwards the previous handler is put back and called with the recorded signal (Python's
    default handler raises ``KeyboardInterrupt``). A Ctrl-C that was already pending raises its
    ``KeyboardInterrupt`` while the handler is swapped (Python runs pending handlers first); it
    is held back the same way and raised once ``work`` is done. Elsewhere (other threads, where
    Python never runs signal handlers, SIGINT ignored, or a handler installed outside Python)
    ``work`` just runs.
    """
    interrupted: KeyboardInterrupt | None = None
    held: list[FrameType | None] = []
    previous: Any = None
    while previous is None:
        try:
            current = signal.getsignal(signal.SIGINT)
            if (
                threading.current_thread() is not threading.main_thread()
                or current is None
                or current == signal.SIG_IGN
            ):
                break
            previous = signal.signal(signal.SIGINT, lambda _, frame: held.append(frame))
        except KeyboardInterrupt as exc:  # pending from before the swap: keep it for later
            interrupted = exc
        except ValueError:  # not the main interpreter: signals cannot be handled here
            break
    try:
        work()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted is not None:
        raise interrupted
    if held:
        _deliver(previous, held[0])


def _deliver(handler: Any, frame: FrameType | None) -> None:
    """Hand a held SIGINT to ``handler`` as the signal itself would have."""
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)  # the default action: the process ends


def _preview(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
