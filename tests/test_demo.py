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
    "path_plane.h5",
    "interpolation.h5",
    "interpolation.png",
    "hessian_eigs.h5",
    "sharpness.json",
    "report.html",
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


def test_eigenvalues_and_sharpness_are_the_librarys(demo):
    objective = lv.Objective(final_model(demo), F.cross_entropy, digits_data("train"))
    eigs = lv.load(demo.out_dir / "hessian_eigs.h5")
    assert isinstance(eigs, lv.EigenResult) and eigs.all_converged
    assert demo.top_eigenvalues == tuple(eigs.values.tolist())
    expected = lv.hessian_eigs(objective, k=len(eigs.values), seed=0)
    np.testing.assert_allclose(eigs.values, expected.values, rtol=1e-6)
    sharp = lv.load(demo.out_dir / "sharpness.json")
    assert sharp.kind == "average" and sharp.value == demo.sharpness
    again = lv.sharpness(objective, kind="average", rho=sharp.rho,
                         samples=sharp.settings["samples"], seed=0)  # fmt: skip
    assert again.value == pytest.approx(sharp.value, rel=1e-9, abs=1e-12)


def test_the_report_shows_the_run(demo):
    from report._page import read  # tests/report/_page.py: the report reader

    assert demo.report == demo.out_dir / "report.html"
    page, _ = read(demo.report)
    kinds = [s.kind for s in page.sections]
    assert kinds == [
        "landscape-2d", "landscape-2d", "landscape-1d", "interpolation", "eigen_result",
        "sharpness",
    ]  # fmt: skip
    assert [s.title.rsplit(": ", 1)[1] for s in page.sections[:4]] == [
        "path_plane.h5", "plane.h5", "line.h5", "interpolation.h5"
    ]  # fmt: skip
    plane = lv.load(demo.out_dir / "plane.h5")
    # The training path: the initialisation and one snapshot per epoch, projected on the plane.
    assert plane.trajectory is not None and plane.trajectory.shape == (9, 2)
    surface = page.sections[1].figures[0]["data"]
    assert surface[1]["x"] == plane.trajectory[:, 0].tolist()
    np.testing.assert_allclose(plane.trajectory[-1], 0.0, atol=1e-6)  # it ends at the centre
    table = page.sections[4].table("eigenvalues")
    assert [float(v) for v in table.column("eigenvalue")] == list(demo.top_eigenvalues)
    barrier = page.sections[3].table("barrier")
    assert float(barrier.rows[0][3][1]) == demo.barrier
    assert float(page.sections[5].table("sharpness").rows[0][1][1]) == demo.sharpness


def test_the_path_plane_spans_the_training_path(demo):
    from report._page import read

    # The plane of the path's two principal directions: the path lies in it (unlike on random
    # directions, where it projects almost to a point), inside the grid, ending at the centre.
    path_plane = lv.load(demo.out_dir / "path_plane.h5")
    random_plane = lv.load(demo.out_dir / "plane.h5")
    path = path_plane.trajectory
    assert path.shape == (9, 2) and path_plane.complete
    np.testing.assert_allclose(path[-1], 0.0, atol=1e-6)
    for axis in range(2):
        assert path_plane.coords[axis][0] < path[:, axis].min()
        assert path[:, axis].max() < path_plane.coords[axis][-1]
    extent = np.ptp(path, axis=0).max()
    assert extent > 100 * np.ptp(random_plane.trajectory, axis=0).max()
    assert path_plane.center["loss"] == pytest.approx(random_plane.center["loss"], rel=1e-6)
    page, _ = read(demo.report)
    assert page.sections[0].figures[0]["data"][1]["x"] == path[:, 0].tolist()


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
