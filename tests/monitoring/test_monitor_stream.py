"""TrainingMonitor streaming to TensorBoard: the event file holds exactly the recorded history
(every list, at its step), and a monitor without a writer behaves as before."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv
from lossvista.errors import InputError

from ._events import as_stored, events, scalar_series

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


def train(monitor: lv.TrainingMonitor, model: nn.Module, optimizer, epochs: int = 2) -> None:
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)
    for _ in range(epochs):
        for xb, yb in ((X[:6], y[:6]), (X[6:], y[6:])):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss)
        monitor.epoch_end(loss, val_loss=None if not monitor.history["epoch"] else 0.5)


@pytest.mark.parametrize("how", ["constructor", "stream_to"])
def test_streamed_values_equal_the_history(tmp_path, how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # a frozen tensor has no gradient norm to stream
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = SummaryWriter(str(tmp_path))
    if how == "constructor":
        monitor = lv.TrainingMonitor(model, optimizer, writer=writer)
        prefix = "monitor"
    else:
        monitor = lv.TrainingMonitor(model, optimizer).stream_to(writer, prefix="run1")
        prefix = "run1"
    train(monitor, model, optimizer)
    writer.close()
    acc = events(tmp_path)
    h = monitor.history
    expected = {"grad_norm": range(1, 5), "step_loss": range(1, 5), "loss": h["epoch"]}
    expected.update({f"grad_norm/{n}": range(1, 5) for n in ("0.weight", "2.weight", "2.bias")})
    expected.update({k: range(1, 5) for k in ("step_weight_norm", "step_lr")})
    expected.update({k: h["epoch"] for k in ("weight_norm", "lr", "epoch_grad_norm", "steps")})
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"{prefix}/{k}" for k in expected} | {f"{prefix}/val_loss"}
    for key, steps in expected.items():
        assert scalar_series(acc, f"{prefix}/{key}") == [
            (s, as_stored(v)) for s, v in zip(steps, h[key])
        ]
    # the missing validation loss of epoch 1 is not written
    assert scalar_series(acc, f"{prefix}/val_loss") == [(2, 0.5)]
    assert h["epoch"] == [1, 2] and len(h["step_loss"]) == 4


def test_streaming_records_nothing_else_and_can_stop(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = lv.TrainingMonitor(model, optimizer)
    torch.manual_seed(0)
    model_b = nn.Linear(3, 2)
    optimizer_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    writer = SummaryWriter(str(tmp_path))
    streamed = lv.TrainingMonitor(model_b, optimizer_b, writer=writer)
    train(plain, model, optimizer, epochs=1)
    train(streamed, model_b, optimizer_b, epochs=1)
    assert streamed == plain  # the same history, bit for bit
    streamed.stream_to(None)
    train(streamed, model_b, optimizer_b, epochs=1)
    writer.close()
    acc = events(tmp_path)
    assert len(streamed.history["grad_norm"]) == 4
    assert [s for s, _ in scalar_series(acc, "monitor/grad_norm")] == [1, 2]
    assert [s for s, _ in scalar_series(acc, "monitor/loss")] == [1]


def test_a_loaded_monitor_streams_nothing_and_bad_writers_are_refused(tmp_path):
    monitor = lv.TrainingMonitor(nn.Linear(2, 1))
    path = monitor.save(tmp_path / "h.json")
    loaded = lv.load(path)
    assert loaded._writer is None and loaded == monitor
    with pytest.raises(InputError, match="SummaryWriter"):
        lv.TrainingMonitor(nn.Linear(2, 1), writer=object())
    with pytest.raises(InputError, match="prefix must be a string"):
        monitor.stream_to(SummaryWriter(str(tmp_path / "w")), prefix=3)
