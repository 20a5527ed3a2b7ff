"""A ResNet-style model on synthetic CIFAR-shaped data, for the surface benchmark.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import torch
from torch import nn

F = nn.functional


class Block(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN plus the (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Module:
    """Stem conv-BN-ReLU, one residual block per width (stride 2 after the first), pool, linear."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    layers += [nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for i, width in enumerate(widths):
        layers.append(Block(widths[max(i - 1, 0)], width, 1 if i == 0 else 2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10)]
    return nn.Sequential(*layers)


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic 32x32x3 images (standard normal) and labels in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def with_statistics(model: nn.Module, X: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics of the data (cumulative over 512-sample batches), eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        for start in range(0, min(len(X), 2048), 512):
            model(X[start : start + 512])
    return model.eval()
