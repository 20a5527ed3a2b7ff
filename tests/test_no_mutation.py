"""Every public call leaves the caller's model bit-for-bit unchanged, also when interrupted."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_cnn, snapshot

F = nn.functional


@pytest.fixture
def model():
    net = make_cnn()
    net.train()  # a training-mode model with a frozen layer: both must survive
    net[0].weight.requires_grad_(False)
    net[1].momentum = 0.3
    return net


@pytest.fixture
def data():
    return classification_data(n=30, image=True)


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_public_calls_leave_the_model_unchanged(model, data, bn, tmp_path):
    before = snapshot(model)
    other = make_cnn(seed=1)
    third = make_cnn(seed=2)
    obj = lv.Objective(model, F.cross_entropy, data, metrics=["accuracy"], bn=bn)
    d1, d2 = lv.random_directions(model, 2, orthogonalize=True)
    calls = [
        lambda: obj.evaluate(),
        lambda: obj.loss(),
        lambda: obj.evaluate(at=dict(other.named_parameters())),
        lambda: lv.line(obj, d1, steps=5, progress=False),
        lambda: lv.plane(obj, (d1, d2), steps=(3, 3), store=tmp_path / f"p{bn}.h5", progress=False),
        lambda: lv.plane(
            obj, (d1, d2), steps=(3, 3), store=tmp_path / f"p{bn}.h5", progress=False
        ),  # resumed
        lambda: lv.plane(
            obj, (d1, d2), steps=(3, 3), strategy="vmap" if bn == "eval" else "loop", progress=False
        ),
        lambda: lv.interpolate(obj, other, model, steps=5, progress=False),
        lambda: lv.plane_through(obj, model, other, third, steps=(3, 3), progress=False),
        lambda: lv.suggest_span(obj, d1),
        lambda: lv.random_directions(obj, 2),
        lambda: lv.direction_between(model, other),
    ]
    with pytest.warns(UserWarning) if bn == "eval" else _nothing():
        for call in calls:
            call()
            assert_unchanged(model, before)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_model_restored_when_the_loss_raises_mid_grid(model, data, exception, strategy):
    before = snapshot(model)
    calls = {"n": 0}

    def failing(output, target):
        calls["n"] += 1
        if calls["n"] == (6 if strategy == "loop" else 3):  # after the 2 centre-check calls
            raise exception("boom")
        return F.cross_entropy(output, target)

    obj = lv.Objective(model, failing, data, bn="eval")
    dirs = lv.random_directions(model, 2)
    with pytest.raises(exception):
        lv.plane(obj, dirs, steps=(4, 4), strategy=strategy, progress=False)
    assert_unchanged(model, before)


def test_caller_tensors_used_as_directions_or_origin_are_not_modified(model, data):
    """A direction that aliases the model's own parameters must not follow the loop's writes."""
    before = snapshot(model)
    aliased = lv.Direction({n: p.detach() for n, p in model.named_parameters()})
    kept = {n: t.clone() for n, t in aliased.items()}
    obj = lv.Objective(model, F.cross_entropy, data)
    lv.line(obj, aliased, steps=5, strategy="loop", progress=False)
    assert all(torch.equal(aliased[n], kept[n]) for n in kept)
    assert_unchanged(model, before)
    start = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="BatchNorm"):
        lv.interpolate(obj, start, make_cnn(seed=3), steps=3, progress=False)
    assert_unchanged(start, snapshot(model))
