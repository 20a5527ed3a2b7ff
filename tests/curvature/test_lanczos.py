"""Eigenpairs and spectral density against closed forms and the dense float64 Hessian."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, quadratic_problem
from lossvista.curvature import (
    ConvergenceWarning,
    HessianOperator,
    hessian_density,
    hessian_directions,
    hessian_eigs,
)
from lossvista.curvature._krylov import LanczosProcess
from lossvista.curvature._vectors import Layout, unit_probe
from lossvista.errors import InputError

from .test_dense import linear_regression, reference_hessian, softmax_regression, tanh_mlp

F = nn.functional


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def mlp():
    """A tanh MLP at initialisation (indefinite Hessian) and its dense eigen-decomposition."""
    model = tanh_mlp()
    X, y = classification_data(n=45)
    H = reference_hessian(model, F.cross_entropy, X, y)
    values, vectors = torch.linalg.eigh(H)
    assert values[0] < 0 < values[-1]
    return model, (X, y), H, values.numpy(), vectors


def flat(d) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def assert_same_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    sign = 1.0 if float(a @ b) >= 0 else -1.0
    torch.testing.assert_close(a, sign * b, rtol=0, atol=atol)


# -- closed forms -----------------------------------------------------------------------------------
def test_linear_regression_eigenpairs_match_two_over_n_xtx():
    model, X, y, H = linear_regression()
    values, vectors = torch.linalg.eigh(H)
    obj = lv.Objective(model, F.mse_loss, (X, y))
    result = hessian_eigs(obj, 3, which="both", tol=1e-10)
    assert result.all_converged
    np.testing.assert_allclose(result.largest, values.numpy()[::-1][:3], rtol=1e-10)
    np.testing.assert_allclose(result.smallest, values.numpy()[:3], rtol=1e-10)
    order = [-1, -2, -3, 0, 1, 2]
    for direction, column in zip(result.vectors, order):
        assert_same_up_to_sign(flat(direction), vectors[:, column], atol=1e-8)
        assert direction.meta["kind"] == "hessian_eigenvector"
    # With as many steps as parameters every run is exact: its nodes are the eigenvalues.
    density = hessian_density(obj, n_runs=2, n_steps=6)
    np.testing.assert_allclose(density.nodes[density.runs == 0], values.numpy(), rtol=1e-10)


def test_softmax_regression_top_eigenpairs_and_density_support():
    model, X, y, H = softmax_regression()
    values, vectors = torch.linalg.eigh(H)
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=16)
    result = hessian_eigs(obj, 3, tol=1e-10)
    np.testing.assert_allclose(result.values, values.numpy()[::-1][:3], rtol=1e-10)
    for i, direction in enumerate(result.vectors):
        assert_same_up_to_sign(flat(direction), vectors[:, -1 - i], atol=1e-8)
    density = hessian_density(obj, n_runs=3, n_steps=8)
    # Ritz values interlace: the quadrature nodes lie inside the spectrum.
    assert values[0] - 1e-12 <= density.nodes.min() and density.nodes.max() <= values[-1] + 1e-12
    assert density.negative_mass == 0.0  # a convex loss


# -- the dense float64 reference on an indefinite MLP --------------------------------------------
def test_mlp_top_five_and_bottom_eigenvalues_to_1e8(mlp):
    model, data, _, values, vectors = mlp
    obj = lv.Objective(model, F.cross_entropy, data)
    top = hessian_eigs(obj, 5, tol=1e-9)
    np.testing.assert_allclose(top.values, values[::-1][:5], rtol=1e-8)
    bottom = hessian_eigs(obj, 2, which="smallest", tol=1e-9)
    np.testing.assert_allclose(bottom.values, values[:2], rtol=1e-8)
    assert top.all_converged and bottom.all_converged
    assert np.all(top.residuals <= 1e-9 * top.spectral_norm)
    assert_same_up_to_sign(flat(top.vectors[0]), vectors[:, -1], atol=1e-6)
    assert top.n_hvp < 150  # a few dozen Lanczos steps plus one check per pair
    assert "EigenResult(largest" in repr(top) and top.as_dict()["values"] == list(top.values)


def test_uneven_batches_and_a_parameter_subset_give_the_full_batch_answer(mlp):
    model, (X, y), _, _, _ = mlp
    batches = [(X[:16], y[:16]), (X[16:19], y[16:19]), (X[19:], y[19:])]
    obj = lv.Objective(model, F.cross_entropy, batches, params=["0.*"])
    expected = torch.linalg.eigvalsh(
        reference_hessian(model, F.cross_entropy, X, y, obj.param_names)
    )
    result = hessian_eigs(obj, 2, which="both", tol=1e-10)
    np.testing.assert_allclose(result.largest, expected.numpy()[::-1][:2], rtol=1e-9)
    np.testing.assert_allclose(result.smallest, expected.numpy()[:2], rtol=1e-9)
    assert set(result.vectors[0]) == {"0.weight", "0.bias"}


def test_many_more_iterations_than_needed_return_no_duplicates(mlp):
    model, data, _, values, _ = mlp
    obj = lv.Objective(model, F.cross_entropy, data)
    # An unreachable tolerance keeps Lanczos going through many restarts of a small basis.
    with pytest.warns(ConvergenceWarning):
        result = hessian_eigs(obj, 4, tol=1e-30, max_iter=400, max_basis=12)
    assert result.iterations == 400 and result.restarts > 30
    np.testing.assert_allclose(result.values, values[::-1][:4], rtol=1e-10)
    gram = torch.stack([flat(v) for v in result.vectors])
    torch.testing.assert_close(gram @ gram.T, torch.eye(4, dtype=gram.dtype), rtol=0, atol=1e-10)
    assert not result.converged.any()  # never reported converged above the tolerance


def test_lanczos_process_keeps_no_ghosts_where_plain_lanczos_makes_them():
    """Plain three-term Lanczos on a spectrum with well separated top eigenvalues repeats them
    ("ghosts") after a few dozen steps; with full re-orthogonalisation every eigenvalue of
    a full Krylov basis appears exactly once."""
    n = 120
    spectrum = np.concatenate([[100.0, 99.0, 98.0], np.linspace(0.0, 1.0, n - 3)])
    matrix = torch.diag(torch.tensor(spectrum))
    layout = Layout({"x": torch.zeros(n, dtype=torch.float64)})
    process = LanczosProcess(lambda v: matrix @ v, layout, capacity=n)
    process.add(unit_probe(layout, 0, "test", 0))
    while not process.exhausted:
        process.step()
    theta, _, _ = process.ritz()
    np.testing.assert_allclose(np.sort(theta), np.sort(spectrum), atol=1e-10)
    assert np.sum(np.abs(theta - 100.0) < 1e-6) == 1


def test_unconverged_pairs_are_flagged_and_warned():
    model = tanh_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=30))
    with pytest.warns(ConvergenceWarning, match="did not reach"):
        result = hessian_eigs(obj, 2, which="both", max_iter=5)
    assert not result.all_converged
    assert np.all(result.residuals[~result.converged] > 1e-6 * result.spectral_norm)


def test_an_invariant_subspace_is_continued_with_fresh_vectors():
    # A rank-1 Hessian: the Krylov space of any start vector stops after two vectors.
    model, quad, data = quadratic_problem(n=6)
    u = torch.linspace(1.0, 2.0, 6, dtype=torch.float64)
    quad.A = torch.outer(u, u)
    obj = lv.Objective(model, quad, data)
    result = hessian_eigs(obj, 3, which="both", tol=1e-10)
    assert result.all_converged
    np.testing.assert_allclose(result.largest, [float(u @ u), 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(result.smallest, [0.0, 0.0, 0.0], atol=1e-12)


def test_float32_models_reach_the_default_tolerance(mlp):
    model, (X, y), _, values, _ = mlp
    obj = lv.Objective(model.float(), F.cross_entropy, (X.float(), y))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            result = hessian_eigs(obj, 2, tol=1e-6)
    finally:
        model.double()
    assert (
        result.values.dtype == np.float64 and result.vectors[0]["0.weight"].dtype == torch.float32
    )
    np.testing.assert_allclose(result.values, values[::-1][:2], rtol=1e-5)


def test_hessian_directions_feed_a_plane(mlp):
    model, data, _, values, _ = mlp
    obj = lv.Objective(model, F.cross_entropy, data)
    d1, d2 = hessian_directions(obj, 2)
    assert d1.meta["eigenvalue"] == pytest.approx(values[-1], rel=1e-8)
    assert d1.norm() == pytest.approx(1.0) and abs(d1.dot(d2)) < 1e-8
    surface = lv.plane(obj, (d1, d2), steps=(3, 3), span=(-0.1, 0.1), progress=False)
    # Along the top eigenvector the loss curves like lambda_max / 2 * t^2 near the centre.
    curvature = (
        surface.values["loss"][0, 1]
        + surface.values["loss"][2, 1]
        - 2 * surface.values["loss"][1, 1]
    ) / 0.01
    assert curvature == pytest.approx(values[-1], rel=0.05)


def test_argument_checks():
    model = tanh_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=10))
    for kwargs, match in [
        ({"k": 0}, "k must be"),
        ({"which": "middle"}, "which"),
        ({"tol": 0.0}, "tol"),
        ({"k": 100, "which": "both"}, "lower k"),
        ({"k": 5, "max_basis": 3}, "too small"),
    ]:
        with pytest.raises(InputError, match=match):
            hessian_eigs(obj, **kwargs)
    with pytest.raises(InputError, match="Objective"):
        hessian_eigs(model)


# -- spectral density -------------------------------------------------------------------------------
def test_density_weights_sum_to_one_and_match_the_low_moments(mlp):
    model, data, H, values, _ = mlp
    obj = lv.Objective(model, F.cross_entropy, data)
    density = hessian_density(obj, n_runs=4, n_steps=10, seed=3)
    assert density.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(density.nodes) == 40 and density.n_hvp == 40
    with HessianOperator(obj) as op:  # the same start vectors the runs used
        starts = [unit_probe(op.layout, 3, "slq", run) for run in range(4)]
    for run, v in enumerate(starts):
        mine = density.runs == run
        power = v.clone()
        for j in range(2 * 10):  # Gauss quadrature with 10 nodes is exact up to degree 19
            expected = float(v @ power)
            got = float(np.sum(density.weights[mine] * 4 * density.nodes[mine] ** j))
            assert got == pytest.approx(expected, rel=1e-8, abs=1e-12 * values.max() ** j)
            power = H @ power
    assert values[0] - 1e-10 <= density.nodes.min() and density.nodes.max() <= values[-1] + 1e-10
    # The smoothed density integrates to one.
    step = density.grid[1] - density.grid[0]
    assert float(np.sum(density.density) * step) == pytest.approx(1.0, rel=1e-3)
    assert density.moment(0) == pytest.approx(1.0)


def test_density_negative_mass_of_an_indefinite_quadratic_and_its_plot():
    # n_steps >= P: every run is an exact quadrature of v's spectral measure.
    model, quad, data = quadratic_problem(n=8, indefinite=True)
    obj = lv.Objective(model, quad, data)
    density = hessian_density(obj, n_runs=200, n_steps=8)
    eig = np.linalg.eigvalsh(quad.A.numpy())
    np.testing.assert_allclose(np.unique(np.round(density.nodes, 8)), np.round(eig, 8), atol=1e-8)
    assert density.negative_mass == pytest.approx(0.5, abs=0.06)  # 4 of 8 negative
    figure = density.plot(log=True)
    ax = figure.axes[0]
    assert ax.get_yscale() == "log"
    (line,) = ax.get_lines()[:1]
    np.testing.assert_allclose(line.get_xdata(), density.grid)
    assert any("negative curvature" in t.get_text() for t in ax.get_legend().get_texts())
    assert "SpectralDensity(support" in repr(density)
    assert density.as_dict()["n_runs"] == 200


def test_negative_mass_does_not_count_the_flat_bulk():
    """A bulk of eigenvalues a hair below zero is flat, not negative curvature."""
    eigenvalues = torch.tensor([5.0, 3.0, -2.0] + [-1e-5] * 10 + [1e-5] * 5, dtype=torch.float64)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    model, quad, data = quadratic_problem(n=n)
    quad.A = q @ torch.diag(eigenvalues) @ q.T
    density = hessian_density(lv.Objective(model, quad, data), n_runs=100, n_steps=n)
    assert density.negative_mass == pytest.approx(1 / n, abs=0.03)  # only the -2 counts
    assert np.sum(density.weights[density.nodes < 0]) > 0.4  # what a zero cut-off would say
