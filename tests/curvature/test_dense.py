"""The dense Hessian against closed forms and ``torch.func.hessian``; the shared oracles.

The helpers here are the references the other curvature tests compare with: a float64
``torch.func.hessian`` of the full-batch loss as a function of the flat parameter vector (an
implementation independent of lossvista's products), and closed-form Hessians of linear and
softmax regression.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, snapshot
from lossvista.curvature import hessian_dense
from lossvista.errors import InputError

F = nn.functional


# -- oracles --------------------------------------------------------------------------------------
def reference_hessian(model: nn.Module, loss_fn, X, y, names=None) -> torch.Tensor:
    """``torch.func.hessian`` of the full-batch loss over the flat selected parameters."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = dict(params)
        for name, piece, shape in zip(names, torch.split(flat, sizes), shapes):
            pieces[name] = piece.view(shape)
        return loss_fn(torch.func.functional_call(model, pieces, (X,)), y)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    return torch.func.hessian(loss_of)(flat).detach()


def tanh_mlp(seed: int = 0, width: int = 10) -> nn.Module:
    """A small float64 tanh MLP; at its random initialisation the Hessian is indefinite."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 3)).double()


def linear_regression(n: int = 40, d: int = 5, seed: int = 0):
    """(model, X, y, H) for MSE with mean reduction: ``H = (2/N) X~^T X~``, ``X~ = [X, 1]``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, d).double()
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1).double()
    augmented = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    return model, X, y, 2.0 / n * augmented.T @ augmented  # order: weight (1 x d), then bias


def softmax_regression(n: int = 50, d: int = 4, classes: int = 3, seed: int = 0):
    """(model, X, y, H) for cross-entropy; ``H = (1/N) sum_n (diag p - p p^T) (x) x~ x~^T``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(d, classes).double()
    with torch.no_grad():
        p = torch.softmax(model(X), dim=1)
    augmented = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    # Parameters as one (classes, d + 1) matrix [W | b], flattened row-major.
    joint = (
        sum(
            torch.kron(
                torch.diag(p[i]) - torch.outer(p[i], p[i]), torch.outer(augmented[i], augmented[i])
            )
            for i in range(n)
        )
        / n
    )
    joint_index = torch.arange(classes * (d + 1)).view(classes, d + 1)
    order = torch.cat([joint_index[:, :d].reshape(-1), joint_index[:, d]])  # W row-major, then b
    return model, X, y, joint[order][:, order]


# -- tests ----------------------------------------------------------------------------------------
def test_linear_regression_hessian_is_two_over_n_xtx():
    model, X, y, expected = linear_regression()
    obj = lv.Objective(model, F.mse_loss, (X, y))
    torch.testing.assert_close(hessian_dense(obj), expected, rtol=1e-12, atol=1e-13)


def test_softmax_regression_hessian_matches_the_closed_form():
    model, X, y, expected = softmax_regression()
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=17)  # uneven batches too
    torch.testing.assert_close(hessian_dense(obj), expected, rtol=1e-10, atol=1e-12)


def test_mlp_hessian_matches_torch_func_with_uneven_batches_and_a_subset():
    model = tanh_mlp()
    X, y = classification_data(n=45)
    batches = [(X[:20], y[:20]), (X[20:27], y[20:27]), (X[27:], y[27:])]
    before = snapshot(model)
    for params in (None, ["2.*"]):
        obj = lv.Objective(model, F.cross_entropy, batches, params=params)
        expected = reference_hessian(model, F.cross_entropy, X, y, obj.param_names)
        torch.testing.assert_close(hessian_dense(obj), expected, rtol=1e-10, atol=1e-12)
    assert_unchanged(model, before)


def test_refuses_large_models_unless_the_limit_is_raised():
    model = tanh_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=10))
    size = sum(p.numel() for p in model.parameters())
    with pytest.raises(InputError, match=f"max_params={size}"):
        hessian_dense(obj, max_params=size - 1)
    assert hessian_dense(obj, max_params=size).shape == (size, size)
