"""A ResNet-style network on synthetic CIFAR-sized images: a filter-normalised plane around the
trained model, its top Hessian eigenvalue and a sharpness value.

Run: ``python docs/examples/resnet_synthetic.py`` (``--small`` for the quick version CI runs).
Nothing is downloaded: the images are random with a learnable rule (the class is the brightest
colour channel).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


def resnet(width: int = 16, blocks: int = 2, classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *(Block(width) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 32, 32, generator=g)
    return X, X.mean(dim=(2, 3)).argmax(dim=1)


def main(small: bool = False, out: Path | None = None) -> dict[str, object]:
    torch.manual_seed(0)
    n, width, steps, epochs = (64, 8, 5, 3) if small else (1024, 16, 21, 10)
    model = resnet(width)
    X, y = images(n)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, n, 64):
            optimizer.zero_grad()
            F.cross_entropy(model(X[i : i + 64]), y[i : i + 64]).backward()
            optimizer.step()

    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=["accuracy"], batch_size=256)
    d1, d2 = lv.random_directions(obj, 2, norm="filter", ignore=("bias", "norm"), seed=0)
    surface = lv.plane(obj, (d1, d2), span=(-1, 1), steps=steps, progress=False)
    top = lv.hessian_eigs(obj, k=1, max_iter=60 if small else None)
    sharp = lv.sharpness(obj, kind="average", rho=0.01, samples=8 if small else 100)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        surface.save(out / "resnet_plane.h5")
        surface.plot().savefig(out / "resnet_plane.png")
    print(f"loss {obj.loss():.4g}; plane {surface.shape}; lambda_max {top.values[0]:.4g}")
    print(f"average sharpness (rho=0.01) {sharp.value:.3g} ± {sharp.stderr:.2g}")
    return {"objective": obj, "plane": surface, "eigs": top, "sharpness": sharp}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the quick version CI runs")
    parser.add_argument("--out", type=Path, default=None, help="folder for the plane and its plot")
    arguments = parser.parse_args()
    main(arguments.small, arguments.out)
