"""The landscape of a LoRA adapter: only the adapter's parameters move (the frozen base weights
are not selected), and ``norm="model"`` gives the zero-initialised ``lora_B`` a real direction
(filter or layer normalisation would scale it by its own norm, zero).

Run: ``python docs/examples/lora_landscape.py`` (``--small`` for the quick version CI runs).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``B A`` (B starts at zero)."""

    def __init__(self, inputs: int, outputs: int, rank: int = 2):
        super().__init__()
        self.base = nn.Linear(inputs, outputs)
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, inputs) / inputs**0.5)
        self.lora_B = nn.Parameter(torch.zeros(outputs, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


def main(small: bool = False) -> dict[str, object]:
    torch.manual_seed(0)
    n, steps = (64, 5) if small else (512, 21)
    model = nn.Sequential(LoRALinear(10, 16), nn.Tanh(), LoRALinear(16, 3))
    X = torch.randn(n, 10)
    y = (X[:, :3] * 2).argmax(dim=1)
    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=["accuracy"])
    print("moving:", ", ".join(obj.param_names))  # the adapters only: the base is frozen
    d1, d2 = lv.random_directions(obj, 2, norm="model", ignore=(), seed=0)
    surface = lv.plane(obj, (d1, d2), span=(-1, 1), steps=steps, progress=False)
    loss = surface.values["loss"]
    print(f"plane {surface.shape}: loss from {loss.min():.4g} to {loss.max():.4g}")
    return {"objective": obj, "plane": surface}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the quick version CI runs")
    main(parser.parse_args().small)
