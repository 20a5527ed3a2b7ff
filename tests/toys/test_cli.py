"""``lossvista toys race | scaling``: the files written hold what the library computes."""

from __future__ import annotations

import csv
import json

import click
import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import lossvista as lv
from lossvista.cli.toys import toys
from lossvista.toys import Race, race, scaling_study


def invoke(*args: object, code: int = 0):
    result = CliRunner().invoke(toys, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


def test_race_writes_the_table_picture_and_gif(tmp_path):
    out = tmp_path / "race"
    result = invoke(
        "race", "--function", "himmelblau", "--optimizers", "gd,momentum,adam,annealing",
        "--steps", "60", "--lr", "0.005,adam=0.2", "--start=0.5,-0.5", "--frames", "5",
        "--out", out,
    )  # fmt: skip
    for name in ("race.png", "race.gif", "race.json", "race.csv", "race.h5"):
        assert (out / name).is_file() and str(out / name) in result.output
    expected = race(
        "himmelblau",
        [("gd", {"lr": 0.005}), ("momentum", {"lr": 0.005}), ("adam", {"lr": 0.2}), "annealing"],
        steps=60,
        start=(0.5, -0.5),
    )
    saved = json.loads((out / "race.json").read_text())
    assert without_times(saved["table"]) == without_times(expected.table.to_records())
    assert saved["hyperparameters"]["adam"] == {"lr": 0.2}
    assert saved["hyperparameters"]["momentum"] == {"lr": 0.005, "momentum": 0.9}
    assert saved["start"] == [0.5, -0.5] and saved["function"] == "himmelblau"
    whole = lv.load(out / "race.h5")  # the whole race, every path
    assert isinstance(whole, Race) and list(whole.paths) == list(expected.paths)
    assert without_times(whole.table.rows) == without_times(expected.table.rows)
    for label, path in expected.paths.items():
        np.testing.assert_array_equal(whole.paths[label].points, path.points)
    rows = list(csv.DictReader((out / "race.csv").open()))
    assert [r["name"] for r in rows] == ["gd", "momentum", "adam", "annealing"]
    with Image.open(out / "race.gif") as gif:
        assert gif.n_frames == 5
    assert matplotlib.image.imread(out / "race.png").shape[2] in (3, 4)
    assert "| name" in result.output  # the table is printed


def test_race_without_gif_and_with_defaults(tmp_path):
    invoke("race", "--steps", "20", "--no-gif", "--out", tmp_path)
    assert not (tmp_path / "race.gif").exists()
    saved = json.loads((tmp_path / "race.json").read_text())
    assert saved["function"] == "rosenbrock" and saved["start"] == [-1.2, 1.0]
    assert [row["name"] for row in saved["table"]] == ["gd", "momentum", "adam"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizers", "gd,adan"], "unknown optimizer 'adan'"),
        (["--optimizers", ","], "at least one optimizer"),
        (["--lr", "fast"], "a learning rate is a positive number"),
        (["--lr", "sgd=0.1"], "'sgd' is not among --optimizers"),
        (["--optimizers", "gd,grid", "--lr", "grid=0.1"], "grid has no learning rate"),
        (["--start", "1"], "is not two numbers x,y"),
        (["--function", "banana"], "'banana' is not one of"),
    ],
)
def test_race_rejects_bad_options_with_usage_errors(tmp_path, args, message):
    result = invoke("race", *args, "--out", tmp_path, code=2)
    assert message in result.output


def test_a_gif_needs_two_frames(tmp_path):
    result = invoke("race", "--steps", "2", "--frames", "1", "--out", tmp_path, code=2)
    assert "--frames" in result.output


def test_scaling_writes_the_numbers_and_the_picture(tmp_path):
    result = invoke("scaling", "--samples", "100", "--seed", "3", "--out", tmp_path)
    expected = scaling_study(seed=3, n_samples=100)
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["raw"]["condition_number"] == expected.condition_number_raw
    assert saved["scaled"]["iterations"] == expected.iterations_scaled
    assert saved["raw"]["iterations"] == expected.iterations_raw and saved["samples"] == 100
    assert saved["raw"]["eigenvalues_XtX"] == expected.raw.eigenvalues.tolist()
    assert lv.load(tmp_path / "scaling.h5") == expected  # the whole study: data, paths, surfaces
    assert matplotlib.image.imread(tmp_path / "scaling.png").shape[1] > 1000  # two panels
    assert f"{expected.condition_number_raw:.4g}" in result.output


def test_every_option_has_help_text():
    for command in toys.commands.values():
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                assert parameter.help, f"{command.name} {parameter.opts} has no help"
    listing = invoke("--help").output
    assert "race" in listing and "scaling" in listing
