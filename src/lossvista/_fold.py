"""BatchNorm folded into the preceding convolution, for evaluation with running statistics.

In eval mode a ``BatchNorm2d`` after a ``Conv2d`` is an affine map per output channel, so the
pair equals one convolution with weight ``W * s`` and bias ``(b - mean) * s + beta``, where
``s = gamma / sqrt(running_var + eps)``. Folding saves the normalisation pass over the
activations. The folded weight is computed at every forward call from the tensors the modules
hold *at that moment*, so it follows the parameters the engine moves (conv weights, BatchNorm
affine parameters) and the tensors ``torch.func.functional_call`` substitutes under vmap. The
result equals the unfolded model up to rounding (the operations are reassociated).

A pair is folded only when the convolution's output feeds the BatchNorm and nothing else: found
in a ``torch.fx`` trace of the model, else (a model fx cannot trace) as neighbours in an
``nn.Sequential``. Modules that are shared, hooked, already patched, or BatchNorms in train mode
or without running statistics are never folded.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import InputError

Pair = tuple[nn.Conv2d, nn.BatchNorm2d]


def foldable_pairs(model: nn.Module) -> list[Pair]:
    """The (conv, batchnorm) pairs of ``model`` that :func:`folded` may fold, in model order."""
    modules = dict(model.named_modules())
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = _traced_pairs(model, modules)
    if pairs is None:
        pairs = _sequential_pairs(model)
    return [(c, b) for c, b in pairs if counts[id(c)] == 1 and counts[id(b)] == 1 and _ok(c, b)]


def _ok(conv: nn.Module, bn: nn.Module) -> bool:
    """Exactly a Conv2d and an eval-mode BatchNorm2d with running statistics, unhooked."""
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        return False
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return False
    for m in (conv, bn):
        hooks = (
            m._forward_hooks,
            m._forward_pre_hooks,
            getattr(m, "_forward_hooks_with_kwargs", {}),
        )
        if "forward" in m.__dict__ or any(hooks):
            return False
    return conv.out_channels == bn.num_features


def _traced_pairs(model: nn.Module, modules: dict[str, nn.Module]) -> list[Pair] | None:
    """Pairs from a ``torch.fx`` trace: the conv node's only user is the BatchNorm call, and
    each module is called once. ``None`` when the model cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow, unsupported Python: no trace
        return None
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        user = users[0]
        bn = modules.get(user.target)
        if not isinstance(bn, nn.BatchNorm2d) or user.args != (node,) or user.kwargs:
            continue
        if calls[node.target] == 1 and calls[user.target] == 1:
            pairs.append((modules[node.target], bn))
    return pairs  # type: ignore[return-value]


def _sequential_pairs(model: nn.Module) -> list[Pair]:
    """Neighbours ``Conv2d, BatchNorm2d`` inside an ``nn.Sequential`` (its data flow is fixed)."""
    pairs = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for first, second in itertools.pairwise(children):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                    pairs.append((first, second))
    return pairs


def folded_weight_bias(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the one convolution equal to ``bn(conv(x))`` in eval mode."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:  # foldable_pairs never pairs such a BatchNorm
        raise InputError("a BatchNorm without running statistics cannot be folded")
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return conv.weight * scale.reshape(-1, 1, 1, 1), shift


def _folded_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    weight, bias = folded_weight_bias(conv, bn)
    return conv._conv_forward(x, weight, bias)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextlib.contextmanager
def folded(pairs: Sequence[Pair], forwards: dict[int, Any] | None = None) -> Iterator[None]:
    """Inside, each conv computes the folded convolution and its BatchNorm passes its input on.

    The modules' ``forward`` is replaced by an instance attribute and removed again on exit
    (also after an exception); parameters, buffers and module structure are never touched.
    ``forwards`` (the caller's, kept between runs) reuses the same folded forward per conv:
    torch.compile guards on the function's identity, so a new one would recompile the model.
    """
    forwards = {} if forwards is None else forwards
    patched: list[nn.Module] = []
    try:
        for conv, bn in pairs:
            forward = forwards.get(id(conv))
            if forward is None or forward.args != (conv, bn):
                forward = forwards[id(conv)] = functools.partial(_folded_forward, conv, bn)
            object.__setattr__(conv, "forward", forward)
            patched.append(conv)
            object.__setattr__(bn, "forward", _identity)
            patched.append(bn)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
