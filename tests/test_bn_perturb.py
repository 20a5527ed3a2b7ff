"""bn="perturb": BatchNorm running statistics move along the directions (2018 ``dir_type=states``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_cnn, snapshot
from lossvista.engine import PointEvaluator
from lossvista.errors import DirectionError, InputError, LossvistaWarning

BUFFERS = ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var")


@pytest.fixture
def setup():
    model = make_cnn()
    X, y = classification_data(image=True)
    model.train()
    with torch.no_grad():
        model(X * 3 + 1)  # non-trivial running statistics
    model.eval()
    return model, (X, y)


def objective(model, data, bn="perturb"):
    return lv.Objective(model, nn.functional.cross_entropy, data, bn=bn)


def by_hand(model, data, params, buffers):
    """Loss in eval mode with the given parameters and buffers written into a copy."""
    import copy

    twin = copy.deepcopy(model).eval()
    state = dict(twin.named_parameters()) | dict(twin.named_buffers())
    with torch.no_grad():
        for name, value in {**params, **buffers}.items():
            state[name].copy_(value)
        X, y = data
        return float(nn.functional.cross_entropy(twin(X), y))


def split(direction, obj):
    params = {n: t for n, t in direction.items() if n in obj.param_names}
    buffers = {n: t for n, t in direction.items() if n in obj.buffer_names}
    return params, buffers


def zero(tensors):
    return {n: torch.zeros_like(t) for n, t in tensors.items()}


def test_buffer_names_and_settings(setup):
    model, data = setup
    obj = objective(model, data)
    assert obj.buffer_names == BUFFERS
    assert obj.settings()["bn"] == "perturb"
    assert obj.settings()["perturbed_buffers"] == list(BUFFERS)
    assert objective(model, data, "eval").buffer_names == ()
    assert "perturbed_buffers" not in objective(model, data, "eval").settings()
    with pytest.raises(InputError, match="perturb"):
        objective(model, data, "states")


def test_random_directions_cover_buffers_with_their_norms(setup):
    model, data = setup
    obj = objective(model, data)
    d1, d2 = lv.random_directions(obj, 2, seed=3)
    assert d1.meta["buffers"] == list(BUFFERS)
    buffers = obj.perturbed_buffers()
    for name, b in buffers.items():
        assert d1[name].shape == b.shape
        # "filter": each buffer is one filter, rescaled to the buffer's norm
        assert float(d1[name].norm()) == pytest.approx(float(b.norm()), rel=1e-12)
        assert not torch.equal(d1[name], d2[name])
    assert "1.num_batches_tracked" not in d1
    # the default ignore=("bias", "bn") keeps BatchNorm's weight and bias still
    assert not d1["1.weight"].any() and not d1["1.bias"].any()
    (layer,) = lv.random_directions(obj, 1, norm="layer", seed=3)
    for name, b in buffers.items():
        assert float(layer[name].norm()) == pytest.approx(float(b.norm()), rel=1e-12)
    (whole,) = lv.random_directions(obj, 1, norm="model", ignore=(), seed=3)
    total = [*obj.parameters().values(), *buffers.values()]
    expected = float(torch.cat([t.reshape(-1) for t in total]).norm())
    assert whole.norm() == pytest.approx(expected, rel=1e-12)
    (globbed,) = lv.random_directions(obj, 1, ignore=("bias", "bn", "*.running_var"), seed=3)
    assert not globbed["1.running_var"].any() and globbed["1.running_mean"].any()
    # eval objectives and bare models: parameters only
    (plain,) = lv.random_directions(objective(model, data, "eval"), 1, seed=3)
    assert not any(n in plain for n in BUFFERS)


def test_zero_buffer_parts_equal_eval(setup):
    model, data = setup
    obj = objective(model, data)
    (d,) = lv.random_directions(obj, 1, seed=1)
    params, buffers = split(d, obj)
    direction = {**params, **zero(buffers)}
    got = lv.line(obj, direction, steps=5, progress=False, strategy="loop")
    want = lv.line(objective(model, data, "eval"), params, steps=5, progress=False)
    np.testing.assert_array_equal(got.values["loss"], want.values["loss"])


def test_buffer_parts_only_equal_hand_oracle(setup):
    model, data = setup
    obj = objective(model, data)
    (d,) = lv.random_directions(obj, 1, seed=2)
    params, buffers = split(d, obj)
    origin = {n: b.clone() for n, b in obj.perturbed_buffers().items()}
    span = (-0.5, 0.5)
    result = lv.line(obj, {**zero(params), **buffers}, span=span, steps=5, progress=False)
    for c, loss in zip(np.linspace(*span, 5), result.values["loss"], strict=True):
        moved = {n: origin[n] + c * buffers[n] for n in buffers}
        assert loss == pytest.approx(by_hand(model, data, {}, moved), rel=1e-12)


def test_full_direction_and_plane_equal_hand_oracle(setup):
    model, data = setup
    before = snapshot(model)
    obj = objective(model, data)
    d1, d2 = lv.random_directions(obj, 2, seed=4)
    params0 = {n: p.clone() for n, p in obj.parameters().items()}
    buffers0 = {n: b.clone() for n, b in obj.perturbed_buffers().items()}
    span = (-0.4, 0.4)
    result = lv.line(obj, d1, span=span, steps=5, progress=False)
    for c, loss in zip(np.linspace(*span, 5), result.values["loss"], strict=True):
        p, b = split(d1, obj)
        want = by_hand(
            model,
            data,
            {n: params0[n] + c * p[n] for n in p},
            {n: buffers0[n] + c * b[n] for n in b},
        )
        assert loss == pytest.approx(want, rel=1e-12)
    span = (-0.15, 0.15)  # every running_var stays positive on this plane
    surface = lv.plane(obj, (d1, d2), span=span, steps=3, progress=False)
    assert np.isfinite(surface.values["loss"]).all()
    a, c = np.linspace(*span, 3)[0], np.linspace(*span, 3)[2]
    p1, b1 = split(d1, obj)
    p2, b2 = split(d2, obj)
    want = by_hand(
        model,
        data,
        {n: params0[n] + a * p1[n] + c * p2[n] for n in p1},
        {n: buffers0[n] + a * b1[n] + c * b2[n] for n in b1},
    )
    assert surface.values["loss"][0, 2] == pytest.approx(want, rel=1e-12)
    assert_unchanged(model, before)


def test_nonpositive_variance_gives_nan_and_warns(setup):
    model, data = setup
    obj = objective(model, data)
    buffers = obj.perturbed_buffers()
    direction = {n: torch.zeros_like(p) for n, p in obj.parameters().items()}
    direction |= zero(buffers)
    direction["1.running_var"] = -buffers["1.running_var"]  # var * (1 - c)
    with pytest.warns(LossvistaWarning, match="running_var"):
        result = lv.line(obj, direction, span=(0.0, 2.0), steps=5, progress=False)
    assert np.isfinite(result.values["loss"][:2]).all()
    assert np.isnan(result.values["loss"][2:]).all()  # c = 1, 1.5, 2: variance <= 0


def test_vmap_refused_and_auto_uses_loop(setup):
    model, data = setup
    obj = objective(model, data)
    (d,) = lv.random_directions(obj, 1, seed=5)
    evaluator = PointEvaluator(obj, obj.parameters(), [d])
    assert evaluator._vmap_configs() == []
    with pytest.raises(InputError, match="vmap"):
        evaluator.run(np.zeros((2, 1)), strategy="vmap", progress=False)
    _, report = evaluator.run(np.linspace(-0.1, 0.1, 40)[:, None], progress=False)
    assert report.config.strategy == "loop"


def test_buffer_directions_refused_without_perturb(setup):
    model, data = setup
    (d,) = lv.random_directions(objective(model, data), 1, seed=6)
    with pytest.raises(DirectionError, match="bn='perturb'"):
        lv.line(objective(model, data, "eval"), d, steps=3, progress=False)


def test_evaluate_at_accepts_buffers(setup):
    model, data = setup
    obj = objective(model, data)
    moved = {"1.running_mean": obj.perturbed_buffers()["1.running_mean"] + 0.3}
    assert obj.evaluate(at=moved)["loss"] == pytest.approx(
        by_hand(model, data, {}, moved), rel=1e-12
    )
