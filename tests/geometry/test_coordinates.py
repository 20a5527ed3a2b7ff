"""Absolute two-weight planes against the closed-form MSE of a linear regression, weight names,
their errors, resuming, the model left untouched, and the plot's axis labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, snapshot
from lossvista.errors import InputError
from lossvista.geometry.coordinates import coordinate_line, coordinate_plane, parse_weight


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def regression(inputs: int = 2, bias: bool = False, seed: int = 0):
    """A float64 linear model with MSE on fixed data: ``(model, objective, X, y)``."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(40, inputs, generator=generator, dtype=torch.float64)
    y = X @ torch.arange(1.0, inputs + 1, dtype=torch.float64) + 0.3
    y = (y + 0.1 * torch.randn(40, generator=generator, dtype=torch.float64))[:, None]
    torch.manual_seed(seed)
    model = nn.Linear(inputs, 1, bias=bias).double()
    obj = lv.Objective(model, nn.MSELoss(), (X, y), batch_size=16)
    return model, obj, X.numpy(), y.numpy()[:, 0]


def mse(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float = 0.0) -> float:
    return float(np.mean((X @ w + b - y) ** 2))


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_two_weight_plane_is_the_closed_form_mse(strategy):
    model, obj, X, y = regression()
    before = snapshot(model)
    result = coordinate_plane(
        obj, "weight[0,0]", "weight[0, 1]", span=((-1, 3), (0, 4)), steps=(9, 7),
        strategy=strategy, progress=False,
    )  # fmt: skip
    assert result.kind == "coordinate_plane" and result.shape == (9, 7)
    np.testing.assert_array_equal(result.coords[0], np.linspace(-1, 3, 9))
    np.testing.assert_array_equal(result.coords[1], np.linspace(0, 4, 7))
    expected = np.array([[mse(X, y, np.array([a, b])) for b in result.coords[1]]
                         for a in result.coords[0]])  # fmt: skip
    np.testing.assert_allclose(result.values["loss"], expected, rtol=1e-12)
    # The centre is the grid's origin: both weights 0.
    assert result.center["loss"] == pytest.approx(mse(X, y, np.zeros(2)), rel=1e-12)
    assert result.axis_labels == ("weight[0, 0]", "weight[0, 1]")
    assert_unchanged(model, before)


def test_other_weights_and_the_bias_keep_the_models_values():
    model, obj, X, y = regression(inputs=3, bias=True)
    w = model.weight.detach().numpy()[0].copy()
    b = float(model.bias.detach())
    result = coordinate_plane(
        obj, ("weight", (0, 2)), "weight[0, -3]", span=(-2.0, 2.0), steps=5, progress=False
    )
    assert result.axis_labels == ("weight[0, 2]", "weight[0, 0]")
    for i, u in enumerate(result.coords[0]):
        for j, v in enumerate(result.coords[1]):
            point = np.array([v, w[1], u])
            assert result.values["loss"][i, j] == pytest.approx(mse(X, y, point, b), rel=1e-12)
    # The model's own point: a marker at its values and its loss, evaluated exactly.
    assert result.markers == {"model": (float(w[2]), float(w[0]))}
    assert result.endpoints["model"]["loss"] == pytest.approx(mse(X, y, w, b), rel=1e-12)
    line = coordinate_line(obj, "bias", span=(-1, 1), steps=5, progress=False)
    assert line.kind == "coordinate_line" and line.axis_labels == ("bias[0]",)
    for k, c in enumerate(line.coords[0]):
        assert line.values["loss"][k] == pytest.approx(mse(X, y, w, c), rel=1e-12)


def test_default_span_is_the_value_plus_minus_max_1_and_its_size():
    model, obj, _, _ = regression()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.25, -3.0]], dtype=torch.float64))
    result = coordinate_plane(obj, "weight[0, 0]", "weight[0, 1]", steps=5, progress=False)
    np.testing.assert_allclose(result.coords[0][[0, -1]], [-0.75, 1.25])
    np.testing.assert_allclose(result.coords[1][[0, -1]], [-6.0, 0.0])
    assert result.markers == {"model": (0.25, -3.0)}
    outside = coordinate_line(obj, "weight[0, 0]", span=(1, 2), steps=3, progress=False)
    assert outside.markers == {} and outside.endpoints == {}


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.body = nn.Sequential(nn.Linear(2, 2, bias=False).double())
        self.frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.body(x).sum(dim=1, keepdim=True) + self.frozen.sum()


def nested_data() -> torch.Tensor:
    return torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def nested_objective() -> tuple[Nested, lv.Objective]:
    torch.manual_seed(0)
    model = Nested()
    X = nested_data()
    return model, lv.Objective(model, nn.MSELoss(), (X, X[:, :1]))


def test_name_forms():
    assert parse_weight("weight[0,1]") == ("weight", (0, 1))
    assert parse_weight(" 0.weight[ 0 , -1 ] ") == ("0.weight", (0, -1))
    assert parse_weight(("fc.weight", (0, 1))) == ("fc.weight", (0, 1))
    assert parse_weight(("fc.bias", 3)) == ("fc.bias", (3,))
    assert parse_weight("scale") == ("scale", None)
    assert parse_weight("scale[]") == ("scale", ())
    model, obj = nested_objective()
    before = snapshot(model)
    result = coordinate_plane(
        obj, "scale", "body.0.weight[1, 0]", span=((-1, 1), (-2, 2)), steps=3, progress=False
    )
    assert result.axis_labels == ("scale", "body.0.weight[1, 0]")
    # The 0-d parameter and the entry really take each coordinate's value.
    X = obj.model.body[0].weight.detach().numpy().copy()
    data = torch.as_tensor(np.asarray(nested_data()), dtype=torch.float64).numpy()
    for i, s in enumerate(result.coords[0]):
        for j, v in enumerate(result.coords[1]):
            W = X.copy()
            W[1, 0] = v
            out = s * (data @ W.T).sum(axis=1) + 2.0
            expected = np.mean((out - data[:, 0]) ** 2)
            assert result.values["loss"][i, j] == pytest.approx(expected, rel=1e-12)
    assert_unchanged(model, before)
    np.testing.assert_array_equal(result.settings["span"], [[-1, 1], [-2, 2]])


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ("nothing[0]", "scale", "no parameter 'nothing'"),
        ("body.0.weight[2, 0]", "scale", "out of range"),
        ("body.0.weight[0]", "scale", "needs 2 indices"),
        ("body.0.weight", "scale", "name one entry"),
        ("frozen[0]", "scale", "params="),
        ("body.0.weight[0, 1]", ("body.0.weight", (0, -1)), "same weight"),
        ("body.0.weight[a, 1]", "scale", "integers"),
        (3, "scale", "name one entry"),
    ],
)
def test_errors_name_the_input(x, y, message):
    _, obj = nested_objective()
    with pytest.raises(InputError, match=message):
        coordinate_plane(obj, x, y, steps=3, progress=False)


def test_unselected_parameter_is_refused_with_params_hint():
    model, _ = nested_objective()
    X = nested_data()
    obj = lv.Objective(model, nn.MSELoss(), (X, X[:, :1]), params="body.*")
    with pytest.raises(InputError, match=r"'scale'.*params="):
        coordinate_line(obj, "scale", steps=3, progress=False)


def test_resumes_from_a_store_without_computing(tmp_path, monkeypatch):
    _, obj, _, _ = regression()
    store = tmp_path / "plane.h5"
    args = dict(span=(-1.0, 2.0), steps=(4, 5), store=store, progress=False)
    first = coordinate_plane(obj, "weight[0, 0]", "weight[0, 1]", **args)
    from lossvista import engine

    calls = []
    original = engine.PointEvaluator.run

    def counting(self, points, *a, **k):
        calls.append(len(points))
        return original(self, points, *a, **k)

    monkeypatch.setattr(engine.PointEvaluator, "run", counting)
    second = coordinate_plane(obj, "weight[0, 0]", "weight[0, 1]", **args)
    # Only the exact points (the origin and the model's point) are evaluated again.
    assert calls == [2]
    np.testing.assert_array_equal(second.values["loss"], first.values["loss"])
    loaded = lv.load(store)
    assert loaded.kind == "coordinate_plane"
    assert loaded.axis_labels == first.axis_labels
    np.testing.assert_array_equal(loaded.values["loss"], first.values["loss"])
    assert loaded.markers == first.markers
    line = coordinate_line(obj, "weight[0, 1]", steps=4, store=tmp_path / "line.h5", progress=False)
    back = lv.load(tmp_path / "line.h5")
    assert back.kind == "coordinate_line" and back.axis_labels == ("weight[0, 1]",)
    np.testing.assert_array_equal(back.values["loss"], line.values["loss"])


def test_plot_axes_carry_the_weight_names():
    _, obj, _, _ = regression()
    result = coordinate_plane(obj, "weight[0,0]", "weight[0,1]", steps=5, progress=False)
    ax = result.plot().axes[0]
    assert ax.get_xlabel() == "weight[0, 0]" and ax.get_ylabel() == "weight[0, 1]"
    assert ax.get_xlim()[0] <= result.coords[0][0] and ax.get_xlim()[1] >= result.coords[0][-1]
    line = coordinate_line(obj, "weight[0, 1]", steps=5, progress=False)
    assert line.plot().axes[0].get_xlabel() == "weight[0, 1]"


def test_the_models_own_loss_comes_back_from_the_file(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False).double()
    X = torch.randn(30, 2, dtype=torch.float64)
    obj = lv.Objective(model, torch.nn.functional.mse_loss, (X, X.sum(1, keepdim=True)))
    plane = coordinate_plane(obj, "weight[0, 0]", "weight[0, 1]", steps=5, store=tmp_path / "c.h5")
    assert plane.endpoints["model"]["loss"] == pytest.approx(obj.loss(), rel=1e-12)
    loaded = lv.load(tmp_path / "c.h5")
    assert type(loaded) is lv.Landscape and loaded == plane
    assert loaded.endpoints["model"] == plane.endpoints["model"]
