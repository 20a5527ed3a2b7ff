"""Curvature over a slice: exact on a quadratic, the dense reference at every point of an MLP
plane, resumable like a plane."""

from __future__ import annotations

import copy
import importlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, make_cnn, make_mlp, quadratic_problem
from lossvista.curvature import curvature_map
from lossvista.errors import InputError, StoreMismatchError

from .test_dense import reference_hessian, tanh_mlp

F = nn.functional
# The package exports the function under the module's name, so fetch the module explicitly.
module = importlib.import_module("lossvista.curvature.curvature_map")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_a_quadratic_has_its_constant_spectrum_at_every_point():
    model, quad, data = quadratic_problem(n=6)
    obj = lv.Objective(model, quad, data)
    (d,) = lv.random_directions(obj, 1, norm=None, seed=1)
    line = lv.line(obj, d, steps=5, progress=False)
    result = curvature_map(obj, line, progress=False, tol=1e-10)
    assert result.kind == "curvature_map" and result.shape == (5,) and result.complete
    np.testing.assert_allclose(result.values["lambda_max"], 4.0, rtol=1e-9)
    np.testing.assert_allclose(result.values["lambda_min"], 0.5, rtol=1e-9)
    np.testing.assert_allclose(result.values["loss"], line.values["loss"], rtol=1e-12)
    assert result.center["loss"] == pytest.approx(obj.loss(), rel=1e-12)


def test_mlp_plane_matches_the_dense_hessian_at_every_point(tmp_path):
    model = tanh_mlp(width=6)
    X, y = classification_data(n=30)
    obj = lv.Objective(model, F.cross_entropy, (X, y), params=["0.*"])
    d1, d2 = lv.random_directions(obj, 2, seed=0)
    plane = lv.plane(obj, (d1, d2), steps=(3, 2), span=((-0.5, 0.5), (0.0, 1.0)), progress=False)
    result = curvature_map(obj, plane, k=2, tol=1e-10, progress=False)
    assert set(result.values) == {
        "loss",
        "lambda_max",
        "lambda_max_2",
        "lambda_min",
        "lambda_min_2",
    }
    for i, a in enumerate(plane.coords[0]):
        for j, b in enumerate(plane.coords[1]):
            moved = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in moved.named_parameters():
                    if name in d1:
                        p.add_(a * d1[name] + b * d2[name])
            eig = torch.linalg.eigvalsh(
                reference_hessian(moved, F.cross_entropy, X, y, obj.param_names)
            ).numpy()
            assert result.values["lambda_max"][i, j] == pytest.approx(eig[-1], rel=1e-8)
            assert result.values["lambda_max_2"][i, j] == pytest.approx(eig[-2], rel=1e-8)
            assert result.values["lambda_min"][i, j] == pytest.approx(eig[0], rel=1e-8, abs=1e-10)
            assert result.values["lambda_min_2"][i, j] == pytest.approx(eig[1], rel=1e-8, abs=1e-10)
    np.testing.assert_allclose(result.values["loss"], plane.values["loss"], rtol=1e-10)
    figure = result.plot(metric="lambda_max", kind="heatmap")
    assert figure.axes and result.axis_labels == plane.axis_labels


def test_interrupted_maps_resume_and_mismatches_are_refused(tmp_path, monkeypatch):
    model, quad, data = quadratic_problem(n=5)
    obj = lv.Objective(model, quad, data)
    d1, d2 = lv.random_directions(obj, 2, norm=None, seed=2)
    plane = lv.plane(obj, (d1, d2), steps=(3, 3), progress=False)
    path = tmp_path / "curv.h5"
    calls = {"n": 0}
    original = module.eigs_of

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "eigs_of", counting)
    with pytest.raises(KeyboardInterrupt):
        curvature_map(obj, plane, store=path, progress=False)
    assert int(lv.load(path).computed.sum()) == 4
    calls["n"] = 100  # no more interrupts
    resumed = curvature_map(obj, plane, store=path, progress=False)
    assert calls["n"] == 105 and resumed.complete  # only the 5 missing points
    fresh = curvature_map(obj, plane, progress=False)
    for name in ("loss", "lambda_max", "lambda_min"):
        np.testing.assert_allclose(resumed.values[name], fresh.values[name], rtol=1e-12)
    stored = lv.load(path)
    assert stored.kind == "curvature_map" and stored.complete
    np.testing.assert_allclose(stored.values["lambda_max"], fresh.values["lambda_max"])
    with pytest.raises(StoreMismatchError, match="curvature settings"):
        curvature_map(obj, plane, store=path, tol=1e-3, progress=False)
    curvature_map(obj, plane, store=path, tol=1e-3, resume=False, progress=False)


def test_inputs_are_checked():
    model, quad, data = quadratic_problem(n=4)
    obj = lv.Objective(model, quad, data)
    (d,) = lv.random_directions(obj, 1, norm=None)
    line = lv.line(obj, d, steps=3, progress=False)
    with torch.no_grad():
        model.theta.add_(1.0)  # the model left the slice's origin
    with pytest.raises(InputError, match="origin"):
        curvature_map(obj, line, progress=False)
    with pytest.raises(InputError, match="Landscape"):
        curvature_map(obj, {"loss": np.zeros(3)}, progress=False)
    bare = lv.Landscape(coords=(np.linspace(-1, 1, 3),), values={"loss": np.zeros(3)})
    with pytest.raises(InputError, match="directions"):
        curvature_map(obj, bare, progress=False)
    cnn = make_cnn()
    cnn_obj = lv.Objective(
        cnn, F.cross_entropy, classification_data(n=6, image=True), bn="recompute"
    )
    (dc,) = lv.random_directions(cnn_obj, 1)
    cnn_line = lv.Landscape(
        coords=(np.linspace(-1, 1, 2),), values={"loss": np.zeros(2)}, directions=(dc,)
    )
    with pytest.raises(InputError, match="recompute"):
        curvature_map(cnn_obj, cnn_line, progress=False)


class _AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode: the loss at a point is not reproducible."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 3).double()

    def forward(self, x):
        return self.layer(F.dropout(x, 0.5, training=True))


def test_a_centre_that_does_not_reproduce_is_refused_before_any_point():
    torch.manual_seed(0)
    obj = lv.Objective(_AlwaysDropout(), F.cross_entropy, classification_data(n=40))
    (d,) = lv.random_directions(obj, 1, norm=None)
    line = lv.Landscape(
        coords=(np.linspace(-1, 1, 3),), values={"loss": np.zeros(3)}, directions=(d,)
    )
    solved = []
    original = module._CurvatureSolver.__call__

    def spy(self, *args, **kwargs):
        solved.append(1)
        return original(self, *args, **kwargs)

    module._CurvatureSolver.__call__ = spy
    try:
        with pytest.raises(lv.CenterMismatchError, match="not deterministic"):
            curvature_map(obj, line, progress=False)
    finally:
        module._CurvatureSolver.__call__ = original
    assert not solved
    # As with the slices, the check can be waived knowingly; the metrics come along.
    result = curvature_map(obj, line, progress=False, check_center=False)
    assert result.center_check["ok"] is False
    assert {"loss", "lambda_max", "lambda_min"} <= set(result.values)


def test_the_objective_metrics_come_along():
    obj = lv.Objective(make_mlp(), F.cross_entropy, classification_data(n=20), metrics=["accuracy"])
    (d,) = lv.random_directions(obj, 1, seed=3)
    line = lv.line(obj, d, steps=3, progress=False)
    result = curvature_map(obj, line, progress=False)
    np.testing.assert_allclose(result.values["accuracy"], line.values["accuracy"])
    np.testing.assert_allclose(result.values["loss"], line.values["loss"], rtol=1e-12)


def test_the_old_backend_keyword_still_works():
    model, quad, data = quadratic_problem(n=4)
    obj = lv.Objective(model, quad, data)
    (d,) = lv.random_directions(obj, 1, norm=None)
    line = lv.line(obj, d, steps=3, progress=False)
    new = curvature_map(obj, line, progress=False, hvp_backend="double_backward")
    with pytest.warns(DeprecationWarning, match="hvp_backend"):
        old = curvature_map(obj, line, progress=False, hvp_method="double_backward")
    np.testing.assert_array_equal(old.values["lambda_max"], new.values["lambda_max"])
    assert new.settings["curvature"]["hvp_backend"] == "double_backward"
