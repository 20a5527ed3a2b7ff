"""Training dynamics against hand computations: gradient and weight norms, plateau and convergence
rules on synthetic curves, and comparisons equal to training loops written out by hand."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossvista as lv
from lossvista.errors import InputError
from lossvista.sharpness import sharpness as measure_sharpness
from lossvista.training import Comparison, TrainingMonitor, compare_optimizers, sweep

SEED = 3


def factory() -> nn.Module:
    """Unseeded on purpose: compare_optimizers seeds it."""
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return X, (X @ torch.randn(4, 3, generator=g, dtype=torch.float64)).argmax(dim=1)


def hand_trained(optimizer_class, kwargs, epochs: int, batch_size: int | None):
    """The training loop compare_optimizers promises, written out; returns (model, epoch losses)."""
    X, y = data()
    torch.manual_seed(SEED)
    model = factory()
    optimizer = optimizer_class(model.parameters(), **kwargs)
    if batch_size is None:
        batches = [(X, y)]
    else:
        generator = torch.Generator().manual_seed(SEED)
        batches = DataLoader(TensorDataset(X, y), batch_size, shuffle=True, generator=generator)
    losses = []
    for _ in range(epochs):
        for xb, yb in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(X), y)))
    return model, losses


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def monitor_with_losses(values, **kwargs) -> TrainingMonitor:
    monitor = TrainingMonitor(nn.Linear(2, 1))
    for value in values:
        monitor.epoch_end(value, **kwargs)
    return monitor


# -- the monitor ----------------------------------------------------------------------------------
def test_gradient_norms_equal_a_hand_computation():
    torch.manual_seed(0)
    model = factory()
    model[0].bias.requires_grad_(False)  # frozen: not monitored
    X, y = data()
    monitor = TrainingMonitor(model)
    F.cross_entropy(model(X), y).backward()
    total = monitor.after_backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    by_hand = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    assert total == pytest.approx(by_hand, rel=1e-14)
    assert monitor.history["grad_norm"] == [total]
    for name, g in grads.items():
        assert monitor.history[f"grad_norm/{name}"] == [pytest.approx(float(g.norm()), rel=1e-14)]
    assert "grad_norm/0.bias" not in monitor.history
    model[2].weight.grad = None  # a parameter without gradient counts as missing, not zero
    monitor.after_backward()
    assert monitor.history["grad_norm/2.weight"][-1] is None
    expected = math.sqrt(by_hand**2 - float((grads["2.weight"] ** 2).sum()))
    assert monitor.history["grad_norm"][-1] == pytest.approx(expected, rel=1e-12)


def test_steps_and_epochs_record_loss_weight_norm_and_learning_rate():
    torch.manual_seed(0)
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    monitor = TrainingMonitor(model, optimizer)
    X, y = data()
    grad_norms = []
    for epoch in range(3):
        for xb, yb in ((X[:24], y[:24]), (X[24:], y[24:])):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            grad_norms.append(monitor.after_backward())
            optimizer.step()
            monitor.step_end(loss)
            assert monitor.history["step_loss"][-1] == loss.item()
        monitor.epoch_end(torch.tensor(1.0 / (epoch + 1)), val_loss=2.0)
        schedule.step()
    h = monitor.history
    weights = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))
    assert h["weight_norm"][-1] == pytest.approx(weights, rel=1e-14)
    assert h["step_weight_norm"][-1] == pytest.approx(weights, rel=1e-14)
    assert h["lr"] == pytest.approx([0.4, 0.2, 0.1])
    assert h["step_lr"] == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1, 0.1])
    assert h["epoch"] == [1, 2, 3] and h["steps"] == [2, 4, 6]
    assert h["loss"] == pytest.approx([1.0, 0.5, 1 / 3]) and h["val_loss"] == [2.0] * 3
    assert h["epoch_grad_norm"] == pytest.approx(
        [np.mean(grad_norms[i : i + 2]) for i in (0, 2, 4)]
    )
    assert TrainingMonitor(model).history["lr"] == []  # no optimizer, nothing yet


def test_plateau_fires_on_a_flat_curve_and_not_on_a_decreasing_one():
    flat = monitor_with_losses([0.8] * 10)
    decreasing = monitor_with_losses(np.exp(-0.3 * np.arange(10)))
    levelled = monitor_with_losses([*np.exp(-0.5 * np.arange(6)), *[np.exp(-2.5)] * 5])
    assert flat.plateau(window=5)
    assert not decreasing.plateau(window=5)
    assert levelled.plateau(window=5)
    assert not monitor_with_losses([0.8] * 5).plateau(window=5)  # needs window + 1 values
    # the rule is relative: best_before - best_now < threshold * |best_before|
    edge = monitor_with_losses([1.0, 1.0, 0.9991, 0.9995])
    assert edge.plateau(window=2, threshold=1e-3)  # improvement 9e-4 < 1e-3
    assert not edge.plateau(window=2, threshold=8e-4)
    assert monitor_with_losses([1.0] * 6, val_loss=None).plateau(metric="loss")
    with pytest.raises(InputError, match="unknown metric"):
        flat.plateau(metric="accuracy")


def test_convergence_epoch_follows_its_two_definitions():
    values = [1.0 + 9.0 * 0.5**e for e in range(10)]  # 10, 5.5, 3.25, ... -> 1.0176
    monitor = monitor_with_losses(values)
    assert monitor.convergence_epoch(threshold=2.0) == 5  # first value <= 2: 1 + 9/16
    band = 0.05 * (values[0] - values[-1])
    later = [i for i in range(10) if all(abs(v - values[-1]) <= band for v in values[i:])]
    assert monitor.convergence_epoch() == later[0] + 1 == 6
    assert monitor.convergence_epoch(threshold=0.5) is None
    dip = monitor_with_losses([10.0, 1.0, 8.0, 6.0, 5.0, 5.0])
    assert dip.convergence_epoch() == 5  # a transient dip to the final value is not convergence
    assert monitor_with_losses([]).convergence_epoch() is None


def test_history_is_json_and_saves(tmp_path):
    torch.manual_seed(0)
    model = factory()
    monitor = TrainingMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1))
    X, y = data()
    F.cross_entropy(model(X), y).backward()
    monitor.after_backward()
    monitor.step_end(0.5)
    monitor.epoch_end(0.5)
    saved = json.loads(monitor.save(tmp_path / "history.json").read_text())
    assert saved["format"] == "lossvista-training-history"
    assert saved["history"] == monitor.history
    assert all(isinstance(v, list) for v in monitor.history.values())


def test_monitor_plot_draws_the_recorded_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    monitor = TrainingMonitor(model, optimizer)
    X, y = data()
    for _ in range(4):
        for xb, yb in ((X[:24], y[:24]), (X[24:], y[24:])):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss)
        monitor.epoch_end(F.cross_entropy(model(X), y), val_loss=1.0)
    figure = monitor.plot()
    loss_ax, norm_ax = figure.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"train loss", "validation loss", "batch loss"}
    np.testing.assert_allclose(lines["train loss"].get_ydata(), monitor.history["loss"])
    np.testing.assert_allclose(lines["batch loss"].get_xdata(), [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4])
    norms = {line.get_label(): line for line in norm_ax.get_lines()}
    np.testing.assert_allclose(norms["weight norm"].get_ydata(), monitor.history["weight_norm"])
    np.testing.assert_allclose(
        norms["gradient norm"].get_ydata(), monitor.history["epoch_grad_norm"]
    )
    assert norm_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "epoch"
    plt.close(figure)
    with pytest.raises(InputError, match="nothing to plot"):
        TrainingMonitor(model).plot()


# -- comparisons ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comparison() -> Comparison:
    optimizers = {
        "sgd": (torch.optim.SGD, {"lr": 0.3}),
        "adam": (torch.optim.Adam, {"lr": 0.05}),
        "frozen": (torch.optim.SGD, {"lr": 0.0}),
    }
    return compare_optimizers(
        factory,
        data(),
        optimizers,
        epochs=6,
        loss_fn=F.cross_entropy,
        seed=SEED,
        batch_size=16,
        sharpness={"kind": "average", "rho": 0.01, "samples": 8},
    )


def test_compare_optimizers_equals_hand_written_training(comparison):
    for name, (cls, kwargs) in {
        "sgd": (torch.optim.SGD, {"lr": 0.3}),
        "adam": (torch.optim.Adam, {"lr": 0.05}),
    }.items():
        model, losses = hand_trained(cls, kwargs, epochs=6, batch_size=16)
        assert_same_state(comparison.models[name], model.state_dict())
        np.testing.assert_allclose(comparison.histories[name]["loss"], losses, rtol=1e-12)
        row = next(r for r in comparison.table if r["name"] == name)
        assert row["final_loss"] == pytest.approx(losses[-1], rel=1e-12)
        assert row["best_loss"] == min(comparison.histories[name]["loss"])
        assert row["optimizer"] == cls.__name__ and row["diverged"] is False
        assert len(comparison.histories[name]["step_loss"]) == 6 * 3  # 48 samples, batches of 16
    # every run starts from the same seeded model: lr = 0 keeps it
    torch.manual_seed(SEED)
    assert_same_state(comparison.models["frozen"], factory().state_dict())


def test_compare_optimizers_leaves_the_global_random_state_alone():
    state = torch.get_rng_state()
    compare_optimizers(
        factory,
        data(),
        {"sgd": (torch.optim.SGD, {"lr": 0.1})},
        epochs=1,
        loss_fn=F.cross_entropy,
        sharpness=None,
    )
    assert torch.equal(torch.get_rng_state(), state)


def test_sharpness_column_is_lossvista_sharpness_of_the_final_model(comparison, monkeypatch):
    model = factory()
    model.load_state_dict(comparison.models["sgd"])
    expected = measure_sharpness(
        lv.Objective(model, F.cross_entropy, data()), kind="average", rho=0.01, samples=8, seed=SEED
    )
    row = next(r for r in comparison.table if r["name"] == "sgd")
    assert row["sharpness"] == pytest.approx(expected.value, rel=1e-12)
    skipped = compare_optimizers(
        factory,
        data(),
        {"sgd": (torch.optim.SGD, {"lr": 0.1})},
        epochs=1,
        loss_fn=F.cross_entropy,
        sharpness=None,
    )
    assert skipped.table[0]["sharpness"] is None
    monkeypatch.setitem(sys.modules, "lossvista.sharpness", None)  # not installed
    missing = compare_optimizers(
        factory, data(), {"sgd": (torch.optim.SGD, {"lr": 0.1})}, epochs=1, loss_fn=F.cross_entropy
    )
    assert missing.table[0]["sharpness"] is None


def test_sweep_runs_every_combination_like_compare_optimizers():
    result = sweep(
        factory,
        data(),
        {"lr": [0.1, 0.4], "batch_size": [None, 12]},
        epochs=3,
        loss_fn=F.cross_entropy,
        optimizer_kwargs={"momentum": 0.5},
        seed=SEED,
        sharpness=None,
    )
    assert [(r["lr"], r["batch_size"]) for r in result.table] == [
        (0.1, None),
        (0.1, 12),
        (0.4, None),
        (0.4, 12),
    ]
    assert result.names[1] == "lr=0.1, batch_size=12"
    for row in result.table:
        model, losses = hand_trained(
            torch.optim.SGD, {"lr": row["lr"], "momentum": 0.5}, 3, row["batch_size"]
        )
        assert_same_state(result.models[row["name"]], model.state_dict())
        assert row["final_loss"] == pytest.approx(losses[-1], rel=1e-12)
    assert result.settings["runs"]["lr=0.4, batch_size=None"] == {
        "optimizer": "SGD",
        "lr": 0.4,
        "momentum": 0.5,
        "batch_size": None,
    }


def test_a_diverging_run_stops_and_says_so():
    X, y = data()
    targets = F.one_hot(y, 3).double()  # MSE grows geometrically with a huge step: overflow
    result = sweep(
        factory, (X, targets), {"lr": [1e100]}, epochs=20, loss_fn=F.mse_loss, sharpness=None
    )
    row = result.table[0]
    history = result.histories[row["name"]]
    assert row["diverged"] is True and row["sharpness"] is None
    assert len(history["epoch"]) < 20 and not math.isfinite(history["step_loss"][-1])
    assert not math.isfinite(row["final_loss"])
    assert row["best_loss"] is None or math.isfinite(row["best_loss"])


def test_comparison_table_plot_and_file(comparison, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markdown = comparison.to_markdown().splitlines()
    assert markdown[0].startswith("| name | optimizer | final_loss |") and len(markdown) == 2 + 3
    figure = comparison.plot()
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["sgd", "adam", "frozen"]
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), comparison.histories["adam"]["loss"])
    plt.close(figure)
    saved = json.loads(comparison.save(tmp_path / "c.json").read_text())
    assert saved["table"][0]["name"] == "sgd" and saved["settings"]["epochs"] == 6


def test_shared_plane_puts_every_final_model_on_one_set_of_directions(comparison):
    same = comparison.shared_plane(names=["sgd", "adam"], steps=3, per_model_normalization=False)
    for name, landscape in same.items():
        row = next(r for r in comparison.table if r["name"] == name)
        assert landscape.center["loss"] == pytest.approx(row["final_loss"], rel=1e-12)
    for a, b in zip(same["sgd"].directions, same["adam"].directions):
        assert all(torch.equal(a[n], b[n]) for n in a)
    rescaled = comparison.shared_plane(names=["adam"], steps=3, seed=5)
    model = factory()
    model.load_state_dict(comparison.models["adam"])
    expected = lv.random_directions(lv.Objective(model, F.cross_entropy, data()), 2, seed=5)
    for a, b in zip(rescaled["adam"].directions, expected):
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_comparisons_validate_their_inputs():
    X, y = data()
    with pytest.raises(InputError, match="optimizer 'bad'"):
        compare_optimizers(factory, (X, y), {"bad": "sgd"}, epochs=1, loss_fn=F.cross_entropy)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    with pytest.raises(InputError, match="batch_size needs tensor data"):
        sweep(factory, loader, {"batch_size": [4]}, epochs=1, loss_fn=F.cross_entropy)
    with pytest.raises(InputError, match=r"not an nn\.Module"):
        compare_optimizers(
            lambda: 3,
            (X, y),
            {"sgd": (torch.optim.SGD, {"lr": 0.1})},
            epochs=1,
            loss_fn=F.cross_entropy,
        )
    with pytest.raises(InputError, match="epochs"):
        sweep(factory, (X, y), {"lr": [0.1]}, epochs=0, loss_fn=F.cross_entropy)
    with pytest.raises(InputError, match="non-empty list"):
        sweep(factory, (X, y), {"lr": 0.1}, epochs=1, loss_fn=F.cross_entropy)
