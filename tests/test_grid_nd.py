"""N-D grids: closed form, equality with line/plane, store round trip and resume, sections,
small-multiple plots and the estimates made before the run."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch

import lossvista as lv
from conftest import quadratic_problem
from lossvista import _estimate
from lossvista.ndgrid import grid

SPANS = ((-1.0, 1.0), (-2.0, 1.5), (-0.5, 0.5))
STEPS = (5, 4, 3)


class CountingLoss:
    """Wraps a loss and counts forward evaluations (one per point and batch)."""

    def __init__(self, loss):
        self.loss, self.calls = loss, 0
        self.__name__ = getattr(loss, "__name__", type(loss).__name__)

    def __call__(self, output, target):
        self.calls += 1
        return self.loss(output, target)


def _problem(loss=None):
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, loss or quad, data)
    dirs = lv.random_directions(model, 3, norm=None, ignore=(), seed=0)
    return model, quad, obj, dirs


def _grid3(obj, dirs, **kwargs):
    options = dict(span=SPANS, steps=STEPS, progress=False, strategy="loop")
    options.update(kwargs)
    return grid(obj, dirs, **options)


def test_three_direction_grid_of_a_quadratic_equals_the_closed_form():
    model, quad, obj, dirs = _problem()
    surf = _grid3(obj, dirs)
    assert surf.kind == "grid" and surf.shape == STEPS and surf.dims == ("x", "y", "z")
    theta = model.theta.detach()
    d = [dirs[i]["theta"] for i in range(3)]
    expected = np.empty(STEPS)
    for i, a in enumerate(surf.coords[0]):
        for j, b in enumerate(surf.coords[1]):
            for k, c in enumerate(surf.coords[2]):
                expected[i, j, k] = quad.exact(theta + a * d[0] + b * d[1] + c * d[2])
    np.testing.assert_allclose(surf.values["loss"], expected, rtol=1e-12)
    assert surf.complete and surf.markers == {"origin": (0.0, 0.0, 0.0)}
    assert surf.center_check["ok"]
    assert surf.settings["span"] == [list(s) for s in SPANS]
    assert surf.settings["steps"] == list(STEPS)


def test_origin_marker_only_when_the_zero_point_is_inside_the_span():
    _, _, obj, dirs = _problem()
    surf = grid(obj, dirs, span=(0.5, 1.0), steps=2, progress=False, strategy="loop")
    assert surf.shape == (2, 2, 2) and surf.markers == {}
    assert surf.center_check["ok"]  # the all-zero point is still checked


def test_one_and_two_directions_equal_line_and_plane_exactly():
    _, _, obj, dirs = _problem()
    options = dict(progress=False, strategy="loop")
    one = grid(obj, dirs[:1], span=(-1, 2), steps=7, **options)
    ref_line = lv.line(obj, dirs[0], span=(-1, 2), steps=7, **options)
    np.testing.assert_array_equal(one.values["loss"], ref_line.values["loss"])
    np.testing.assert_array_equal(one.coords[0], ref_line.coords[0])
    assert one.axis_labels == ref_line.axis_labels and one.center == ref_line.center
    two = grid(obj, dirs[:2], span=SPANS[:2], steps=STEPS[:2], **options)
    ref_plane = lv.plane(obj, dirs[:2], span=SPANS[:2], steps=STEPS[:2], **options)
    np.testing.assert_array_equal(two.values["loss"], ref_plane.values["loss"])
    assert two.axis_labels == ref_plane.axis_labels and two.markers == ref_plane.markers
    for key in ("span", "steps", "direction_fingerprints", "origin_fingerprint", "identity"):
        assert two.settings[key] == ref_plane.settings[key]


def test_store_round_trip_of_a_three_d_grid(tmp_path):
    _, _, obj, dirs = _problem()
    surf = _grid3(obj, dirs, store=tmp_path / "g.h5")
    loaded = lv.load(tmp_path / "g.h5")
    assert loaded == surf and loaded.kind == "grid" and loaded.shape == STEPS
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["loss"].shape == STEPS
        assert [f[n].shape for n in ("x", "y", "z")] == [(n,) for n in STEPS]
        assert [f["loss"].dims[i].keys() for i in range(3)] == [["x"], ["y"], ["z"]]
    # .save of the in-memory result gives the same object back
    surf.save(tmp_path / "copy.h5")
    assert lv.load(tmp_path / "copy.h5") == surf


def test_four_d_files_name_their_axes_x_y_z_d3(tmp_path):
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, quad, data)
    dirs = lv.random_directions(model, 4, norm=None, ignore=(), seed=1)
    surf = grid(obj, dirs, span=(-1, 1), steps=(3, 2, 2, 3), store=tmp_path / "g4.h5",
                progress=False, strategy="loop")  # fmt: skip
    assert surf.dims == ("x", "y", "z", "d3")
    loaded = lv.load(tmp_path / "g4.h5")
    assert loaded == surf and loaded.shape == (3, 2, 2, 3)
    xr = pytest.importorskip("xarray")
    assert isinstance(surf.to_xarray(), xr.Dataset)
    assert surf.to_xarray()["loss"].dims == ("x", "y", "z", "d3")


def test_resume_of_a_three_d_grid_computes_only_missing_points(tmp_path):
    store = tmp_path / "g.h5"
    _, _, obj, dirs = _problem(CountingLoss(quadratic_problem()[1]))
    full = _grid3(obj, dirs, store=store)
    forgotten = [0, 7, 8, 9, 31, 59]
    with h5py.File(store, "r+") as f:  # as if the run had been stopped
        flat = f["computed"][()].reshape(-1)
        flat[forgotten] = 0
        f["computed"][...] = flat.reshape(STEPS)
        loss = f["loss"][()].reshape(-1)
        loss[forgotten] = np.nan
        f["loss"][...] = loss.reshape(STEPS)
    _, quad, _, _ = _problem()
    model = quadratic_problem()[0]
    counter = CountingLoss(quad)
    resumed = _grid3(lv.Objective(model, counter, quadratic_problem()[2]), dirs, store=store)
    again = CountingLoss(quad)
    _grid3(lv.Objective(model, again, quadratic_problem()[2]), dirs, store=store)
    assert counter.calls - again.calls == len(forgotten)
    np.testing.assert_allclose(resumed.values["loss"], full.values["loss"], rtol=1e-13)
    assert resumed.complete
    with pytest.raises(lv.StoreMismatchError, match="steps"):
        _grid3(obj, dirs, store=store, steps=(5, 4, 4))


def test_section_of_a_three_d_grid_equals_the_plane():
    _, _, obj, dirs = _problem()
    surf = _grid3(obj, dirs)
    options = dict(span=SPANS[:2], steps=STEPS[:2], progress=False, strategy="loop")
    ref_plane = lv.plane(obj, dirs[:2], **options)
    for section in (surf.section(z=0.0), surf.section({2: 0.1}), surf.section(indices={"z": 1})):
        assert section.kind == "section" and section.shape == STEPS[:2]
        np.testing.assert_array_equal(section.values["loss"], ref_plane.values["loss"])
        assert section.markers == {"origin": (0.0, 0.0)}
        assert len(section.directions) == 2
        assert section.settings["section"]["fixed"] == [
            {"axis": 2, "dim": "z", "index": 1, "value": 0.0}
        ]
        assert section.settings["steps"] == list(STEPS[:2])
    # away from zero: the plane through the shifted origin, and no origin marker
    side = surf.section(z=0.5)
    np.testing.assert_array_equal(side.coords[0], ref_plane.coords[0])
    np.testing.assert_array_equal(side.values["loss"], surf.values["loss"][:, :, 2])
    assert side.markers == {}
    line = surf.section(y=-2.0, z=0.5)
    np.testing.assert_array_equal(line.values["loss"], surf.values["loss"][:, 0, 2])
    assert line.ndim == 1 and line.axis_labels == (surf.axis_labels[0],)


def test_section_refuses_unknown_axes_and_values_outside_the_span():
    _, _, obj, dirs = _problem()
    surf = _grid3(obj, dirs)
    with pytest.raises(lv.InputError, match="unknown axis 'w'"):
        surf.section(w=0.0)
    with pytest.raises(lv.InputError, match="outside its span"):
        surf.section(z=3.0)
    with pytest.raises(lv.InputError, match="fixed twice"):
        surf.section({2: 0.0}, z=0.0)
    with pytest.raises(lv.InputError, match="every axis"):
        surf.section(x=0.0, y=0.0, z=0.0)
    with pytest.raises(lv.InputError, match="out of range"):
        surf.section(indices={2: 3})
    with pytest.raises(lv.InputError, match="at least one axis"):
        surf.section()


def test_three_d_plot_draws_one_panel_per_value_with_its_data_range():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, obj, dirs = _problem()
    surf = _grid3(obj, dirs)
    fig = surf.plot(kind="heatmap")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == STEPS[2]
    loss = surf.values["loss"]
    low, high = float(loss.min()), float(loss.max())
    for k, ax in enumerate(panels):
        drawn = np.asarray(ax.collections[0].get_array())
        np.testing.assert_allclose(np.sort(drawn.ravel()), np.sort(loss[:, :, k].ravel()))
        assert ax.collections[0].get_clim() == (low, high)  # one colour scale
        assert ax.get_title() == f"{surf.axis_labels[2]} = {surf.coords[2][k]:.4g}"
    plt.close(fig)
    fig = surf.plot(panels=[0, 2])  # contours, shared levels
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2
    levels = [tuple(ax.collections[0].levels) for ax in panels]
    assert levels[0] == levels[1]
    assert levels[0][0] == pytest.approx(low) and levels[0][-1] == pytest.approx(high)
    plt.close(fig)
    with pytest.raises(lv.InputError, match="out of range"):
        surf.plot(panels=[5])
    with pytest.raises(lv.InputError, match="does not fit"):
        surf.plot(kind="surface3d")


def test_four_d_plot_is_refused_with_a_clear_error():
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, quad, data)
    dirs = lv.random_directions(model, 4, norm=None, ignore=(), seed=1)
    surf = grid(obj, dirs, span=(-1, 1), steps=2, progress=False, strategy="loop")
    with pytest.raises(lv.InputError, match=r"4-D .* take a section first.*section\(d3=0.0\)"):
        surf.plot()
    assert surf.section(d3=1.0).ndim == 3


def test_huge_grids_are_refused_before_any_work(tmp_path, monkeypatch):
    loss = CountingLoss(quadratic_problem()[1])
    _, _, obj, dirs = _problem(loss)
    monkeypatch.setattr(_estimate, "available_memory", lambda: 10**8)
    with pytest.raises(lv.InputError, match=r"201 x 201 x 201 = 8,120,601 points .* needs about"):
        grid(obj, dirs, span=(-1, 1), steps=201, store=tmp_path / "g.h5", progress=False)
    monkeypatch.setattr(_estimate, "available_memory", lambda: 10**12)
    monkeypatch.setattr(_estimate.shutil, "disk_usage", lambda _: type("U", (), {"free": 10**6}))
    with (
        pytest.raises(lv.InputError, match=r"would take about .* 1 MB free"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", lv.LossvistaWarning)
        grid(obj, dirs, span=(-1, 1), steps=201, store=tmp_path / "g.h5", progress=False)
    assert loss.calls == 0 and not (tmp_path / "g.h5").exists()


def test_large_grids_are_announced_with_their_numbers_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(_estimate, "LARGE_GRID_POINTS", 20)
    _, _, obj, dirs = _problem()
    with pytest.warns(
        lv.LongRunWarning, match=r"large grid: .*5 x 4 x 3 = 60 points.*memory.*file"
    ):
        surf = _grid3(obj, dirs, store=tmp_path / "g.h5")
    assert surf.complete
    monkeypatch.setattr(_estimate, "LARGE_GRID_POINTS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lv.LongRunWarning)
        _grid3(obj, dirs)


def test_bad_spans_steps_and_directions_are_refused():
    _, _, obj, dirs = _problem()
    with pytest.raises(lv.InputError, match="3 of them"):
        grid(obj, dirs, span=((-1, 1), (-1, 1)), steps=3)
    with pytest.raises(lv.InputError, match="3 of them"):
        grid(obj, dirs, span=(-1, 1), steps=(3, 3))
    with pytest.raises(lv.InputError, match="at least one direction"):
        grid(obj, [], span=(-1, 1), steps=3)
    with pytest.raises(lv.DirectionError, match="parallel"):
        grid(obj, [dirs[0], dirs[1], {"theta": 2.0 * dirs[0]["theta"]}], span=(-1, 1), steps=3)
    with pytest.raises(lv.InputError, match="sequence of directions"):
        grid(obj, {"theta": torch.ones(6, dtype=torch.float64)}, span=(-1, 1), steps=3)
