"""``lossvista hessian`` writes what the library computes from the same inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

import lossvista as lv
from lossvista.checkpoint import load_checkpoint
from lossvista.cli.hessian import hessian
from lossvista.curvature import critical_point, hessian_eigs, hessian_trace

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
import cli_models  # noqa: E402

MODEL = f"{TESTS / 'cli_models.py'}:make_model"
DATA = f"{TESTS / 'cli_models.py'}:make_data"


def invoke(*args: object, code: int = 0):
    result = CliRunner().invoke(hessian, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_writes_the_summary_and_the_density_plot(tmp_path):
    out = tmp_path / "curv"
    result = invoke(
        "--model", MODEL, "--data", DATA, "--out", out, "--top-k", 3, "--trace",
        "--probes", 30, "--density", "--runs", 2, "--lanczos-steps", 10, "--device", "cpu",
    )  # fmt: skip
    assert "top-3 eigenvalues" in result.output and "critical point:" in result.output
    summary = json.loads((out / "hessian.json").read_text())
    obj = lv.Objective(cli_models.make_model(), F.cross_entropy, cli_models.make_data())
    expected = hessian_eigs(obj, 3)
    np.testing.assert_allclose(summary["eigenvalues"], expected.values, rtol=1e-5)
    assert summary["converged"] == [True, True, True]
    assert len(summary["residuals"]) == 3 and summary["n_hvp"]["total"] > 0
    trace = hessian_trace(obj, n_probes=30)
    assert summary["trace"]["estimate"] == pytest.approx(trace.estimate, rel=1e-5)
    assert summary["trace"]["stderr"] == pytest.approx(trace.stderr, rel=1e-4)
    verdict = critical_point(obj, eigs=expected)
    assert summary["critical_point"]["kind"] == verdict.kind
    assert summary["critical_point"]["lambda_min"] == pytest.approx(verdict.lambda_min, rel=1e-4)
    assert 0.0 <= summary["density"]["negative_mass"] <= 1.0
    assert summary["settings"]["top_k"] == 3 and summary["settings"]["objective"]["params"]
    image = matplotlib.image.imread(out / "density.png")
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_checkpoint_params_and_quiet(tmp_path):
    model = cli_models.make_model()
    for p in model.parameters():
        p.data.mul_(1.5)
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "curv"
    result = invoke(
        "--model", MODEL, "--data", DATA, "--checkpoint", checkpoint, "--out", out,
        "--top-k", 2, "--params", "2.*", "--quiet", "--device", "cpu",
    )  # fmt: skip
    assert result.output == ""
    summary = json.loads((out / "hessian.json").read_text())
    reference = cli_models.make_model()
    load_checkpoint(reference, checkpoint)
    obj = lv.Objective(reference, F.cross_entropy, cli_models.make_data(), params=["2.*"])
    np.testing.assert_allclose(summary["eigenvalues"], hessian_eigs(obj, 2).values, rtol=1e-5)
    assert summary["settings"]["objective"]["params"] == ["2.weight", "2.bias"]
    assert not (out / "density.png").exists() and summary["density"] is None


def test_bad_inputs_are_clean_errors(tmp_path):
    result = invoke("--model", "nowhere:nothing", "--data", DATA, "--out", tmp_path, code=2)
    assert "Traceback" not in result.output and "--model" in result.output
    result = invoke("--model", MODEL, "--data", DATA, "--out", tmp_path, "--top-k", 0, code=2)
    assert "--top-k" in result.output


def test_hvp_backend_option_its_old_name_and_the_default_tolerance(tmp_path):
    common = ("--model", MODEL, "--data", DATA, "--top-k", 1, "--device", "cpu")
    invoke(*common, "--out", tmp_path / "new", "--hvp-backend", "forward_over_reverse")
    new = json.loads((tmp_path / "new" / "hessian.json").read_text())
    assert new["settings"]["hvp"] == "forward_over_reverse"
    # No --tol: the library's default for the float32 model, recorded as used.
    assert new["settings"]["tol"] == 1e-5

    result = invoke(*common, "--out", tmp_path / "old", "--hvp", "forward_over_reverse")
    assert "--hvp is deprecated; use --hvp-backend" in result.output
    old = json.loads((tmp_path / "old" / "hessian.json").read_text())
    assert (
        old["eigenvalues"] == new["eigenvalues"]
        and old["settings"]["hvp"] == "forward_over_reverse"
    )

    result = invoke(
        *common, "--out", tmp_path / "both", "--hvp", "auto", "--hvp-backend", "auto", code=2
    )
    assert "--hvp-backend only" in result.output
    help_text = invoke("--help").output
    assert "--hvp-backend" in help_text and "--hvp " not in help_text

    invoke(*common, "--out", tmp_path / "tol", "--tol", 1e-4)
    assert json.loads((tmp_path / "tol" / "hessian.json").read_text())["settings"]["tol"] == 1e-4
