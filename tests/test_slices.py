"""Slices against closed forms: quadratic lines/planes/paths, plane geometry, centre, NaN, spans."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import VectorModel, make_mlp, quadratic_problem

F = nn.functional


def _vector(direction) -> torch.Tensor:
    return direction["theta"]


@pytest.mark.parametrize("strategy", ["loop", "vmap", "auto"])
def test_line_equals_closed_form(strategy):
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, quad, data)
    (d,) = lv.random_directions(model, 1, norm=None, ignore=(), seed=1)
    steps = 301 if strategy == "auto" else 41  # enough points to make "auto" tune
    line = lv.line(obj, d, span=(-2, 3), steps=steps, strategy=strategy, progress=False)
    theta = model.theta.detach()
    expected = [quad.exact(theta + a * _vector(d)) for a in line.coords[0]]
    np.testing.assert_allclose(line.values["loss"], expected, rtol=1e-12, atol=1e-12)
    assert line.center["loss"] == pytest.approx(quad.exact(theta), rel=1e-12)
    assert line.center_check["ok"] and line.center_check["relative_error"] < 1e-12
    assert line.kind == "line" and line.shape == (steps,) and line.complete
    assert line.markers == {"origin": (0.0,)}


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_plane_equals_closed_form_with_ij_indexing(strategy):
    model, quad, data = quadratic_problem(indefinite=True)
    obj = lv.Objective(model, quad, data)
    d1, d2 = lv.random_directions(model, 2, norm=None, ignore=(), seed=2)
    plane = lv.plane(
        obj, (d1, d2), span=((-1, 2), (-0.5, 0.5)), steps=(7, 5), strategy=strategy, progress=False
    )
    assert plane.values["loss"].shape == (7, 5)
    theta = model.theta.detach()
    for i, a in enumerate(plane.coords[0]):
        for j, b in enumerate(plane.coords[1]):
            exact = quad.exact(theta + a * _vector(d1) + b * _vector(d2))
            assert plane.values["loss"][i, j] == pytest.approx(exact, rel=1e-12, abs=1e-12)
    assert plane.directions == (d1, d2)
    assert plane.seed == 2


def test_interpolation_values_and_barrier_on_an_indefinite_quadratic():
    model, quad, data = quadratic_problem(indefinite=True)
    obj = lv.Objective(model, quad, data)
    theta_a = torch.randn(quad.n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    # Choose b so that the path has negative curvature: a barrier of -d^T A d / 8 at t = 1/2.
    _, eigvecs = torch.linalg.eigh(quad.A)
    theta_b = theta_a + 2.0 * eigvecs[:, 0]
    a, b = VectorModel(theta_a), VectorModel(theta_b)
    path = lv.interpolate(obj, a, b, span=(-0.5, 1.5), steps=41, progress=False)
    t = path.coords[0]
    expected = [quad.exact((1 - s) * theta_a + s * theta_b) for s in t]
    np.testing.assert_allclose(path.values["loss"], expected, rtol=1e-12)
    d = theta_b - theta_a
    assert float(d @ quad.A @ d) < 0
    assert path.barrier == pytest.approx(-float(d @ quad.A @ d) / 8, rel=1e-12)
    assert path.barrier_t == pytest.approx(0.5)
    assert path.endpoints["a"]["loss"] == pytest.approx(quad.exact(theta_a), rel=1e-12)
    assert path.endpoints["b"]["loss"] == pytest.approx(quad.exact(theta_b), rel=1e-12)
    assert path.center["loss"] == pytest.approx(quad.exact(theta_a), rel=1e-12)
    # A convex path has no barrier; state dicts work as end points.
    convex = lv.interpolate(
        obj, a.state_dict(), VectorModel(theta_a + eigvecs[:, -1]), steps=11, progress=False
    )
    assert convex.barrier == 0.0


def test_interpolation_barrier_uses_exact_endpoints_even_off_grid():
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, quad, data)
    a, b = VectorModel(quad.theta_star + 1.0), VectorModel(quad.theta_star - 1.0)
    path = lv.interpolate(obj, a, b, span=(0.05, 0.95), steps=10, progress=False)
    assert path.endpoints["a"]["loss"] == pytest.approx(quad.exact(quad.theta_star + 1.0))


def test_plane_through_three_models_geometry_and_values():
    model, quad, data = quadratic_problem(indefinite=True)
    obj = lv.Objective(model, quad, data)
    g = torch.Generator().manual_seed(3)
    thetas = [torch.randn(quad.n, dtype=torch.float64, generator=g) for _ in range(3)]
    models = [VectorModel(t) for t in thetas]
    plane = lv.plane_through(obj, *models, steps=(9, 8), progress=False)
    e1, e2 = (_vector(d).double() for d in plane.directions)
    assert float(e1 @ e2) == pytest.approx(0.0, abs=1e-12)
    assert float(e1.norm()) == pytest.approx(1.0) and float(e2.norm()) == pytest.approx(1.0)
    u, v = thetas[1] - thetas[0], thetas[2] - thetas[0]
    assert plane.markers["m1"] == pytest.approx((float(u.norm()), 0.0))
    along = float(v @ u / u.norm())
    assert plane.markers["m2"] == pytest.approx((along, math.sqrt(float(v @ v) - along**2)))
    for name, (x, y) in plane.markers.items():  # the markers are the models themselves
        theta = thetas[int(name[1])]
        assert quad.exact(thetas[0] + x * e1 + y * e2) == pytest.approx(quad.exact(theta))
    for i, x in enumerate(plane.coords[0]):
        for j, y in enumerate(plane.coords[1]):
            exact = quad.exact(thetas[0] + x * e1 + y * e2)
            assert plane.values["loss"][i, j] == pytest.approx(exact, rel=1e-11, abs=1e-11)
    xs = [p[0] for p in plane.markers.values()]
    assert plane.coords[0][0] < min(xs) and plane.coords[0][-1] > max(xs)  # margin
    with pytest.raises(lv.DirectionError, match="collinear"):
        lv.plane_through(obj, models[0], models[1], VectorModel(2 * thetas[1] - thetas[0]))


def test_centre_mismatch_is_refused_before_the_grid():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3).double()

        def forward(self, x):
            return F.dropout(self.fc(x), p=0.5, training=True)  # random even in eval mode

    torch.manual_seed(0)
    model = Noisy()
    X = torch.randn(50, 8, dtype=torch.float64)
    obj = lv.Objective(model, F.cross_entropy, (X, torch.zeros(50).long()))
    (d,) = lv.random_directions(model, 1, ignore=())
    with pytest.raises(lv.CenterMismatchError, match="not deterministic"):
        lv.line(obj, d, steps=5, progress=False)
    line = lv.line(obj, d, steps=5, progress=False, check_center=False)
    assert not line.center_check["ok"]


def test_nonfinite_losses_are_stored_as_nan_and_reported_once():
    model = VectorModel(torch.tensor([1.0], dtype=torch.float64))

    def log_loss(output, target):
        return torch.log(output).mean()  # NaN for theta < 0, -inf at 0

    obj = lv.Objective(model, log_loss, (torch.zeros(4, 1), torch.zeros(4)))
    d = lv.Direction({"theta": torch.tensor([1.0], dtype=torch.float64)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = lv.line(obj, d, span=(-3, 1), steps=9, progress=False)
    relevant = [w for w in caught if issubclass(w.category, lv.NonFiniteLossWarning)]
    assert len(relevant) == 1 and "5 of 9" in str(relevant[0].message)
    alphas = line.coords[0]
    assert np.all(np.isnan(line.values["loss"][alphas <= -1]))
    np.testing.assert_allclose(line.values["loss"][alphas > -1], np.log(1 + alphas[alphas > -1]))
    assert line.complete and line.nonfinite == 5


def test_suggest_span_finds_where_the_loss_doubles():
    model, quad, data = quadratic_problem()
    quad.offset = 1.0
    with torch.no_grad():
        model.theta.copy_(quad.theta_star)  # at the minimum: L(alpha) = 1 + alpha^2 dAd / 2
    obj = lv.Objective(model, quad, data)
    (d,) = lv.random_directions(model, 1, norm=None, ignore=(), seed=0)
    curvature = float(_vector(d) @ quad.A @ _vector(d))
    lo, hi = lv.suggest_span(obj, d, factor=2.0)
    expected = math.sqrt(2.0 / curvature)
    assert hi == pytest.approx(expected, rel=0.02) and hi >= expected
    assert lo == pytest.approx(-expected, rel=0.02) and lo <= -expected


def test_bad_slice_arguments_fail_before_work(mlp_problem):
    model, loss, data = mlp_problem
    obj = lv.Objective(model, loss, data)
    d1, d2 = lv.random_directions(model, 2)
    with pytest.raises(lv.InputError, match="min < max"):
        lv.line(obj, d1, span=(1, -1))
    with pytest.raises(lv.InputError, match="min < max"):
        lv.plane(obj, (d1, d2), span=((-1, 1), (0, 0)))
    with pytest.raises(lv.InputError, match="steps must be an integer >= 2"):
        lv.line(obj, d1, steps=1)
    with pytest.raises(lv.InputError, match="exactly 2 directions"):
        lv.plane(obj, (d1,))
    other = lv.random_directions(make_mlp(width=32), 1)[0]
    with pytest.raises(lv.DirectionError, match="wrong shape"):
        lv.line(obj, other)
    foreign = lv.Direction({"encoder.weight": torch.ones(3)})
    with pytest.raises(lv.DirectionError, match="does not have"):
        lv.line(obj, foreign)
    zero = lv.Direction({n: torch.zeros_like(t) for n, t in d1.items()})
    with pytest.raises(lv.DirectionError, match="zero"):
        lv.line(obj, zero)
    sub = lv.Objective(model, loss, data, params="4.*")
    with pytest.raises(lv.DirectionError, match="outside the objective's params"):
        lv.line(sub, d1)
    with pytest.raises(lv.InputError, match=r"lv\.Objective"):
        lv.line(model, d1)
    with pytest.raises(lv.DirectionError, match="identical"):
        lv.interpolate(obj, model, model)


def test_parameter_subset_moves_only_selected(mlp_problem):
    model, loss, (X, y) = mlp_problem
    obj = lv.Objective(model, loss, (X, y), params="4.*")
    (d,) = lv.random_directions(obj, 1, ignore=())
    line = lv.line(obj, d, span=(-1, 1), steps=3, progress=False)
    moved = make_mlp()
    with torch.no_grad():
        moved[4].weight += d["4.weight"]
        moved[4].bias += d["4.bias"]
        expected = float(F.cross_entropy(moved(X), y))
    assert line.values["loss"][-1] == pytest.approx(expected, rel=1e-12)
