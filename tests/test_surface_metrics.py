"""Surface metrics on analytic grids with known answers, NaN handling, and a real computed plane."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import lossvista as lv
from conftest import Quadratic, VectorModel
from lossvista.errors import InputError
from lossvista.landscape import Landscape
from lossvista.surface_metrics import SurfaceMetrics, surface_metrics


def grid(function, x=None, y=None) -> Landscape:
    """A plane landscape of ``function(X, Y)`` on the given axes (default 21 x 31 over [-1, 1])."""
    x = np.linspace(-1, 1, 21) if x is None else np.asarray(x, dtype=float)
    y = np.linspace(-1, 1, 31) if y is None else np.asarray(y, dtype=float)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return Landscape(coords=(x, y), values={"loss": function(X, Y)}, kind="plane")


def curve(values, t) -> Landscape:
    return Landscape(coords=(np.asarray(t, dtype=float),), values={"loss": values}, kind="line")


# -- convexity and critical points -----------------------------------------------------------------
def test_a_convex_paraboloid_is_convex_everywhere_with_one_minimum_and_no_saddle():
    x = np.sinh(np.linspace(-1.5, 1.5, 25)) / np.sinh(1.5)  # uneven spacing, 0 on the grid
    metrics = surface_metrics(grid(lambda X, Y: 0.5 + X**2 + 3 * Y**2 + 0.5 * X * Y, x=x))
    assert metrics.convexity_ratio == 1.0
    assert metrics.convexity_ratio_per_axis == (1.0, 1.0)
    assert len(metrics.minima) == 1 and metrics.saddles == []
    assert metrics.minima[0]["coords"] == (0.0, 0.0)
    assert metrics.minima[0]["value"] == pytest.approx(0.5)
    assert metrics.lowest["coords"] == (0.0, 0.0) and not metrics.lowest["on_edge"]
    assert metrics.nan_count == 0 and metrics.finite_count == 25 * 31


def test_x2_minus_y2_has_exactly_one_saddle_at_the_origin():
    metrics = surface_metrics(grid(lambda X, Y: X**2 - Y**2))
    assert [s["coords"] for s in metrics.saddles] == [(0.0, 0.0)]
    assert metrics.saddles[0]["index"] == (10, 15) and metrics.saddles[0]["value"] == 0.0
    assert metrics.minima == []
    assert metrics.convexity_ratio_per_axis == (1.0, 0.0)
    assert metrics.convexity_ratio == pytest.approx(19 * 31 / (19 * 31 + 21 * 29))  # pooled
    assert metrics.lowest["on_edge"]  # the lowest values are on the y edges


def test_a_saddle_turned_by_45_degrees_is_found_too():
    metrics = surface_metrics(grid(lambda X, Y: X * Y))
    assert [s["coords"] for s in metrics.saddles] == [(0.0, 0.0)]
    assert metrics.minima == []


def test_grid_minima_of_a_multi_minimum_surface_sit_next_to_the_true_minima():
    def f(v):
        return np.sin(4 * v[0]) * np.cos(4 * v[1]) + 0.5 * (v[0] ** 2 + v[1] ** 2)

    x = np.linspace(-2, 2, 81)
    metrics = surface_metrics(grid(lambda X, Y: f((X, Y)), x=x, y=x))
    h = x[1] - x[0]
    # Every true interior local minimum, from many starts, deduplicated.
    starts = np.stack(np.meshgrid(x[::4], x[::4]), axis=-1).reshape(-1, 2)
    found = [minimize(f, s, method="BFGS", options={"gtol": 1e-10}).x for s in starts]
    inside = [p for p in found if np.all(np.abs(p) < 2 - 2 * h)]
    true = []
    for p in inside:
        if all(np.linalg.norm(p - q) > 1e-4 for q in true):
            true.append(p)
    assert len(metrics.minima) == len(true) > 4
    for point in metrics.minima:
        nearest = min(np.linalg.norm(np.array(point["coords"]) - q) for q in true)
        assert nearest < math.sqrt(2) * h
    values = [m["value"] for m in metrics.minima]
    assert values == sorted(values)  # lowest first


def test_a_one_dimensional_double_well_has_two_minima_and_no_saddles():
    t = np.linspace(-2, 2, 201)
    metrics = surface_metrics(curve((t**2 - 1) ** 2, t))
    assert [m["coords"] for m in metrics.minima] == [(-1.0,), (1.0,)]
    assert metrics.saddles == []
    assert metrics.shape == (201,)


def test_n_basins_counts_persistent_basins_above_the_threshold():
    t = np.linspace(-2, 2, 201)
    z = (t**2 - 1) ** 2 + 0.3 * t  # two wells; the higher one is about 0.6 deep
    metrics = surface_metrics(curve(z, t))
    assert metrics.n_basins == 2
    assert metrics.persistence_threshold == pytest.approx(0.01 * (z.max() - z.min()))
    assert surface_metrics(curve(z, t), persistence_threshold=5.0).n_basins == 1
    noisy = z + 0.02 * np.random.default_rng(0).normal(size=z.shape)  # many shallow grid minima
    assert len(surface_metrics(curve(noisy, t)).minima) > 2
    assert surface_metrics(curve(noisy, t)).n_basins == 2
    assert surface_metrics(grid(lambda X, Y: X**2 + Y**2)).n_basins == 1
    with pytest.raises(InputError, match="persistence_threshold must be"):
        surface_metrics(curve(z, t), persistence_threshold=-1.0)


# -- basin width -----------------------------------------------------------------------------------
@pytest.mark.parametrize("a, delta", [(1.0, 0.1), (3.0, 0.2), (20.0, 0.05)])
def test_basin_width_of_a_parabola_is_two_sqrt_two_delta_over_a(a, delta):
    t = np.linspace(-1, 1, 101)
    h = t[1] - t[0]
    metrics = surface_metrics(curve(0.5 * a * t**2, t), delta=delta)
    exact = 2 * math.sqrt(2 * delta / a)
    assert exact - 2 * h < metrics.basin_width[0] <= exact
    lower, upper = metrics.basin_bounds[0]
    assert lower == pytest.approx(-upper) and upper - lower == metrics.basin_width[0]
    assert metrics.basin_hits_edge == (False,) and metrics.delta == delta


def test_basin_width_per_axis_of_a_paraboloid_and_the_edge_flag():
    a, b, delta = 2.0, 8.0, 0.5
    metrics = surface_metrics(grid(lambda X, Y: 0.5 * (a * X**2 + b * Y**2) + 1.0), delta=delta)
    for width, curvature, axis in zip(metrics.basin_width, (a, b), metrics.shape):
        h = 2 / (axis - 1)
        exact = 2 * math.sqrt(2 * delta / curvature)
        assert exact - 2 * h < width <= exact
    assert metrics.basin_hits_edge == (False, False)
    assert metrics.basin_center == {"coords": (0.0, 0.0), "index": (10, 15), "value": 1.0}
    wide = surface_metrics(grid(lambda X, Y: 0.5 * (a * X**2 + b * Y**2)), delta=2.0)
    assert wide.basin_hits_edge == (True, False) and wide.basin_width[0] == 2.0


def test_the_default_delta_is_a_tenth_of_the_finite_range_and_the_centre_follows_the_origin():
    t = np.linspace(-0.5, 1.5, 81)  # the origin is on the grid but not in its middle
    values = (t - 0.25) ** 2
    metrics = surface_metrics(curve(values, t))
    assert metrics.delta == pytest.approx(0.1 * (values.max() - values.min()))
    assert metrics.basin_center["coords"] == (0.0,)
    shifted = surface_metrics(curve(values, t + 10))  # no origin: the middle of the axis
    assert shifted.basin_center["index"] == (40,)


# -- slope and roughness ---------------------------------------------------------------------------
def test_a_plane_has_its_exact_slopes_no_curvature_and_no_roughness_even_with_holes():
    x = np.geomspace(1, 3, 17) - 2  # uneven
    function = lambda X, Y: 2.0 * X - 3.0 * Y + 1.0  # noqa: E731
    landscape = grid(function, x=x)
    landscape.values["loss"][3:6, 10:14] = np.nan
    metrics = surface_metrics(landscape)
    assert metrics.mean_abs_slope_per_axis == pytest.approx((2.0, 3.0), rel=1e-12)
    assert metrics.mean_abs_slope == pytest.approx(2.5, rel=1e-12)
    assert metrics.convexity_ratio == 0.0
    assert metrics.roughness < 1e-12
    assert metrics.nan_count == 12


def test_roughness_of_a_sinusoid_matches_the_gaussian_transfer_function():
    t = np.arange(2001.0)
    for omega, sigma in ((0.5, 1.0), (1.0, 0.7), (0.2, 2.0)):
        metrics = surface_metrics(curve(np.sin(omega * t), t), smoothing=sigma)
        exact = 2 / math.pi * (1 - math.exp(-(omega**2) * sigma**2 / 2))
        assert metrics.roughness == pytest.approx(exact, rel=1e-2)


def test_roughness_scales_with_the_values_and_ignores_added_planes():
    rng = np.random.default_rng(0)
    bumpy = grid(lambda X, Y: np.sin(7 * X) * np.cos(5 * Y) + 0.1 * rng.standard_normal(X.shape))
    tilted = grid(lambda X, Y: bumpy.values["loss"] + 4 * X - Y)
    scaled = grid(lambda X, Y: 3 * bumpy.values["loss"])
    base = surface_metrics(bumpy).roughness
    assert base > 0
    assert surface_metrics(tilted).roughness == pytest.approx(base, rel=1e-10)
    assert surface_metrics(scaled).roughness == pytest.approx(3 * base, rel=1e-10)
    assert surface_metrics(bumpy, smoothing=0.0).roughness == 0.0
    assert surface_metrics(bumpy, smoothing=2.0).roughness > base


# -- missing values and inputs ---------------------------------------------------------------------
def test_nan_and_inf_are_left_out_and_counted():
    landscape = grid(lambda X, Y: X**2 + Y**2)
    loss = landscape.values["loss"]
    clean = surface_metrics(landscape)
    loss[0, :5] = np.nan
    loss[20, 30] = np.inf
    loss[4, 4] = np.nan
    metrics = surface_metrics(landscape)
    assert metrics.nan_count == 7 and metrics.finite_count == loss.size - 7
    assert metrics.minima == clean.minima and metrics.saddles == []
    assert metrics.convexity_ratio == 1.0
    assert math.isfinite(metrics.roughness) and math.isfinite(metrics.mean_abs_slope)
    assert metrics.basin_width == clean.basin_width


def test_a_nan_centre_gives_a_nan_basin_and_no_finite_value_is_an_error():
    landscape = grid(lambda X, Y: X**2 + Y**2)
    landscape.values["loss"][10, 15] = np.nan
    metrics = surface_metrics(landscape)
    assert all(math.isnan(w) for w in metrics.basin_width)
    assert metrics.basin_hits_edge == (False, False)
    landscape.values["loss"][:] = np.nan
    with pytest.raises(InputError, match="no finite value"):
        surface_metrics(landscape)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(metric="accuracy"), "not in the landscape"),
        (dict(delta=-1.0), "delta must be"),
        (dict(smoothing=float("nan")), "smoothing must be"),
    ],
)
def test_bad_arguments_raise_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        surface_metrics(grid(lambda X, Y: X + Y), **kwargs)


def test_only_landscapes_of_one_or_two_axes_are_accepted():
    with pytest.raises(InputError, match="needs a Landscape"):
        surface_metrics(np.zeros((3, 3)))
    cube = Landscape(coords=(np.arange(3.0),) * 3, values={"loss": np.zeros((3, 3, 3))})
    with pytest.raises(InputError, match="lines and planes"):
        surface_metrics(cube)


def test_metrics_are_readable_and_serialisable():
    metrics = surface_metrics(grid(lambda X, Y: X**2 - Y**2))
    assert isinstance(metrics, SurfaceMetrics)
    assert repr(metrics).startswith("SurfaceMetrics(loss, shape=(21, 31)") and "saddles=1" in repr(
        metrics
    )
    payload = json.loads(json.dumps(metrics.as_dict()))
    assert payload["saddles"][0]["coords"] == [0.0, 0.0]


# -- a computed landscape ----------------------------------------------------------------------------
def test_a_computed_plane_through_a_quadratic_minimum_has_the_predicted_metrics():
    quad = Quadratic(6, seed=4)
    model = VectorModel(quad.theta_star)
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    obj = lv.Objective(model, quad, data)
    d1, d2 = lv.random_directions(obj, 2, norm=None, orthogonalize=True, seed=1)
    plane = lv.plane(obj, (d1, d2), span=(-1, 1), steps=(21, 25), progress=False)
    metrics = surface_metrics(plane, delta=0.5)
    assert metrics.convexity_ratio == 1.0 and metrics.saddles == []
    assert [m["coords"] for m in metrics.minima] == [(0.0, 0.0)]
    # Along axis i the loss is 1/2 (d_i^T A d_i) c^2: a parabola of curvature d_i^T A d_i.
    for width, d, n in zip(metrics.basin_width, (d1, d2), (21, 25)):
        vector = d["theta"]
        exact = 2 * math.sqrt(2 * 0.5 / float(vector @ quad.A @ vector))
        assert exact - 2 * (2 / (n - 1)) < width <= exact
