"""Feature scaling: condition numbers against the closed forms of 2 x 2 eigenvalues and of the
correlation matrix, gradient-descent step counts against the exact linear recursion and the
kappa * ln(1/tol) bound, and surfaces against the MSE computed from the data."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lossvista.errors import InputError
from lossvista.toys import scaling_study
from lossvista.toys.scaling import synthetic_data


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def study():
    return scaling_study(seed=0)


def eigenvalues_2x2(X: np.ndarray) -> tuple[float, float]:
    """Closed form: lambda = (a + c)/2 -+ sqrt(((a - c)/2)^2 + b^2) for [[a, b], [b, c]]."""
    (a, b), (_, c) = X.T @ X
    middle, radius = (a + c) / 2, math.hypot((a - c) / 2, b)
    return middle - radius, middle + radius


def exact_iterations(X: np.ndarray, y: np.ndarray, lr: float, tol: float, limit: int) -> int:
    """First k with gap_k <= tol * gap_0, from e_k = V diag(rho^k) V' e_0 (GD is linear)."""
    n = len(X)
    G = X.T @ X / n
    w_star = np.linalg.solve(G, X.T @ y / n)
    lam, V = np.linalg.eigh(G)
    c = V.T @ (np.zeros(2) - w_star)
    rho = 1 - 2 * lr * lam
    k = np.arange(limit + 1)[:, None]
    gaps = (lam * (rho**k * c) ** 2).sum(axis=1)
    return int(np.flatnonzero(gaps <= tol * gaps[0])[0])


def test_default_data_has_one_feature_100_times_larger():
    X, _ = synthetic_data(0)
    ratio = X[:, 1].std() / X[:, 0].std()
    assert 80 < ratio < 125
    np.testing.assert_array_equal(synthetic_data(0)[0], X)  # seeded


def test_condition_numbers_match_the_closed_form_eigenvalues(study):
    for X, kappa in ((study.X_raw, study.condition_number_raw),
                     (study.X_scaled, study.condition_number_scaled)):  # fmt: skip
        low, high = eigenvalues_2x2(X)
        assert kappa == pytest.approx(high / low, rel=1e-10)
    # Standardised, X'X / N is the correlation matrix [[1, r], [r, 1]]: kappa = (1+|r|)/(1-|r|).
    r = np.corrcoef(study.X_raw.T)[0, 1]
    assert study.condition_number_scaled == pytest.approx((1 + abs(r)) / (1 - abs(r)), rel=1e-10)
    assert study.condition_number_raw > 1000 * study.condition_number_scaled


def test_scaled_data_is_standardised_and_raw_data_is_centred(study):
    np.testing.assert_allclose(study.X_scaled.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(study.X_scaled.std(axis=0), 1, rtol=1e-12)
    np.testing.assert_allclose(study.X_raw.mean(axis=0), 0, atol=1e-10)
    X, y = synthetic_data(0)
    np.testing.assert_allclose(study.X_raw + study.feature_mean, X, atol=1e-12)
    np.testing.assert_allclose(study.y, y - y.mean())


def test_the_weights_are_the_least_squares_solution(study):
    for problem in (study.raw, study.scaled):
        expected = np.linalg.lstsq(problem.X, problem.y, rcond=None)[0]
        np.testing.assert_allclose(problem.weights, expected, rtol=1e-9)
    # The same fit in two coordinates: w_scaled = w_raw * std.
    np.testing.assert_allclose(study.scaled.weights, study.raw.weights * study.feature_scale)


def test_gradient_descent_steps_equal_the_exact_recursion_and_obey_the_bound(study):
    for problem in (study.raw, study.scaled):
        n = len(problem.X)
        assert problem.lr == pytest.approx(n / (2 * eigenvalues_2x2(problem.X)[1]), rel=1e-12)
        exact = exact_iterations(problem.X, problem.y, problem.lr, study.tol, 200_000)
        assert abs(problem.iterations - exact) <= 1
        assert problem.iterations <= problem.iteration_bound
        # The bound is ceil(ln(tol) / (2 ln(1 - 1/kappa))) ~ kappa/2 ln(1/tol).
        kappa = problem.condition_number
        assert problem.iteration_bound == math.ceil(
            math.log(study.tol) / (2 * math.log1p(-1 / kappa))
        )
        assert len(problem.path) == problem.iterations + 1
    assert study.iterations_raw > 0.5 * study.raw.iteration_bound  # the slow direction dominates
    assert study.iterations_raw > 1000 * study.iterations_scaled


def test_the_last_iterate_is_within_tol(study):
    for problem in (study.raw, study.scaled):
        first = gap(problem, problem.path[0])
        assert gap(problem, problem.path[-1]) <= study.tol * first
        assert gap(problem, problem.path[-2]) > study.tol * first
        np.testing.assert_array_equal(problem.path[0], [0.0, 0.0])


def gap(problem, w: np.ndarray) -> float:
    """MSE(w) - MSE(w*), straight from the data."""

    def mse(v: np.ndarray) -> float:
        return float(np.mean((problem.X @ v - problem.y) ** 2))

    return mse(w) - mse(problem.weights)


def test_surfaces_are_the_mse_of_the_data(study):
    assert study.surface_raw is study.raw.surface and study.surface_scaled is study.scaled.surface
    for problem in (study.raw, study.scaled):
        surface = problem.surface
        assert surface.values.shape == (101, 101)
        for i, j in ((0, 0), (50, 50), (13, 77), (100, 3)):
            w = np.array([surface.w1[i], surface.w2[j]])
            mse = np.mean((problem.X @ w - problem.y) ** 2)
            assert surface.values[i, j] == pytest.approx(mse, rel=1e-10)
        np.testing.assert_allclose([surface.w1[50], surface.w2[50]], problem.weights)
        assert surface.values.min() == surface.values[50, 50]


def test_a_step_above_2_over_L_diverges():
    result = scaling_study(lr=0.01, max_iter=2000)  # stable for the scaled problem only
    assert result.iterations_raw is None and result.iterations_scaled is not None
    assert np.all(np.isfinite(result.raw.path)) and len(result.raw.path) < 2001
    assert np.all(np.isfinite(result.raw.path)) and len(result.raw.path) < 2001


def test_user_data_and_bad_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2)) * [1.0, 10.0] + [5.0, -3.0]
    y = X @ [2.0, 0.1] + 1.0
    result = scaling_study(X, y)
    assert result.seed is None
    np.testing.assert_allclose(
        result.raw.weights, [2.0, 0.1], atol=1e-9
    )  # the intercept is centred away
    with pytest.raises(InputError, match="give both X and y"):
        scaling_study(X)
    with pytest.raises(InputError, match=r"shape \(N, 2\)"):
        scaling_study(np.ones((5, 3)), np.ones(5))
    with pytest.raises(InputError, match="constant"):
        scaling_study(np.column_stack([np.ones(5), np.arange(5.0)]), np.arange(5.0))
    with pytest.raises(InputError, match="collinear"):
        scaling_study(np.column_stack([np.arange(5.0), 2 * np.arange(5.0)]), np.arange(5.0))
    with pytest.raises(InputError, match="tol must be"):
        scaling_study(tol=2.0)


def test_plot_shows_both_surfaces_with_their_paths(study):
    figure = study.plot()
    assert len(figure.axes) == 2
    for ax, problem in zip(figure.axes, (study.raw, study.scaled)):
        assert len(ax.lines) == 1
        np.testing.assert_array_equal(ax.lines[0].get_xydata(), problem.path)
        assert ax.get_xlim() == (problem.surface.w1[0], problem.surface.w1[-1])
        assert f"{problem.condition_number:.4g}" in ax.get_title()
        assert str(problem.iterations) in ax.get_title()
    _, pair = plt.subplots(1, 2)
    assert study.plot(ax=pair) is pair[0].figure


def test_numbers_serialise(study):
    numbers = json.loads(json.dumps(study.as_dict(), allow_nan=False))
    assert numbers["raw"]["iterations"] == study.iterations_raw
    assert numbers["scaled"]["condition_number"] == study.condition_number_scaled
    assert "ScalingStudy" in repr(study)


def test_surfaces_come_from_the_absolute_two_weight_plane():
    """Every point equals the MSE of the data (the surface is lv's coordinate_plane of a torch
    linear model, whose coordinates are the two weights' values)."""
    result = scaling_study(n_samples=30, grid_points=7, max_iter=100)
    for problem in (result.raw, result.scaled):
        w = np.stack(np.meshgrid(problem.surface.w1, problem.surface.w2, indexing="ij"), -1)
        expected = np.mean((w @ problem.X.T - problem.y) ** 2, axis=-1)
        np.testing.assert_allclose(problem.surface.values, expected, rtol=1e-12)
