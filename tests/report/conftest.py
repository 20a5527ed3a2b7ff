"""Results of every kind, small and fast, shared by the report tests (built once per session)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv
from conftest import classification_data, make_mlp


def _train(model: nn.Module, data, monitor: lv.TrainingMonitor, recorder, epochs: int = 4):
    x, y = data
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor.optimizer = optimizer
    for _ in range(epochs):
        for start in range(0, len(y), 16):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[start : start + 16]), y[start : start + 16])
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss)
        recorder.record()
        with torch.no_grad():
            monitor.epoch_end(float(F.cross_entropy(model(x), y)))
    return model


@pytest.fixture(scope="session")
def results():
    """name -> result: a plane with a training path, a line, an interpolation, a 3-D grid, the
    Hessian results, sharpness, surface metrics, a monitor and a toy race."""
    torch.manual_seed(0)
    data = classification_data(48)
    start = make_mlp(width=6)
    model = make_mlp(width=6)
    monitor = lv.TrainingMonitor(model)
    recorder = lv.TrajectoryRecorder(model)
    recorder.record()
    _train(model, data, monitor, recorder)
    obj = lv.Objective(model, F.cross_entropy, data, metrics=["accuracy"])
    d1, d2, d3 = lv.random_directions(obj, 3, seed=0)
    out: dict[str, object] = {}
    out["plane"] = lv.plane(
        obj,
        (d1, d2),
        span=(-1.0, 1.0),
        steps=(9, 7),
        progress=False,
        trajectory=recorder.trajectory,
    )
    out["line"] = lv.line(obj, d1, span=(-1.0, 1.0), steps=11, progress=False)
    out["interpolation"] = lv.interpolate(obj, start, model, steps=9, progress=False)
    out["grid"] = lv.grid(obj, (d1, d2, d3), span=(-1.0, 1.0), steps=(5, 4, 3), progress=False)
    out["eigs"] = lv.hessian_eigs(obj, k=3, seed=0)
    out["density"] = lv.hessian_density(obj, n_runs=2, n_steps=12, seed=0)
    out["trace"] = lv.hessian_trace(obj, n_probes=8, seed=0)
    out["critical"] = lv.critical_point(obj, eigs=None, seed=0)
    out["sharpness"] = lv.sharpness(obj, kind="average", rho=0.01, samples=6, seed=0)
    out["metrics"] = lv.surface_metrics(out["plane"])
    out["monitor"] = lv.TrainingMonitor.from_history(monitor.history)
    out["race"] = lv.toys.race("rosenbrock", ["gd", "adam"], steps=30)
    out["persistence"] = lv.persistence(out["plane"])
    out["trajectory"] = recorder.trajectory
    return out


@pytest.fixture(scope="session")
def other_results(results):
    """The other kinds: comparison, trajectory results, geometry, toy paths and searches."""
    data = classification_data(32, seed=1)
    trajectory = results["trajectory"]
    model = make_mlp(width=6)
    obj = lv.Objective(model, F.cross_entropy, data)
    out: dict[str, object] = {}
    out["comparison"] = lv.compare_optimizers(
        lambda: make_mlp(width=6),
        data,
        {"sgd": (torch.optim.SGD, {"lr": 0.1}), "adam": (torch.optim.Adam, {"lr": 0.01})},
        epochs=2,
        loss_fn=F.cross_entropy,
        batch_size=16,
        sharpness=None,
    )
    pca = lv.pca_directions(trajectory, 2)
    out["pca"] = pca
    out["projection"] = lv.project(trajectory, pca)
    out["embedding"] = lv.reduce_trajectory(trajectory, "pca", 2)
    out["sensitivity"] = lv.layer_sensitivity(obj, kind="curvature", seed=0)
    out["alignment"] = lv.align(make_mlp(seed=1, width=6), make_mlp(seed=2, width=6))
    out["curve"] = lv.connect(
        obj, make_mlp(seed=1, width=6), make_mlp(seed=2, width=6), steps=5, points=7, progress=False
    )
    out["toy_path"] = lv.toys.run("himmelblau", "momentum", steps=20)
    out["annealing"] = lv.toys.simulated_annealing("himmelblau", steps=50)
    out["grid_search"] = lv.toys.grid_search("himmelblau", n=21)
    out["scaling"] = lv.toys.scaling_study(grid_points=21, max_iter=2000)
    out["race_table"] = results["race"].table
    return out
