"""Issue 8, the smaller findings: dollar signs in plotted text, `--out` into missing folders,
`lv.load` of things that are not lossvista files, and warnings raised while the CLI runs a grid.

Each test injects the fault as the campaign did and asserts the clear error or the right result.
(Ctrl-C during restoration is in ``test_no_mutation.py``, the eigenvector start of sharpness in
``test_sharpness.py``, the annealing start outside the bounds in ``toys/test_search.py``.)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

import lossvista as lv
from lossvista import toys
from lossvista.cli import main
from lossvista.landscape import Landscape
from lossvista.plot import plot_comparison, plot_landscape
from lossvista.plot.toys import plot_optimizer_path, plot_race, plot_regression_problem
from lossvista.plot.trajectory import plot_path

sys.path.insert(0, str(Path(__file__).parent))
import cli_models
from conftest import assert_unchanged, snapshot

MODELS = Path(__file__).parent / "cli_models.py"
#: Each of these makes matplotlib's mathtext parser raise when drawn unescaped.
DOLLARS = ["cost $_$", "net$v2_$", "a $\\foo$ b"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def drawn(figure) -> list[str]:
    """Render ``figure`` (where mathtext would raise) and return every text it shows, as shown."""
    figure.canvas.draw()
    texts = [t for t in figure.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    return [t._preprocess_math(t.get_text())[0] for t in texts]  # what the renderer draws


# -- $ in plotted text ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOLLARS)
def test_dollar_signs_in_landscape_titles_metrics_labels_and_markers_are_drawn_as_written(name):
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    values = {"loss": np.add.outer(x**2, y**2), name: np.add.outer(x, y)}
    plane = Landscape(
        coords=(x, y), values=values, kind="plane", axis_labels=(f"d1 {name}", f"d2 {name}"),
        markers={"origin": (0.0, 0.0), f"model {name}": (0.5, 0.5)},
    )  # fmt: skip
    for kind in ("contour", "filled", "heatmap", "surface3d"):
        texts = drawn(plot_landscape(plane, kind=kind, metric=name, title=f"title {name}"))
        for expected in (f"title {name}", f"d1 {name}", f"d2 {name}"):
            assert expected in texts, (kind, expected, texts)
        assert f" model {name}" in texts
    line = Landscape(
        coords=(x,), values={"loss": x**2, name: x}, kind="line", axis_labels=(f"d {name}",),
        markers={f"model {name}": (0.5,)},
    )  # fmt: skip
    texts = drawn(plot_landscape(line))
    assert name in texts and f"d {name}" in texts and f" model {name}" in texts
    assert "loss" in drawn(plot_landscape(line))  # plain text is untouched


@pytest.mark.parametrize("name", DOLLARS)
def test_dollar_signs_in_toy_lab_training_and_trajectory_plots(name):
    path = toys.run("quadratic", "gd", steps=5)
    renamed = dataclasses.replace(path, name=f"run {name}")
    assert f"run {name}" in drawn(plot_optimizer_path(renamed))
    race = toys.race("quadratic", {f"gd {name}": path})
    assert f"gd {name}" in drawn(plot_race(race))
    study = toys.scaling_study(n_samples=20, max_iter=50, grid_points=11)
    assert any(
        t.startswith(f"{name}: ") for t in drawn(plot_regression_problem(study.raw, title=name))
    )
    runs = SimpleNamespace(histories={f"sgd {name}": {"epoch": [1, 2], "loss": [1.0, 0.5]}})
    texts = drawn(plot_comparison(runs, metric="loss"))
    assert f"sgd {name}" in texts
    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    texts = drawn(plot_path(points, np.arange(3), [f"x {name}", f"y {name}"], title=name))
    assert {f"x {name}", f"y {name}", name} <= set(texts)


# -- --out into folders that do not exist ---------------------------------------------------------
@pytest.fixture(scope="module")
def line_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("line") / "line.h5"
    args = ["line", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
            "--out", out, "--steps", 5, "--device", "cpu", "--quiet", "--no-png"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_plot_into_a_missing_folder_creates_it(line_file, tmp_path):
    target = tmp_path / "new" / "deeper" / "picture.png"
    result = CliRunner().invoke(main, ["plot", str(line_file), "--out", str(target)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert target.stat().st_size > 0 and str(target) in result.output
    folder = tmp_path / "pictures"  # a name ending in "/" is a folder, made and filled
    result = CliRunner().invoke(main, ["plot", str(line_file), "--out", f"{folder}/"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (folder / "line.png").stat().st_size > 0


def test_an_out_folder_that_cannot_be_made_is_a_usage_error(line_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["plot", str(line_file), "--out", str(blocker / "x.png")])
    assert result.exit_code == 2 and "cannot create the folder" in result.output  # a bad --out
    assert "Traceback" not in result.output and blocker.read_text() == "not a folder"
    args = ["sharpness", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
            "--kind", "hessian", "--rho", "0.1", "--out", str(blocker / "s.json")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "cannot create the folder" in result.output


@pytest.mark.parametrize("command", ["line", "sharpness"])
def test_every_out_file_may_name_a_missing_folder(command, tmp_path):
    out = tmp_path / "results" / "today" / ("s.json" if command == "sharpness" else "line.h5")
    args = [command, "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
            "--out", str(out), "--device", "cpu", "--quiet"]  # fmt: skip
    args += ["--kind", "hessian", "--rho", "0.1"] if command == "sharpness" else ["--steps", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    if command == "sharpness":
        assert json.loads(out.read_text())["sharpness"]["kind"] == "hessian"
    else:
        assert lv.load(out).values["loss"].shape == (3,)


# -- lv.load of things that are not lossvista files ------------------------------------------------
@pytest.mark.parametrize("argument", [None, 5, 2.5, b"bytes.json", ["a.json"], object()])
def test_load_of_something_that_is_not_a_path_names_it(argument):
    with pytest.raises(lv.InputError, match="load needs the path of a file") as caught:
        lv.load(argument)
    assert type(argument).__name__ in str(caught.value) or "None" in str(caught.value)


def test_load_of_a_result_object_says_it_wants_a_path():
    result = Landscape(coords=(np.zeros(2),), values={"loss": np.zeros(2)}, kind="line")
    with pytest.raises(lv.InputError, match="a Landscape"):
        lv.load(result)


def _saved_sharpness(tmp_path: Path) -> Path:
    result = lv.Sharpness(0.1, 0.0, "worst", 0.1, {"norm": "l2"}, 1.0, 1.1, 3)
    return result.save(tmp_path / "sharpness.json")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "not a readable HDF5 file, nor a JSON file"),
        (lambda text: "", "not a readable HDF5 file, nor a JSON file"),
        (lambda text: "\x00\xff garbage", "not a readable HDF5 file, nor a JSON file"),
        (lambda text: "[1, 2, 3]", "not a file lossvista wrote"),
    ],
    ids=["truncated", "empty", "binary", "a-list"],
)
def test_a_corrupted_json_result_file_is_a_store_error_naming_it(tmp_path, damage, message):
    path = _saved_sharpness(tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(lv.StoreError, match=message) as caught:
        lv.load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("state"), "with no 'state'"),
        (lambda d: d.update(state=[1, 2]), "with a list as its 'state'"),
        (lambda d: d.update(state="x"), "with a str as its 'state'"),
        (lambda d: d.pop("kind"), "without a result kind"),
        (lambda d: d.update(kind="from_the_future"), "unknown kind 'from_the_future'"),
        (lambda d: d["state"].pop("value"), r"cannot rebuild its sharpness result \(TypeError"),
        (lambda d: d["state"].update(extra=1), "cannot rebuild its sharpness result"),
    ],
    ids=["no-state", "list-state", "text-state", "no-kind", "unknown-kind", "missing", "unknown"],
)
def test_a_result_file_with_a_missing_or_unknown_state_is_a_store_error_naming_it(
    tmp_path, edit, message
):
    path = _saved_sharpness(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(lv.StoreError, match=message) as caught:
        lv.load(path)
    assert str(path) in str(caught.value)


def test_a_toy_result_naming_an_unknown_function_is_a_store_error(tmp_path):
    path = toys.run("quadratic", "gd", steps=3).save(tmp_path / "path.h5")
    import h5py

    with h5py.File(path, "r+") as f:
        function = json.loads(f["state"].attrs["function"])  # stored by name, rebuilt by get()
        f["state"].attrs["function"] = json.dumps({**function, "name": "no_such_function"})
    with pytest.raises(lv.StoreError, match="no_such_function") as caught:
        lv.load(path)
    assert str(path) in str(caught.value)


# -- warnings while the CLI runs a grid --------------------------------------------------------------
WARNING_LOSS = """
import warnings
import torch.nn.functional as F
from lossvista.errors import LossvistaWarning

calls = {"n": 0}


def loss(output, target):
    calls["n"] += 1
    if calls["n"] == 4:  # mid-grid, after the centre check
        warnings.warn("long run: about 3 h, 2 GB of memory, a 1 GB file", LossvistaWarning)
    return F.cross_entropy(output, target)
"""


def test_a_library_warning_raised_mid_grid_is_one_readable_stderr_line(tmp_path):
    module = tmp_path / "warning_loss.py"
    module.write_text(WARNING_LOSS)
    args = ["plane", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
            "--loss", f"{module}:loss", "--out", str(tmp_path / "p.h5"), "--steps", "4,3",
            "--device", "cpu", "--no-png"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = [line for line in result.output.splitlines() if "long run" in line]
    assert lines == ["Warning: long run: about 3 h, 2 GB of memory, a 1 GB file"]
    assert "warnings.warn" not in result.output and "LossvistaWarning" not in result.output


def test_the_long_run_estimate_of_a_grid_reaches_the_cli(tmp_path, monkeypatch):
    estimate = pytest.importorskip("lossvista._estimate", reason="the run estimate is not here yet")
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)  # every grid counts as long
    args = [
        "plane",
        "--model",
        f"{MODELS}:make_model",
        "--data",
        f"{MODELS}:make_data",
        "--out",
        str(tmp_path / "p.h5"),
        "--steps",
        "4,3",
        "--device",
        "cpu",
        "--no-png",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("Warning: long run")]
    assert len(lines) == 1 and "p.h5" in lines[0]


# -- the model is left alone by everything above ---------------------------------------------------
def test_plotting_and_loading_never_touch_a_model(tmp_path):
    model = cli_models.make_model()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, cli_models.make_data())
    result = lv.line(obj, lv.random_directions(model, 1)[0], steps=5, progress=False,
                     store=tmp_path / "l.h5")  # fmt: skip
    drawn(plot_landscape(lv.load(tmp_path / "l.h5"), title="cost $_$"))
    with pytest.raises(lv.InputError):
        lv.load(None)
    assert result.values["loss"].shape == (5,)
    assert_unchanged(model, before)
    assert torch.equal(next(model.parameters()), before["params"]["0.weight"])
