"""Races: the table says what the paths did, the plot draws each path once over the function's
bounds, and the GIF has the frames it promises."""

from __future__ import annotations

import csv
import io
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from lossvista.errors import InputError
from lossvista.toys import get, grid_search, race, run, simulated_annealing
from lossvista.toys.race import COLUMNS


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def himmelblau_race():
    return race(
        "himmelblau",
        ["gd", "momentum", ("adam", {"lr": 0.1}), "annealing", "grid"],
        steps=120,
        start=(0.5, -0.5),
    )


def test_the_table_reports_what_each_path_did(himmelblau_race):
    table = himmelblau_race.table
    assert [row["name"] for row in table] == ["gd", "momentum", "adam", "annealing", "grid"]
    fn = himmelblau_race.function
    for row in table:
        path = himmelblau_race.paths[row["name"]]
        assert tuple(row) == COLUMNS
        assert row["final_value"] == path.values[-1]
        assert row["best_value"] == np.nanmin(path.values)
        assert row["steps_to_tol"] == path.converged_step(1e-6)
        assert row["minimum"] == fn.nearest_minimum(path.points[-1], 1e-2)
        if row["minimum"] is not None:
            assert [row["minimum_x"], row["minimum_y"]] == fn.minima[row["minimum"]].tolist()
            assert row["global"]  # all four Himmelblau minima are global
    assert table["gd"]["steps"] == 120 and table["grid"]["steps"] == 11 * 11 - 1
    assert table["gd"]["minimum"] is not None and table["gd"]["steps_to_tol"] is not None
    assert np.all(himmelblau_race.paths["gd"].points[0] == [0.5, -0.5])


def test_steps_to_tol_is_the_first_step_within_tol():
    result = race("quadratic", ["gd", "nesterov"], steps=300, tol=1e-9)
    for row in result.table:
        values = result.paths[row["name"]].values
        k = row["steps_to_tol"]
        assert values[k] <= 1e-9 and np.all(values[:k] > 1e-9)


def test_a_local_minimum_is_named_but_not_global():
    result = race("sincos_bowl", ["gd", "momentum"], steps=300)
    assert result.table["gd"]["minimum"] not in (None, 0) and not result.table["gd"]["global"]
    assert result.table["gd"]["steps_to_tol"] is None
    assert result.table["momentum"]["minimum"] == 0 and result.table["momentum"]["global"]


def test_finished_runs_can_race_under_new_labels():
    fn = get("six_hump_camel")
    runs = {
        "fast": run(fn, "adam", steps=40),
        "slow": run(fn, "gd", steps=40, lr=1e-3),
        "sa": simulated_annealing(fn, steps=40),
        "grid": grid_search(fn, n=9),
    }
    result = race(fn, runs)
    assert list(result.paths) == ["fast", "slow", "sa", "grid"]
    assert result.paths["fast"].name == "fast" and result.paths["sa"].optimizer == (
        "simulated_annealing"
    )
    with pytest.raises(InputError, match="ran on"):
        race("beale", runs)


def test_repeated_optimizers_get_distinct_labels():
    result = race("beale", ["adam", ("adam", {"lr": 0.5}), "gd", "gd"], steps=5)
    assert list(result.paths) == ["adam", "adam (lr=0.5)", "gd #1", "gd #2"]


def test_table_exports_round_trip(himmelblau_race):
    table = himmelblau_race.table
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert [r["name"] for r in rows] == [row["name"] for row in table]
    assert float(rows[0]["final_value"]) == table.rows[0]["final_value"]
    assert json.loads(json.dumps(table.to_records())) == table.to_records()
    lines = table.to_markdown().splitlines()
    assert len(lines) == 2 + len(table) and lines[0].startswith("| name")
    with pytest.raises(KeyError, match="no row named 'sgd'"):
        table["sgd"]


def test_the_plot_draws_every_path_once_over_the_bounds(himmelblau_race):
    ax = himmelblau_race.plot().axes[0]
    assert len(ax.lines) == len(himmelblau_race.paths)
    for line, path in zip(ax.lines, himmelblau_race.paths.values()):
        np.testing.assert_array_equal(line.get_xydata(), path.points)
    assert ax.get_xlim() == (-5.0, 5.0) and ax.get_ylim() == (-5.0, 5.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(himmelblau_race.paths)
    _, given = plt.subplots()
    assert himmelblau_race.plot(ax=given) is given.figure


def test_narrow_valleys_get_log_spaced_contour_levels():
    ax = race("rosenbrock", ["adam"], steps=3).plot().axes[0]
    contours = next(c for c in ax.collections if hasattr(c, "levels"))
    gaps = np.diff(contours.levels - contours.levels[0])
    ratios = gaps[1:] / gaps[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)  # geometric
    assert ratios[0] > 1.2
    vertices = np.concatenate([seg for level in contours.allsegs for seg in level])
    np.testing.assert_allclose(vertices.min(axis=0), [-2.0, -1.0])  # the contours fill the bounds
    np.testing.assert_allclose(vertices.max(axis=0), [2.0, 3.0])


def test_the_gif_has_the_frames_asked_for(tmp_path, himmelblau_race):
    target = himmelblau_race.animate(tmp_path / "race.gif", frames=6, fps=5, dpi=40)
    assert target == tmp_path / "race.gif" and target.stat().st_size > 0
    with Image.open(target) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6
        gif.seek(0)
        first = np.asarray(gif.convert("RGB"), dtype=int)
        gif.seek(5)
        last = np.asarray(gif.convert("RGB"), dtype=int)
    assert np.abs(first - last).sum() > 0


def test_a_short_race_has_one_frame_per_step(tmp_path):
    short = race("quadratic", ["gd"], steps=3)
    with Image.open(short.animate(tmp_path / "short.gif", frames=50, dpi=30)) as gif:
        assert gif.n_frames == 4
    with pytest.raises(InputError, match="frames must be"):
        short.animate(tmp_path / "bad.gif", frames=1)


def test_bad_runs_are_input_errors():
    with pytest.raises(InputError, match="at least one run"):
        race("beale", [])
    with pytest.raises(InputError, match="runs must be"):
        race("beale", "adam")
    with pytest.raises(InputError, match="expected an OptimizerPath"):
        race("beale", {"x": 3})
