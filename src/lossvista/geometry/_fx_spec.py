"""Permutation specifications found by tracing the model with ``torch.fx``.

The traced graph is walked once, in order, following where each tensor's hidden units are: every
``Linear``/``Conv`` output starts a new group of units; BatchNorm, LayerNorm and a per-channel
PReLU claim their tensors for the group of their input; element-wise operations, dropout,
pooling and flatten/view carry the group along (a flatten of ``(C, H, W)`` makes the next
``Linear``'s input columns come in blocks of ``H * W`` per channel); an element-wise operation
of two tensors (``x + f(x)``, a residual connection) joins their groups into one permutation
(union-find). The model's inputs and outputs are pinned: a group that reaches them is never
permuted. Any other operation on a hidden group cannot be followed: the error names it.

Shapes (from :class:`torch.fx.passes.shape_prop.ShapeProp` on an example input) are needed only
where the layout is ambiguous without them (``view``/``reshape``, a ``Linear`` output read by
BatchNorm, ...). A model that cannot be traced, or needs shapes none were given for, falls back to
the ``nn.Sequential`` walker when it is one.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from ..errors import InputError
from . import _fx_trace
from . import _permutation_spec as _seq
from ._fx_trace import SPEC_HINT

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass
class Found:
    """A discovered specification.

    Attributes:
        spec: perm -> ``[(tensor name, axis, block), ...]``.
        probes: perm -> ``(where, unit axis)``: the module (``traced=False``) or graph node
            (``traced=True``) whose output holds the permutation's units, for activation matching.
        traced: True when found by torch.fx, False by the ``nn.Sequential`` walker.
    """

    spec: _seq.Spec
    probes: dict[str, tuple[str, int]]
    traced: bool


class _NeedsShapes(Exception):
    """A layout that only the shapes of an example input can settle."""


def discover(model: nn.Module, example: tuple[torch.Tensor, ...] | None = None) -> Found:
    """The permutations of ``model``: by torch.fx tracing, else by walking ``nn.Sequential``.

    Args:
        model: the module (not changed: a deep copy is traced and run).
        example: positional inputs for one forward pass, for the shapes.

    Raises:
        InputError: the model cannot be aligned; the message names the module or node.
    """
    label = type(model).__name__
    try:
        module = _fx_trace.trace(model, example)
        found = _Walk(module.graph, dict(module.named_modules()), label, example).run()
    except _NeedsShapes as exc:
        if isinstance(model, nn.Sequential):
            return _sequential(model)
        raise InputError(
            f"{exc}: pass example_input= (one batch of inputs) or data= so that align can see "
            f"the shapes (or pass spec= by hand, see lossvista.geometry.permutation_spec)"
        ) from None
    except InputError:
        if isinstance(model, nn.Sequential):
            try:
                return _sequential(model)
            except InputError:
                pass
        raise
    return found


def _sequential(model: nn.Module) -> Found:
    spec, probes = _seq.discover(model)
    return Found(spec, {perm: (name, 1) for perm, name in probes.items()}, traced=False)


@dataclasses.dataclass(frozen=True)
class _Units:
    """Where a tensor's hidden units are: group, unit axis (1 for channels, -1 for features,
    non-negative once shapes are known) and entries per unit along it (None: after a flatten
    whose block only the next layer knows). ``axis=None``: an input or a constant."""

    group: int
    axis: int | None
    block: int | None = 1


class _Walk:
    """One pass over the graph (see the module docstring)."""

    def __init__(
        self, graph: fx.Graph, modules: Mapping[str, nn.Module], label: str, example: Any
    ) -> None:
        self.graph, self.modules, self.label = graph, modules, label
        self.groups = _seq.Groups()
        self.units: dict[fx.Node, _Units | None] = {}
        self.probes: list[tuple[str, int, int]] = []  # (node, group, axis) in graph order

    def run(self) -> Found:
        for node in self.graph.nodes:
            self._visit(node)
        g = self.groups
        roots = g.permuted()
        errors = [error for root in roots for error in g.errors[root]]
        # A layout guessed without shapes can cause the later errors: ask for shapes first.
        for message, needs_shapes in sorted(errors, key=lambda error: not error[1]):
            if needs_shapes:
                raise _NeedsShapes(message)
            raise InputError(f"{message}. {SPEC_HINT}")
        probes = {g.find(group): (node, axis) for node, group, axis in self.probes}
        spec, found_probes = {}, {}
        for root in roots:
            names = g.producers[root]
            names = list(dict.fromkeys(names))  # a layer used twice appears once
            name = "+".join(names) if len(names) <= 3 else f"{names[0]}+...+{names[-1]}"
            spec[name] = list(g.entries[root])
            found_probes[name] = probes[root]
        return Found(spec, found_probes, traced=True)

    # -- helpers ---------------------------------------------------------------------------
    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            kind = type(self.modules[str(node.target)]).__name__
            return f"module {node.target!r} ({kind}) of {self.label}"
        target = getattr(node.target, "__name__", node.target)
        return f"node {node.name!r} ({target}) of {self.label}"

    def _shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def _arg_units(self, node: fx.Node) -> list[_Units]:
        """Where the units are in each tensor that ``node`` reads."""
        found: list[_Units] = []

        def record(arg: fx.Node) -> fx.Node:
            units = self.units[arg]
            if units is not None:
                found.append(units)
            return arg

        fx.node.map_arg((node.args, node.kwargs), record)
        return found

    def _set(self, node: fx.Node, units: _Units, probe: bool = True) -> None:
        shape = self._shape(node)
        if shape is not None and units.axis is not None:
            units = dataclasses.replace(units, axis=units.axis % len(shape))
        self.units[node] = units
        if probe and units.axis is not None and units.block == 1:
            self.probes.append((node.name, units.group, units.axis))

    def _unsupported(self, node: fx.Node, why: str = "") -> None:
        where = self._where(node)
        reason = why or (
            "lossvista follows Linear/Conv layers, BatchNorm, LayerNorm, element-wise "
            "operations, dropout, pooling, flatten/view and residual additions"
        )
        for units in self._arg_units(node):
            self.groups.fail(units.group, f"{where} cannot be aligned: {reason}")
        self.units[node] = _Units(self.groups.new(pin=True), None)

    def _axis_is(self, units: _Units, node: Any, want: int, where: str) -> bool:
        """Whether the units are on axis ``want`` (1 or -1) of ``node``'s value; records why not."""
        if units.axis is None:
            return True  # an input or constant: pinned, nothing to check
        shape = self._shape(node)
        if shape is not None:
            ok = units.axis == want % len(shape)
        elif units.axis == want:
            ok = True
        else:
            self.groups.fail(units.group, f"{where} reads a tensor of unknown rank", True)
            return False
        if not ok:
            axis = "channel axis 1" if want == 1 else "last axis"
            self.groups.fail(units.group, f"{where} does not read the units on its {axis}")
        return ok

    def _block(self, units: _Units, length: int, where: str) -> int:
        """Entries per unit when ``length`` entries hold the group's units."""
        size = self.groups.size[self.groups.find(units.group)]
        if units.axis is None or size is None:
            return 1
        block = units.block if units.block is not None else max(length // size, 1)
        if size * block != length:
            self.groups.fail(units.group, f"{where} has {length} inputs, not {size} units")
        return block

    # -- the nodes -------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> None:
        if node.op == "placeholder" or node.op == "get_attr":
            self.units[node] = _Units(self.groups.new(pin=True), None)
        elif node.op == "output":
            for units in self._arg_units(node):
                self.groups.pin(units.group)
        elif node.op == "call_module":
            self._module(node, self.modules[str(node.target)])
        elif node.op == "call_function" and node.target in (getattr, operator.getitem):
            first = node.args[0]
            is_tensor = isinstance(first, fx.Node) and self.units.get(first) is not None
            if is_tensor and not (
                node.target is getattr and node.args[1] in _fx_trace.SHAPE_ATTRIBUTES
            ):
                self._unsupported(node)
            else:
                self.units[node] = None  # a shape, not a tensor
        elif node.op == "call_method" and node.target in ("size", "dim", "numel"):
            self.units[node] = None
        else:
            self._function(node, node.target if node.op == "call_function" else str(node.target))

    def _module(self, node: fx.Node, module: nn.Module) -> None:
        where, name = self._where(node), str(node.target)
        tensors = self._arg_units(node)
        if len(tensors) != 1 or len(node.args) != 1 or node.kwargs:
            self._unsupported(node)
            return
        units = tensors[0]
        if isinstance(module, nn.Linear) or (isinstance(module, _CONVS) and module.groups == 1):
            source = node.args[0]
            if isinstance(module, nn.Linear):
                self._axis_is(units, source, -1, where)
                block, axis = self._block(units, module.in_features, where), -1
            else:
                if self._axis_is(units, source, 1, where) and units.block != 1:
                    self.groups.fail(units.group, f"{where} reads flattened channels")
                block, axis = 1, 1
            self.groups.claim(units.group, f"{name}.weight", 1, block, where)
            group = self.groups.new(int(module.weight.shape[0]), producer=name)
            self.groups.claim(group, f"{name}.weight", 0, 1, where)
            if module.bias is not None:
                self.groups.claim(group, f"{name}.bias", 0, 1, where)
            self._set(node, _Units(group, axis))
        elif isinstance(module, _CONVS) and module.groups == module.in_channels:
            # depthwise: each output channel reads one input channel, so it follows it
            if self._axis_is(units, node.args[0], 1, where) and units.block == 1:
                if module.out_channels != module.in_channels:
                    self._unsupported(node, "a depthwise convolution with a channel multiplier")
                    return
                for tensor in ("weight", "bias"):
                    if getattr(module, tensor) is not None:
                        self.groups.claim(units.group, f"{name}.{tensor}", 0, 1, where)
            self._set(node, units)
        elif isinstance(module, _seq.NORMS) or (
            isinstance(module, nn.PReLU) and module.num_parameters > 1
        ):
            if self._axis_is(units, node.args[0], 1, where):
                length = int(module.weight.shape[0])
                block = self._block(units, length, where)
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(module, tensor, None) is not None:
                        self.groups.claim(units.group, f"{name}.{tensor}", 0, block, where)
            self._set(node, units)
        elif isinstance(module, nn.LayerNorm):
            self._layer_norm(node, module, units, where)
        elif isinstance(module, _seq.ELEMENTWISE):
            self._set(node, units)
        elif isinstance(module, _seq.POOLS):
            self._pool(node, units, where)
        elif isinstance(module, nn.Flatten):
            self._flatten(node, units, module.start_dim, module.end_dim)
        else:
            self._unsupported(node)

    def _function(self, node: fx.Node, target: Any) -> None:
        where = self._where(node)
        tensors = self._arg_units(node)
        head = node.args[0] if node.args else None
        first = self.units.get(head) if isinstance(head, fx.Node) else None
        if target in _fx_trace.BINARY_FUNCTIONS or target in _fx_trace.BINARY_METHODS:
            self._binary(node, tensors, where)
        elif len(tensors) != 1 or first is None:
            self._unsupported(node)
        elif target in _fx_trace.ELEMENTWISE_FUNCTIONS or target in _fx_trace.ELEMENTWISE_METHODS:
            self._set(node, first)
        elif target in _fx_trace.POOL_FUNCTIONS:
            self._pool(node, first, where)
        elif target in (torch.flatten, "flatten"):
            start: Any = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            end: Any = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
            if isinstance(start, int) and isinstance(end, int):
                self._flatten(node, first, start, end)
            else:
                self._unsupported(node, "its axes are computed")
        elif target in (torch.reshape, "view", "reshape"):
            self._reshape(node, first, where)
        elif target in (torch.mean, torch.sum, "mean", "sum"):
            self._reduce(node, first, where)
        else:
            self._unsupported(node)

    def _binary(self, node: fx.Node, tensors: list[_Units], where: str) -> None:
        if not tensors:
            self.units[node] = None  # arithmetic on sizes
            return
        operands = [a for a in node.args if isinstance(a, fx.Node) and self.units[a] is not None]
        if any(a.op == "get_attr" for a in operands) or len(tensors) > 2:
            self._unsupported(node, "it combines hidden units with a parameter or constant")
            return
        first = tensors[0]
        if len(tensors) == 2:
            second = tensors[1]
            if first.axis is None:
                first, second = second, first
            if first.axis is not None and second.axis is not None:
                # broadcasting is fine (x * gate with gate (N, C, 1, 1)) if the units line up
                s0, s1 = [self._shape(a) for a in operands] if len(operands) == 2 else [None] * 2
                same = (
                    s0 is None
                    or s1 is None
                    or (len(s0), s0[first.axis]) == (len(s1), s1[first.axis])
                )
                if not same or (first.axis, first.block) != (second.axis, second.block):
                    self.groups.fail(first.group, f"{where} combines tensors of another layout")
            first = dataclasses.replace(
                first, group=self.groups.union(first.group, second.group, where)
            )
        self._set(node, first)

    def _pool(self, node: fx.Node, units: _Units, where: str) -> None:
        if self._axis_is(units, node.args[0], 1, where) and units.block != 1:
            self.groups.fail(units.group, f"{where} pools flattened channels")
        self._set(node, units)

    def _layer_norm(self, node: fx.Node, module: nn.LayerNorm, units: _Units, where: str) -> None:
        k = len(module.normalized_shape)
        shape = self._shape(node.args[0])
        if units.axis is None or module.weight is None:
            self._set(node, units)
            return
        if shape is not None:
            from_end = units.axis - len(shape)
        elif units.axis == -1:
            from_end = -1
        else:
            self.groups.fail(units.group, f"{where} reads a tensor of unknown rank", True)
            from_end = -1
        if from_end >= -k:  # the units are among the normalised axes: the affine follows them
            axis = k + from_end
            block = self._block(units, int(module.normalized_shape[axis]), where)
            for tensor in ("weight", "bias"):
                if getattr(module, tensor) is not None:
                    self.groups.claim(units.group, f"{node.target}.{tensor}", axis, block, where)
        self._set(node, units)

    def _flatten(self, node: fx.Node, units: _Units, start: int, end: int) -> None:
        shape = self._shape(node.args[0])
        if units.axis is None:
            self._set(node, units)
        elif shape is None:
            if (units.axis, start, end) == (1, 1, -1):
                # the result has two axes: the units are on the last one, in blocks that the
                # next Linear's width tells
                self._set(node, _Units(units.group, -1, None), probe=False)
            else:
                where = self._where(node)
                self.groups.fail(units.group, f"{where} flattens a tensor of unknown shape", True)
                self._set(node, units)
        else:
            self._merge(node, units, shape, start % len(shape), end % len(shape))

    def _merge(self, node: fx.Node, units: _Units, shape: tuple, start: int, end: int) -> None:
        """Axes ``start..end`` of ``shape`` merged into one (a flatten or view)."""
        axis = int(units.axis)  # type: ignore[arg-type]  # checked by the callers
        if end < axis:
            self._set(node, dataclasses.replace(units, axis=axis - (end - start)))
        elif start > axis:
            self._set(node, units)
        elif math.prod(shape[start:axis]) != 1:
            where = self._where(node)
            self.groups.fail(units.group, f"{where} mixes the units with the axes before them")
            self._set(node, units)
        else:
            block = (units.block or 1) * math.prod(shape[axis + 1 : end + 1])
            self._set(node, _Units(units.group, start, block), probe=block == 1)

    def _reshape(self, node: fx.Node, units: _Units, where: str) -> None:
        before, after = self._shape(node.args[0]), self._shape(node)
        if units.axis is None:
            self._set(node, units)
            return
        if before is None or after is None:
            self.groups.fail(units.group, f"{where} reshapes a tensor of unknown shape", True)
            self._set(node, units)
            return
        head = 0
        while head < min(len(before), len(after)) and before[head] == after[head]:
            head += 1
        tail = 0
        limit = min(len(before), len(after)) - head
        while tail < limit and before[-1 - tail] == after[-1 - tail]:
            tail += 1
        if units.axis < head:
            self._set(node, units)
        elif units.axis >= len(before) - tail:
            self._set(node, dataclasses.replace(units, axis=units.axis + len(after) - len(before)))
        elif len(after) - head - tail == 1:  # the middle axes merged into one
            self._merge(node, units, before, head, len(before) - tail - 1)
        else:
            self._unsupported(node, "it splits the axis that holds the units")

    def _reduce(self, node: fx.Node, units: _Units, where: str) -> None:
        dims: Any = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        shape = self._shape(node.args[0])
        if dims is None:
            self._unsupported(node, "it reduces over every axis")
            return
        if units.axis is None:
            self._set(node, units)
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            self._unsupported(node, "its axes are computed")
            return
        if shape is not None:
            dims = [d % len(shape) for d in dims]
        elif units.axis != 1 or min(dims) < 2:
            self.groups.fail(units.group, f"{where} reduces a tensor of unknown shape", True)
            self._set(node, units)
            return
        if units.axis in dims or units.block != 1:
            self._unsupported(node, "it reduces over the axis that holds the units")
            return
        axis = units.axis if keep else units.axis - sum(d < units.axis for d in dims)
        self._set(node, dataclasses.replace(units, axis=axis))
