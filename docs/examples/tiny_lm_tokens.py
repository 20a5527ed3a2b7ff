"""A tiny causal language model on padded sequences: the loss is a mean over *tokens*, so the
objective counts tokens (``count="tokens"``) and its value equals the model's own token mean for
every batch size; curvature runs through fused attention exactly.

Run: ``python docs/examples/tiny_lm_tokens.py`` (``--small`` for the quick version CI runs).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv

VOCAB, PAD = 17, -100


class TinyLM(nn.Module):
    """Embedding, one causal self-attention block (``F.scaled_dot_product_attention``), a head."""

    def __init__(self, width: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(VOCAB, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.clamp(min=0))
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm(x)).split(w, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.proj(attended.transpose(1, 2).reshape(b, t, w)))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over the tokens that are not padding."""
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=PAD)


def sequences(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sequences of varying length (the next token is the current one + 1), padded."""
    g = torch.Generator().manual_seed(seed)
    length = 12
    inputs = torch.zeros(n, length, dtype=torch.long)
    targets = torch.full((n, length), PAD, dtype=torch.long)
    for i in range(n):
        size = int(torch.randint(3, length + 1, (1,), generator=g))
        start = int(torch.randint(0, VOCAB, (1,), generator=g))
        run = (start + torch.arange(size + 1)) % VOCAB
        inputs[i, :size] = run[:-1]
        targets[i, :size] = run[1:]
    order = targets.ne(PAD).sum(1).argsort()  # length-sorted, as LM pipelines often are
    return inputs[order], targets[order]


def main(small: bool = False) -> dict[str, object]:
    torch.manual_seed(0)
    n, epochs, steps = (48, 30, 7) if small else (512, 200, 31)
    model = TinyLM()
    inputs, targets = sequences(n)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        optimizer.zero_grad()
        token_loss(model(inputs), targets).backward()
        optimizer.step()

    with torch.no_grad():
        own = float(token_loss(model(inputs), targets))  # the mean over every token at once
    obj = lv.Objective(model, token_loss, (inputs, targets), count="tokens", batch_size=5)
    print(f"token mean: model {own:.6f}, lossvista {obj.loss():.6f} (batches of 5 sequences)")
    (d,) = lv.random_directions(obj, 1, norm="filter", ignore=("bias", "norm"), seed=0)
    line = lv.line(obj, d, span=(-1, 1), steps=steps, progress=False)
    top = lv.hessian_eigs(obj, k=1, tol=1e-4, max_iter=80 if small else None)  # float32 floor
    print(
        f"line centre {line.center['loss']:.6f}; lambda_max {top.values[0]:.4g} "
        f"(converged: {top.all_converged}, {top.n_hvp} products)"
    )
    return {"own": own, "objective": obj, "line": line, "eigs": top}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the quick version CI runs")
    main(parser.parse_args().small)
