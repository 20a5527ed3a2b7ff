"""Figures of landscapes: check what is drawn (data, orientation, masks, scales), not just that
drawing succeeds."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.colors import LogNorm

from lossvista.errors import InputError, LossvistaWarning
from lossvista.landscape import Interpolation, Landscape
from lossvista.plot import plot_landscape

# A non-square grid with different ranges per axis, so a transposition cannot go unnoticed.
X = np.linspace(0.0, 6.0, 7)
Y = np.linspace(10.0, 13.0, 4)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def plane(values: np.ndarray | None = None, **kwargs) -> Landscape:
    """A plane over ``X`` x ``Y``; by default ``loss = 10 x + y`` (distinct everywhere)."""
    if values is None:
        values = 10.0 * X[:, None] + Y[None, :]
    kwargs.setdefault("markers", {"origin": (0.0, 10.0), "b": (6.0, 13.0)})
    return Landscape(
        coords=(X, Y), values={"loss": values}, kind="plane", axis_labels=("d1", "d2"), **kwargs
    )


def line(**extra: np.ndarray) -> Landscape:
    x = np.linspace(-1.0, 1.0, 5)
    values = {"loss": x**2 + 0.5, **extra}
    return Landscape(
        coords=(x,), values=values, kind="line", axis_labels=("d1",), markers={"origin": (0.0,)}
    )


def mesh_of(ax) -> QuadMesh:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def mesh_centres(mesh: QuadMesh) -> np.ndarray:
    corners = mesh.get_coordinates()  # (A + 1, B + 1, 2)
    return (corners[:-1, :-1] + corners[1:, :-1] + corners[:-1, 1:] + corners[1:, 1:]) / 4


# -- 1-D ----------------------------------------------------------------------------------------
def test_line_draws_values_with_other_metrics_on_twin_axis():
    landscape = line(accuracy=np.linspace(0.1, 0.9, 5))
    fig = plot_landscape(landscape)
    ax, twin = fig.axes
    (loss,) = ax.get_lines()[:1]
    np.testing.assert_array_equal(loss.get_xdata(), landscape.coords[0])
    np.testing.assert_array_equal(loss.get_ydata(), landscape.values["loss"])
    (accuracy,) = twin.get_lines()
    np.testing.assert_array_equal(accuracy.get_ydata(), landscape.values["accuracy"])
    assert loss.get_color() != accuracy.get_color()
    assert (ax.get_xlabel(), ax.get_ylabel(), twin.get_ylabel()) == ("d1", "loss", "accuracy")
    assert [t.get_text() for t in twin.get_legend().get_texts()] == ["loss", "accuracy"]
    assert ax.get_title() == "loss — line"


def test_line_stderr_band_and_markers():
    landscape = line(loss_stderr=np.full(5, 0.1))
    fig = plot_landscape(landscape)
    assert len(fig.axes) == 1  # a stderr array is a band, not a metric of its own
    (ax,) = fig.axes
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    band_y = band.get_paths()[0].vertices[:, 1]
    loss = landscape.values["loss"]
    assert band_y.min() == pytest.approx(loss.min() - 0.1)
    assert band_y.max() == pytest.approx(loss.max() + 0.1)
    vertical = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert [ln.get_xdata()[0] for ln in vertical] == [0.0]
    assert " origin" in [t.get_text() for t in ax.texts]


def test_interpolation_draws_chord_and_barrier():
    t = np.linspace(-0.25, 1.25, 7)
    loss = np.array([1.2, 1.0, 1.1, 1.3, 0.9, 0.5, 0.6])
    interpolation = Interpolation(
        coords=(t,),
        values={"loss": loss, "accuracy": np.linspace(0.5, 0.9, 7)},
        kind="interpolation",
        axis_labels=("t",),
        markers={"a": (0.0,), "b": (1.0,)},
        endpoints={"a": {"loss": 1.0, "accuracy": 0.5}, "b": {"loss": 0.5, "accuracy": 0.9}},
    )
    fig = plot_landscape(interpolation)
    ax = fig.axes[0]
    (chord,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_array_equal(chord.get_xdata(), [0.0, 1.0])
    np.testing.assert_array_equal(chord.get_ydata(), [1.0, 0.5])
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert f"chord, barrier {interpolation.barrier:.3g}" in legend
    assert interpolation.barrier == pytest.approx(1.3 - 0.75)
    assert {" a", " b"} <= {t.get_text() for t in ax.texts}


def test_line_log_scale_masks_nonpositive_values():
    landscape = line()
    landscape.values["loss"][2] = 0.0
    with pytest.warns(LossvistaWarning, match="1 non-positive"):
        fig = plot_landscape(landscape, log=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert np.ma.count_masked(ax.get_lines()[0].get_ydata()) == 1


def test_line_vmax_clips():
    landscape = line()
    fig = plot_landscape(landscape, vmax=1.0)
    drawn = fig.axes[0].get_lines()[0].get_ydata()
    assert drawn.max() == 1.0
    np.testing.assert_array_equal(drawn, np.minimum(landscape.values["loss"], 1.0))


# -- 2-D ----------------------------------------------------------------------------------------
def test_contour_levels_span_the_finite_range():
    landscape = plane()
    landscape.values["loss"][3, 2] = np.nan
    fig = plot_landscape(landscape)
    (ax,) = fig.axes  # no colour bar for labelled contours
    (contours,) = ax.collections
    finite = landscape.values["loss"][np.isfinite(landscape.values["loss"])]
    assert len(contours.levels) == 20
    assert contours.levels.min() >= finite.min() and contours.levels.max() <= finite.max()
    assert ax.texts  # level labels
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("d1", "d2")


def test_contour_orientation_of_a_function_of_x_only():
    landscape = plane(np.repeat(X[:, None], len(Y), axis=1))
    fig = plot_landscape(landscape, levels=[0.5, 2.5, 4.5], markers=False)
    (contours,) = fig.axes[0].collections
    for level, path in zip(contours.levels, contours.get_paths(), strict=True):
        # Z = x: every contour is the vertical line x = level across the whole y range.
        np.testing.assert_allclose(path.vertices[:, 0], level)
        assert path.vertices[:, 1].min() == Y.min() and path.vertices[:, 1].max() == Y.max()


def test_heatmap_cells_centre_on_their_coordinates():
    fig = plot_landscape(plane(), kind="heatmap")
    ax, colorbar = fig.axes
    mesh = mesh_of(ax)
    centres = mesh_centres(mesh)
    values = np.asarray(mesh.get_array()).reshape(centres.shape[:2])
    # loss = 10 x + y, read back at every cell centre
    np.testing.assert_allclose(values, 10.0 * centres[..., 0] + centres[..., 1])
    assert sorted(np.unique(centres[..., 0])) == pytest.approx(X)
    assert sorted(np.unique(centres[..., 1])) == pytest.approx(Y)
    assert colorbar.get_ylabel() == "loss"


def test_nan_cells_are_masked_not_zero():
    values = 10.0 * X[:, None] + Y[None, :]
    values[0, 0] = values[4, 1] = values[6, 3] = np.nan
    fig = plot_landscape(plane(values), kind="heatmap")
    drawn = mesh_of(fig.axes[0]).get_array()
    assert np.ma.count_masked(drawn) == 3
    assert drawn.min() > 0  # masked, not zeros
    with pytest.raises(InputError, match="nothing to plot"):
        plot_landscape(plane(np.full((len(X), len(Y)), np.nan)))


def test_heatmap_vmax_clips_a_spike():
    values = 10.0 * X[:, None] + Y[None, :]
    values[3, 1] = 1e9
    fig = plot_landscape(plane(values), kind="heatmap", vmax=50.0)
    mesh = mesh_of(fig.axes[0])
    assert mesh.get_array().max() == 50.0
    assert mesh.norm.vmax == 50.0


def test_contour_levels_are_capped_at_vmax_and_vmin():
    fig = plot_landscape(plane(), kind="filled", vmin=20.0, vmax=40.0, levels=5)
    (contours,) = fig.axes[0].collections
    np.testing.assert_allclose(contours.levels, np.linspace(20.0, 40.0, 5))
    assert len(fig.axes) == 2  # filled contours get a colour bar


def test_log_scales():
    fig = plot_landscape(plane(), kind="contour", log=True, levels=6)
    levels = fig.axes[0].collections[0].levels
    np.testing.assert_allclose(levels[1:] / levels[:-1], (levels[-1] / levels[0]) ** (1 / 5))
    values = 10.0 * X[:, None] + Y[None, :]
    values[2, 2] = -1.0
    with pytest.warns(LossvistaWarning, match="non-positive"):
        fig = plot_landscape(plane(values), kind="heatmap", log=True)
    mesh = mesh_of(fig.axes[0])
    assert isinstance(mesh.norm, LogNorm)
    assert np.ma.count_masked(mesh.get_array()) == 1


def test_draws_into_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_landscape(plane(), ax=right, kind="heatmap") is fig
    assert isinstance(right.collections[0], QuadMesh) and not left.collections


def test_surface3d_needs_a_3d_axes():
    fig = plot_landscape(plane(), kind="surface3d", log=True)
    ax = fig.axes[0]
    assert ax.name == "3d"
    assert ax.get_zlabel() == "log10 loss"
    assert ax.collections  # the surface
    _, flat = plt.subplots()
    with pytest.raises(InputError, match='projection="3d"'):
        plot_landscape(plane(), ax=flat, kind="surface3d")
    given = plt.figure().add_subplot(projection="3d")
    assert plot_landscape(plane(), ax=given, kind="surface3d") is given.figure


def test_markers_and_path_overlay():
    trajectory = SimpleNamespace(coordinates=np.array([[6.0, 13.0], [3.0, 11.0], [0.5, 10.5]]))
    fig = plot_landscape(plane(), kind="heatmap", path=trajectory)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["origin"].get_marker() == "*"
    assert (lines["origin"].get_xdata()[0], lines["origin"].get_ydata()[0]) == (0.0, 10.0)
    np.testing.assert_array_equal(lines["path"].get_xydata(), trajectory.coordinates)
    assert {" origin", " b", " start", " end"} <= {t.get_text() for t in ax.texts}
    with pytest.raises(InputError, match=r"\(P, 2\)"):
        plot_landscape(plane(), path=np.zeros((4, 3)))


def test_bad_kind_metric_or_dimension_raise_input_error():
    with pytest.raises(InputError, match="'line'"):
        plot_landscape(line(), kind="contour")
    with pytest.raises(InputError, match="'heatmap'"):
        plot_landscape(plane(), kind="bogus")
    with pytest.raises(InputError, match=r"\['loss'\]"):
        plot_landscape(plane(), metric="accuracy")
    with pytest.raises(InputError, match="2-D"):
        plot_landscape(line(), path=[[0.0, 0.0]])


def test_titles():
    directions = {"directions": [{"norm": "filter"}, {"norm": "filter"}]}
    fig = plot_landscape(plane(settings=directions))
    assert fig.axes[0].get_title() == "loss — plane (filter-normalised)"
    assert plot_landscape(plane(), title="mine").axes[0].get_title() == "mine"


def test_landscape_plot_delegates_here():
    fig = plane().plot(kind="heatmap", vmax=30.0, title="via plot()")
    assert fig.axes[0].get_title() == "via plot()"
    assert mesh_of(fig.axes[0]).get_array().max() == 30.0


def test_importing_lossvista_does_not_import_matplotlib():
    code = "import sys, lossvista, lossvista.plot; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
