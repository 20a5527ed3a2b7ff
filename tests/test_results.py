"""The result protocol on slices, trajectories and training results: strict JSON, notebook HTML with
the key numbers, save + lv.load giving an equal object of the same type (see protocol.py)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv
from conftest import classification_data, make_mlp
from lossvista.trajectory import TrajectoryRecorder, pca_directions, project, reduce_trajectory
from protocol import check_protocol


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def objective() -> lv.Objective:
    return lv.Objective(make_mlp(), F.cross_entropy, classification_data(), metrics=["accuracy"])


def trained_path(steps: int = 8) -> lv.Trajectory:
    model = make_mlp(seed=1)
    X, y = classification_data()
    recorder = TrajectoryRecorder(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        recorder.record(step=step)
    return recorder.trajectory


def test_a_plane_speaks_the_protocol_and_comes_back_from_its_file(objective, tmp_path):
    d1, d2 = lv.random_directions(objective, 2, seed=0)
    plane = lv.plane(objective, (d1, d2), steps=(5, 4), progress=False)
    center = f"{plane.center['loss']:.6g}"
    loaded = check_protocol(plane, tmp_path, numbers=[center, "5x4", "accuracy"], name="p.h5")
    assert loaded.path is not None and plane.path is None  # where it lives is not what it is
    np.testing.assert_array_equal(loaded.values["loss"], plane.values["loss"])
    assert [d.fingerprint() for d in loaded.directions] == [
        d.fingerprint() for d in plane.directions
    ]
    described = plane.as_dict()["directions"]
    assert [d["fingerprint"] for d in described] == [d.fingerprint() for d in plane.directions]
    assert described[0]["norm"] == pytest.approx(d1.norm())


def test_a_line_with_nan_points_is_strict_json(objective, tmp_path):
    (d,) = lv.random_directions(objective, 1, seed=2)
    line = lv.line(objective, d, steps=5, progress=False)
    line.values["loss"][1] = np.nan
    text = json.dumps(line.as_dict(), allow_nan=False)
    assert json.loads(text)["values"]["loss"][1] is None
    check_protocol(line, tmp_path, numbers=["line"], name="l.h5")


def test_an_interpolation_shows_its_barrier_and_keeps_its_type(tmp_path):
    X, y = classification_data()
    obj = lv.Objective(make_mlp(seed=0), F.cross_entropy, (X, y))
    path = lv.interpolate(obj, make_mlp(seed=0), make_mlp(seed=5), steps=7, progress=False)
    loaded = check_protocol(path, tmp_path, numbers=[f"{path.barrier:.6g}", "barrier"], name="i.h5")
    assert isinstance(loaded, lv.Interpolation)
    assert loaded.barrier == path.barrier and loaded.endpoints == path.endpoints


def test_a_plane_with_a_trajectory_keeps_it(objective, tmp_path):
    trajectory = trained_path()
    directions = pca_directions(trajectory, 2)
    obj = lv.Objective(make_mlp(seed=1), F.cross_entropy, classification_data())
    plane = lv.plane(obj, directions, steps=4, trajectory=trajectory, progress=False)
    loaded = check_protocol(plane, tmp_path, name="t.h5")
    np.testing.assert_array_equal(loaded.trajectory, plane.trajectory)


def test_trajectory_results_speak_the_protocol(tmp_path):
    trajectory = trained_path()
    check_protocol(trajectory, tmp_path, numbers=["8"], name="trajectory")
    directions = pca_directions(trajectory, 2)
    ratio = f"{directions.explained_variance_ratio_[0]:.6g}"
    check_protocol(directions, tmp_path, numbers=[ratio], name="pca")
    projection = project(trajectory, directions)
    check_protocol(projection, tmp_path, numbers=["8"], name="projection")
    embedding = reduce_trajectory(trajectory, "pca", 2)
    check_protocol(
        embedding, tmp_path, numbers=[f"{embedding.trustworthiness:.6g}"], name="embedding"
    )


def test_training_results_speak_the_protocol(tmp_path):
    monitor = lv.TrainingMonitor(nn.Linear(2, 1))
    for value in (1.0, 0.5, float("nan"), 0.25):
        monitor.epoch_end(value)
    loaded = check_protocol(monitor, tmp_path, numbers=["0.25"], name="monitor")
    assert np.isnan(loaded.history["loss"][2])  # NaN survives the file ...
    json.loads((tmp_path / "monitor").read_text(), parse_constant=pytest.fail)  # ... as strict JSON

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3)).double()

    comparison = lv.compare_optimizers(
        factory,
        classification_data(n=32),
        {"sgd": (torch.optim.SGD, {"lr": 0.1})},
        epochs=2,
        loss_fn=F.cross_entropy,
        seed=0,
        sharpness=None,
    )
    final = f"{comparison.table[0]['final_loss']:.6g}"
    check_protocol(comparison, tmp_path, numbers=["sgd", final], name="comparison")
    json.loads((tmp_path / "comparison").read_text(), parse_constant=pytest.fail)


def test_training_files_of_earlier_versions_with_a_bare_nan_still_load(tmp_path):
    old = tmp_path / "history.json"
    history = lv.TrainingMonitor(nn.Linear(2, 1))
    history.epoch_end(float("nan"))
    payload = {"format": "lossvista-training-history", "version": 1, "history": history.history}
    old.write_text(json.dumps(payload))  # Python's json writes a bare NaN
    assert "NaN" in old.read_text()
    assert np.isnan(lv.load(old).history["loss"][0])


def test_load_refuses_what_lossvista_did_not_write(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "someone-else", "value": 1}))
    with pytest.raises(lv.StoreError, match="not a file lossvista wrote"):
        lv.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(
        json.dumps({"format": "lossvista-result", "kind": "from_the_future", "state": {}})
    )
    with pytest.raises(lv.StoreError, match="unknown kind 'from_the_future'"):
        lv.load(tmp_path / "y.json")


def test_evaluate_at_replaces_params_which_still_works(objective):
    other = make_mlp(seed=4)
    values = dict(other.named_parameters())
    expected = lv.Objective(other, F.cross_entropy, classification_data()).loss()
    assert objective.evaluate(at=values)["loss"] == pytest.approx(expected, rel=1e-12)
    with pytest.warns(DeprecationWarning, match="at="):
        old = objective.evaluate(params=values)["loss"]
    assert old == objective.evaluate(at=values)["loss"]
    with pytest.raises(lv.InputError, match="both at= and params="):
        objective.evaluate(values, params=values)


def test_plane_path_is_the_old_name_of_trajectory(objective):
    trajectory = trained_path()
    directions = pca_directions(trajectory, 2)
    obj = lv.Objective(make_mlp(seed=1), F.cross_entropy, classification_data())
    new = lv.plane(obj, directions, steps=3, trajectory=trajectory, progress=False)
    with pytest.warns(DeprecationWarning, match="trajectory=") as record:
        old = lv.plane(obj, directions, steps=3, path=trajectory, progress=False)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert old == new
    with pytest.raises(lv.InputError, match="both trajectory= and path="):
        lv.plane(obj, directions, steps=3, trajectory=trajectory, path=trajectory)


def test_zero_dimensional_tensors_keep_their_shape_in_files(tmp_path):
    from lossvista import _hdf5, _json

    state = {"count": torch.tensor(7), "scale": torch.tensor(0.5, dtype=torch.float64)}
    assert _json.loads(_json.dumps(state))["count"].shape == ()
    import h5py

    with h5py.File(tmp_path / "t.h5", "w") as f:
        _hdf5.write_tree(f.create_group("state"), state)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = _hdf5.read_tree(f["state"])
    assert back["count"].shape == () and back["count"].dtype == torch.int64
    assert back["scale"].shape == () and float(back["scale"]) == 0.5
