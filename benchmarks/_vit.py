"""A small ViT (Hugging Face ``transformers``, built from a config: nothing is downloaded) on the
synthetic CIFAR-shaped images of :mod:`_resnet`, for the surface benchmark."""

from __future__ import annotations

import torch
from torch import nn


class Logits(nn.Module):
    """The model's ``logits`` as the output (what ``F.cross_entropy`` reads)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def vit() -> nn.Module:
    """ViT with 4x4 patches of 32x32x3 images (64 tokens and a class token), width 128, 4
    layers of 4 heads, MLP width 512, 10 classes; eval mode."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=512, num_labels=10,
    )  # fmt: skip
    return Logits(ViTForImageClassification(config)).eval()
