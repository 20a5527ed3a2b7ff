"""Per-layer sensitivity: a block-diagonal quadratic gives each block's own curvature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import Quadratic, assert_unchanged, make_mlp, snapshot
from lossvista.errors import InputError
from lossvista.geometry.sensitivity import LayerSensitivity, layer_sensitivity
from protocol import check_protocol


class Block(nn.Module):
    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())


class TwoBlocks(nn.Module):
    """Output: the two blocks' parameters side by side, one row per sample."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.first = Block(a)
        self.second = Block(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = torch.cat([self.first.theta, self.second.theta])
        return theta.expand(x.shape[0], -1)


def _problem():
    """L = q1(theta_1) + q2(theta_2): a block-diagonal Hessian diag(A1, A2)."""
    q1, q2 = Quadratic(4, seed=1), Quadratic(3, seed=2)
    q2.A = q2.A * 3.0  # eigenvalues 1.5 .. 12: the second block is the sharper one

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return q1(output[:, :4], target) + q2(output[:, 4:], target)

    g = torch.Generator().manual_seed(5)
    model = TwoBlocks(
        q1.theta_star + torch.randn(4, generator=g, dtype=torch.float64),
        q2.theta_star + torch.randn(3, generator=g, dtype=torch.float64),
    )
    data = (torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))
    return lv.Objective(model, loss, data), q1.A, q2.A


def test_curvature_per_block_equals_each_block():
    obj, a1, a2 = _problem()
    before = snapshot(obj.model)
    result = layer_sensitivity(obj, kind="curvature", n_probes=12, trace_method="hutch++")
    assert [r["group"] for r in result.rows] == ["first", "second"]
    assert [r["n_params"] for r in result.rows] == [4, 3]
    assert [r["params"] for r in result.rows] == [["first.theta"], ["second.theta"]]
    for row, a in zip(result.rows, (a1, a2), strict=True):
        exact = torch.linalg.eigvalsh(a)
        np.testing.assert_allclose(row["lambda_max"], float(exact.max()), rtol=1e-8)
        # Hutch++ whose sketch spans the block (n_probes >= 3 * size) is exact.
        np.testing.assert_allclose(row["trace"], float(torch.trace(a)), rtol=1e-10)
        assert row["trace_stderr"] == 0.0
    assert_unchanged(obj.model, before)
    assert obj.param_names == ("first.theta", "second.theta")  # the caller's objective too


def test_hutchinson_trace_covers_the_truth():
    obj, a1, a2 = _problem()
    result = layer_sensitivity(obj, kind="curvature", n_probes=400, seed=3)
    for row, a in zip(result.rows, (a1, a2), strict=True):
        assert row["trace_stderr"] > 0
        assert abs(row["trace"] - float(torch.trace(a))) < 4 * row["trace_stderr"]


def test_groups_mapping_and_hessian_sharpness():
    obj, a1, a2 = _problem()
    groups = {"both": ["first.*", "second.*"], "two": "second.theta"}
    result = layer_sensitivity(
        obj, kind="sharpness", groups=groups, sharpness_kind="hessian", rho=0.1
    )
    assert [r["group"] for r in result.rows] == ["both", "two"]
    assert [r["n_params"] for r in result.rows] == [7, 3]
    full = torch.block_diag(a1, a2)
    for row, a in zip(result.rows, (full, a2), strict=True):
        exact = 0.5 * 0.1**2 * float(torch.linalg.eigvalsh(a).max())
        np.testing.assert_allclose(row["sharpness"], exact, rtol=1e-6)
    average = layer_sensitivity(obj, kind="sharpness", rho=0.05, samples=8)
    assert len(average.rows) == 2 and all(np.isfinite(r["sharpness"]) for r in average.rows)


def test_slice_rows_and_plot(tmp_path):
    obj, _, _ = _problem()
    result = layer_sensitivity(obj, kind="slice", span=(-0.5, 0.5), steps=7, strategy="loop")
    assert [r["group"] for r in result.rows] == ["first", "second"]
    centre = obj.loss()
    for row in result.rows:
        piece = result.slices[row["group"]]
        np.testing.assert_allclose(piece["coords"], np.linspace(-0.5, 0.5, 7))
        np.testing.assert_allclose(piece["loss"][3], centre, rtol=1e-12)
        np.testing.assert_allclose(row["max_increase"], piece["loss"].max() - centre, rtol=1e-12)
        assert row["max_increase"] > 0  # a convex quadratic rises along any direction
    figure = result.plot()
    bars, curves = figure.axes[:2]
    heights = [p.get_height() for p in bars.patches]
    np.testing.assert_allclose(heights, [r["max_increase"] for r in result.rows])
    assert len(curves.lines) == 2
    np.testing.assert_allclose(curves.lines[1].get_ydata(), result.slices["second"]["loss"])
    check_protocol(result, tmp_path, numbers=["max_increase[first]"], name="slices.h5")


def test_default_groups_of_an_mlp_and_protocol(tmp_path):
    model = make_mlp(width=4)
    x = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    obj = lv.Objective(model, nn.functional.cross_entropy, (x, y), params=["0.*", "4.weight"])
    result = layer_sensitivity(obj, n_probes=6)
    assert [r["group"] for r in result.rows] == ["0", "4"]
    assert [r["n_params"] for r in result.rows] == [8 * 4 + 4, 4 * 3]
    figure = result.plot()
    heights = [p.get_height() for p in figure.axes[0].patches]
    np.testing.assert_allclose(heights, [r["lambda_max"] for r in result.rows])
    loaded = check_protocol(result, tmp_path, numbers=["lambda_max[0]"], name="curv.h5")
    assert isinstance(loaded, LayerSensitivity)
    pd = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["group"]) == ["0", "4"] and "lambda_max" in frame.columns


def test_to_pandas_without_pandas(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    result = LayerSensitivity("curvature", [{"group": "a", "n_params": 1, "lambda_max": 1.0}])
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()


def test_bad_arguments():
    obj, _, _ = _problem()
    with pytest.raises(InputError, match="kind must be"):
        layer_sensitivity(obj, kind="bogus")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="options"):
        layer_sensitivity(obj, kind="curvature", rho=1.0)
    with pytest.raises(InputError, match="rho"):
        layer_sensitivity(obj, kind="sharpness")
    with pytest.raises(InputError):
        layer_sensitivity(obj, groups={"x": "nothing.*"})


def test_interaction_plot_scatters_group_norms_and_entries_coloured_by_loss():
    from lossvista.plot.geometry import interaction_plot

    snapshots = [
        {"a.weight": torch.full((2, 2), float(i)), "b.bias": torch.tensor([1.0, -float(i)])}
        for i in range(4)
    ]
    losses = [3.0, 2.0, 1.5, 1.0]
    figure = interaction_plot(snapshots, losses, "a.*", ("b.bias", (1,)))
    ax = figure.axes[0]
    points = ax.collections[0]
    np.testing.assert_allclose(points.get_offsets()[:, 0], [0.0, 2.0, 4.0, 6.0])  # |a.weight|
    np.testing.assert_allclose(points.get_offsets()[:, 1], [0.0, -1.0, -2.0, -3.0])
    np.testing.assert_allclose(points.get_array(), losses)
    assert ax.get_ylabel() == "b.bias[1]"
    with pytest.raises(InputError, match="one value per snapshot"):
        interaction_plot(snapshots, losses[:2], "a.*", "b.*")
    with pytest.raises(InputError, match="match no parameter"):
        interaction_plot(snapshots, losses, "c.*", "b.*")
