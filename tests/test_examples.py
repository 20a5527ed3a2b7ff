"""The gallery in docs/examples runs (small sizes) and its numbers are the library's own."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import lossvista as lv

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
pytestmark = pytest.mark.slow


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet_on_synthetic_images(tmp_path):
    out = example("resnet_synthetic").main(small=True, out=tmp_path)
    plane, obj = out["plane"], out["objective"]
    assert plane.complete and plane.shape == (5, 5)
    assert plane.values["loss"][2, 2] == pytest.approx(obj.loss(), rel=1e-4)
    assert (tmp_path / "resnet_plane.h5").is_file() and (tmp_path / "resnet_plane.png").is_file()
    assert lv.load(tmp_path / "resnet_plane.h5") == plane
    assert np.isfinite(out["eigs"].values[0]) and np.isfinite(out["sharpness"].value)


def test_tiny_lm_counts_tokens_and_its_curvature_is_exact():
    out = example("tiny_lm_tokens").main(small=True)
    obj, line = out["objective"], out["line"]
    assert obj.loss() == pytest.approx(out["own"], rel=1e-5)  # the model's own token mean
    assert line.center["loss"] == pytest.approx(out["own"], rel=1e-5)
    eigs = out["eigs"]
    assert eigs.all_converged and eigs.settings["hvp_backend"] != "finite_difference"


def test_lora_adapter_moves_only_the_adapters_and_warns_about_zeroed_filters():
    module = example("lora_landscape")
    out = module.main(small=True)
    obj, plane = out["objective"], out["plane"]
    assert all("lora_" in name for name in obj.param_names)
    loss = plane.values["loss"]
    assert loss.max() - loss.min() > 1e-3  # not the flat plane of a zeroed lora_B
    with pytest.warns(lv.LossvistaWarning, match="lora_B"):
        lv.random_directions(obj, 1, norm="filter", ignore=(), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lv.LossvistaWarning)
        lv.random_directions(obj, 1, norm="model", ignore=(), seed=0)
    assert torch.count_nonzero(obj.parameters()["0.lora_B"]) == 0  # the model was not changed
