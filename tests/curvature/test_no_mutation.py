"""Every public curvature call leaves the caller's model bit-for-bit unchanged, also when it
fails half-way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_cnn, snapshot
from lossvista import curvature as cv

F = nn.functional


@pytest.fixture
def model():
    net = make_cnn()
    net.train()  # a training-mode model with a frozen layer and odd momentum: all must survive
    net[0].weight.requires_grad_(False)
    net[1].momentum = 0.3
    return net


def calls(obj, line):
    v = {n: torch.ones_like(t) for n, t in obj.parameters().items()}
    return {
        "hvp": lambda: cv.hvp(obj, v),
        "hvp_choice": lambda: cv.hvp_choice(obj),
        "hessian_dense": lambda: cv.hessian_dense(obj),
        "hessian_eigs": lambda: cv.hessian_eigs(obj, 1, which="both", max_iter=30),
        "hessian_trace": lambda: cv.hessian_trace(obj, method="hutch++", n_probes=6),
        "hessian_density": lambda: cv.hessian_density(obj, n_runs=2, n_steps=5),
        "critical_point": lambda: cv.critical_point(obj, density=True, max_iter=30, n_steps=5),
        "hessian_directions": lambda: cv.hessian_directions(obj, 1, max_iter=30),
        "curvature_map": lambda: cv.curvature_map(obj, line, max_iter=10, progress=False),
    }


@pytest.mark.filterwarnings("ignore::lossvista.LossvistaWarning")
@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_every_public_function_leaves_the_model_unchanged(model, bn):
    before = snapshot(model)
    X, y = classification_data(n=10, image=True)
    obj = lv.Objective(model, F.cross_entropy, (X, y), bn=bn, params=["7.*", "4.*"])
    (d,) = lv.random_directions(obj, 1)
    line = lv.line(obj, d, steps=2, progress=False)
    for name, call in calls(obj, line).items():
        if name == "curvature_map" and bn == "recompute":
            with pytest.raises(lv.InputError):
                call()
        else:
            call()
        assert_unchanged(model, before)


@pytest.mark.filterwarnings("ignore::lossvista.LossvistaWarning")
def test_the_model_is_restored_after_a_failure_half_way(model):
    before = snapshot(model)
    X, y = classification_data(n=10, image=True)
    count = {"n": 0, "fail_at": 0}

    def fragile(output, target):
        count["n"] += 1
        if count["n"] == count["fail_at"]:
            raise RuntimeError("boom")
        return F.cross_entropy(output, target)

    obj = lv.Objective(model, fragile, (X, y), params=["7.*"])
    (d,) = lv.random_directions(obj, 1)
    line = lv.line(obj, d, steps=2, progress=False)
    cv.hvp_choice(obj)  # measured (and cached) before the loss starts failing
    failed = []
    for name, call in calls(obj, line).items():
        # The first loss evaluation fails: inside the call, after the model was switched to
        # eval mode (and, for curvature_map, after the origin's loss).
        count["n"], count["fail_at"] = 0, 2 if name == "curvature_map" else 1
        try:
            call()
        except RuntimeError as exc:
            assert "boom" in str(exc), name
            failed.append(name)
        assert_unchanged(model, before)
    assert failed == [name for name in calls(obj, line) if name != "hvp_choice"]
