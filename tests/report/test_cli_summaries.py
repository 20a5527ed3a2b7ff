"""The summaries of ``lossvista hessian`` and ``lossvista sharpness`` are results: ``lv.load``
gives back what the command computed, and ``lossvista report`` shows their numbers."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from click.testing import CliRunner

import lossvista as lv
from lossvista.cli import main
from lossvista.curvature import HessianSummary
from lossvista.errors import InputError, StoreError

from ._page import read

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
import cli_models  # noqa: E402
from protocol import check_protocol  # noqa: E402

# The modules (``lossvista.cli.hessian`` is also the name of the command).
hessian_cli = importlib.import_module("lossvista.cli.hessian")
sharpness_cli = importlib.import_module("lossvista.cli.sharpness")

MODEL = f"{TESTS / 'cli_models.py'}:make_model"
DATA = f"{TESTS / 'cli_models.py'}:make_data"

#: The readable keys of each file before the format tag existed: they must stay as they were.
HESSIAN_KEYS = [
    "eigenvalues", "residuals", "converged", "all_converged", "spectral_norm", "n_hvp", "trace",
    "critical_point", "density", "settings",
]  # fmt: skip
SHARPNESS_KEYS = ["sharpness", "objective", "model", "model_kwargs", "data", "checkpoint"]


def invoke(*args: object):
    done = CliRunner().invoke(main, [str(a) for a in args])
    assert done.exit_code == 0, done.output + repr(done.exception)
    return done


def _recording(function, calls: list):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append(result)
        return result

    return wrapper


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Both commands run once, with the results they computed in memory kept beside their files."""
    folder = tmp_path_factory.mktemp("summaries")
    computed: dict[str, list] = {}
    with pytest.MonkeyPatch.context() as patch:
        for module, names in (
            (hessian_cli, ("hessian_eigs", "critical_point", "hessian_trace", "hessian_density")),
            (sharpness_cli, ("measure",)),
        ):
            for name in names:
                computed[name] = []
                patch.setattr(module, name, _recording(getattr(module, name), computed[name]))
        invoke(
            "hessian", "--model", MODEL, "--data", DATA, "--top-k", 2, "--trace", "--probes", 12,
            "--density", "--runs", 2, "--lanczos-steps", 8, "--device", "cpu", "--quiet",
            "--out", folder / "hz",
        )  # fmt: skip
        invoke(
            "sharpness", "--model", MODEL, "--data", DATA, "--kind", "average", "--rho", 0.01,
            "--samples", 6, "--device", "cpu", "--quiet", "--out", folder / "s.json",
        )  # fmt: skip
    assert all(len(calls) == 1 for calls in computed.values()), computed
    return {
        "hessian": folder / "hz" / "hessian.json",
        "sharpness": folder / "s.json",
        **{name: calls[0] for name, calls in computed.items()},
    }


def _no_vectors(eigs: lv.EigenResult) -> lv.EigenResult:
    return dataclasses.replace(eigs, vectors=())


# -- lv.load -------------------------------------------------------------------------------------
def test_hessian_json_loads_as_the_results_the_command_computed(written):
    loaded = lv.load(written["hessian"])
    assert isinstance(loaded, HessianSummary)
    top, verdict = written["hessian_eigs"], written["critical_point"]
    assert len(top.vectors) == 2 and loaded.eigs.vectors == ()  # eigenvectors left out
    assert loaded.eigs == _no_vectors(top)
    assert np.array_equal(loaded.eigs.values, top.values)  # bit for bit
    assert np.array_equal(loaded.eigs.residuals, top.residuals)
    assert loaded.critical_point == dataclasses.replace(verdict, eigs=_no_vectors(verdict.eigs))
    assert loaded.critical_point.kind == verdict.kind and loaded.critical_point.eigs.vectors == ()
    assert loaded.trace == written["hessian_trace"]
    assert loaded.trace.estimate == written["hessian_trace"].estimate
    assert loaded.density == written["hessian_density"]
    assert np.array_equal(loaded.density.nodes, written["hessian_density"].nodes)
    assert np.array_equal(loaded.density.weights, written["hessian_density"].weights)
    assert loaded.critical_point.density == loaded.density  # written once, shared on reading
    readable = json.loads(written["hessian"].read_text())
    assert loaded.settings == readable["settings"]
    states = readable["results"]  # no eigenvectors in the file: it stays small for any model
    assert states["eigs"]["vectors"] == [] == states["critical_point"]["eigs"]["vectors"]


def test_hessian_summary_round_trips_through_the_result_protocol(written, tmp_path):
    loaded = lv.load(written["hessian"])
    saved = loaded.save(tmp_path / "summary.json")
    header = json.loads(saved.read_text())
    assert (header["format"], header["kind"]) == ("lossvista-result", "hessian_summary")
    assert header["state"]["critical_point"]["density"] == "density"  # not a second copy
    again = lv.load(saved)
    assert isinstance(again, HessianSummary) and again == loaded
    trace = f"{written['hessian_trace'].estimate:.6g}"
    check_protocol(loaded, tmp_path, numbers=[written["critical_point"].kind, trace])
    assert again != dataclasses.replace(loaded, trace=None)
    rows = dict(loaded._summary())
    assert rows["verdict"] == written["critical_point"].kind
    assert rows["trace"] == written["hessian_trace"].estimate
    assert rows["negative_mass"] == written["hessian_density"].negative_mass
    figure = loaded.plot()  # the density when there is one (log axis)
    (ax,) = figure.axes
    assert ax.get_yscale() == "log"
    low, high = ax.get_xlim()
    assert low <= loaded.density.nodes.min() and loaded.density.nodes.max() <= high


def test_sharpness_summary_loads_as_the_sharpness_the_command_computed(written):
    loaded = lv.load(written["sharpness"])
    assert isinstance(loaded, lv.Sharpness)
    assert loaded == written["measure"]
    assert (loaded.value, loaded.stderr) == (written["measure"].value, written["measure"].stderr)


def test_the_readable_keys_are_unchanged(written):
    summary = json.loads(written["hessian"].read_text())
    assert list(summary) == ["format", "format_version", *HESSIAN_KEYS, "results"]
    assert (summary["format"], summary["format_version"]) == ("lossvista-hessian-summary", 1)
    top, verdict = written["hessian_eigs"], written["critical_point"]
    trace, density = written["hessian_trace"], written["hessian_density"]
    assert summary["eigenvalues"] == top.values.tolist()
    assert summary["residuals"] == top.residuals.tolist()
    assert summary["converged"] == top.converged.tolist()
    assert summary["all_converged"] is top.all_converged
    assert summary["spectral_norm"] == top.spectral_norm
    assert summary["n_hvp"] == {
        "eigenvalues": top.n_hvp,
        "critical_point": verdict.eigs.n_hvp - top.n_hvp,
        "trace": trace.n_hvp,
        "density": density.n_hvp,
        "total": verdict.eigs.n_hvp + trace.n_hvp + density.n_hvp,
    }
    assert summary["trace"] == {
        "estimate": trace.estimate,
        "stderr": trace.stderr,
        "method": "hutchinson",
        "n_probes": 12,
        "n_hvp": trace.n_hvp,
    }
    point = {k: v for k, v in verdict.as_dict().items() if k not in ("eigs", "density")}
    assert summary["critical_point"] == point
    assert summary["density"] == {
        "negative_mass": density.negative_mass,
        "n_runs": 2,
        "n_steps": 8,
        "width": density.width,
        "plot": "density.png",
    }
    assert list(summary["settings"]) == [
        "model", "model_kwargs", "data", "checkpoint", "top_k", "critical", "tol", "max_iter",
        "seed", "hvp", "objective", "lossvista",
    ]  # fmt: skip
    assert summary["settings"]["top_k"] == 2 and summary["settings"]["model"] == MODEL

    sharp = json.loads(written["sharpness"].read_text())
    assert list(sharp) == [
        "format", "format_version", *SHARPNESS_KEYS, "lossvista", "results",
    ]  # fmt: skip
    assert (sharp["format"], sharp["format_version"]) == ("lossvista-sharpness-summary", 1)
    assert sharp["sharpness"] == written["measure"].as_dict()
    assert sharp["objective"]["n_samples"] == cli_models.N_SAMPLES
    assert (sharp["model"], sharp["data"], sharp["checkpoint"]) == (MODEL, DATA, None)


# -- the report ----------------------------------------------------------------------------------
def test_report_of_both_summaries_shows_their_numbers(written, tmp_path):
    out = tmp_path / "r.html"
    invoke("report", written["hessian"], written["sharpness"], "--out", out)
    page, _ = read(out)
    assert [s.kind for s in page.sections] == ["hessian_summary", "sharpness"]
    section = page.sections[0]
    summary = json.loads(written["hessian"].read_text())
    eigs = section.table("eigenvalues")
    assert [float(v) for v in eigs.column("eigenvalue")] == summary["eigenvalues"]
    assert [float(v) for v in eigs.column("residual")] == summary["residuals"]
    trace = section.table("trace")
    assert float(trace.column("trace")[0]) == summary["trace"]["estimate"]
    assert float(trace.column("stderr")[0]) == summary["trace"]["stderr"]
    verdict = section.table("verdict")
    assert verdict.rows[0][0][0] == summary["critical_point"]["kind"]
    assert float(verdict.column("lambda_min")[0]) == summary["critical_point"]["lambda_min"]
    assert float(verdict.column("lambda_max")[0]) == summary["critical_point"]["lambda_max"]
    mass = section.table("density_summary").as_dict()["negative_mass"][1]
    assert float(mass) == summary["density"]["negative_mass"]
    density = written["hessian_density"]
    curves = [f["data"][0] for f in section.figures if f["data"][0].get("name") == "density"]
    assert len(curves) == 1 and curves[0]["x"] == density.grid.tolist()
    sharp = json.loads(written["sharpness"].read_text())["sharpness"]
    table = page.sections[1].table("sharpness")
    assert float(table.column("value")[0]) == sharp["value"]
    assert float(table.column("stderr")[0]) == sharp["stderr"]
    assert float(table.column("rho")[0]) == sharp["rho"] == 0.01


def test_a_summary_without_the_optional_parts_has_a_section_of_its_eigenvalues():
    eigs = lv.EigenResult(
        values=np.array([2.0, 1.0]),
        vectors=(),
        residuals=np.array([1e-9, 2e-9]),
        converged=np.array([True, True]),
        n_hvp=10,
        spectral_norm=2.0,
        iterations=8,
        restarts=0,
        which="largest",
        k=2,
        tol=1e-6,
        seed=0,
    )
    summary = HessianSummary(eigs=eigs, settings={"top_k": 2})
    from lossvista.report._sections import section_for

    section = section_for(summary, "by hand")
    roles = [getattr(b, "role", None) for b in section.blocks]
    assert section.kind == "hessian_summary" and "verdict" not in roles and "trace" not in roles
    assert roles.count("summary") == 1 and roles.count("eigenvalues") == 1
    figure = summary.plot()  # no density: the eigenvalues
    drawn = [np.asarray(line.get_ydata(), dtype=float).tolist() for line in figure.axes[0].lines]
    assert [2.0, 1.0] in drawn
    with pytest.raises(InputError, match="eigs must be an EigenResult"):
        HessianSummary(eigs=None)  # type: ignore[arg-type]


# -- damaged files -------------------------------------------------------------------------------
def _damaged(source: Path, target: Path, change) -> Path:
    data = json.loads(source.read_text())
    change(data)
    target.write_text(json.dumps(data))
    return target


@pytest.mark.parametrize(
    ("which", "change", "message"),
    [
        ("hessian", lambda d: d.pop("results"), "with no 'results'.*lossvista hessian"),
        ("hessian", lambda d: d["results"].pop("eigs"), "cannot rebuild.*missing 'eigs'"),
        ("hessian", lambda d: d.update(format_version=2), "version 2, newer"),
        ("hessian", lambda d: d.update(results=[1]), "a list as 'results'"),
        ("sharpness", lambda d: d.pop("results"), "with no 'results'.*lossvista sharpness"),
        ("sharpness", lambda d: d["results"]["sharpness"].pop("rho"), "sharpness summary"),
    ],
)
def test_a_damaged_summary_is_a_store_error_naming_the_file(
    written, tmp_path, which, change, message
):
    bad = _damaged(written[which], tmp_path / "bad.json", change)
    with pytest.raises(StoreError, match=message) as caught:
        lv.load(bad)
    assert str(bad) in str(caught.value)
    done = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "r.html")])
    assert done.exit_code != 0 and str(bad) in done.output and "Traceback" not in done.output
    assert not (tmp_path / "r.html").exists()
