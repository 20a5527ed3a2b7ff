"""Objective: exact sample-weighted averaging, subsets with calibrated standard errors, BatchNorm."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_mlp, snapshot

F = nn.functional


def _full_batch(model, X, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(X), y))


def test_uneven_batches_give_exactly_the_full_batch_loss(mlp_problem):
    model, loss, (X, y) = mlp_problem
    assert len(y) == 65
    batches = [(X[:32], y[:32]), (X[32:64], y[32:64]), (X[64:], y[64:])]
    exact = _full_batch(model, X, y)
    for data in (
        batches,
        iter(batches),  # a one-shot iterator is cached and can be read again
        DataLoader(TensorDataset(X, y), batch_size=32),
        DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True),
        (X, y),
    ):
        obj = lv.Objective(model, loss, data)
        assert obj.loss() == pytest.approx(exact, rel=1e-12, abs=0)
        assert obj.loss() == pytest.approx(exact, rel=1e-12, abs=0)  # twice: cache works
    for size in (1, 7, 32, 64, 65, 1000):
        obj = lv.Objective(model, loss, (X, y), batch_size=size)
        assert obj.loss() == pytest.approx(exact, rel=1e-12, abs=0)


def test_metrics_builtin_and_user_callables(mlp_problem):
    model, loss, (X, y) = mlp_problem
    with torch.no_grad():
        out = model(X)
    expected_acc = float((out.argmax(1) == y).double().mean())
    expected_mse = float(((out - F.one_hot(y, 3)) ** 2).mean())

    def onehot_mse(output, target):
        return ((output - F.one_hot(target, 3)) ** 2).mean()

    obj = lv.Objective(
        model, loss, [(X[:40], y[:40]), (X[40:], y[40:])], metrics=["accuracy", onehot_mse]
    )
    values = obj.evaluate()
    assert list(values) == ["loss", "accuracy", "onehot_mse"]
    assert values["accuracy"] == pytest.approx(expected_acc, rel=1e-12)
    assert values["onehot_mse"] == pytest.approx(expected_mse, rel=1e-12)
    named = lv.Objective(model, loss, (X, y), metrics={"acc": lv.objective.accuracy})
    assert named.evaluate()["acc"] == pytest.approx(expected_acc)


def test_accuracy_with_one_hot_targets_and_binary_logits():
    out = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert float(lv.objective.accuracy(out, onehot)) == pytest.approx(2 / 3)
    logits = torch.tensor([[0.5], [-1.0], [2.0]])
    assert float(lv.objective.accuracy(logits, torch.tensor([1, 0, 0]))) == pytest.approx(2 / 3)


def test_subset_is_fixed_and_seeded_with_finite_population_stderr(mlp_problem):
    model, loss, (X, y) = mlp_problem
    obj = lv.Objective(model, loss, (X, y), subset=20, seed=3)
    index = torch.randperm(65, generator=torch.Generator().manual_seed(3))[:20].sort().values
    with torch.no_grad():
        per_sample = F.cross_entropy(model(X[index]), y[index], reduction="none").numpy()
    values = obj.evaluate()
    assert values["loss"] == pytest.approx(per_sample.mean(), rel=1e-12)
    expected = np.sqrt(per_sample.var(ddof=1) / 20 * (1 - 20 / 65))
    assert values["loss_stderr"] == pytest.approx(expected, rel=1e-10)
    assert obj.evaluate() == values  # fixed subset
    whole = lv.Objective(model, loss, (X, y), subset=65)
    assert whole.evaluate()["loss_stderr"] == 0.0  # the subset is the population
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    from_loader = lv.Objective(model, loss, loader, subset=20, seed=3).evaluate()
    assert from_loader["loss"] == pytest.approx(values["loss"], rel=1e-12)


def test_subset_standard_error_is_calibrated():
    """Over many seeds, the full-data loss lies within 2 stderr of the subset estimate ~95%."""
    X, y = classification_data(n=2000, seed=1)
    model = make_mlp(seed=2)
    exact = _full_batch(model, X, y)
    hits = []
    for seed in range(300):
        values = lv.Objective(model, F.cross_entropy, (X, y), subset=60, seed=seed).evaluate()
        hits.append(abs(values["loss"] - exact) <= 2 * values["loss_stderr"])
    coverage = float(np.mean(hits))
    assert 0.90 <= coverage <= 0.99, coverage


def test_params_selection_by_glob(mlp_problem):
    model, loss, data = mlp_problem
    assert lv.Objective(model, loss, data, params="*.bias").param_names == (
        "0.bias",
        "2.bias",
        "4.bias",
    )
    assert lv.Objective(model, loss, data, params=["4.weight", "0.*"]).param_names == (
        "0.weight",
        "0.bias",
        "4.weight",
    )
    with pytest.raises(lv.InputError, match="matches no parameter"):
        lv.Objective(model, loss, data, params="fc.*")


def test_bn_recompute_matches_a_manual_reestimate(cnn_problem):
    model, loss, (X, y) = cnn_problem
    before = snapshot(model)
    eval_loss = lv.Objective(model, loss, (X, y)).loss()
    obj = lv.Objective(model, loss, (X, y), bn="recompute", batch_size=20)
    recomputed = obj.loss()
    assert_unchanged(model, before)
    manual = copy.deepcopy(model)
    for m in manual.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    manual.train()
    with torch.no_grad():
        for start in range(0, 65, 20):
            manual(X[start : start + 20])
    manual.eval()
    assert recomputed == pytest.approx(_full_batch(manual, X, y), rel=1e-12)
    assert abs(recomputed - eval_loss) > 1e-3  # the fixture's running statistics are off


def test_evaluate_restores_model_and_accepts_parameter_values(mlp_problem):
    model, loss, data = mlp_problem
    model.train()
    model[0].weight.requires_grad_(False)
    before = snapshot(model)
    obj = lv.Objective(model, loss, data)
    other = make_mlp(seed=5)
    value = obj.evaluate(at=dict(other.named_parameters()))["loss"]
    assert value == pytest.approx(_full_batch(other.eval(), *data), rel=1e-12)
    assert_unchanged(model, before)


def test_bad_inputs_have_clear_errors(mlp_problem):
    model, loss, (X, y) = mlp_problem
    with pytest.raises(lv.DataError, match="empty"):
        lv.Objective(model, loss, (X[:0], y[:0]))
    with pytest.raises(lv.DataError, match="empty"):
        lv.Objective(model, loss, iter([]))
    with pytest.raises(lv.DataError, match="empty"):
        lv.Objective(model, loss, [])
    with pytest.raises(lv.DataError, match="empty"):
        lv.Objective(model, loss, DataLoader(TensorDataset(X[:0], y[:0]), batch_size=4))
    with pytest.raises(lv.DataError, match="65 inputs but 64 targets"):
        lv.Objective(model, loss, (X, y[:64]))
    with pytest.raises(lv.DataError, match="pair"):
        lv.Objective(model, loss, [(X, y, y)]).loss()
    with pytest.raises(lv.DataError, match="must be a tuple"):
        lv.Objective(model, loss, 42)
    with pytest.raises(lv.InputError, match="bn must be"):
        lv.Objective(model, loss, (X, y), bn="train")
    with pytest.raises(lv.InputError, match=r"nn\.Module"):
        lv.Objective(lambda x: x, loss, (X, y))
    with pytest.raises(lv.DataError, match="larger than the data set"):
        lv.Objective(model, loss, (X, y), subset=100)
    with pytest.raises(lv.InputError, match="unknown metric"):
        lv.Objective(model, loss, (X, y), metrics=["acc"])
    with pytest.raises(lv.InputError, match="reserved"):
        lv.Objective(model, loss, (X, y), metrics={"loss": loss})
    bad = lv.Objective(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), (X, y))
    with pytest.raises(lv.InputError, match=r"loss_fn returned \(65,\), expected a scalar"):
        bad.loss()


def test_inputs_as_tuples_and_dicts():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2).double()
            self.b = nn.Linear(4, 2).double()

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    torch.manual_seed(0)
    model = TwoInputs()
    left, right = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (9,))
    with torch.no_grad():
        exact = float(F.cross_entropy(model(left, right), y))
    as_tuple = lv.Objective(model, F.cross_entropy, ((left, right), y), batch_size=4)
    as_dict = lv.Objective(model, F.cross_entropy, ({"left": left, "right": right}, y))
    assert as_tuple.loss() == pytest.approx(exact, rel=1e-12)
    assert as_dict.loss() == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("kwargs", [{"batch_size": True}, {"subset": True}, {"batch_size": 0}])
def test_bool_or_bad_integer_settings_are_refused(kwargs):
    model = torch.nn.Linear(3, 2)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(lv.InputError, match=r"must be .*integer"):
        lv.Objective(model, torch.nn.functional.cross_entropy, data, **kwargs)
