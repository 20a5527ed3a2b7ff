"""Simulated annealing and grid search: grid search equals a brute-force numpy argmin with one
and two worker processes; a seeded annealing chain finds the bowl's global minimum, repeatably,
and obeys the Metropolis rule it claims."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lossvista.errors import InputError
from lossvista.toys import ToyFunction, get, grid_search, names, run, simulated_annealing
from lossvista.toys import search as search_module

from .test_functions import REFERENCE

# Non-square, with more rows than one evaluation block holds, so the pool gets several blocks.
GRID = (300, 257)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def brute_force(name: str, n: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    (xmin, xmax), (ymin, ymax) = get(name).bounds
    xs, ys = np.linspace(xmin, xmax, n[0]), np.linspace(ymin, ymax, n[1])
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    values = REFERENCE[name](X, Y)
    i, j = np.unravel_index(np.argmin(values), values.shape)
    return np.array([xs[i], ys[j]]), values


@pytest.mark.parametrize("name", ["rosenbrock", "sincos_bowl", "beale", "himmelblau"])
def test_grid_search_finds_the_brute_force_argmin(name):
    result = grid_search(name, n=(61, 47))
    expected, values = brute_force(name, (61, 47))
    np.testing.assert_array_equal(result.best_params, expected)
    np.testing.assert_allclose(result.history.values, values, rtol=1e-13, atol=1e-12)
    assert result.best_value == result.history.values.min()
    assert result.evaluations == 61 * 47


def test_two_workers_give_the_same_grid_bit_for_bit():
    assert GRID[0] > search_module._BLOCK_POINTS // GRID[1]  # several blocks for the pool
    expected, _ = brute_force("sincos_bowl", GRID)
    serial = grid_search("sincos_bowl", n=GRID, workers=1)
    parallel = grid_search("sincos_bowl", n=GRID, workers=2)
    np.testing.assert_array_equal(parallel.history.values, serial.history.values)
    np.testing.assert_array_equal(parallel.best_params, expected)
    np.testing.assert_array_equal(serial.best_params, expected)
    assert parallel.settings["workers"] == 2


def test_grid_search_takes_other_bounds_and_its_path_only_improves():
    result = grid_search("himmelblau", ((0.0, 5.0), (0.0, 5.0)), 51)
    np.testing.assert_allclose(result.best_params, [3.0, 2.0])
    path = result.as_path()
    assert path.name == "grid" and path.optimizer == "grid_search"
    assert len(path.points) == 51 * 51
    assert np.all(np.diff(path.values) <= 0)
    assert path.values[-1] == result.best_value


def test_annealing_with_a_fixed_seed_finds_the_global_minimum_of_the_bowl():
    fn = get("sincos_bowl")
    result = simulated_annealing(fn, seed=0)
    assert np.linalg.norm(result.best_params - fn.global_minimum) < 1e-2
    # ... from a start where gradient descent ends in a local minimum.
    assert run(fn, "gd", steps=300).reached_minimum() not in (None, 0)
    again = simulated_annealing(fn, seed=0)
    np.testing.assert_array_equal(again.history.points, result.history.points)
    other = simulated_annealing(fn, seed=1)
    assert not np.array_equal(other.history.points, result.history.points)


def test_annealing_history_obeys_the_metropolis_rule():
    fn = get("himmelblau")
    result = simulated_annealing(fn, steps=500, seed=4)
    h = result.history
    assert h.points.shape == (501, 2) and h.values.shape == (501,)
    assert h.temperatures.shape == h.accepted.shape == (500,)
    moved = np.any(h.points[1:] != h.points[:-1], axis=1)
    np.testing.assert_array_equal(moved, h.accepted)
    np.testing.assert_array_equal(h.points[1:][h.accepted], h.proposals[h.accepted])
    np.testing.assert_array_equal(h.values, fn.evaluate(h.points))
    # Every improvement inside the bounds is accepted.
    (xmin, xmax), (ymin, ymax) = fn.bounds
    p = h.proposals
    inside = (p[:, 0] >= xmin) & (p[:, 0] <= xmax) & (p[:, 1] >= ymin) & (p[:, 1] <= ymax)
    better = inside & (fn.evaluate(p) <= h.values[:-1])
    assert np.all(h.accepted[better]) and np.all(~h.accepted[~inside])
    assert 0 < h.acceptance_rate < 1
    assert result.best_value == h.values.min()
    np.testing.assert_array_equal(result.best_params, h.points[np.argmin(h.values)])


def test_schedules_follow_their_formulas():
    exponential = simulated_annealing("beale", steps=11, t0=2.0, t_end=0.002).history.temperatures
    np.testing.assert_allclose(exponential, 2.0 * 0.001 ** (np.arange(11) / 10), rtol=1e-14)
    linear = simulated_annealing("beale", steps=5, schedule="linear", t0=1.0, t_end=0.2)
    np.testing.assert_allclose(linear.history.temperatures, [1.0, 0.8, 0.6, 0.4, 0.2])
    custom = simulated_annealing("beale", steps=4, schedule=lambda k: 1.0 / (k + 1))
    np.testing.assert_allclose(custom.history.temperatures, [1, 1 / 2, 1 / 3, 1 / 4])


def test_zero_temperature_only_descends_and_confinement_keeps_the_chain_inside():
    result = simulated_annealing("rastrigin", steps=300, schedule=lambda k: 0.0, step_size=1.0)
    assert np.all(np.diff(result.history.values) <= 0)
    (xmin, xmax), (ymin, ymax) = get("rastrigin").bounds
    points = result.history.points
    assert np.all((points[:, 0] >= xmin) & (points[:, 0] <= xmax))
    assert np.all((points[:, 1] >= ymin) & (points[:, 1] <= ymax))
    free = simulated_annealing("saddle", steps=300, confine=False, step_size=1.0, seed=2)
    assert np.abs(free.history.points).max() > 2  # the saddle's bounds are [-2, 2]^2


def test_annealing_as_a_path_is_the_chain():
    result = simulated_annealing("sincos_bowl", steps=100)
    path = result.as_path("sa")
    np.testing.assert_array_equal(path.points, result.history.points)
    assert path.name == "sa" and path.steps == 100 and path.implementation == "search"
    assert path.hyperparameters["seed"] == 0


def test_bad_search_settings_are_input_errors():
    with pytest.raises(InputError, match="schedule must be one of"):
        simulated_annealing("beale", schedule="cosine")
    with pytest.raises(InputError, match="temperatures must be finite and >= 0"):
        simulated_annealing("beale", schedule="linear", t0=1.0, t_end=-1.0)
    with pytest.raises(InputError, match="step_size must be"):
        simulated_annealing("beale", step_size=0.0)
    with pytest.raises(InputError, match="steps must be"):
        simulated_annealing("beale", steps=0)
    with pytest.raises(InputError, match="workers must be"):
        grid_search("beale", n=5, workers=0)
    with pytest.raises(InputError, match="n must be"):
        grid_search("beale", n=1)
    with pytest.raises(InputError, match="min < max"):
        grid_search("beale", ((1.0, 0.0), (0.0, 1.0)), 5)


def test_a_function_that_cannot_be_pickled_is_refused_before_spawning():
    unpicklable = ToyFunction(
        name="local",
        formula="x^2 + y^2",
        expression=lambda x, y: x**2 + y**2,
        bounds=((-1, 1), (-1, 1)),
        minima=[(0, 0)],
        saddles=[],
        start=(0.5, 0.5),
        lr=0.1,
    )
    assert grid_search(unpicklable, n=5).best_value == 0  # one process: fine
    with pytest.raises(InputError, match="module-level expression"):
        grid_search(unpicklable, n=GRID, workers=2)


def test_plots_show_the_chain_or_the_grid():
    annealing = simulated_annealing("sincos_bowl", steps=200)
    ax = annealing.plot().axes[0]
    assert len(ax.lines) == 1
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), annealing.history.points)
    assert ax.get_xlim() == (-2.0, 2.0)  # the bowl as it is usually drawn
    grid = grid_search("sincos_bowl", n=(7, 5))
    ax = grid.plot().axes[0]
    assert len(ax.lines) == 0
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert any(np.allclose(row, grid.best_params) for row in offsets)
    assert "best" in ax.get_title()


def test_a_start_outside_the_bounds_is_taken_and_the_chain_still_moves():
    # Before: every proposal fell outside the plot's bounds and was rejected, so the "best
    # point" was the start itself.
    fn = get("sincos_bowl")
    start = (3.0, -2.5)  # the bounds are [-2, 2]^2
    result = simulated_annealing(fn, start=start, steps=2000)
    (xmin, xmax), (ymin, ymax) = result.settings["bounds"]
    assert (xmin, ymax) == (-2.0, 2.0) and xmax > 3.0 and ymin < -2.5  # grown on two sides
    points = result.history.points
    np.testing.assert_array_equal(points[0], start)
    assert result.history.accepted.mean() > 0.1
    assert np.all((points[:, 0] >= xmin) & (points[:, 0] <= xmax))
    assert np.all((points[:, 1] >= ymin) & (points[:, 1] <= ymax))
    assert np.linalg.norm(result.best_params - fn.global_minimum) < 0.05
    assert result.best_value < fn.global_minimum_value + 1e-3
    assert simulated_annealing(fn, steps=10).settings["bounds"] == fn.bounds  # inside: as is
    ax = result.plot().axes[0]
    assert ax.get_xlim() == (xmin, xmax) and ax.get_ylim() == (ymin, ymax)  # the start is shown


@pytest.mark.parametrize("name", names())
def test_default_bounds_hold_the_start_and_every_listed_critical_point(name):
    fn = get(name)
    (xmin, xmax), (ymin, ymax) = fn.bounds
    for x, y in [fn.start, *fn.minima, *fn.saddles]:
        assert xmin <= x <= xmax and ymin <= y <= ymax


def test_bounds_are_the_regions_the_functions_are_usually_drawn_on():
    usual = {
        "sincos_bowl": ((-2.0, 2.0), (-2.0, 2.0)),
        "rosenbrock": ((-2.0, 2.0), (-1.0, 3.0)),
        "himmelblau": ((-5.0, 5.0), (-5.0, 5.0)),
        "rastrigin": ((-5.12, 5.12), (-5.12, 5.12)),
        "beale": ((-4.5, 4.5), (-4.5, 4.5)),
        "six_hump_camel": ((-2.0, 2.0), (-1.0, 1.0)),
    }
    for name, bounds in usual.items():
        assert get(name).bounds == bounds, name
