"""Flat vectors over an objective's selected parameters, and seeded random probes.

The curvature algorithms work on one 1-D tensor per vector (length ``P``, the number of selected
parameter entries, in the parameters' dtype and device); users see :class:`~lossvista.Direction`
objects. :class:`Layout` converts between the two: entries are laid out parameter by parameter in
``obj.param_names`` order, each tensor flattened in row-major order (the order of
``torch.cat([p.reshape(-1) for p in params])``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..directions import Direction
from ..errors import DirectionError


class Layout:
    """Names, shapes, dtype and device of the selected parameters, and flat <-> named conversion."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        self.names = tuple(params)
        self.shapes = tuple(tuple(t.shape) for t in params.values())
        self.numels = tuple(t.numel() for t in params.values())
        first = next(iter(params.values()))
        self.dtype = first.dtype
        self.device = first.device
        self.size = sum(self.numels)

    def flatten(self, tensors: Mapping[str, torch.Tensor], *, what: str = "vector") -> torch.Tensor:
        """One 1-D tensor from a mapping over (a subset of) the names; missing names are zero."""
        unknown = [n for n in tensors if n not in self.names]
        if unknown:
            raise DirectionError(
                f"{what} has entries for parameters the objective does not select: {unknown[:10]}; "
                f"selected: {list(self.names)[:10]}{' ...' if len(self.names) > 10 else ''}"
            )
        parts = []
        for name, shape, numel in zip(self.names, self.shapes, self.numels):
            value = tensors.get(name)
            if value is None:
                parts.append(torch.zeros(numel, dtype=self.dtype, device=self.device))
                continue
            if not isinstance(value, torch.Tensor):
                raise DirectionError(
                    f"{what} entry {name!r} is a {type(value).__name__}, not a tensor"
                )
            if tuple(value.shape) != shape:
                raise DirectionError(
                    f"{what} entry {name!r} has shape {tuple(value.shape)}, the parameter {shape}"
                )
            parts.append(value.detach().to(dtype=self.dtype, device=self.device).reshape(-1))
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``vector`` shaped like the parameters (no copy)."""
        pieces = torch.split(vector, list(self.numels))
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def direction(self, vector: torch.Tensor, meta: Mapping[str, Any]) -> Direction:
        """A :class:`~lossvista.Direction` holding a copy of ``vector`` in the parameters' dtype."""
        vector = vector.to(dtype=self.dtype, device=self.device)
        return Direction({n: t.clone() for n, t in self.unflatten(vector).items()}, meta)


def rademacher(layout: Layout, seed: int, stream: str, index: int) -> torch.Tensor:
    """Probe ``index`` of ``stream`` under ``seed``: ``P`` entries +-1 with equal probability.

    Every (seed, stream, index) has its own generator (``numpy.random.SeedSequence``), so probes
    are independent across streams and reproducible one by one. They are drawn on the CPU, so a
    seed gives the same probes on every device.
    """
    entropy = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode()), int(index)])
    generator = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
    signs = torch.randint(0, 2, (layout.size,), generator=generator, dtype=torch.int8)
    return (signs.to(layout.dtype) * 2 - 1).to(layout.device)


def unit_probe(layout: Layout, seed: int, stream: str, index: int) -> torch.Tensor:
    """A Rademacher probe scaled to unit norm (a Lanczos start vector)."""
    return rademacher(layout, seed, stream, index) / math.sqrt(layout.size)


#: Entries converted to float64 at a time by :func:`norm` and :func:`dot` (2 MiB of float64), so
#: accumulating a float32 vector in float64 never copies the whole vector.
_CHUNK = 1 << 18


def norm(vector: torch.Tensor) -> float:
    """Euclidean norm accumulated in float64 (lower precision converted chunk by chunk)."""
    if vector.dtype == torch.float64 or vector.numel() <= _CHUNK:
        return float(torch.linalg.vector_norm(vector.double()))
    parts = [torch.linalg.vector_norm(chunk.double()) for chunk in vector.split(_CHUNK)]
    return float(torch.linalg.vector_norm(torch.stack(parts)))


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Inner product of two flat vectors accumulated in float64, chunk by chunk."""
    if a.dtype == b.dtype == torch.float64 or a.numel() <= _CHUNK:
        return float(torch.dot(a.double(), b.double()))
    return float(
        sum(torch.dot(x.double(), y.double()) for x, y in zip(a.split(_CHUNK), b.split(_CHUNK)))
    )
