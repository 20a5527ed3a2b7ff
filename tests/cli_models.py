"""Tiny factories the CLI tests name as ``tests/cli_models.py:make_model`` or ``cli_models:make_model``.

Everything is seeded inside the factory, so a test can rebuild exactly what the CLI built.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_SAMPLES, N_FEATURES, N_CLASSES, HIDDEN = 60, 4, 3, 8


def make_model() -> nn.Module:
    """A 4-8-3 MLP with a fixed initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, N_CLASSES))


def make_bn_model() -> nn.Module:
    """The same with a BatchNorm layer (running statistics matter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Linear(N_FEATURES, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.Tanh(),
            nn.Linear(HIDDEN, N_CLASSES),
        )


def make_unseeded_model() -> nn.Module:
    """Relies on the CLI's torch.manual_seed(--seed) for a repeatable initialisation."""
    return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, N_CLASSES))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """60 samples of 4 features; 3 classes given by a fixed linear rule (learnable)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=generator)
    rule = torch.randn(N_FEATURES, N_CLASSES, generator=generator)
    return x, (x @ rule).argmax(dim=1)


def make_regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data()
    return x, nn.functional.one_hot(y, N_CLASSES).float()


def make_loader() -> DataLoader:
    """The same data in uneven batches of 16 (60 = 3 * 16 + 12)."""
    return DataLoader(TensorDataset(*make_data()), batch_size=16, shuffle=False)


def make_dataset() -> TensorDataset:
    """A map-style dataset: the CLI batches it."""
    return TensorDataset(*make_data())


def top2(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A metric given by spec: the target is among the two largest logits."""
    if target.dim() > 1:  # one-hot rows
        target = target.argmax(dim=1)
    best = output.topk(2, dim=1).indices
    return (best == target[:, None]).any(dim=1).to(output.dtype).mean()


def not_a_model() -> list[int]:
    return [1, 2, 3]


def broken_factory() -> nn.Module:
    raise RuntimeError("the factory is broken on purpose")


def needs_arguments(width: int) -> nn.Module:
    return nn.Linear(width, 3)


NOT_CALLABLE = 42
