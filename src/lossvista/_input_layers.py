"""Layers that read the data itself, computed once per direction instead of once per point.

A ``Linear`` or ``Conv1d/2d/3d`` layer computes ``f(x; W, b) = x * W + b``, linear in its
parameters ``(W, b)`` together. At the grid point ``c`` the engine sets them to
``(W0, b0) + sum_i c_i (D_i, e_i)``, so when the layer's input ``x`` is the data (the same
samples at every point), its output is ``f(x; W0, b0) + sum_i c_i f(x; D_i, e_i)``. The engine
computes these ``1 + k`` outputs once per batch and every point combines them (``k``
multiply-adds over the output) instead of running the layer: the first convolution of a CNN, the
first layer of an MLP or the patch embedding of a ViT then costs almost nothing per point. The
result equals the plain forward up to rounding (the sums are reassociated), like BatchNorm
folding. A convolution folded with its BatchNorm (:mod:`lossvista._fold`) qualifies while the
BatchNorm's scale does not move (its shift may: it adds to the bias).

A call is served from the stored outputs only when its input is a batch of the evaluation data:
a tensor sharing storage with the batches held for the run (any view of them: a flattened
image batch counts), unchanged since (its version counter), with gradients off. Any other call
(an activation, a call during a gradient computation) runs the layer as usual. The layers that
see the data are found by one forward pass of the first batch; their stored outputs must fit
``budget`` bytes (layers are kept in the order they run while they fit), else they run as usual.

A first convolution with few input channels (the 3x3 stem of a CNN on one or three colour
channels) is stored as its patches instead: the ``K = C_in * kh * kw`` input values each output
position sees (``F.unfold``, plus a column of ones for the bias), once per batch; every point
multiplies them by its ``(K + 1, C_out)`` weight matrix ``M0 + sum_i c_i M_i`` (one matrix
product, whose output is already in channels-last order). That reads ``K + 1`` numbers per
output position instead of the ``(1 + k) * C_out`` of the stored outputs, and replaces a direct
convolution that runs slowly on one input channel (0.62 ms per point for the digits CNN's
first layer against 0.14-0.18 ms for the product). It is used for an ungrouped, zero-padded
``Conv2d`` (or ``Conv1d``) on batches where reading the patches and their product cost less
than reading the stored outputs (:data:`PRODUCT_COST`).

Only loop evaluation in the model's own dtype uses it (under autocast the layer's output would
be half precision), and only for float32/float64 layers (a half-precision sum of stored outputs
rounds visibly more than the layer's own output); the model's modules get an instance
``forward`` that is removed on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from . import _onednn, _patches
from ._nested import tensors_in

if TYPE_CHECKING:  # pragma: no cover
    from ._fold import Pair
    from .engine import PointEvaluator

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
FULL_PRECISION = (torch.float32, torch.float64)
#: A multiply-add of the patches' product costs about this share of reading one stored number
#: (a CPU's matrix-product rate against its memory bandwidth: 250 GFLOP/s against 15 GB/s on
#: the benchmark machine). Patches are used when reading them plus their product costs less
#: than reading the stored outputs (with two directions: a 3x3 stem on one channel, or on three
#: with 14 outputs or more; not a 7x7 stem on three channels).
PRODUCT_COST = 1 / 32

#: Key of one layer input: storage, offset, shape, strides, dtype.
Key = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]


@dataclasses.dataclass
class _Layer:
    """One candidate layer: its module, forward before patching, parameter names, BatchNorm."""

    module: nn.Module
    inner: Callable[..., Any]
    weight: str
    bias: str | None
    bn: nn.BatchNorm2d | None = None  # folded into this convolution
    bn_bias: str | None = None
    enabled: bool = False
    first_bytes: float = 0.0  # output bytes for the first batch, measured by the probe
    patchable: bool = False  # a Conv1d/2d patches can serve, called on batches (the probe)
    patches: bool = False  # served from stored patches rather than stored outputs
    #: the patches' weight matrices ``[M0, M1, ...]`` (``None`` where direction i leaves the
    #: layer alone), made at the first served call
    matrices: list[torch.Tensor | None] | None = None
    #: input key -> (input version, [output at the origin, output of each direction or None])
    stored: dict[Key, tuple[int, list[torch.Tensor | None]]] = dataclasses.field(
        default_factory=dict
    )

    @property
    def biased(self) -> bool:
        """The layer adds a bias (its own, or its folded BatchNorm's shift)."""
        return self.bias is not None or self.bn is not None


def _key(x: torch.Tensor) -> Key:
    return (
        x.untyped_storage().data_ptr(),
        int(x.storage_offset()),
        tuple(x.shape),
        tuple(x.stride()),
        x.dtype,
    )


def _hooked(module: nn.Module) -> bool:
    hooks = (
        module._forward_hooks,
        module._forward_pre_hooks,
        getattr(module, "_forward_hooks_with_kwargs", {}),
    )
    return any(hooks)


def holds_batches(objective: Any) -> bool:
    """True when every pass over the objective's data yields the same batch tensors (tensors
    held by the objective or a cached loader), which a stored output can be matched against."""
    data = objective._data
    return data._tensors is not None or data._cached is not None


def candidates(model: nn.Module, pairs: Sequence[Pair], moving: set[str]) -> list[_Layer]:
    """The layers that may be stored: exactly Linear/Conv modules in float32 or float64, called
    from one place, not hooked or patched by anyone else; a folded convolution only while its
    BatchNorm's scale does not move. ``pairs`` are the folded (conv, BatchNorm) pairs,
    ``moving`` the names of the parameters the directions move."""
    names = {id(p): n for n, p in model.named_parameters()}
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    folded = {id(conv): bn for conv, bn in pairs}
    layers = []
    for module in model.modules():
        if type(module) not in LAYER_TYPES or counts[id(module)] != 1 or _hooked(module):
            continue
        if module.weight.dtype not in FULL_PRECISION:  # a half-precision sum of stored
            continue  # outputs would round visibly more than the layer's own output
        bn = folded.get(id(module))
        own = module.__dict__.get("forward")  # patched by someone: only ours are wrapped
        if bn is None and own is not None and not _onednn.is_forward(own):
            continue
        weight = names.get(id(module.weight))
        bias = names.get(id(module.bias)) if module.bias is not None else None
        if weight is None or (module.bias is not None and bias is None):
            continue
        bn_bias = None
        if bn is not None:
            bn_weight = names.get(id(bn.weight)) if bn.weight is not None else None
            if bn_weight in moving or _hooked(bn):
                continue
            bn_bias = names.get(id(bn.bias)) if bn.bias is not None else None
        layers.append(_Layer(module, module.forward, weight, bias, bn, bn_bias))
    return layers


class InputLayers:
    """The stored outputs of the layers that read the data, for one engine configuration.

    Use :meth:`patched` around the run and :meth:`at` before every point; set
    ``channels_last`` and ``compiled`` (the configuration's options) before :meth:`patched`.
    """

    def __init__(
        self, evaluator: PointEvaluator, pairs: Sequence[Pair], budget: int, batch_size: int | None
    ) -> None:
        self.evaluator = evaluator
        self.budget = budget
        self.batch_size = batch_size
        objective = evaluator.objective
        self.layers = candidates(objective.model, pairs, set(evaluator.stacks))
        self.channels_last = False
        self.compiled = False  # the forward is compiled: the stored path stays out of the graph
        self._terms: list[tuple[int, float]] | None = None  # None: not serving (probe, setup)
        self._storages: set[int] = set()
        self._held: list[torch.Tensor] = []
        self._probing = False

    # -- set-up -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def patched(self) -> Iterator[InputLayers]:
        """The candidate layers patched inside (removed on exit); probes which read the data."""
        patched: list[_Layer] = []
        try:
            for layer in self.layers:
                object.__setattr__(layer.module, "forward", self._forward_of(layer))
                patched.append(layer)
            self._probe()
            yield self
        finally:
            for layer in patched:
                if layer.bn is None and not _onednn.is_forward(layer.inner):
                    layer.module.__dict__.pop("forward", None)
                else:  # a folded or oneDNN forward underneath stays until its context ends
                    object.__setattr__(layer.module, "forward", layer.inner)
                layer.stored.clear()
                layer.matrices = None
            self._held.clear()
            self._storages.clear()

    @property
    def active(self) -> bool:
        """True when at least one layer reads the data and its outputs fit the budget."""
        return any(layer.enabled for layer in self.layers)

    def _probe(self) -> None:
        """One forward pass of the first batch: which layers read the data, and how much of
        it their outputs take per sample; then enable the layers that fit the budget."""
        objective = self.evaluator.objective
        if not self.layers or not holds_batches(objective):
            return
        samples = 0
        for inputs, target in objective._batches(self.batch_size):
            for tensor in tensors_in(inputs):
                self._held.append(tensor)
                self._storages.add(tensor.untyped_storage().data_ptr())
            samples += int(target.shape[0])
        first = next(iter(objective._batches(self.batch_size)), None)
        if first is None or samples == 0:
            return
        self._probing = True
        try:  # like a point: buffers a forward changes are found and put back
            with self.evaluator._fresh_buffers(), torch.no_grad():
                objective._forward(first[0])
        finally:
            self._probing = False
        n_first = max(int(first[1].shape[0]), 1)
        used = 0.0
        for layer in self.layers:
            if layer.first_bytes <= 0:
                continue
            moving = sum(self._moves(layer, i) for i in range(self.evaluator.n_directions))
            per_position = 1.0 + moving  # numbers stored per output number
            if layer.patchable:
                weight = _weight(layer.module)
                width = _patches.width(weight, layer.biased)  # per output position
                layer.patches = width / len(weight) + width * PRODUCT_COST < per_position
                per_position = width / len(weight) if layer.patches else per_position
            need = layer.first_bytes / n_first * samples * per_position
            if used + need <= self.budget:
                layer.enabled = True
                used += need

    # -- evaluation -------------------------------------------------------------------------------
    def at(self, coefficients: np.ndarray) -> None:
        """The point the next forward passes evaluate (``origin + sum_i c_i d_i``)."""
        self._terms = [(i, float(v)) for i, v in enumerate(coefficients) if v != 0.0]

    def _forward_of(self, layer: _Layer) -> Callable[..., Any]:
        def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs or not self._reads_data(x):
                return layer.inner(x, *args, **kwargs)
            if self._probing:
                output = layer.inner(x)
                layer.first_bytes = max(layer.first_bytes, float(_nbytes(output)))
                layer.patchable = _patches.patchable(layer.module) and x.dim() == _dims(layer)
                return output
            if (
                self._terms is None
                or not layer.enabled
                or (layer.patches and x.dim() != _dims(layer))
            ):
                return layer.inner(x)
            key = _key(x)
            entry = layer.stored.get(key)
            if entry is None or entry[0] != x._version:
                stored = self._patches(layer, x) if layer.patches else self._outputs(layer, x)
                entry = layer.stored[key] = (x._version, stored)
            if layer.patches:
                return self._through_patches(layer, entry[1][0])
            return _combined(entry[1], self._terms)

        return torch.compiler.disable(forward) if self.compiled else forward

    def _reads_data(self, x: Any) -> bool:
        return (
            isinstance(x, torch.Tensor)
            and not torch.is_grad_enabled()
            and not x.requires_grad
            and x.untyped_storage().data_ptr() in self._storages
        )

    def _moves(self, layer: _Layer, i: int) -> bool:
        stacks = self.evaluator.stacks
        names = (layer.weight, layer.bias, layer.bn_bias)
        return any(n is not None and n in stacks and bool(stacks[n][i].any()) for n in names)

    def _maps(self, layer: _Layer) -> list[tuple[torch.Tensor, torch.Tensor | None] | None]:
        """The layer's folded ``[(W0, b0), (D_1, e_1), ...]`` (``None`` where direction i
        leaves the layer alone)."""
        evaluator = self.evaluator
        origin, stacks, tensors = evaluator.origin, evaluator.stacks, evaluator._model_tensors

        def at_origin(name: str | None) -> torch.Tensor | None:
            if name is None:
                return None
            return origin[name] if name in origin else tensors[name].detach()

        def along(name: str | None, i: int) -> torch.Tensor | None:
            return stacks[name][i] if name is not None and name in stacks else None

        maps: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [
            self._map(layer, at_origin(layer.weight), at_origin(layer.bias), None, True)
        ]
        for i in range(evaluator.n_directions):
            if not self._moves(layer, i):
                maps.append(None)
                continue
            weight = along(layer.weight, i)
            if weight is None:
                weight = torch.zeros_like(_weight(layer.module))
            maps.append(
                self._map(layer, weight, along(layer.bias, i), along(layer.bn_bias, i), False)
            )
        return maps

    def _outputs(self, layer: _Layer, x: torch.Tensor) -> list[torch.Tensor | None]:
        """``[f(x; W0, b0), f(x; D_1, e_1), ...]`` (``None`` where direction i leaves the
        layer alone), in channels-last layout for 4-D outputs under the channels-last option."""
        module = layer.module
        outputs: list[torch.Tensor | None] = []
        for pair in self._maps(layer):
            if pair is None:
                outputs.append(None)
                continue
            weight = torch.empty_like(_weight(module)).copy_(pair[0])  # the module's layout
            if isinstance(module, nn.Linear):
                output = nn.functional.linear(x, weight, pair[1])
            else:
                output = module._conv_forward(x, weight, pair[1])  # type: ignore[operator]
            if self.channels_last and output.dim() == 4:
                output = output.contiguous(memory_format=torch.channels_last)
            outputs.append(output)
        return outputs

    def _patches(self, layer: _Layer, x: torch.Tensor) -> list[torch.Tensor | None]:
        """``[P]``: the batch's patches (:func:`lossvista._patches.unfolded`); the weight
        matrices are made with the first batch."""
        if layer.matrices is None:
            maps = self._maps(layer)
            layer.matrices = [_patches.matrix(m, layer.biased) if m else None for m in maps]
        return [_patches.unfolded(cast("nn.Conv1d | nn.Conv2d", layer.module), x, layer.biased)]

    def _through_patches(self, layer: _Layer, patches: torch.Tensor | None) -> torch.Tensor:
        """The layer's output at the current point: the patches times ``M0 + sum_i c_i M_i``."""
        if patches is None or layer.matrices is None or self._terms is None:  # pragma: no cover
            raise RuntimeError("patches served before their matrices or point")
        matrix = _combined(layer.matrices, self._terms)
        return _patches.product(patches, matrix, self.channels_last, _dims(layer))

    def _map(
        self,
        layer: _Layer,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        bn_shift: torch.Tensor | None,
        base: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's weight and bias, folded through the fixed BatchNorm scale (``base``:
        the BatchNorm's own shift added, else ``bn_shift``, the direction of its shift)."""
        if weight is None:  # pragma: no cover - candidates() requires a named weight
            raise RuntimeError("a stored layer needs its weight")
        if layer.bn is not None:
            bn = layer.bn
            if bn.running_var is None or bn.running_mean is None:  # pragma: no cover
                raise RuntimeError("a folded BatchNorm has running statistics")
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.detach()
            weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            shift = bias * scale if bias is not None else None
            if base:
                own = -bn.running_mean * scale
                if bn.bias is not None:
                    own = own + (self._origin_of(layer.bn_bias, bn.bias))
                shift = own if shift is None else shift + own
            elif bn_shift is not None:
                shift = bn_shift if shift is None else shift + bn_shift
            bias = shift
        return weight, bias

    def _origin_of(self, name: str | None, tensor: torch.Tensor) -> torch.Tensor:
        origin = self.evaluator.origin
        return origin[name] if name is not None and name in origin else tensor.detach()


def _dims(layer: _Layer) -> int:
    """Dimensions of a batch the layer reads: its weight's (``(N, C, L)`` for a Conv1d)."""
    return _weight(layer.module).dim()


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):  # pragma: no cover - Linear/Conv hold tensors
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def _nbytes(output: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_in(output))


def _combined(outputs: list[torch.Tensor | None], terms: list[tuple[int, float]]) -> torch.Tensor:
    """``outputs[0] + sum_i c_i outputs[i + 1]``: a new tensor (the model may change it in
    place, e.g. ``ReLU(inplace=True)``)."""
    result: torch.Tensor | None = None
    for i, value in terms:
        part = outputs[i + 1]
        if part is None:
            continue
        if result is None:
            result = torch.add(outputs[0], part, alpha=value)  # type: ignore[arg-type]
        else:
            result.add_(part, alpha=value)
    if result is None:
        base = outputs[0]
        if base is None:  # pragma: no cover - the origin's output is always stored
            raise RuntimeError("no stored output at the origin")
        result = base.clone()
    return result
