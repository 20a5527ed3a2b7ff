"""Shared small models with exact references (float64 wherever an oracle is compared)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(scope="session", autouse=True)
def _private_tuning_cache_folder(tmp_path_factory):
    """The engine remembers its tuning per machine (lossvista._tuning): the suite never writes
    the user's ~/.cache (session-wide, so module-scoped fixtures are covered too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path_factory.mktemp("lossvista-cache")))
        yield


@pytest.fixture(autouse=True)
def _fresh_tuning_cache(tmp_path, monkeypatch):
    """Every test starts with an empty tuning cache, in memory and on disk."""
    from lossvista import _tuning

    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path / ".lossvista-cache"))
    _tuning.clear_memory()


# The test models are tiny: one thread is faster for them, and it keeps the suite's timing
# stable when other processes share the two cores (OpenMP threads then fight for them).
torch.set_num_threads(1)


class VectorModel(nn.Module):
    """``model(x)`` returns the parameter vector for every sample: a loss of theta alone."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


class Quadratic:
    """``L(theta) = 1/2 (theta - theta*)^T A (theta - theta*) + offset`` with a known A."""

    def __init__(self, n: int = 6, seed: int = 0, indefinite: bool = False, offset: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        eig = torch.linspace(0.5, 4.0, n, dtype=torch.float64)
        if indefinite:
            eig[: n // 2] *= -1
        self.A = q @ torch.diag(eig) @ q.T
        self.theta_star = torch.randn(n, generator=g, dtype=torch.float64)
        self.offset = offset
        self.n = n

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = output - self.theta_star
        return 0.5 * ((diff @ self.A) * diff).sum(-1).mean() + self.offset

    def exact(self, theta: torch.Tensor) -> float:
        diff = theta - self.theta_star
        return float(0.5 * diff @ self.A @ diff + self.offset)


def quadratic_problem(n: int = 6, seed: int = 0, **kwargs):
    """(model, loss, data, quadratic) with theta at a seeded point away from the minimum."""
    quad = Quadratic(n, seed, **kwargs)
    theta0 = quad.theta_star + torch.randn(
        n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    model = VectorModel(theta0)
    data = (torch.zeros(10, 1, dtype=torch.float64), torch.zeros(10, dtype=torch.float64))
    return model, quad, data


def make_mlp(seed: int = 0, dtype=torch.float64, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    ).to(dtype)


def make_cnn(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    ).to(dtype)


def classification_data(n: int = 65, seed: int = 0, dtype=torch.float64, image: bool = False):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 6, 6) if image else (n, 8)
    X = torch.randn(*shape, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return X, y


def with_statistics(model: nn.Module, X: torch.Tensor) -> nn.Module:
    """Non-trivial BatchNorm running statistics (so folding has something to fold), eval mode."""
    model.train()
    with torch.no_grad():
        model(X * 3 + 1)
    return model.eval()


def plane_losses(model: nn.Module, data, directions, coefficients, loss=None) -> np.ndarray:
    """The cross-entropy (or ``loss(output, y)``) at every point ``origin + sum_i c_i d_i``,
    computed by hand on a copy of ``model`` with its plain forward (no engine option), as the
    oracle of engine tests."""
    loss = loss or nn.functional.cross_entropy
    import copy

    clone = copy.deepcopy(model).eval()
    base = {n: p.detach().clone() for n, p in clone.named_parameters()}
    X, y = data
    out = []
    with torch.no_grad():
        for c in coefficients:
            for n, p in clone.named_parameters():
                p.copy_(base[n] + sum(float(ci) * d[n] for ci, d in zip(c, directions)))
            out.append(float(loss(clone(X), y)))
    return np.array(out)


def snapshot(model: nn.Module) -> dict:
    """Everything about a model that lossvista promises not to change, bit for bit."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "momentum": {
            n: m.momentum
            for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        },
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for kind in ("params", "buffers"):
        assert after[kind].keys() == before[kind].keys()
        for name, value in before[kind].items():
            assert torch.equal(after[kind][name], value), f"{kind} {name} changed"
            assert after[kind][name].dtype == value.dtype
    for kind in ("requires_grad", "training", "momentum"):
        assert after[kind] == before[kind], f"{kind} changed"


@pytest.fixture
def mlp_problem():
    model = make_mlp()
    X, y = classification_data()
    return model, nn.functional.cross_entropy, (X, y)


@pytest.fixture
def cnn_problem():
    model = make_cnn()
    X, y = classification_data(image=True)
    # Non-trivial running statistics, so eval and recompute differ.
    model.train()
    with torch.no_grad():
        model(X * 3 + 1)
    model.eval()
    return model, nn.functional.cross_entropy, (X, y)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
