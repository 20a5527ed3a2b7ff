"""``torch.fx`` for :mod:`._fx_spec`: tracing a model (with shapes from an example input), the
operations the walk knows, and the values of graph nodes (or module outputs, for the
``nn.Sequential`` walker) for activation matching. Tracing and
running work on a deep copy in eval mode: the caller's model is never run.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import InputError

SPEC_HINT = (
    "Pass spec={permutation name: [(parameter or buffer name, axis), ...]} by hand (see "
    "lossvista.geometry.permutation_spec for the format)"
)
# Operations that act on every unit alike (they carry the units through), by graph target.
ELEMENTWISE_FUNCTIONS = {
    *(torch.relu, torch.tanh, torch.sigmoid, torch.abs, torch.neg, torch.exp, torch.square),
    *(torch.clamp, torch.softmax, torch.log_softmax, operator.neg, operator.pos),
    *(F.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardtanh),
    *(F.hardswish, F.hardsigmoid, F.mish, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid),
    *(F.sigmoid, F.tanh, F.softmax, F.log_softmax),
    *(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout),
}
ELEMENTWISE_METHODS = {
    *("relu", "sigmoid", "tanh", "abs", "neg", "exp", "square", "clamp", "softmax"),
    *("log_softmax", "contiguous", "clone", "detach", "float", "double", "half", "to"),
}
BINARY_FUNCTIONS = {
    *(operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul),
    *(operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div),
}
BINARY_METHODS = {"add", "sub", "mul", "div"}
POOL_FUNCTIONS = {
    *(F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
    *(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
    *(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d),
}
SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda"}


class _Tracer(fx.Tracer):
    """A tracer that remembers which module it was inside when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except NameError:
            name = "?"
        self.stack.append((name, type(m).__name__))
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def trace(model: nn.Module, example: tuple[torch.Tensor, ...] | None) -> fx.GraphModule:
    """The traced graph of a deep copy in eval mode (its node metadata holds shapes when an
    example is given)."""
    copied = copy.deepcopy(model).eval()
    tracer = _Tracer()
    try:
        graph = tracer.trace(copied)
    except Exception as exc:
        if isinstance(model, nn.Sequential):
            raise InputError(f"{type(model).__name__} cannot be traced: {exc}") from None
        where = type(model).__name__
        if tracer.stack:
            name, kind = tracer.stack[-1]
            where = f"module {name!r} ({kind}) of {where}"
        raise InputError(
            f"{where} cannot be traced by torch.fx ({type(exc).__name__}: {exc}), so align "
            f"cannot see how its layers connect. {SPEC_HINT}"
        ) from None
    module = fx.GraphModule(copied, graph)
    if example is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            with torch.no_grad():
                ShapeProp(module).propagate(*example)
        except Exception as exc:
            raise InputError(
                f"{type(model).__name__} fails on the example input (shapes "
                f"{[tuple(x.shape) for x in example]}): {type(exc).__name__}: {exc}"
            ) from None
    return module


def node_activations(
    model: nn.Module, probes: Mapping[str, tuple[str, int]], inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """perm -> the value of its probe node on ``inputs`` (a deep copy of ``model`` in eval mode
    runs the traced graph)."""
    module = trace(model, None)
    wanted = {node: perm for perm, (node, _axis) in probes.items()}
    missing = set(wanted) - {n.name for n in module.graph.nodes}
    if missing:
        raise InputError(f"model_a and model_b trace to different graphs ({sorted(missing)})")
    found: dict[str, torch.Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if n.name in wanted:
                found[wanted[n.name]] = value.detach()
            return value

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        _Recorder(module).run(inputs.to(device))
    return found


def module_outputs(
    model: nn.Module, probes: Mapping[str, str], inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per permutation, the output of its probe module (hooked on a copy in eval mode)."""
    copied = copy.deepcopy(model).eval()  # the caller's model keeps its mode and buffers
    modules = dict(copied.named_modules())
    found: dict[str, torch.Tensor] = {}
    handles = []
    for perm, name in probes.items():

        def hook(_m: nn.Module, _i: Any, output: Any, perm: str = perm) -> None:
            found[perm] = output.detach()

        handles.append(modules[name].register_forward_hook(hook))
    device = next((p.device for p in copied.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            copied(inputs.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return found
