"""Fused attention (``F.scaled_dot_product_attention``) has neither double backward nor forward-mode
AD in its flash kernel: the exact Hessian-vector backends must still work on it, exactly."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv
from lossvista.curvature.hvp import hvp_choice


class TinyCausalLM(nn.Module):
    """Embedding, one causal self-attention block on SDPA, a tied-free output head."""

    def __init__(self, vocab: int = 11, width: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        b, t, w = x.shape
        q, k, v = self.qkv(x).split(w, dim=-1)
        shape = (b, t, self.heads, w // self.heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, w))
        return self.head(x)


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def problem(dtype: torch.dtype = torch.float32) -> lv.Objective:
    torch.manual_seed(0)
    model = TinyCausalLM().to(dtype)
    tokens = torch.randint(0, 11, (6, 7), generator=torch.Generator().manual_seed(1))
    return lv.Objective(model, lm_loss, (tokens, tokens), params="qkv.*")


def test_the_flash_kernel_alone_has_no_second_derivative():
    """The reason for the math kernel (if PyTorch gains the derivative, this test says so)."""
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    loss = F.scaled_dot_product_attention(q, q.detach(), q.detach(), is_causal=True).sum()
    (g,) = torch.autograd.grad(loss, q, create_graph=True)
    try:
        torch.autograd.grad(g.sum(), q)
    except (RuntimeError, NotImplementedError):
        return
    pytest.skip("this PyTorch differentiates the fused kernel twice; the math path is a no-op")


@pytest.mark.parametrize("backend", ["double_backward", "forward_over_reverse"])
def test_exact_backends_match_the_float64_dense_hessian_on_attention(backend):
    obj = problem(torch.float32)
    reference = lv.hessian_dense(problem(torch.float64), hvp_backend="double_backward")
    ours = lv.hessian_dense(obj, hvp_backend=backend)
    scale = reference.abs().max()
    assert float((ours.double() - reference).abs().max() / scale) < 1e-4


def test_auto_chooses_an_exact_backend_and_the_top_eigenvalue_is_exact():
    obj = problem(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lv.HessianWarning)  # no fallback to finite differences
        choice = hvp_choice(obj)
        top = lv.hessian_eigs(obj, k=1, tol=1e-8)
    assert "double_backward" in choice.working and "forward_over_reverse" in choice.working
    exact = torch.linalg.eigvalsh(lv.hessian_dense(obj))[-1]
    assert top.values[0] == pytest.approx(float(exact), rel=1e-7)
    assert top.all_converged
