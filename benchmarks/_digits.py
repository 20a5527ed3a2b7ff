"""What the benchmarks share: the digits data, the MLP 64-128-128-10, and its short training.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

F = nn.functional


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def digits(image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: ``X`` float32 in [0, 1], ``(N, 64)`` or ``(N, 1, 8, 8)``; ``y`` classes."""
    data = load_digits()
    X = torch.tensor(data.data / 16.0, dtype=torch.float32)
    return (X.view(-1, 1, 8, 8) if image else X), torch.tensor(data.target)


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> nn.Module:
    """A short full-batch Adam training, so measurements are taken around a real minimum."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    return model.eval()
