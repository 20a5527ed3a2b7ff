"""Curves between minima (Garipov et al., 2018) on a ring-shaped loss with a bump in the middle."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import VectorModel, assert_unchanged, snapshot
from lossvista.errors import DirectionError, InputError
from lossvista.geometry.curves import Curve, connect
from lossvista.landscape import Interpolation
from protocol import check_protocol

matplotlib.use("Agg")

BUMP = (0.0, -0.15)  # slightly below the line, so the fit knows which way round to go


def ring_loss_np(theta: np.ndarray) -> np.ndarray:
    """``(|theta|^2 - 1)^2 + 2 exp(-|theta - c|^2 / (2 * 0.3^2))``, rows of theta."""
    r2 = (theta**2).sum(-1)
    bump = ((theta - np.array(BUMP)) ** 2).sum(-1)
    return (r2 - 1.0) ** 2 + 2.0 * np.exp(-bump / 0.18)


def ring_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r2 = (output**2).sum(-1)
    bump = ((output - torch.tensor(BUMP, dtype=output.dtype)) ** 2).sum(-1)
    return ((r2 - 1.0) ** 2 + 2.0 * torch.exp(-bump / 0.18)).mean()


def ring_problem():
    model = VectorModel(torch.tensor([-1.0, 0.0], dtype=torch.float64))
    data = (torch.zeros(16, 1, dtype=torch.float64), torch.zeros(16, dtype=torch.float64))
    obj = lv.Objective(model, ring_loss, data)
    a = VectorModel(torch.tensor([-1.0, 0.0], dtype=torch.float64))
    b = VectorModel(torch.tensor([1.0, 0.0], dtype=torch.float64))
    return obj, a, b


@pytest.fixture(scope="module")
def bezier():
    obj, a, b = ring_problem()
    return connect(obj, a, b, steps=400, lr=0.05, batch_size=8, progress=False), obj, a, b


def exact_along(curve: Curve) -> np.ndarray:
    """The oracle: the closed-form loss at the curve's points, from its control points."""
    t = curve.path.coords[0]
    p = np.stack([c["theta"].numpy() for c in curve.control_points])  # (n + 1, 2)
    n = len(p) - 1
    if curve.kind == "bezier":
        w = np.stack(
            [[math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(n + 1)] for x in t]
        )
        points = w @ p
    else:
        points = np.stack([np.interp(t, np.linspace(0, 1, n + 1), p[:, j]) for j in range(2)], 1)
    return ring_loss_np(points)


def test_bezier_goes_around_the_bump(bezier):
    curve, _, _, _ = bezier
    assert isinstance(curve.path, Interpolation) and curve.path.endpoints.keys() == {"a", "b"}
    line_barrier = curve.line.barrier
    # the straight line crosses the bump near the origin: loss 1 + 2 exp(-0.125) ~ 2.76
    assert line_barrier > 2.5
    assert curve.barrier < 0.1 * line_barrier
    assert curve.barrier == curve.path.barrier
    middle = curve.control_points[1]["theta"]
    assert float(middle[1]) > 1.0  # moved from the origin up, past the ring
    # values are exact: the closed form along the fitted curve, and the line's
    np.testing.assert_allclose(curve.path.values["loss"], exact_along(curve), rtol=1e-12)
    t = curve.line.coords[0]
    line_points = np.stack([2 * t - 1, 0 * t], 1)
    np.testing.assert_allclose(curve.line.values["loss"], ring_loss_np(line_points), rtol=1e-12)
    assert curve.fit_loss.shape == (400,) and np.all(np.isfinite(curve.fit_loss))


def test_end_points_fixed_exactly(bezier):
    curve, obj, a, b = bezier
    assert torch.equal(curve.control_points[0]["theta"], a.theta.detach())
    assert torch.equal(curve.control_points[-1]["theta"], b.theta.detach())
    assert torch.equal(curve.parameters_at(0.0)["theta"], a.theta.detach())
    assert torch.equal(curve.parameters_at(1.0)["theta"], b.theta.detach())
    assert curve.path.endpoints["a"]["loss"] == obj.evaluate(at={"theta": a.theta})["loss"]
    assert curve.path.endpoints["b"]["loss"] == obj.evaluate(at={"theta": b.theta})["loss"]


def test_model_at(bezier):
    curve, obj, _, _ = bezier
    m = curve.model_at(0.5)
    assert m is not obj.model
    expected = curve.parameters_at(0.5)["theta"]
    assert torch.equal(m.theta.detach(), expected)
    mid = len(curve.path.coords[0]) // 2
    assert curve.path.coords[0][mid] == 0.5
    np.testing.assert_allclose(
        lv.Objective(m, ring_loss, obj._data._tensors).loss(), curve.path.values["loss"][mid]
    )
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        curve.model_at(1.5)


def test_polychain_goes_around_too():
    obj, a, b = ring_problem()
    curve = connect(obj, a, b, kind="polychain", bends=2, steps=400, lr=0.05, progress=False)
    assert len(curve.control_points) == 4
    assert torch.equal(curve.control_points[0]["theta"], a.theta.detach())
    assert torch.equal(curve.control_points[-1]["theta"], b.theta.detach())
    assert curve.barrier < 0.15 * curve.line.barrier
    np.testing.assert_allclose(curve.path.values["loss"], exact_along(curve), rtol=1e-12)


def test_polychain_and_bezier_start_on_the_line():
    """With no step the curve is the line itself (equally spaced control points)."""
    obj, a, b = ring_problem()
    for kind in ("bezier", "polychain"):
        curve = connect(obj, a, b, kind=kind, bends=3, steps=1, lr=1e-12, progress=False)
        np.testing.assert_allclose(
            curve.path.values["loss"], curve.line.values["loss"], rtol=1e-9, atol=1e-12
        )


def test_deterministic_with_seed():
    obj, a, b = ring_problem()
    one = connect(obj, a, b, steps=50, lr=0.05, batch_size=4, seed=3, progress=False)
    two = connect(obj, a, b, steps=50, lr=0.05, batch_size=4, seed=3, progress=False)
    other = connect(obj, a, b, steps=50, lr=0.05, batch_size=4, seed=4, progress=False)
    assert one == two
    assert not torch.equal(one.control_points[1]["theta"], other.control_points[1]["theta"])


def test_models_unchanged():
    obj, a, b = ring_problem()
    before = [snapshot(m) for m in (obj.model, a, b)]
    curve = connect(obj, a, b, steps=20, progress=False)
    curve.model_at(0.3)
    for m, snap in zip((obj.model, a, b), before):
        assert_unchanged(m, snap)


def test_result_protocol(bezier, tmp_path):
    curve = bezier[0]
    loaded = check_protocol(curve, tmp_path, numbers=["barrier", "line barrier"], name="c.h5")
    assert torch.equal(loaded.control_points[1]["theta"], curve.control_points[1]["theta"])
    assert loaded.barrier == curve.barrier
    with pytest.raises(InputError, match="model=template"):
        loaded.model_at(0.5)
    template = VectorModel(torch.zeros(2, dtype=torch.float64))
    built = loaded.model_at(0.5, model=template)
    assert torch.equal(built.theta.detach(), curve.parameters_at(0.5)["theta"])
    assert torch.equal(template.theta.detach(), torch.zeros(2, dtype=torch.float64))


def test_plot_content(bezier):
    import matplotlib.pyplot as plt

    curve = bezier[0]
    figure = curve.plot()
    try:
        ax = figure.axes[0]
        lines = ax.get_lines()
        assert len(lines) == 2
        np.testing.assert_array_equal(lines[0].get_xdata(), curve.path.coords[0])
        np.testing.assert_array_equal(lines[0].get_ydata(), curve.path.values["loss"])
        np.testing.assert_array_equal(lines[1].get_ydata(), curve.line.values["loss"])
        assert ax.get_xlabel() == "t" and ax.get_ylabel() == "loss"
        assert "straight line" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(figure)


def test_validation():
    obj, a, b = ring_problem()
    with pytest.raises(InputError, match="kind"):
        connect(obj, a, b, kind="spline")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="bends"):
        connect(obj, a, b, bends=0)
    with pytest.raises(InputError, match="steps"):
        connect(obj, a, b, steps=0)
    with pytest.raises(InputError, match="lr"):
        connect(obj, a, b, lr=-1.0)
    with pytest.raises(InputError, match="bn"):
        connect(obj, a, b, bn="perturb")  # type: ignore[arg-type]
    with pytest.raises(DirectionError, match="identical"):
        connect(obj, a, a)
    with pytest.raises(DirectionError):
        connect(obj, a, VectorModel(torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(DirectionError):
        connect(obj, a, nn.Linear(2, 2).double())


def test_batchnorm_recompute_model_at():
    """model_at under bn='recompute' re-estimates the statistics on the objective's data."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    other = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    X = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    obj = lv.Objective(net, nn.functional.cross_entropy, (X, y), bn="recompute")
    before = [snapshot(m) for m in (net, other)]
    curve = connect(obj, net, other, steps=20, batch_size=16, progress=False)
    for m, snap in zip((net, other), before):
        assert_unchanged(m, snap)
    m = curve.model_at(0.5)
    hidden = m[0](X)
    np.testing.assert_allclose(
        m[1].running_mean.numpy(), hidden.mean(0).detach().numpy(), atol=1e-12
    )
    assert m[1].momentum == net[1].momentum
    mid = len(curve.path.coords[0]) // 2
    check = lv.Objective(m, nn.functional.cross_entropy, (X, y), bn="eval").loss()
    np.testing.assert_allclose(check, curve.path.values["loss"][mid], rtol=1e-10)


def _train_mlp(seed: int, X: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net


@pytest.mark.slow
def test_digits_curve_reduces_the_linear_barrier():
    """Two independently trained MLPs: a fitted Bezier curve has a much lower barrier."""
    from lossvista.demo import digits_data

    X, y = digits_data("train")
    a, b = _train_mlp(1, X, y), _train_mlp(2, X, y)
    obj = lv.Objective(a, nn.functional.cross_entropy, (X, y), metrics=["accuracy"])
    curve = connect(obj, a, b, steps=600, lr=0.01, batch_size=128, points=21, progress=False)
    print(f"digits: line barrier {curve.line.barrier:.4f}, curve barrier {curve.barrier:.4f}")
    assert curve.line.barrier > 0.1
    assert curve.barrier < 0.5 * curve.line.barrier


def test_the_curve_lies_in_the_plane_through_its_end_points_and_bend(bezier):
    """lv.plane_through of the end points and the bend shows the curve in its plane: on the
    ring (a 2-parameter model) that plane is the whole parameter space, so the landscape there is
    the closed form, and the curve's middle point is inside the drawn span."""
    curve, obj, a, b = bezier
    bend = curve.control_points[1]
    surface = lv.plane_through(obj, a, bend, b, steps=9, progress=False)
    assert set(surface.markers) >= {"m0", "m1", "m2"}
    d1, d2 = (np.concatenate([t.numpy().ravel() for t in d.values()]) for d in surface.directions)
    origin = a.theta.detach().numpy()
    xs, ys = np.meshgrid(*surface.coords, indexing="ij")
    points = origin + xs[..., None] * d1 + ys[..., None] * d2
    np.testing.assert_allclose(surface.values["loss"], ring_loss_np(points), rtol=1e-10)
    middle = curve.parameters_at(0.5)["theta"].numpy() - origin
    coordinates = np.array([middle @ d1, middle @ d2])  # orthonormal axes
    assert all(c[0] <= v <= c[-1] for c, v in zip(surface.coords, coordinates, strict=True))
