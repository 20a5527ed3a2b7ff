"""Read model checkpoints: state dicts, the usual training-script wrappers, wrapper prefixes.

:func:`load_checkpoint` fills a model built by the caller (the CLI builds it from a factory); it
never guesses: every key of the model must be in the checkpoint with the same shape, and every
mismatch is reported by name before anything is copied.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)`` unless the caller
opts out: a pickle can run arbitrary code when it is loaded, so ``weights_only=False`` is for files
from a trusted source only.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, InputError
from .params import align_names

#: Keys under which training scripts commonly keep the state dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "weights")
#: The prefix ``nn.DataParallel`` and ``DistributedDataParallel`` add to every key (the prefixes
#: matched are :data:`lossvista.params.WRAPPER_PREFIXES`, ``torch.compile``'s too).
WRAPPER_PREFIX = "module."
#: BatchNorm counters that checkpoints from PyTorch < 0.4.1 lack; the model keeps its own value.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_SHOWN = 10


def load_state_dict_file(path: str | Path, *, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read the state dict stored in ``path`` (on the CPU).

    The file may hold a state dict, a dict with one under a usual key (``state_dict``,
    ``model_state_dict``, ``model``, ``net``, ``state``, ``weights``) or, with
    ``weights_only=False``, a pickled ``nn.Module``. Wrapper prefixes (``module.``,
    ``_orig_mod.``) are kept here (only :func:`load_checkpoint` knows whether the model wants
    them).

    Args:
        path: the checkpoint file.
        weights_only: read with ``torch.load(..., weights_only=True)``, which refuses arbitrary
            Python objects. ``False`` unpickles anything and can run code: trusted files only.

    Returns:
        ``{name: tensor}`` in the order of the file.

    Raises:
        InputError: the file does not exist or is a folder.
        CheckpointError: the file cannot be read, holds objects ``weights_only`` refuses, or holds
            no state dict.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"checkpoint {str(path)!r} is a folder; name the checkpoint file itself")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if weights_only and "weights only" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds Python objects that a weights-only load refuses "
                f"({_weights_only_reason(exc)}). If you trust the file (you made it, or it comes "
                "from a source you trust), load it with --unsafe-load (weights_only=False): that "
                "unpickles arbitrary objects and can run code, so never use it on untrusted files. "
                "Better: re-save just the weights with torch.save(model.state_dict(), path)"
            ) from exc
        raise CheckpointError(_unreadable(path, exc)) from exc
    except (AttributeError, ImportError) as exc:  # unpickling needs a class not available here
        raise CheckpointError(
            f"checkpoint {str(path)!r} refers to Python objects that cannot be imported here "
            f"({type(exc).__name__}: {exc}). Load it where it was written and re-save only the "
            "weights with torch.save(model.state_dict(), path)"
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    return _extract_state_dict(payload, str(path))


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    weights_only: bool = True,
    strict: bool = True,
) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` in place and return ``model``.

    Keys are matched through the prefixes wrappers add (``module.`` from
    ``DataParallel``/``DistributedDataParallel``, ``_orig_mod.`` from ``torch.compile``), in
    either direction: a bare model's checkpoint fills a wrapped model and back
    (:func:`lossvista.params.align_names`). Nothing is copied unless the whole checkpoint fits.

    Args:
        model: the model to fill (its parameters and buffers are overwritten).
        path: the checkpoint file (see :func:`load_state_dict_file` for the accepted contents).
        weights_only: see :func:`load_state_dict_file`.
        strict: with ``False``, keys missing from the checkpoint keep the model's values and
            keys the model lacks are skipped. Shapes must match either way.

    Returns:
        ``model``, now holding the checkpoint's values.

    Raises:
        CheckpointError: names the missing keys, the unexpected keys and every shape mismatch.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state = load_state_dict_file(path, weights_only=weights_only)
    own = model.state_dict()
    state = align_names(state, own)
    problems = _mismatches(state, own, strict=strict)
    if problems:
        hint = (
            "check that the model factory builds the architecture the checkpoint was saved from"
            + ("; strict=False skips missing and unexpected keys" if strict else "")
        )
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the model ({type(model).__name__}): "
            + "; ".join(problems)
            + f". {hint[0].upper()}{hint[1:]}"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # anything torch objects to that the checks above did not see
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: {exc}") from exc
    return model


# -- helpers --------------------------------------------------------------------------------------
def _extract_state_dict(payload: Any, source: str, depth: int = 0) -> dict[str, torch.Tensor]:
    if isinstance(payload, nn.Module):  # a whole pickled model (weights_only=False)
        return dict(payload.state_dict())
    if isinstance(payload, Mapping):
        if payload and _is_state_dict(payload):
            return dict(payload)
        if depth < 2:
            for key in STATE_DICT_KEYS:
                inner = payload.get(key)
                if isinstance(inner, (Mapping, nn.Module)):
                    try:
                        return _extract_state_dict(inner, f"{source}[{key!r}]", depth + 1)
                    except CheckpointError:
                        continue
        keys = list(payload)
        non_tensors = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)]
        detail = (
            "it is empty"
            if not keys
            else f"its keys are {_preview(keys)}, with non-tensor values under "
            f"{_preview(non_tensors)}"
        )
        raise CheckpointError(
            f"{source} is not a state dict: {detail}. Expected a mapping of parameter name -> "
            f"tensor (torch.save(model.state_dict(), path)) or a dict holding one under one of "
            f"{list(STATE_DICT_KEYS)}"
        )
    raise CheckpointError(
        f"{source} holds a {type(payload).__name__}, not a state dict. Save checkpoints with "
        "torch.save(model.state_dict(), path) (or a dict with the state dict under 'state_dict')"
    )


def _is_state_dict(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _mismatches(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], *, strict: bool
) -> list[str]:
    problems = []
    if strict:
        missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
        unexpected = [k for k in state if k not in own]
        if missing:
            problems.append(
                f"missing keys (in the model, not in the checkpoint): {_preview(missing)}"
            )
        if unexpected:
            problems.append(
                f"unexpected keys (in the checkpoint, not in the model): {_preview(unexpected)}"
            )
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        more = f" (and {len(shapes) - _SHOWN} more)" if len(shapes) > _SHOWN else ""
        problems.append(f"shape mismatches: {', '.join(shapes[:_SHOWN])}{more}")
    return problems


def _preview(names: list[Any]) -> str:
    shown = repr([str(n) for n in names[:_SHOWN]])
    return shown if len(names) <= _SHOWN else f"{shown[:-1]}, ...] ({len(names)} in all)"


def _weights_only_reason(exc: BaseException) -> str:
    """The one line of torch's long message that says what was refused."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            reason = line.removeprefix("WeightsUnpickler error:").strip()
            return reason.split(". ")[0].rstrip(".")
    return "not only tensors and plain containers"


def _unreadable(path: Path, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot read checkpoint {str(path)!r} with torch.load ({type(exc).__name__}: {reason}); "
        "is it a file written by torch.save?"
    )
