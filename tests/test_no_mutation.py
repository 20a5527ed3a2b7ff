"""Every public call leaves the caller's model bit-for-bit unchanged, also when interrupted."""

from __future__ import annotations

import copy
import functools
import os
import signal
import threading

import pytest
import torch
from torch import nn

import lossvista as lv
import lossvista.params
from conftest import assert_unchanged, classification_data, make_cnn, snapshot

F = nn.functional


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own Ctrl-C handler, also when the suite was started with SIGINT ignored (a
    background job of a non-interactive shell, nohup): these tests send real SIGINTs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


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
    obj = lv.Objective(model, F.cross_entropy, data, params="all")  # the frozen layer moves too
    lv.line(obj, aliased, steps=5, strategy="loop", progress=False)
    assert all(torch.equal(aliased[n], kept[n]) for n in kept)
    assert_unchanged(model, before)
    start = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="BatchNorm"):
        lv.interpolate(obj, start, make_cnn(seed=3), steps=3, progress=False)
    assert_unchanged(start, snapshot(model))


# -- a second Ctrl-C while the model is being restored ---------------------------------------------
class _CtrlCOnRestore:
    """Sends a real SIGINT to this process from the ``copy_`` of each of ``parameters``, once
    armed: the first one is the moment ``params.preserved`` starts copying saved values back."""

    def __init__(self, *parameters: torch.Tensor):
        self.parameters, self.armed, self.sent = parameters, False, 0
        for parameter in parameters:
            # an instance attribute shadows the method
            parameter.copy_ = functools.partial(self.copy, parameter.copy_)

    def copy(self, original, source: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.armed:
            self.sent += 1
            os.kill(os.getpid(), signal.SIGINT)
        return original(source, *args, **kwargs)

    def remove(self) -> None:
        for parameter in self.parameters:
            del parameter.copy_


def _first_of(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


@pytest.mark.parametrize("times", [1, 3])
def test_ctrl_c_while_restoring_waits_until_the_model_is_whole(model, times):
    """The restore runs to its end, then the KeyboardInterrupt reaches the caller."""
    before = snapshot(model)
    hook = _CtrlCOnRestore(*list(model.parameters())[:times])
    try:
        with pytest.raises(KeyboardInterrupt), lv.params.preserved(model):
            model.eval()
            model[4].momentum = None
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
                for b in model.buffers():
                    b.add_(1)
            hook.armed = True  # the next copy_ is the first step of restoring
        assert hook.sent == times
    finally:
        hook.remove()
    assert_unchanged(model, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back


def test_a_second_ctrl_c_during_restoration_of_an_interrupted_grid(model, data):
    """The campaign's case: Ctrl-C stops a grid, a second one lands while the model is restored."""
    before = snapshot(model)
    hook = _CtrlCOnRestore(_first_of(model))
    calls = {"n": 0}

    def interrupted_loss(output, target):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-grid, after the centre check
            hook.armed = True
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C
        return F.cross_entropy(output, target)

    obj = lv.Objective(model, interrupted_loss, data, bn="eval")
    try:
        with pytest.raises(KeyboardInterrupt):
            lv.plane(obj, lv.random_directions(model, 2), steps=(4, 4), progress=False)
        assert hook.sent == 1
    finally:
        hook.remove()
    assert_unchanged(model, before)


def test_a_program_handler_for_sigint_gets_the_held_signal_once_after_restoring(model):
    before = snapshot(model)
    received = []
    hook = _CtrlCOnRestore(_first_of(model))

    def handler(signum, frame):
        received.append((signum, [torch.equal(p, before["params"][n])
                                  for n, p in model.named_parameters()]))  # fmt: skip

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with lv.params.preserved(model):
            with torch.no_grad():
                _first_of(model).add_(1.0)
            hook.armed = True
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
        hook.remove()
    assert len(received) == 1 and received[0][0] == signal.SIGINT
    assert all(received[0][1])  # the handler ran after the model was whole again
    assert_unchanged(model, before)


def test_restoring_outside_the_main_thread_works_without_touching_signals(model):
    before = snapshot(model)
    errors = []

    def body():
        try:
            with lv.params.preserved(model):
                model.eval()
                with torch.no_grad():
                    _first_of(model).add_(1.0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert not errors
    assert_unchanged(model, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
