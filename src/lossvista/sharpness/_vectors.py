"""Parameter vectors as dicts of tensors: their norm, seeded Gaussian draws, and the cast back.

Random draws are made in float64 on the CPU and only then cast to each parameter's dtype and
device, so a seed gives the same perturbations on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .._functional import TensorDict


def norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a dict of tensors seen as one vector (accumulated in float64)."""
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def gaussian(like: Mapping[str, torch.Tensor], generator: torch.Generator) -> TensorDict:
    """Standard normal float64 CPU tensors of the shapes of ``like``."""
    return {
        n: torch.randn(t.shape, generator=generator, dtype=torch.float64) for n, t in like.items()
    }


def cast(tensors: TensorDict, like: Mapping[str, torch.Tensor]) -> TensorDict:
    """``tensors`` in the dtype and on the device of the matching tensors of ``like``."""
    return {n: t.to(dtype=like[n].dtype, device=like[n].device) for n, t in tensors.items()}
