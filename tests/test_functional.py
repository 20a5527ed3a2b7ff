"""The functional view: exact weighted loss and gradient against autograd on the full batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_cnn, make_mlp, snapshot
from lossvista._functional import functional

F = nn.functional


def test_loss_and_gradient_match_full_batch_autograd_with_uneven_batches():
    model = make_mlp()
    X, y = classification_data(n=65)
    batches = [(X[:32], y[:32]), (X[32:64], y[32:64]), (X[64:], y[64:])]
    obj = lv.Objective(model, F.cross_entropy, batches, params=["0.*", "4.weight"])
    before = snapshot(model)
    reference = make_mlp()
    loss = F.cross_entropy(reference(X), y)  # reference gradient below
    loss.backward()
    with functional(obj) as f:
        value, grads = f.loss_and_grad(f.params())
        assert float(f.loss(f.params()).detach()) == pytest.approx(loss.item(), rel=1e-12)
    assert value == pytest.approx(loss.item(), rel=1e-12)
    assert set(grads) == {"0.weight", "0.bias", "4.weight"}
    expected = dict(reference.named_parameters())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name].grad, rtol=1e-12, atol=1e-14)
    assert_unchanged(model, before)


def test_batchnorm_uses_running_statistics_or_recomputes_them_once():
    model = make_cnn()
    X, y = classification_data(n=30, image=True)
    model.train()
    before = snapshot(model)
    for bn in ("eval", "recompute"):
        obj = lv.Objective(model, F.cross_entropy, (X, y), bn=bn)
        with functional(obj) as f:
            value = float(f.loss(f.params()))
        assert value == pytest.approx(obj.loss(), rel=1e-12)
        assert_unchanged(model, before)
