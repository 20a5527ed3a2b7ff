"""Named-parameter views of a model: selection, ignore rules, fingerprints, and a restore guard.

Everything in lossvista addresses parameters by their ``model.named_parameters()`` name, so a
direction computed on one model applies to any model with the same names and shapes. Names are
matched through the prefixes that wrappers add (``module.`` for ``DataParallel`` and DDP,
``_orig_mod.`` for ``torch.compile``), so a direction or state dict of the bare model fits the
wrapped one and back (:func:`align_names`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from ._restore import BufferReset, preserved, restoring  # noqa: F401  (re-exported)
from .errors import DirectionError, InputError, LossvistaWarning

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm and InstanceNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_LAYER_TYPES = (*NORM_LAYER_TYPES, nn.RMSNorm)
#: Class names of normalisation layers from other libraries (``LlamaRMSNorm``, ``T5LayerNorm``,
#: timm's ``LayerNorm2d``, ``GroupNorm32``, ``FusedRMSNorm``...): "Norm" as a word of the name.
_NORM_CLASS = re.compile(r"Norm(?![a-z])")
#: The usual names of normalisation modules (the name component before the parameter's own):
#: ``ln_1``, ``ln_f``, ``norm``, ``norm1``, ``norm_out``, ``layernorm``, ``input_layernorm``,
#: ``final_layer_norm``, ``LayerNorm`` (BERT), ``rmsnorm``, ``q_norm``, ``bn1``, ``gn``...
_NORM_NAME = re.compile(
    r"^(?:[a-z0-9]+_)*(?:ln|bn|gn|(?:layer|rms|batch|group|instance)?_?norm)"
    r"(?:\d+|_(?:\d+|[a-z]|out|in|pre|post|final|embedding))?$",
    re.IGNORECASE,
)
#: Prefixes that wrappers add to every name: DataParallel/DDP, then torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

TensorDict = dict[str, torch.Tensor]
T = TypeVar("T")


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


# -- selection ----------------------------------------------------------------------------------
class Selection(NamedTuple):
    """The parameters a ``params=`` specification selects, and how to record it in settings."""

    names: tuple[str, ...]
    #: ``"trainable"``, ``"all"`` or the list of names/globs given.
    label: str | list[str]


def select_parameters(model: nn.Module, params: str | Iterable[str] | None = None) -> Selection:
    """The parameters of ``model`` that ``params`` selects.

    ``None`` (the default) or ``"trainable"``: the parameters with ``requires_grad=True`` (a
    frozen backbone under an adapter stays where it is); when the model has none, every parameter,
    with a warning. ``"all"``: every parameter, frozen ones included. Otherwise names or globs
    (:func:`select_names`), matched against every parameter: a frozen one named is moved.
    """
    named = list(model.named_parameters())
    every = tuple(n for n, _ in named)
    if params is None or params == "trainable":
        trainable = tuple(n for n, p in named if p.requires_grad)
        if trainable or not every:
            return Selection(trainable, "trainable")
        warnings.warn(
            f"every parameter of the {type(model).__name__} is frozen (requires_grad=False), so "
            "every one is selected; pass params='all' to say so (and silence this warning)",
            LossvistaWarning,
            stacklevel=3,
        )
        return Selection(every, "all")
    if params == "all":
        return Selection(every, "all")
    patterns = [params] if isinstance(params, str) else list(params)
    return Selection(select_names(every, patterns), patterns)


def select_names(
    available: Sequence[str] | nn.Module, patterns: str | Iterable[str] | None
) -> tuple[str, ...]:
    """Names from ``available`` that match any of ``patterns`` (exact names or fnmatch globs).

    ``None`` or ``"all"`` selects everything. For a model, ``available`` follows
    :func:`select_parameters` (``None`` selects the trainable parameters). A pattern that
    matches nothing is an error, because it is almost always a typo.
    """
    if isinstance(available, nn.Module):
        return select_parameters(available, patterns).names
    if patterns is None or patterns == "all":
        return tuple(available)
    if patterns == "trainable":
        raise InputError(
            "params='trainable' needs the model (its requires_grad flags), not only parameter "
            "names; pass the model, or names and globs"
        )
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise InputError("params= is empty; pass None for the default selection, or 'all'")
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InputError(
                f"params entries must be names or globs (str), got {type(pattern).__name__}"
            )
        hits = [n for n in available if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InputError(
                f"params pattern {pattern!r} matches no parameter; available: {_preview(available)}"
            )
        chosen.update(hits)
    return tuple(n for n in available if n in chosen)


# -- normalisation layers and other layer kinds ---------------------------------------------------
def is_norm_layer(module: nn.Module) -> bool:
    """True for a normalisation layer: a torch one by type, any other by a class name with the
    word ``Norm`` in it (``LlamaRMSNorm``, ``T5LayerNorm``, ``LayerNorm2d``)."""
    return isinstance(module, NORM_LAYER_TYPES) or bool(_NORM_CLASS.search(type(module).__name__))


def has_norm_name(name: str) -> bool:
    """True when a parameter's owner has a usual normalisation-layer name (``ln_1.weight``,
    ``model.norm.weight``, ``input_layernorm.weight``, ``bn1.bias``)."""
    parts = name.split(".")
    return len(parts) > 1 and bool(_NORM_NAME.match(parts[-2]))


def norm_layer_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers: found by module type (BatchNorm,
    InstanceNorm, LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm), by class name (any class
    whose name has the word ``Norm``) and, for modules that are not torch's own layers, by the
    usual module names (:func:`has_norm_name`: a ``Linear`` called ``norm`` is not one)."""
    names = set()
    for prefix, module in model.named_modules():
        own = [f"{prefix}.{p}" if prefix else p for p, _ in module.named_parameters(recurse=False)]
        if is_norm_layer(module):
            names.update(own)
        elif not type(module).__module__.startswith("torch."):
            names.update(n for n in own if has_norm_name(n))
    return names


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """``running_mean`` and ``running_var`` of every BatchNorm layer that tracks them (never
    ``num_batches_tracked``), by ``named_buffers()`` name: detached views, not copies."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for name in ("running_mean", "running_var"):
                buffer = module._buffers.get(name)
                if buffer is not None:
                    out[f"{prefix}.{name}" if prefix else name] = buffer.detach()
    return out


def transposed_weight_names(model: nn.Module) -> set[str]:
    """Weights stored as ``(in, out)``: HuggingFace's ``Conv1D`` (GPT-2) computes
    ``x @ weight + bias`` with ``weight`` of shape ``(nx, nf)``, so its output filters are the
    columns. Found by class name, so transformers need not be imported."""
    names = set()
    for prefix, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            type(module).__name__ == "Conv1D"
            and isinstance(weight, torch.Tensor)
            and weight.dim() == 2
        ):
            names.add(f"{prefix}.weight" if prefix else "weight")
    return names


def ignored_names(
    tensors: Mapping[str, torch.Tensor],
    ignore: str | Iterable[str] | None,
    norm_names: set[str] | None = None,
) -> set[str]:
    """Resolve an ``ignore`` specification to the set of parameter names it covers.

    Tokens:
      - ``"bias"``: parameters whose last name component is ``bias``;
      - ``"norm"``, or its alias ``"bn"``: parameters of every normalisation layer (BatchNorm,
        LayerNorm, RMSNorm, GroupNorm, InstanceNorm...). Found by module type and name when the
        model is known (``norm_names``); for a bare mapping, by the usual names (``ln_1``,
        ``norm``, ``layernorm``...) and every 1-D tensor that is not a bias;
      - ``"biasbn"`` (the spelling of the 2018 ``loss-landscape`` scripts) or ``"biasnorm"``: both;
      - anything else: an fnmatch glob on the parameter name.
    """
    if ignore is None:
        return set()
    tokens = [ignore] if isinstance(ignore, str) else list(ignore)
    out: set[str] = set()
    for token in tokens:
        if token in ("", "none"):
            continue
        if token in ("biasbn", "biasnorm"):
            out |= ignored_names(tensors, ("bias", "norm"), norm_names)
        elif token == "bias":
            out |= {n for n in tensors if n.rsplit(".", 1)[-1] == "bias"}
        elif token in ("norm", "bn"):
            if norm_names is not None:
                out |= {n for n in tensors if n in norm_names}
            else:
                out |= {
                    n
                    for n, t in tensors.items()
                    if has_norm_name(n) or (t.dim() <= 1 and n.rsplit(".", 1)[-1] != "bias")
                }
        else:
            out |= {n for n in tensors if fnmatch.fnmatchcase(n, token)}
    return out


# -- names through wrappers and tied weights -----------------------------------------------------
def unwrapped_name(name: str) -> str:
    """``name`` without the prefixes wrappers add (``module.``, ``_orig_mod.``, nested)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, changed = name[len(prefix) :], True
    return name


def align_names(tensors: Mapping[str, T], names: Collection[str]) -> dict[str, T]:
    """``tensors`` with every key renamed to the name in ``names`` that it matches through the
    wrapper prefixes (a bare model's ``fc.weight`` is a compiled model's ``_orig_mod.fc.weight``
    and a DataParallel's ``module.fc.weight``).

    Keys found in ``names`` as they are keep their name; a key whose unwrapped form matches no
    name, or more than one, is kept as it is, so the caller's checks name it.
    """
    wanted = set(names)
    if all(key in wanted for key in tensors):
        return dict(tensors)
    by_core: dict[str, list[str]] = {}
    for name in names:
        by_core.setdefault(unwrapped_name(name), []).append(name)
    out: dict[str, T] = {}
    for key, value in tensors.items():
        target = key
        if key not in wanted:
            matches = by_core.get(unwrapped_name(key), [])
            if len(matches) == 1 and matches[0] not in tensors:
                target = matches[0]
        if target in out:  # two keys for one name: keep both as they are
            target = key
        out[target] = value
    return out


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for parameters shared under several names (tied weights such as
    ``lm_head.weight`` and ``embed.weight``); ``name`` is the one ``named_parameters()`` lists."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def without_tied_copies(tensors: TensorDict, model: Any, own: TensorDict, what: str) -> TensorDict:
    """``tensors`` (a state dict) without the tied copies that ``model`` lists once, each
    checked to equal its twin; unchanged when ``model`` is not a module."""
    if not isinstance(model, nn.Module) or isinstance(tensors, nn.Module):
        return tensors
    aliases = tied_aliases(model)
    if not aliases:
        return tensors
    tensors = align_names(tensors, [*own, *aliases])
    out = dict(tensors)
    for alias, twin in aliases.items():
        if alias not in tensors or alias in own:
            continue
        if twin in tensors and torch.equal(tensors[alias], tensors[twin]):
            del out[alias]
            continue
        raise DirectionError(
            f"{alias!r} is tied to {twin!r} in the {type(model).__name__} (one parameter, listed "
            f"once by named_parameters()), but the {what} "
            + (
                "holds different values for them: the tie was broken"
                if twin in tensors
                else f"has {alias!r} without {twin!r}"
            )
            + f"; drop {alias!r} from it, or load it into the model and pass the model"
        )
    return out


def checked_against_model(
    tensors: Mapping[str, torch.Tensor],
    model_params: Mapping[str, torch.Tensor],
    selected: Sequence[str],
    what: str,
) -> dict[str, torch.Tensor]:
    """A direction or origin checked against the model's parameters (names, through wrapper
    prefixes, and shapes) and the selection, as private copies in the parameters' dtype/device
    (only the ``selected`` entries)."""
    if not isinstance(tensors, Mapping):
        raise DirectionError(
            f"{what} must be a mapping name -> tensor, got {type(tensors).__name__}"
        )
    # Made on the bare model and used on a compiled or DataParallel one (or back): match the
    # names through the wrappers' prefixes.
    tensors = align_names(tensors, model_params)
    unknown = [n for n in tensors if n not in model_params]
    if unknown:
        raise DirectionError(
            f"{what} has entries the model does not have: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}; it was made for another architecture"
            + (
                " (BatchNorm running statistics move only with lv.Objective(..., bn='perturb'))"
                if any(n.rsplit(".", 1)[-1] in ("running_mean", "running_var") for n in unknown)
                else ""
            )
        )
    shapes = [
        f"{n}: {tuple(t.shape)} (model {tuple(model_params[n].shape)})"
        for n, t in tensors.items()
        if tuple(t.shape) != tuple(model_params[n].shape)
    ]
    if shapes:
        raise DirectionError(f"{what} has entries of the wrong shape: {shapes[:10]}")
    chosen = set(selected)
    outside = [n for n, t in tensors.items() if n not in chosen and bool(t.any())]
    if outside and what != "origin":
        raise DirectionError(
            f"{what} moves parameters outside the objective's params= selection: {outside[:10]}; "
            "build it with random_directions(objective, ...) or zero those entries (frozen "
            "parameters are left out by default: lv.Objective(..., params='all') moves them)"
        )
    out = {}
    for name, value in tensors.items():
        if name not in chosen:
            continue
        p = model_params[name]
        # A private copy: the loop strategy writes into the model, which the caller's tensors
        # (views of the parameters, say) must not follow.
        out[name] = value.detach().to(device=p.device, dtype=p.dtype, copy=True)
    return out


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 over names, shapes, dtypes and exact values (order-independent).

    Values are hashed as their raw bytes, so every dtype works (bfloat16 and float8 included,
    which numpy lacks); for the others the bytes are exactly numpy's.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        raw = t.resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        digest.update(raw.view(torch.uint8).numpy().tobytes() if raw.numel() else b"")
    return digest.hexdigest()


def _preview(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
