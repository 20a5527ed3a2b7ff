"""Trace estimators: closed forms, the dense reference, negative traces and calibration."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import lossvista as lv
from conftest import classification_data, quadratic_problem
from lossvista.curvature import hessian_trace
from lossvista.errors import InputError

from .test_dense import linear_regression, reference_hessian, softmax_regression, tanh_mlp

F = nn.functional
METHODS = ("hutchinson", "hutch++")


@pytest.mark.parametrize("method", METHODS)
def test_linear_regression_trace_is_two_over_n_frobenius_norm(method):
    model, X, y, H = linear_regression()
    obj = lv.Objective(model, F.mse_loss, (X, y))
    # P = 6 parameters: Hutch++'s sketch of 6 products spans the space, so it is exact.
    result = hessian_trace(obj, method=method, n_probes=200 if method == "hutchinson" else 18)
    expected = float(H.trace())
    if method == "hutch++":
        assert result.estimate == pytest.approx(expected, rel=1e-12) and result.stderr == 0.0
        assert result.n_hvp == 12  # the remainder is empty: no probe is spent on it
    else:
        assert abs(result.estimate - expected) <= 3 * result.stderr
        assert result.n_hvp == 200


def test_softmax_regression_trace_matches_the_closed_form():
    model, X, y, H = softmax_regression()  # 15 parameters
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=16)
    expected = float(H.trace())
    exact = hessian_trace(obj, method="hutch++", n_probes=45)  # a sketch of 15 spans everything
    assert exact.estimate == pytest.approx(expected, rel=1e-12) and exact.stderr == 0.0
    estimate = hessian_trace(obj, n_probes=100)
    assert abs(estimate.estimate - expected) <= 3 * estimate.stderr


@pytest.mark.parametrize("method", METHODS)
def test_mlp_trace_within_three_stderr_of_the_dense_reference(method):
    model = tanh_mlp()
    X, y = classification_data(n=45)
    obj = lv.Objective(model, F.cross_entropy, [(X[:30], y[:30]), (X[30:], y[30:])])
    expected = float(reference_hessian(model, F.cross_entropy, X, y).trace())
    result = hessian_trace(obj, method=method, n_probes=60, seed=1)
    assert abs(result.estimate - expected) <= 3 * result.stderr
    assert 0 < result.stderr < abs(expected)
    if method == "hutchinson":
        assert len(result.samples) == 60 and result.deflated is None
        assert result.estimate == pytest.approx(result.samples.mean())
        assert result.stderr == pytest.approx(result.samples.std(ddof=1) / np.sqrt(60))
    else:
        assert len(result.samples) == 20
        assert result.estimate == pytest.approx(result.deflated + result.samples.mean())
    lo, hi = result.interval(3.0)
    assert lo <= expected <= hi
    assert result.as_dict()["method"] == method and "TraceEstimate(" in repr(result)


@pytest.mark.parametrize("method", METHODS)
def test_a_negative_trace_is_estimated_like_a_positive_one(method):
    # PyHessian's relative stopping rule ends after two probes when the running mean is
    # negative; every probe is used here.
    model, quad, data = quadratic_problem(n=12, indefinite=True)
    obj = lv.Objective(model, lambda out, t: -quad(out, t), data)
    expected = -float(quad.A.trace())
    assert expected < 0
    n_probes = 90 if method == "hutchinson" else 24  # Hutch++: a sketch of 8 of 12 dimensions
    result = hessian_trace(obj, method=method, n_probes=n_probes, seed=2)
    assert result.n_hvp == n_probes and result.stderr > 0
    assert result.estimate < 0 and abs(result.estimate - expected) <= 3 * result.stderr


@pytest.mark.parametrize(("method", "n_probes"), [("hutchinson", 30), ("hutch++", 36)])
def test_calibration_two_stderr_covers_the_trace_about_95_percent_of_seeds(method, n_probes):
    model, quad, data = quadratic_problem(n=30)
    obj = lv.Objective(model, quad, data)
    expected = float(quad.A.trace())
    seeds = 300
    covered = [
        abs(r.estimate - expected) <= 2 * r.stderr
        for r in (
            hessian_trace(obj, method=method, n_probes=n_probes, seed=s) for s in range(seeds)
        )
    ]
    # Nominal 95%; with ~10-30 samples per estimate the t-distribution gives 92-94%. The window
    # is +-4.5 binomial standard deviations around that.
    assert 0.86 <= np.mean(covered) <= 0.99


def test_seeds_reproduce_and_differ():
    model, quad, data = quadratic_problem(n=10)
    obj = lv.Objective(model, quad, data)
    a, b, c = (hessian_trace(obj, n_probes=8, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples) and a.seed == 0 and c.seed == 1


def test_argument_checks():
    model, quad, data = quadratic_problem(n=4)
    obj = lv.Objective(model, quad, data)
    with pytest.raises(InputError, match="method"):
        hessian_trace(obj, method="exact")
    with pytest.raises(InputError, match="n_probes"):
        hessian_trace(obj, n_probes=1)
    with pytest.raises(InputError, match="n_probes"):
        hessian_trace(obj, method="hutch++", n_probes=3)
