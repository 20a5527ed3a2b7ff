"""``lossvista report FILE... --out report.html`` on files written by ``save`` and by the CLI."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
from click.testing import CliRunner

from lossvista.cli import main

from ._page import read


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_report_of_saved_files(results, tmp_path):
    files = [
        results["plane"].save(tmp_path / "plane.h5"),
        results["interpolation"].save(tmp_path / "path.h5"),
        results["eigs"].save(tmp_path / "eigs.h5"),
        results["trace"].save(tmp_path / "trace.json"),
        results["monitor"].save(tmp_path / "monitor.json"),
        results["race"].save(tmp_path / "race.h5"),
    ]
    out = tmp_path / "site" / "report.html"
    done = invoke("report", *files, "--out", out, "--title", "CLI <run>", "--notes", "n")
    assert done.exit_code == 0, done.output
    assert str(out) in done.output
    parsed, text = read(out)
    assert [s.kind for s in parsed.sections] == [
        "landscape-2d",
        "interpolation",
        "eigen_result",
        "trace_estimate",
        "training_monitor",
        "toy_race",
    ]
    assert [s.title.rsplit(": ", 1)[1] for s in parsed.sections] == [f.name for f in files]
    assert parsed.title == "CLI <run>" and "CLI <run>" not in text
    eigs = parsed.sections[2].table("eigenvalues")
    assert [float(v) for v in eigs.column("eigenvalue")] == results["eigs"].values.tolist()
    # The surface file keeps the training path: it is drawn from the file.
    surface = parsed.sections[0].figures[0]["data"]
    assert surface[1]["x"] == results["plane"].trajectory[:, 0].tolist()


@pytest.mark.slow  # the race command draws its picture with matplotlib (several seconds)
def test_report_of_files_the_cli_wrote(tmp_path):
    race_dir = tmp_path / "race"
    done = invoke(
        "toys",
        "race",
        "--function",
        "rosenbrock",
        "--optimizers",
        "gd,adam",
        "--steps",
        "20",
        "--out",
        race_dir,
    )
    assert done.exit_code == 0, done.output
    done = invoke("report", race_dir / "race.h5", "--out", tmp_path / "r.html")
    assert done.exit_code == 0, done.output
    parsed, _ = read(tmp_path / "r.html")
    assert [s.kind for s in parsed.sections] == ["toy_race"]
    names = [r[0][0] for r in parsed.sections[0].table("race").rows]
    assert names == ["gd", "adam"]


def test_a_file_lossvista_did_not_write_is_a_one_line_error(tmp_path):
    stranger = tmp_path / "notes.json"
    stranger.write_text('{"hello": 1}')
    done = invoke("report", stranger, "--out", tmp_path / "r.html")
    assert done.exit_code != 0
    assert "not a file lossvista wrote" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "r.html").exists()
