"""Sharpness and SurfaceMetrics follow the result protocol; ``steps=`` is the deprecated
``ascent_steps=``."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import lossvista as lv
from conftest import Quadratic, VectorModel, quadratic_problem
from lossvista.errors import InputError, NonFiniteLossWarning
from lossvista.landscape import Landscape
from lossvista.sharpness import Sharpness, sharpness
from lossvista.surface_metrics import SurfaceMetrics, surface_metrics
from protocol import check_protocol

RHO = 0.1


def at_minimum() -> lv.Objective:
    quad = Quadratic(6, seed=0, offset=0.3)
    data = (torch.zeros(10, 1, dtype=torch.float64), torch.zeros(10, dtype=torch.float64))
    return lv.Objective(VectorModel(quad.theta_star), quad, data)


def away_from_minimum() -> lv.Objective:
    model, quad, data = quadratic_problem(seed=0)
    return lv.Objective(model, quad, data)


def plane(function) -> Landscape:
    x, y = np.linspace(-1, 1, 21), np.linspace(-1, 1, 31)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return Landscape(coords=(x, y), values={"loss": function(X, Y)}, kind="plane")


def shown(value: float) -> str:
    """A number as the notebook view writes it."""
    return f"{value:.6g}"


# -- Sharpness -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        dict(kind="worst", norm="l2", ascent_steps=30, restarts=1),
        dict(kind="worst", norm="linf", ascent_steps=10, restarts=1),
        dict(kind="adaptive", eta=0.01, ascent_steps=10, restarts=1),
        dict(kind="epsilon", ascent_steps=10, restarts=1),
        dict(kind="average", samples=20, seed=3),
        dict(kind="average", noise="sphere", samples=20),
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
def test_sharpness_follows_the_protocol_with_its_key_numbers_in_the_notebook(settings, tmp_path):
    result = sharpness(away_from_minimum(), rho=RHO, **settings)
    numbers = [shown(result.value), result.kind, "rho", shown(RHO), shown(result.base_loss)]
    if result.kind == "average":
        numbers += ["stderr", shown(result.stderr), result.settings["noise"], "samples"]
    else:
        numbers += ["norm", result.settings["norm"], "ascent_steps", "lower bound"]
    if result.kind == "epsilon":
        numbers += ["keskar", shown(result.keskar)]
    loaded = check_protocol(result, tmp_path, numbers=numbers, name="sharpness.json")
    assert loaded.value == result.value and loaded.settings == result.settings
    assert loaded.keskar == result.keskar and loaded.lambda_max is None


def test_sharpness_files_carry_their_own_tag_not_the_sharpness_kind(tmp_path):
    # The dataclass field ``kind`` ("worst") must not become the file's result kind.
    result = sharpness(at_minimum(), kind="worst", rho=RHO, ascent_steps=5)
    path = result.save(tmp_path / "s.json")
    header = json.loads(path.read_text())
    assert header["format"] == "lossvista-result" and header["kind"] == "sharpness"
    assert lv.load(path).kind == "worst"


def _has_hessian_eigs() -> bool:
    try:
        from lossvista.curvature import hessian_eigs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_hessian_eigs(), reason="needs lossvista.curvature.hessian_eigs")
def test_hessian_sharpness_follows_the_protocol(tmp_path):
    result = sharpness(at_minimum(), kind="hessian", rho=RHO)
    numbers = ["hessian", shown(result.value), "lambda_max", shown(result.lambda_max), "tol"]
    loaded = check_protocol(result, tmp_path, numbers=numbers, name="hessian.json")
    assert loaded.lambda_max == result.lambda_max


def test_a_nan_sharpness_is_strict_json_with_null_and_comes_back_nan(tmp_path):
    def nan_loss(output, target):
        return (output.sum() * float("nan")).reshape(())

    model, _, data = quadratic_problem()
    with pytest.warns(NonFiniteLossWarning):
        result = sharpness(lv.Objective(model, nan_loss, data), kind="average", rho=RHO, samples=3)
    assert math.isnan(result.value) and math.isnan(result.stderr)
    payload = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert payload["value"] is None and payload["stderr"] is None
    assert payload["kind"] == "average" and payload["settings"]["samples"] == 3
    loaded = check_protocol(result, tmp_path, numbers=["nan"], name="nan.json")
    assert math.isnan(loaded.value)


def test_as_dict_keeps_the_keys_of_earlier_versions():
    result = sharpness(at_minimum(), kind="epsilon", rho=RHO, ascent_steps=5)
    assert list(result.as_dict()) == [
        "value", "stderr", "kind", "rho", "settings", "base_loss", "perturbed_loss",
        "n_evaluations", "lambda_max", "keskar",
    ]  # fmt: skip
    # The settings key stays "steps", so summaries written before the rename still read alike.
    assert result.as_dict()["settings"]["steps"] == 5


# -- the deprecated steps= ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind, objective", [("worst", at_minimum), ("epsilon", away_from_minimum)])
def test_steps_is_a_deprecated_name_of_ascent_steps_with_the_same_result(kind, objective):
    obj = objective()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        expected = sharpness(obj, kind=kind, rho=RHO, ascent_steps=7, restarts=2, seed=4)
    with pytest.warns(DeprecationWarning, match="ascent_steps") as record:
        old = sharpness(obj, kind=kind, rho=RHO, steps=7, restarts=2, seed=4)
    assert old == expected and old.value == expected.value
    assert old.n_evaluations == expected.n_evaluations
    assert record[0].filename == __file__  # the warning points at the caller's line


def test_steps_and_ascent_steps_together_are_refused():
    with pytest.raises(InputError, match=r"ascent_steps= .*old name"):
        sharpness(at_minimum(), kind="worst", rho=RHO, ascent_steps=5, steps=5)


def test_a_bad_deprecated_steps_is_refused_under_the_new_name():
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(InputError, match=r"^ascent_steps must be"),
    ):
        sharpness(at_minimum(), kind="worst", rho=RHO, steps=0)
    with pytest.raises(InputError, match=r"^ascent_steps must be a positive integer, got True"):
        sharpness(at_minimum(), kind="worst", rho=RHO, ascent_steps=True)


def test_the_default_is_twenty_ascent_steps():
    obj = at_minimum()
    assert sharpness(obj, kind="worst", rho=RHO).settings["steps"] == 20
    assert sharpness(obj, kind="worst", rho=RHO, ascent_steps=20) == sharpness(
        obj, kind="worst", rho=RHO
    )


# -- SurfaceMetrics --------------------------------------------------------------------------------
def test_surface_metrics_follow_the_protocol_with_their_key_numbers(tmp_path):
    metrics = surface_metrics(plane(lambda X, Y: X**2 - Y**2 + 0.05 * np.sin(9 * X)), delta=0.2)
    assert len(metrics.saddles) == 1 and metrics.convexity_ratio not in (0.0, 1.0)
    numbers = [
        "21 x 31",
        shown(metrics.roughness),
        shown(metrics.mean_abs_slope),
        shown(metrics.convexity_ratio),
        ", ".join(shown(w) for w in metrics.basin_width),
        shown(metrics.lowest["value"]),
        "saddles",
        "basin_width",
    ]
    loaded = check_protocol(metrics, tmp_path, numbers=numbers, name="metrics.json")
    # Tuples (shape, per-axis numbers, point coordinates) come back as tuples.
    assert loaded.shape == (21, 31) and isinstance(loaded.basin_bounds[0], tuple)
    assert loaded.saddles[0]["coords"] == metrics.saddles[0]["coords"]


def test_surface_metrics_with_nan_fields_are_strict_json_and_come_back_equal(tmp_path):
    # Two points: no second difference (convexity NaN), and a NaN centre (basin width NaN).
    line = Landscape(
        coords=(np.array([0.0, 1.0]),), values={"loss": np.array([np.nan, 2.0])}, kind="line"
    )
    metrics = surface_metrics(line)
    assert math.isnan(metrics.convexity_ratio) and math.isnan(metrics.basin_width[0])
    payload = json.loads(json.dumps(metrics.as_dict(), allow_nan=False))
    assert payload["convexity_ratio"] is None and payload["basin_width"] == [None]
    assert payload["nan_count"] == 1 and payload["lowest"]["value"] == 2.0
    loaded = check_protocol(metrics, tmp_path, numbers=["nan", "nan_count"], name="line.json")
    assert math.isnan(loaded.convexity_ratio) and isinstance(loaded, SurfaceMetrics)


def test_results_round_trip_through_a_plain_file_name(tmp_path):
    # ``lv.load`` recognises both kinds from the contents, whatever the file is called.
    result = sharpness(at_minimum(), kind="worst", rho=RHO, ascent_steps=3)
    assert isinstance(lv.load(result.save(tmp_path / "no-extension")), Sharpness)
    metrics = surface_metrics(plane(lambda X, Y: X**2 + Y**2))
    assert isinstance(lv.load(metrics.save(tmp_path / "metrics.data")), SurfaceMetrics)
