"""Critical-point classification on quadratics with known spectra, and on the tanh MLP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, quadratic_problem
from lossvista.curvature import CriticalPoint, critical_point, hessian_eigs
from lossvista.errors import InputError

from .test_dense import reference_hessian, tanh_mlp

F = nn.functional


def at_stationary_point(n=8, **kwargs):
    model, quad, data = quadratic_problem(n=n, **kwargs)
    with torch.no_grad():
        model.theta.copy_(quad.theta_star)
    return model, quad, data


def test_a_convex_quadratic_at_its_minimum():
    model, quad, data = at_stationary_point()
    result = critical_point(lv.Objective(model, quad, data))
    assert isinstance(result, CriticalPoint) and result.kind == "minimum"
    assert result.lambda_max == pytest.approx(4.0, rel=1e-9)
    assert result.lambda_min == pytest.approx(0.5, rel=1e-9)
    assert result.condition_number == pytest.approx(8.0, rel=1e-9)
    assert result.grad_norm < 1e-12 and result.note is None and result.converged
    assert result.threshold == pytest.approx(4e-3, rel=1e-6)  # tol * max|lambda|


def test_maximum_saddle_and_degenerate():
    model, quad, data = at_stationary_point()
    maximum = critical_point(lv.Objective(model, lambda o, t: -quad(o, t), data))
    assert maximum.kind == "maximum" and maximum.condition_number is None
    assert maximum.lambda_max == pytest.approx(-0.5, rel=1e-9)

    model, quad, data = at_stationary_point(indefinite=True)
    saddle = critical_point(lv.Objective(model, quad, data), density=True)
    assert saddle.kind == "saddle"
    assert saddle.lambda_min == pytest.approx(-2.0, rel=1e-9)  # -linspace(0.5, 4, 8)[3]
    assert saddle.negative_mass == pytest.approx(0.5, abs=0.15)

    model, quad, data = at_stationary_point()
    eig, q = torch.linalg.eigh(quad.A)
    eig[0] = 1e-6  # flat within tol * lambda_max
    quad.A = q @ torch.diag(eig) @ q.T
    degenerate = critical_point(lv.Objective(model, quad, data))
    assert degenerate.kind == "degenerate" and degenerate.condition_number is None
    sharper = critical_point(lv.Objective(model, quad, data), tol=1e-8)
    assert sharper.kind == "minimum"
    assert sharper.condition_number == pytest.approx(4.0 / 1e-6, rel=1e-6)


def test_a_point_with_a_large_gradient_gets_a_note():
    model, quad, data = quadratic_problem(n=8)  # theta away from the minimum
    result = critical_point(lv.Objective(model, quad, data))
    expected = float(torch.linalg.norm(quad.A @ (model.theta.detach() - quad.theta_star)))
    assert result.grad_norm == pytest.approx(expected, rel=1e-10)
    assert result.kind == "minimum" and "not a critical point" in result.note
    assert result.loss == pytest.approx(quad.exact(model.theta.detach()), rel=1e-12)


def test_reuses_eigen_results_and_reports_json():
    model = tanh_mlp()
    X, y = classification_data(n=45)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    eig = torch.linalg.eigvalsh(reference_hessian(model, F.cross_entropy, X, y)).numpy()
    top = hessian_eigs(obj, 3)
    result = critical_point(obj, eigs=top)
    assert result.kind == "saddle"
    assert result.lambda_max == pytest.approx(eig[-1], rel=1e-8)
    assert result.lambda_min == pytest.approx(eig[0], rel=1e-8)
    assert result.eigs.which == "both" and result.eigs.n_hvp > top.n_hvp
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["kind"] == "saddle" and summary["eigs"]["values"][0] == pytest.approx(eig[-1])
    assert "CriticalPoint(saddle" in repr(result)


def test_argument_checks():
    model, quad, data = quadratic_problem(n=4)
    obj = lv.Objective(model, quad, data)
    with pytest.raises(InputError, match="tol"):
        critical_point(obj, tol=-1)
    with pytest.raises(InputError, match="eigs"):
        critical_point(obj, eigs=np.zeros(2))
    with pytest.raises(InputError, match="density"):
        critical_point(obj, density="yes")
