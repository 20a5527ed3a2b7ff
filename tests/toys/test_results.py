"""Every result of the toy lab follows the result protocol: strict JSON, its key numbers in the
notebook view, save + ``lossvista.load`` giving an equal object whose plots draw the same figure,
and the function rebuilt from its registered name (a hand-made one cannot be saved)."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

import lossvista as lv
from lossvista import _hdf5
from lossvista._result import _KINDS
from lossvista.errors import InputError
from lossvista.toys import (
    AnnealingHistory,
    GridHistory,
    LossSurface,
    OptimizerPath,
    Race,
    RaceTable,
    RegressionProblem,
    ScalingStudy,
    SearchResult,
    ToyFunction,
    get,
    grid_search,
    race,
    run,
    scaling_study,
    simulated_annealing,
)
from protocol import check_protocol

#: Every toy result kind and the format of its file (what docs/FORMAT.md lists).
KINDS = {
    "toy_optimizer_path": (OptimizerPath, "hdf5"),
    "toy_search": (SearchResult, "hdf5"),
    "toy_annealing_history": (AnnealingHistory, "hdf5"),
    "toy_grid_history": (GridHistory, "hdf5"),
    "toy_race": (Race, "hdf5"),
    "toy_race_table": (RaceTable, "json"),
    "toy_scaling_study": (ScalingStudy, "hdf5"),
    "toy_regression_problem": (RegressionProblem, "hdf5"),
    "toy_loss_surface": (LossSurface, "hdf5"),
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    """One result of every kind, with tuples, None and parameters in their settings."""
    quadratic = get("quadratic", condition=5.0, angle=0.3)
    path = run(quadratic, "adam", steps=80, lr=0.1, betas=(0.8, 0.99), start=(1.0, -1.0))
    annealing = simulated_annealing("sincos_bowl", steps=150, seed=2)
    grid = grid_search("sincos_bowl", n=(21, 17))
    contest = race(
        "himmelblau",
        ["gd", ("adam", {"lr": 0.1}), "annealing", "grid"],
        steps=120,  # gd gets within tol: the table has a steps_to_tol to show
        start=(0.5, -0.5),
    )
    assert contest.table["gd"]["steps_to_tol"] is not None
    study = scaling_study(seed=1, n_samples=60, tol=1e-4)
    return {
        "toy_optimizer_path": path,
        "toy_search": annealing,
        "toy_annealing_history": annealing.history,
        "toy_grid_history": grid.history,
        "toy_race": contest,
        "toy_race_table": contest.table,
        "toy_scaling_study": study,
        "toy_regression_problem": study.raw,
        "toy_loss_surface": study.scaled.surface,
        "grid_search": grid,
    }


def key_numbers(result: object) -> list[str]:
    """The numbers a reader looks for first, as the notebook view prints them (6 digits)."""

    def g(value: float) -> str:
        return f"{value:.6g}"

    if isinstance(result, OptimizerPath):
        x, y = result.final_point
        return [g(result.final_value), g(result.best_value), f"({g(x)}, {g(y)})", result.name]
    if isinstance(result, SearchResult):
        x, y = result.best_params
        return [g(result.best_value), f"({g(x)}, {g(y)})", str(result.evaluations)]
    if isinstance(result, AnnealingHistory):
        return [g(result.acceptance_rate), g(float(result.values.min()))]
    if isinstance(result, GridHistory):
        return [g(float(result.values.min())), f"{len(result.xs)} x {len(result.ys)}"]
    if isinstance(result, (Race, RaceTable)):
        table = result.table if isinstance(result, Race) else result
        numbers = [str(table.winner)]
        for row in table:
            numbers += [g(row["final_value"]), f"{row['name']}: steps_to_tol"]
            if row["steps_to_tol"] is not None:
                numbers.append(str(row["steps_to_tol"]))
        return numbers
    if isinstance(result, ScalingStudy):
        return [g(result.condition_number_raw), g(result.condition_number_scaled),
                str(result.iterations_raw), str(result.iterations_scaled)]  # fmt: skip
    if isinstance(result, RegressionProblem):
        return [g(result.condition_number), str(result.iterations), str(result.iteration_bound)]
    if isinstance(result, LossSurface):
        return [g(float(result.values.min())), f"{len(result.w1)} x {len(result.w2)}"]
    raise AssertionError(f"no key numbers for {type(result).__name__}")


def saved_kind(path) -> tuple[str, str]:
    """(kind, file format) read from a saved file's header."""
    if _hdf5.is_hdf5(path):
        with _hdf5.open_file(path) as f:
            kind = f.attrs["kind"]
        return kind.decode() if isinstance(kind, bytes) else str(kind), "hdf5"
    return json.loads(path.read_text())["kind"], "json"


def test_the_kinds_listed_are_every_result_class_of_the_lab():
    toys = {
        kind: cls for kind, cls in _KINDS.items() if cls.__module__.startswith("lossvista.toys")
    }
    assert toys == {kind: cls for kind, (cls, _) in KINDS.items()}
    for kind, (cls, file_format) in KINDS.items():
        assert cls.result_kind == kind and cls.file_format == file_format


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_result_passes_the_protocol(results, kind, tmp_path):
    result = results[kind]
    loaded = check_protocol(result, tmp_path, numbers=key_numbers(result))
    assert saved_kind(tmp_path / "result") == (kind, KINDS[kind][1])
    assert repr(loaded) == repr(result)


def test_a_grid_search_passes_the_protocol(results, tmp_path):
    grid = results["grid_search"]
    loaded = check_protocol(grid, tmp_path, numbers=key_numbers(grid))
    assert isinstance(loaded.history, GridHistory) and loaded.settings["n"] == (21, 17)
    np.testing.assert_array_equal(loaded.as_path().points, grid.as_path().points)


def test_loaded_functions_are_rebuilt_with_their_parameters(results, tmp_path):
    path = results["toy_optimizer_path"]
    loaded = lv.load(path.save(tmp_path / "path.h5"))
    assert loaded.function.name == "quadratic"
    assert loaded.function.parameters == {"condition": 5.0, "angle": 0.3}
    assert loaded.function.formula == path.function.formula
    probes = np.random.default_rng(0).uniform(-2, 2, (20, 2))
    np.testing.assert_array_equal(loaded.function.evaluate(probes), path.function.evaluate(probes))
    assert loaded.hyperparameters == {"lr": 0.1, "betas": (0.8, 0.99)}  # the tuple stays a tuple
    assert loaded.converged_step() == path.converged_step()
    assert loaded.reached_minimum() == path.reached_minimum() == 0
    as_json = path.as_dict()
    assert as_json["function"] == {
        "name": "quadratic",
        "parameters": {"condition": 5.0, "angle": 0.3},
        "formula": path.function.formula,
    }
    assert len(as_json["points"]) == 81 and as_json["values"][0] == path.values[0]


def test_a_diverging_path_saves_its_non_finite_values(tmp_path):
    path = run("saddle", "gd", steps=1200, lr=0.5)  # y doubles every step, past float64's range
    assert not np.all(np.isfinite(path.values))
    as_json = json.loads(json.dumps(path.as_dict(), allow_nan=False))
    assert as_json["values"][-1] is None
    assert lv.load(path.save(tmp_path / "diverged.h5")) == path  # NaN equals NaN


# -- plots of loaded results ---------------------------------------------------------------------
def test_a_loaded_path_and_race_draw_the_same_figure(results, tmp_path):
    for kind in ("toy_optimizer_path", "toy_race"):
        result = results[kind]
        loaded = lv.load(result.save(tmp_path / f"{kind}.h5"))
        before, after = result.plot().axes[0], loaded.plot().axes[0]
        paths = result.paths if isinstance(result, Race) else {result.name: result}
        assert len(after.lines) == len(paths)
        for line, path in zip(after.lines, paths.values()):
            np.testing.assert_array_equal(line.get_xydata(), path.points)
        assert after.get_xlim() == before.get_xlim() == result.function.bounds[0]
        assert after.get_ylim() == before.get_ylim() == result.function.bounds[1]
        assert after.get_title() == before.get_title()
        labels = [t.get_text() for t in after.get_legend().get_texts()]
        assert labels == list(paths)


def test_a_loaded_race_animates(results, tmp_path):
    loaded = lv.load(results["toy_race"].save(tmp_path / "race.h5"))
    with Image.open(loaded.animate(tmp_path / "race.gif", frames=3, dpi=20)) as gif:
        assert gif.n_frames == 3


@pytest.mark.parametrize("kind", ["toy_search", "grid_search"])
def test_a_loaded_search_draws_the_chain_or_the_grid(results, kind, tmp_path):
    search = results[kind]
    loaded = lv.load(search.save(tmp_path / "search.h5"))
    ax = loaded.plot().axes[0]
    if kind == "toy_search":
        assert len(ax.lines) == 1
        np.testing.assert_array_equal(ax.lines[0].get_xydata(), search.history.points)
    else:
        assert len(ax.lines) == 0
        dots = max((c.get_offsets() for c in ax.collections), key=len)
        assert len(dots) == search.history.values.size  # every grid point
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert any(np.allclose(row, search.best_params) for row in offsets)
    assert ax.get_xlim() == (-2.0, 2.0) and f"{search.best_value:.6g}" in ax.get_title()


def test_a_loaded_scaling_study_draws_both_problems(results, tmp_path):
    study = results["toy_scaling_study"]
    loaded = lv.load(study.save(tmp_path / "study.h5"))
    figure = loaded.plot()
    assert len(figure.axes) == 2
    for ax, problem, name in zip(figure.axes, (study.raw, study.scaled), ("raw", "standardised")):
        assert len(ax.lines) == 1
        np.testing.assert_array_equal(ax.lines[0].get_xydata(), problem.path)
        assert ax.get_xlim() == (problem.surface.w1[0], problem.surface.w1[-1])
        assert ax.get_ylim() == (problem.surface.w2[0], problem.surface.w2[-1])
        assert ax.get_title().startswith(f"{name}: κ = {problem.condition_number:.4g}")
    single = loaded.raw.plot().axes[0]
    np.testing.assert_array_equal(single.lines[0].get_xydata(), study.raw.path)
    assert f"GD steps to tol: {study.raw.iterations}" in single.get_title()
    surface = loaded.scaled.surface.plot().axes[0]
    assert len(surface.lines) == 0 and surface.get_xlim() == (
        study.scaled.surface.w1[0],
        study.scaled.surface.w1[-1],
    )
    contours = next(c for c in surface.collections if hasattr(c, "levels"))
    assert contours.levels[0] > study.scaled.surface.values.min()  # log-spaced above the minimum


# -- what the summaries say ----------------------------------------------------------------------
def test_the_winner_is_the_fastest_to_tol_else_the_lowest_final_value():
    fast = race("quadratic", ["gd", "nesterov"], steps=300, tol=1e-9)
    steps = {row["name"]: row["steps_to_tol"] for row in fast.table}
    assert None not in steps.values()
    assert fast.winner == min(steps, key=steps.get)
    nowhere = race("saddle", ["gd", ("gd", {"lr": 0.01})], steps=50)  # no minimum to reach
    finals = {row["name"]: row["final_value"] for row in nowhere.table}
    assert nowhere.winner == min(finals, key=finals.get) == "gd"  # lr 0.05 slides further
    assert "winner='gd'" in repr(nowhere)


def test_race_and_table_show_the_markdown_table_as_str(results):
    contest = results["toy_race"]
    assert str(contest.table) == contest.table.to_markdown()
    assert str(contest).splitlines()[1:] == contest.table.to_markdown().splitlines()
    assert "\n" not in repr(contest) and "\n" not in repr(contest.table)


def test_race_labels_need_not_be_hdf5_names(tmp_path):
    paths = {"a/b": run("beale", "adam", steps=5), ".": run("beale", "gd", steps=5)}
    contest = race("beale", paths)
    loaded = check_protocol(contest, tmp_path)
    assert list(loaded.paths) == ["a/b", "."] and loaded.paths["a/b"].name == "a/b"


# -- functions that cannot be named --------------------------------------------------------------
def _sphere(x, y):
    return x**2 + y**2


def test_a_hand_made_function_cannot_be_saved(tmp_path):
    own = ToyFunction(
        name="sphere", formula="x^2 + y^2", expression=_sphere, bounds=((-1, 1), (-1, 1)),
        minima=[(0, 0)], saddles=[], start=(0.5, 0.5), lr=0.1,
    )  # fmt: skip
    path = run(own, "gd", steps=5)
    with pytest.raises(InputError, match=r"'sphere' is not in the registry.*toys\.get"):
        path.save(tmp_path / "path.h5")
    with pytest.raises(InputError, match="not in the registry"):
        grid_search(own, n=5).save(tmp_path / "grid.h5")
    with pytest.raises(InputError, match="not in the registry"):
        race(own, {"gd": path}).save(tmp_path / "race.h5")
    assert not list(tmp_path.iterdir())  # nothing half-written
    assert path.as_dict()["function"]["name"] == "sphere"  # its numbers can still be read


def test_a_different_function_under_a_registered_name_cannot_be_saved(tmp_path):
    real = get("himmelblau")
    impostor = ToyFunction(
        name="himmelblau", formula=real.formula, expression=_sphere, bounds=real.bounds,
        minima=real.minima, saddles=real.saddles, start=real.start, lr=real.lr,
        log_scale=real.log_scale,
    )  # fmt: skip
    with pytest.raises(InputError, match=r"differs from toys\.get"):
        run(impostor, "gd", steps=2).save(tmp_path / "path.h5")
    run(real, "gd", steps=2).save(tmp_path / "path.h5")  # the registered one is fine


# -- the deprecated name -------------------------------------------------------------------------
def test_to_dict_warns_and_equals_as_dict(results):
    study = results["toy_scaling_study"]
    with pytest.warns(DeprecationWarning, match="as_dict"):
        numbers = study.to_dict()
    assert numbers == study.as_dict()
    assert numbers["raw"]["condition_number"] == study.condition_number_raw
    assert numbers["scaled"]["iterations"] == study.iterations_scaled
    json.dumps(numbers, allow_nan=False)


def test_the_lab_imports_no_pyplot_until_it_draws():
    code = (
        "import sys, lossvista.toys, lossvista.plot.toys as p; "
        "r = lossvista.toys.race('beale', ['gd'], steps=3); r.as_dict(); repr(r); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
