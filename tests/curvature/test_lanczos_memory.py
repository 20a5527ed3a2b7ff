"""The Lanczos basis: its dtype, its accuracy in float32, its size from free memory, and the
announcement of long runs (issue 12, "cost on real models")."""

from __future__ import annotations

import copy
import importlib
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, make_cnn
from lossvista.curvature import (
    ConvergenceWarning,
    HessianOperator,
    _krylov,
    _restart,
    hessian_density,
    hessian_eigs,
)
from lossvista.curvature._krylov import LanczosProcess, basis_dtype, free_memory
from lossvista.curvature._vectors import Layout, unit_probe
from lossvista.errors import InputError, LossvistaWarning

from .test_dense import reference_hessian

F = nn.functional
hvp_module = importlib.import_module("lossvista.curvature.hvp")  # the package exports hvp()
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def cnn():
    """A conv-BN-ReLU net (eval-mode BatchNorm with non-trivial statistics), its data and the
    eigenvalues of its dense float64 Hessian."""
    model = make_cnn()
    X, y = classification_data(n=40, image=True)
    model.train()
    with torch.no_grad():
        model(X * 3 + 1)
    model.eval()
    values = torch.linalg.eigvalsh(reference_hessian(model, F.cross_entropy, X, y)).numpy()
    return model, (X, y), values


@pytest.fixture
def spy(monkeypatch):
    """Every LanczosProcess the eigensolver makes, with the orthonormality of its basis measured
    just before the basis is freed."""
    made: list[LanczosProcess] = []

    class Spied(LanczosProcess):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def release(self):
            basis = self.basis[: self.count].double()
            gram = basis @ basis.T - torch.eye(self.count, dtype=torch.float64)
            self.orthonormality = float(gram.abs().max())
            super().release()

    monkeypatch.setattr(_restart, "LanczosProcess", Spied)
    return made


@pytest.fixture
def no_products(monkeypatch):
    """Fail the test if anything evaluates the Hessian (or measures the backends)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a product was computed before the refusal")

    monkeypatch.setattr(HessianOperator, "__enter__", refuse)
    monkeypatch.setattr(hvp_module, "_measure", refuse)


def bytes_of(rows: int, size: int, dtype: torch.dtype) -> int:
    return rows * size * torch.empty(0, dtype=dtype).element_size()


# -- dtype and accuracy ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_the_basis_has_the_parameters_dtype_float32_at_least(dtype, expected):
    layout = Layout({"w": torch.zeros(7, dtype=dtype)})
    assert basis_dtype(layout) == expected
    process = LanczosProcess(lambda v: 2 * v, layout, 3)
    assert process.basis.dtype == expected and process.nbytes == bytes_of(4, 7, expected)


def test_a_float32_model_keeps_a_float32_basis_and_matches_the_float64_oracle(cnn, spy):
    model, (X, y), values = cnn
    obj = lv.Objective(copy.deepcopy(model).float(), F.cross_entropy, (X.float(), y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hessian_eigs(obj, 3, which="both")
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert not [w for w in caught if "in all" in str(w.message)]  # not a long run
    (process,) = spy
    assert process.dtype == torch.float32 and process.basis.numel() == 0  # freed after the run
    size = len(values)
    assert result.settings["basis_dtype"] == "float32"
    assert result.settings["basis_bytes"] == bytes_of(
        result.settings["max_basis"] + 1, size, torch.float32
    )
    assert process.orthonormality <= math.sqrt(size) * EPS32
    assert result.all_converged and np.all(result.residuals <= 1e-5 * result.spectral_norm)
    expected = np.concatenate([values[::-1][:3], values[:3]])
    np.testing.assert_allclose(result.values, expected, rtol=0, atol=1e-4 * abs(values).max())
    np.testing.assert_allclose(result.largest, values[::-1][:3], rtol=1e-4)
    assert result.vectors[0]["0.weight"].dtype == torch.float32


def test_a_float64_model_keeps_a_float64_basis(cnn, spy):
    model, data, values = cnn
    result = hessian_eigs(lv.Objective(model, F.cross_entropy, data), 2, tol=1e-10)
    assert spy[0].dtype == torch.float64 and result.settings["basis_dtype"] == "float64"
    assert result.settings["basis_bytes"] == bytes_of(
        result.settings["max_basis"] + 1, len(values), torch.float64
    )
    assert spy[0].orthonormality <= 1e-13
    np.testing.assert_allclose(result.values, values[::-1][:2], rtol=1e-9)


def test_a_float32_basis_stays_orthonormal_where_float32_sums_would_not():
    """A long float32 basis whose vectors concentrate on a few entries: a float32 sum over the
    P entries is off by up to ~sqrt(P) eps (5e-5) times the largest partial sum; with such
    sums this basis ended 1.7e-5 from orthonormal. The inner products that decide orthogonality
    are summed in float64."""
    size = 200_000
    g = torch.Generator().manual_seed(0)
    diagonal = torch.randn(size, generator=g, dtype=torch.float64) * 0.1
    diagonal[:5] = torch.tensor([10.0, 9.5, 9.0, 8.0, 7.0], dtype=torch.float64)
    operator = diagonal.float()
    layout = Layout({"x": torch.zeros(size)})
    process = LanczosProcess(lambda v: operator * v, layout, 40)
    process.add(unit_probe(layout, 0, "test", 0))
    for _ in range(40):
        process.step()
    basis = process.basis.double()
    gram = basis @ basis.T - torch.eye(len(basis), dtype=torch.float64)
    assert float(gram.abs().max()) < 20 * EPS32  # sqrt(P) eps would be 5e-5
    theta, _, estimates = process.ritz()
    np.testing.assert_allclose(theta[::-1][:4], [10.0, 9.5, 9.0, 8.0], rtol=1e-6)
    assert np.all(estimates[::-1][:4] < 1e-6 * 10)


# -- sizing from free memory ---------------------------------------------------------------------
def test_the_cpu_reports_its_free_memory():
    free = free_memory(torch.device("cpu"))
    assert free is None or free > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_device_reports_its_free_memory_and_the_cache():
    device = torch.device("cuda")
    before = free_memory(device)
    block = torch.empty(64 * 1024**2, dtype=torch.uint8, device=device)
    assert before is not None and free_memory(device) <= before - block.numel() + 2 * 1024**2
    del block  # back in PyTorch's cache, which counts as free
    assert free_memory(device) >= before - 2 * 1024**2


def test_a_small_free_memory_shrinks_the_default_basis_and_restarts_converge(cnn, monkeypatch):
    model, data, values = cnn
    size = len(values)
    free = bytes_of(12, size, torch.float64)  # room for 12 vectors: a basis of 6 may use half
    monkeypatch.setattr(_krylov, "free_memory", lambda device: free)
    result = hessian_eigs(lv.Objective(model, F.cross_entropy, data), 2, tol=1e-9)
    assert result.settings["max_basis"] == 5  # 6 vectors: half of the 12 that are free
    assert result.settings["basis_bytes"] == bytes_of(6, size, torch.float64) <= free / 2
    assert result.all_converged and result.restarts > 0
    np.testing.assert_allclose(result.values, values[::-1][:2], rtol=1e-8)


def test_the_default_basis_shrinks_no_further_than_pairs_plus_two(cnn, monkeypatch):
    model, data, values = cnn
    free = bytes_of(6, len(values), torch.float64)  # half: a basis of 2, below the floor of 3
    monkeypatch.setattr(_krylov, "free_memory", lambda device: free)
    result = hessian_eigs(lv.Objective(model, F.cross_entropy, data), 1, tol=1e-9)
    assert result.settings["max_basis"] == 3 and result.all_converged
    np.testing.assert_allclose(result.values, values[-1:], rtol=1e-8)


def test_a_basis_that_cannot_fit_is_refused_before_any_product(cnn, monkeypatch, no_products):
    model, data, values = cnn
    size = len(values)
    obj = lv.Objective(model, F.cross_entropy, data)
    monkeypatch.setattr(_krylov, "free_memory", lambda device: bytes_of(20, size, torch.float64))
    with pytest.raises(
        InputError, match=r"max_basis=40 needs a Lanczos basis of 41 x 573 float64"
    ) as info:
        hessian_eigs(obj, 1, max_basis=40)
    assert "pass max_basis <= 19" in str(info.value) and "KiB of cpu memory is free" in str(
        info.value
    )
    # Not even the smallest basis for 1 pair (3 vectors) fits: the default is refused too.
    monkeypatch.setattr(_krylov, "free_memory", lambda device: bytes_of(2, size, torch.float64))
    with pytest.raises(InputError, match=r"for 1 pair \(its smallest basis, 3\) needs a Lanczos"):
        hessian_eigs(obj, 1)
    with pytest.raises(InputError, match="n_steps=80 needs a Lanczos basis of 81 x 573"):
        hessian_density(obj, n_steps=80)


# -- announcing long runs -------------------------------------------------------------------------
def test_a_long_run_is_announced_with_its_time_and_memory(cnn, monkeypatch):
    model, data, values = cnn
    ticks = itertools.count(step=100.0)  # every timed product "takes" 100 s
    monkeypatch.setattr(_krylov, "_clock", lambda: next(ticks))
    obj = lv.Objective(copy.deepcopy(model).float(), F.cross_entropy, (data[0].float(), data[1]))
    with pytest.warns(LossvistaWarning, match="about") as caught:
        result = hessian_eigs(obj, 1)
    (message,) = [str(w.message) for w in caught if "in all" in str(w.message)]
    basis = result.settings["max_basis"]
    assert f"about {_krylov.format_seconds((basis + 1) * 100)} in all" in message
    assert f"takes 100 s and the run takes up to {basis + 1} products" in message
    kib = result.settings["basis_bytes"] / 1024
    assert f"{kib:.2f} KiB of cpu memory ({basis + 1} x {len(values):,} float32 values)" in message
    with pytest.warns(LossvistaWarning, match=r"hessian_density: about .* 10 x 5 = 50 products"):
        density = hessian_density(obj, n_runs=10, n_steps=5)
    assert density.settings["basis_dtype"] == "float32"


def test_a_slow_first_product_alone_is_not_announced(cnn, monkeypatch):
    """The first product pays one-off costs (kernels, caches): the estimate takes the faster of
    the first two."""
    model, data, _ = cnn
    readings = iter([0.0, 100.0, 100.0, 100.001])  # start and end of the first two products
    monkeypatch.setattr(_krylov, "_clock", lambda: next(readings, 100.001))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hessian_eigs(lv.Objective(model, F.cross_entropy, data), 1)
    assert not [w for w in caught if "in all" in str(w.message)]
