"""A small GPT-2 (Hugging Face ``transformers``, built from a config: nothing is downloaded) on
synthetic token sequences, for the surface benchmark: next-token cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, LENGTH = 512, 64


class NextToken(nn.Module):
    """Logits of every position but the last, as ``(batch, vocab, length - 1)``: what
    ``F.cross_entropy`` reads against the next tokens ``ids[:, 1:]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits[:, :-1].transpose(1, 2)


def gpt2() -> nn.Module:
    """GPT-2 of 4 layers, width 128, 4 heads, 512 tokens and 64 positions; eval mode. Its
    attention and MLP layers are HuggingFace ``Conv1D`` (weights stored as ``(in, out)``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=128, n_layer=4, n_head=4,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return NextToken(GPT2LMHeadModel(config)).eval()


def tokens(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of uniform random tokens, and the next token of every position."""
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return ids, ids[:, 1:].contiguous()
