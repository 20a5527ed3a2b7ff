"""The demo: it trains a good model and every number it writes is the library's own."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import lossvista as lv
from lossvista.checkpoint import load_checkpoint
from lossvista.demo import digits_cnn, digits_data, run_demo, train_digits_cnn

pytestmark = pytest.mark.slow

EXPECTED_FILES = (
    "model_init.pt",
    "model_final.pt",
    "line.h5",
    "line.png",
    "plane.h5",
    "plane_contour.png",
    "plane_surface3d.png",
    "interpolation.h5",
    "interpolation.png",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, progress=False, echo=None)


def final_model(demo) -> torch.nn.Module:
    return load_checkpoint(digits_cnn(), demo.out_dir / "model_final.pt")


def test_every_file_is_written(demo):
    for name in EXPECTED_FILES:
        path = demo.out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert sorted(p.name for p in demo.files.values()) == sorted(EXPECTED_FILES)


def test_the_trained_model_is_accurate(demo):
    assert demo.test_accuracy > 0.95
    test = lv.Objective(
        final_model(demo), F.cross_entropy, digits_data("test"), metrics=["accuracy"]
    )
    assert test.evaluate()["accuracy"] == pytest.approx(demo.test_accuracy)


def test_plane_and_line_centre_is_the_final_models_loss(demo):
    objective = lv.Objective(final_model(demo), F.cross_entropy, digits_data("train"))
    loss = objective.loss()
    plane = lv.load(demo.out_dir / "plane.h5")
    line = lv.load(demo.out_dir / "line.h5")
    assert plane.shape == (25, 25) and plane.complete
    assert plane.center["loss"] == pytest.approx(loss, rel=1e-6)
    assert plane.values["loss"][12, 12] == pytest.approx(loss, rel=1e-4)
    assert line.values["loss"][25] == pytest.approx(loss, rel=1e-4)
    assert demo.center_loss == pytest.approx(loss, rel=1e-6)
    assert set(plane.metrics) == {"loss", "accuracy"}
    # The directions are filter-normalised: each filter of a weight has the weight's filter norm.
    d1 = plane.directions[0]
    weight = final_model(demo)[0].weight.detach()
    np.testing.assert_allclose(
        d1["0.weight"].flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1), rtol=1e-5
    )
    assert float(d1["0.bias"].abs().max()) == 0.0  # biases ignored


def test_interpolation_endpoints_are_the_models_losses_with_recomputed_batchnorm(demo):
    path = lv.load(demo.out_dir / "interpolation.h5")
    assert isinstance(path, lv.Interpolation)
    np.testing.assert_allclose(path.coords[0][[0, -1]], [-0.5, 1.5])
    assert path.settings["objective"]["bn"] == "recompute"
    train = digits_data("train")
    initial = load_checkpoint(digits_cnn(), demo.out_dir / "model_init.pt")
    for key, model in (("a", initial), ("b", final_model(demo))):
        expected = lv.Objective(model, F.cross_entropy, train, bn="recompute").loss()
        assert path.endpoints[key]["loss"] == pytest.approx(expected, rel=1e-4), key
    assert path.barrier == pytest.approx(demo.barrier)
    assert path.endpoints["a"]["loss"] > 2.0 > 0.1 > path.endpoints["b"]["loss"]


def test_the_initial_checkpoint_is_the_factory_initialisation(demo):
    initial = load_checkpoint(digits_cnn(), demo.out_dir / "model_init.pt")
    for (name, p), q in zip(initial.state_dict().items(), digits_cnn().state_dict().values()):
        assert torch.equal(p, q), name


def test_training_is_deterministic():
    data = digits_data("train")
    first = train_digits_cnn(digits_cnn(), data, epochs=1).state_dict()
    second = train_digits_cnn(digits_cnn(), data, epochs=1).state_dict()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
