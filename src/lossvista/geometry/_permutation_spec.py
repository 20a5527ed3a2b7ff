"""Which tensor axes a permutation of hidden units moves: found in ``nn.Sequential`` chains, or
given by hand, and applied to a state dict.

A specification maps each permutation's name to the axes it moves, as ``(tensor name, axis,
block)`` triples: the axis of size ``n * block`` is read as ``n`` consecutive blocks of
``block`` entries, and the blocks are permuted (``block`` is 1 except for the first ``Linear``
after a ``Flatten``, whose input columns come in one block of ``H * W`` per channel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError

#: perm name -> [(tensor name, axis, block), ...]
Spec = dict[str, list[tuple[str, int, int]]]

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on every entry alike, so they commute with a permutation of units.
ELEMENTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,  # only with one shared slope; checked below
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
# Pooling acts on every channel alike over the spatial axes (the units must be on axis 1).
POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def discover(model: nn.Module) -> tuple[Spec, dict[str, str]]:
    """The specification of a chain of layers, and per permutation the module whose output holds
    its units (the probe for activation matching).

    Raises:
        InputError: the model is not an ``nn.Sequential`` chain of supported layers; the message
            names the module that cannot be aligned.
    """
    if not isinstance(model, nn.Sequential):
        raise InputError(
            f"align walks nn.Sequential chains; the model is a {type(model).__name__}, whose "
            "forward order lossvista cannot see (residual connections and other graphs are not "
            "traced). Pass spec={permutation name: [(parameter or buffer name, axis), ...]} "
            "(see lossvista.geometry.align.permutation_spec for the format)"
        )
    spec: Spec = {}
    probes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    current: str | None = None  # the permutation of the units flowing between layers
    flattened = False
    for name, module in _leaves(model, ""):
        where = f"module {name!r} ({type(module).__name__})"
        if id(module) in seen:
            raise InputError(f"{where} is used twice in the chain; shared layers cannot be aligned")
        seen.add(id(module))
        if isinstance(module, WEIGHTED):
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups != 1:
                raise InputError(f"{where} is a grouped convolution (groups={module.groups})")
            if current is not None:
                block = 1
                if flattened:
                    if not isinstance(module, nn.Linear):
                        raise InputError(f"{where} follows a Flatten; only a Linear can")
                    block, rest = divmod(module.in_features, sizes[current])
                    if rest or block == 0:
                        raise InputError(
                            f"{where} has {module.in_features} inputs, not a multiple of the "
                            f"{sizes[current]} channels before the Flatten"
                        )
                spec[current].append((f"{name}.weight", 1, block))
            current = name
            sizes[current] = int(module.weight.shape[0])
            spec[current] = [(f"{name}.weight", 0, 1)]
            if module.bias is not None:
                spec[current].append((f"{name}.bias", 0, 1))
            probes[current] = name
            flattened = False
        elif isinstance(module, NORMS):
            if current is not None and not flattened:
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(module, tensor, None) is not None:
                        spec[current].append((f"{name}.{tensor}", 0, 1))
                probes[current] = name
            elif current is not None:
                raise InputError(f"{where} follows a Flatten, which mixes channels and positions")
        elif isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise InputError(f"{where} must flatten dims 1..-1, got {module.start_dim}..")
            flattened = True
        elif isinstance(module, ELEMENTWISE + POOLS):
            if isinstance(module, nn.PReLU) and module.num_parameters != 1:
                raise InputError(f"{where} has a slope per channel; use one shared slope")
            if current is not None and not flattened:
                probes[current] = name
        else:
            raise InputError(
                f"{where} cannot be aligned: lossvista knows Linear/Conv layers, BatchNorm, "
                "element-wise activations, dropout, pooling and Flatten in nn.Sequential chains. "
                "Pass spec={permutation name: [(parameter or buffer name, axis), ...]} by hand"
            )
    if current is not None:  # the output units of the last layer stay in place
        del spec[current], probes[current]
    return spec, probes


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out.extend(_leaves(child, full + "."))
        else:
            out.append((full, child))
    return out


def checked(spec: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[Spec, dict[str, int]]:
    """A hand-written specification in the normal form, with each permutation's size.

    Raises:
        InputError: unknown names, axes out of range, sizes that disagree, an axis claimed by two
            permutations.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise InputError(
            "spec must be a non-empty mapping {permutation name: [(tensor name, axis), ...]}, "
            f"got {type(spec).__name__}"
        )
    out: Spec = {}
    sizes: dict[str, int] = {}
    claimed: dict[tuple[str, int], str] = {}
    for perm, entries in spec.items():
        if not isinstance(perm, str) or not perm or "/" in perm:
            raise InputError(
                f"spec: permutation names must be non-empty strings without '/', got {perm!r}"
            )
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
            raise InputError(
                f"spec[{perm!r}] must be a non-empty list of (tensor name, axis) pairs"
            )
        out[perm] = []
        for entry in entries:
            if (
                not isinstance(entry, Sequence)
                or isinstance(entry, str)
                or len(entry) not in (2, 3)
            ):
                raise InputError(
                    f"spec[{perm!r}]: each entry is (tensor name, axis) or (tensor name, axis, "
                    f"block), got {entry!r}"
                )
            name, axis, block = entry[0], entry[1], entry[2] if len(entry) == 3 else 1
            if name not in tensors:
                raise InputError(
                    f"spec[{perm!r}] names {name!r}, which is not a parameter or buffer of the "
                    f"model (some are {sorted(tensors)[:8]})"
                )
            shape = tuple(tensors[name].shape)
            if not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
                raise InputError(f"spec[{perm!r}]: {name!r} of shape {shape} has no axis {axis!r}")
            axis %= len(shape)
            if not isinstance(block, int) or block < 1 or shape[axis] % block:
                raise InputError(
                    f"spec[{perm!r}]: block {block!r} does not divide axis {axis} of {name!r} "
                    f"(size {shape[axis]})"
                )
            if (name, axis) in claimed:
                raise InputError(
                    f"spec: axis {axis} of {name!r} is in both {claimed[name, axis]!r} and {perm!r}"
                )
            claimed[name, axis] = perm
            size = shape[axis] // block
            if sizes.setdefault(perm, size) != size:
                raise InputError(
                    f"spec[{perm!r}]: {name!r} axis {axis} holds {size} units, other entries "
                    f"{sizes[perm]}; every axis of one permutation must have the same size"
                )
            out[perm].append((name, axis, block))
    return out, sizes


def take(tensor: torch.Tensor, axis: int, index: torch.Tensor, block: int = 1) -> torch.Tensor:
    """``tensor`` with the ``block``-sized groups along ``axis`` reordered: group ``i`` of the
    result is group ``index[i]`` of ``tensor``."""
    shape = tensor.shape
    grouped = tensor.reshape(*shape[:axis], shape[axis] // block, block, *shape[axis + 1 :])
    return grouped.index_select(axis, index.to(tensor.device)).reshape(shape)


def permute_tensors(
    tensors: Mapping[str, torch.Tensor],
    spec: Spec,
    permutations: Mapping[str, Any],
    *,
    skip: tuple[str, str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """``tensors`` with every axis of ``spec`` permuted (``skip``: one (perm, name, axis) left)."""
    out = dict(tensors)
    for perm, entries in spec.items():
        index = torch.as_tensor(permutations[perm], dtype=torch.long)
        for name, axis, block in entries:
            if skip is not None and skip == (perm, name, axis):
                continue
            out[name] = take(out[name], axis, index, block)
    # A module registered under two names holds one tensor under both: loading the state dict
    # writes it twice, so every name of a permuted tensor gets the permuted value.
    first: dict[tuple, str] = {}
    for name, tensor in tensors.items():
        if tensor.numel() and tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
            root = first.setdefault((*key, tensor.stride()), name)
            if root != name and out[root] is not tensors[root] and out[name] is tensors[name]:
                out[name] = out[root]
    return out


class Groups:
    """Union-find over groups of hidden units, each with the tensor axes it permutes (built by
    the torch.fx walk of :mod:`._fx_spec`): joining two groups makes them one permutation; a
    pinned group (one that reaches the model's input or output) is never permuted; errors are
    kept per group and only matter for groups that end up permuted."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.entries: dict[int, list[tuple[str, int, int]]] = {}
        self.producers: dict[int, list[str]] = {}
        self.size: dict[int, int | None] = {}
        self.pinned: set[int] = set()
        self.errors: dict[int, list[tuple[str, bool]]] = {}
        self.claimed: dict[tuple[str, int], tuple[int, int]] = {}

    def new(self, size: int | None = None, producer: str | None = None, pin: bool = False) -> int:
        """A new group of ``size`` units started by the layer ``producer``."""
        g = len(self.parent)
        self.parent.append(g)
        self.entries[g], self.errors[g] = [], []
        self.producers[g] = [producer] if producer else []
        self.size[g] = size
        if pin:
            self.pinned.add(g)
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        """One group (the older one's root) from the groups of ``a`` and ``b``."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        a, b = min(a, b), max(a, b)
        sizes = (self.size[a], self.size[b])
        if None not in sizes and sizes[0] != sizes[1]:
            self.fail(a, f"{where} joins {sizes[0]} units with {sizes[1]}")
        self.parent[b] = a
        self.entries[a] += self.entries.pop(b)
        self.producers[a] += self.producers.pop(b)
        self.errors[a] += self.errors.pop(b)
        self.size[a] = sizes[0] if sizes[0] is not None else sizes[1]
        if b in self.pinned:
            self.pinned.add(a)
        return a

    def claim(self, g: int, name: str, axis: int, block: int, where: str) -> None:
        """Axis ``axis`` of tensor ``name`` follows group ``g`` (a layer used twice joins the
        groups it reads or writes)."""
        if (name, axis) in self.claimed:
            other, other_block = self.claimed[name, axis]
            if other_block != block:
                self.fail(g, f"{where} reads {name!r} in blocks of {block} and {other_block}")
            self.union(g, other, where)
            return
        self.claimed[name, axis] = (g, block)
        self.entries[self.find(g)].append((name, axis, block))

    def fail(self, g: int, message: str, needs_shapes: bool = False) -> None:
        """Record why group ``g`` cannot be permuted (raised only if it is not pinned)."""
        self.errors[self.find(g)].append((message, needs_shapes))

    def pin(self, g: int) -> None:
        self.pinned.add(self.find(g))

    def permuted(self) -> list[int]:
        """The roots of the groups that are not pinned, oldest first."""
        pinned = {self.find(p) for p in self.pinned}
        return sorted({self.find(g) for g in range(len(self.parent))} - pinned)
