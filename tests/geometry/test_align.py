"""Permutation alignment: exact recovery of known permutations, function preservation, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, snapshot
from lossvista.errors import InputError
from lossvista.geometry.align import Alignment, align, permutation_spec
from protocol import check_protocol


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    ).double()


def _cnn(seed: int = 0, nested: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    first = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    layers = [
        *(([first]) if nested else list(first)),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    ]
    model = nn.Sequential(*layers).double()
    model.train()  # non-trivial running statistics
    with torch.no_grad():
        model(torch.randn(40, 1, 6, 6, dtype=torch.float64) * 2 + 1)
    return model.eval()


def _permuted_mlp(a: nn.Sequential, p1: torch.Tensor, p2: torch.Tensor) -> nn.Sequential:
    """``a`` with hidden unit i of layer k moved from ``p_k[i]`` (written out by hand)."""
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.copy_(a[0].weight[p1])
        b[0].bias.copy_(a[0].bias[p1])
        b[2].weight.copy_(a[2].weight[p2][:, p1])
        b[2].bias.copy_(a[2].bias[p2])
        b[4].weight.copy_(a[4].weight[:, p2])
    return b


def _permuted_cnn(a: nn.Sequential, p1: torch.Tensor, p2: torch.Tensor) -> nn.Sequential:
    b = copy.deepcopy(a)
    sd = {n: t.clone() for n, t in a.state_dict().items()}
    out = dict(sd)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        out[name] = sd[name][p1]
    out["3.weight"] = sd["3.weight"][p2][:, p1]
    for name in ("3.bias", "4.weight", "4.bias", "4.running_mean", "4.running_var"):
        out[name] = sd[name][p2]
    # Flatten of (6, 2, 2): input column c * 4 + s of the Linear belongs to channel c.
    out["8.weight"] = sd["8.weight"].reshape(3, 6, 4)[:, p2].reshape(3, 24)
    b.load_state_dict(out)
    return b


def _assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_weight_matching_recovers_mlp_permutation():
    a = _mlp()
    p1, p2 = torch.randperm(16), torch.randperm(12)
    b = _permuted_mlp(a, p1, p2)
    before_a, before_b = snapshot(a), snapshot(b)
    result = align(a, b)
    assert set(result.permutations) == {"0", "2"}
    # unit i of the aligned model is unit perm[i] of b, which is unit i of a
    np.testing.assert_array_equal(result.permutations["0"], torch.argsort(p1).numpy())
    np.testing.assert_array_equal(result.permutations["2"], torch.argsort(p2).numpy())
    _assert_same_state(result.model, a)
    x = torch.randn(50, 8, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-12, atol=1e-12)
    assert_unchanged(a, before_a)
    assert_unchanged(b, before_b)
    assert result.units_moved() == int(
        (p1 != torch.arange(16)).sum() + (p2 != torch.arange(12)).sum()
    )


def test_aligned_model_keeps_the_function_of_unrelated_models():
    a, b = _mlp(0), _mlp(1)
    result = align(a, b)
    x = torch.randn(50, 8, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-12, atol=1e-12)
    # the matching only improves the summed inner product of the weights
    inner = sum(float((pa * pb).sum().detach()) for pa, pb in zip(a.parameters(), b.parameters()))
    aligned = sum(
        float((pa * pb).sum().detach()) for pa, pb in zip(a.parameters(), result.model.parameters())
    )
    assert aligned >= inner
    assert result.iterations >= 1


@pytest.mark.parametrize("nested", [False, True])
def test_weight_matching_recovers_cnn_channels_and_batchnorm_buffers(nested):
    a = _cnn(nested=False)
    p1, p2 = torch.randperm(4), torch.randperm(6)
    b = _permuted_cnn(a, p1, p2)
    if nested:  # same tensors under nested names: 0.0, 0.1, 0.2, 1, ...
        a_nested, b_nested = _cnn(nested=True), _cnn(nested=True)
        rename = dict(zip(a.state_dict(), a_nested.state_dict(), strict=True))
        a_nested.load_state_dict({rename[n]: t for n, t in a.state_dict().items()})
        b_nested.load_state_dict({rename[n]: t for n, t in b.state_dict().items()})
        a, b = a_nested, b_nested
    before = snapshot(b)
    result = align(a, b)
    _assert_same_state(result.model, a)
    assert_unchanged(b, before)
    x = torch.randn(20, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-12, atol=1e-12)
    # num_batches_tracked is not a unit axis
    assert not any("num_batches" in n for v in result.settings["spec"].values() for n, _, _ in v)


def test_activation_matching_recovers_permutations():
    a = _mlp()
    p1, p2 = torch.randperm(16), torch.randperm(12)
    b = _permuted_mlp(a, p1, p2)
    x = torch.randn(300, 8, dtype=torch.float64)
    result = align(a, b, data=(x, torch.zeros(300)), method="activations")
    _assert_same_state(result.model, a)
    assert result.method == "activations"

    c = _cnn()
    q1, q2 = torch.randperm(4), torch.randperm(6)
    d = _permuted_cnn(c, q1, q2)
    before = snapshot(d)
    images = torch.randn(100, 1, 6, 6, dtype=torch.float64)
    loader = [(images[i : i + 32], torch.zeros(len(images[i : i + 32]))) for i in range(0, 100, 32)]
    result = align(c, d, data=loader, method="activations", samples=80)
    _assert_same_state(result.model, c)
    assert_unchanged(d, before)


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8), nn.Linear(8, 2))
    with pytest.raises(InputError, match=r"'1' \(LSTM\).*spec="):
        align(model, copy.deepcopy(model))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + x

    # fc's outputs are the model's outputs and are added to its inputs: both stay in place
    a, b = Net().double(), Net().double()
    result = align(a, b)
    assert result.permutations == {} and result.settings["found_by"] == "torch.fx"
    _assert_same_state(result.model, b)
    with pytest.raises(InputError, match="method"):
        align(_mlp(), _mlp(), method="bogus")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="data="):
        align(_mlp(), _mlp(), method="activations")
    with pytest.raises(InputError, match="shapes"):
        align(
            _mlp(),
            nn.Sequential(
                nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3)
            ),
        )


class _Residual(nn.Module):
    """x -> fc1 -> relu -> (h + fc2(relu(h))) -> fc3: the residual joins fc1 and fc2's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = h + self.fc2(h)
        return self.fc3(h)


def test_hand_spec_with_a_residual_connection():
    torch.manual_seed(0)
    a = _Residual().double()
    p = torch.randperm(7)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.fc1.weight.copy_(a.fc1.weight[p])
        b.fc1.bias.copy_(a.fc1.bias[p])
        b.fc2.weight.copy_(a.fc2.weight[p][:, p])
        b.fc2.bias.copy_(a.fc2.bias[p])
        b.fc3.weight.copy_(a.fc3.weight[:, p])
    spec = {
        "residual": [
            ("fc1.weight", 0),
            ("fc1.bias", 0),
            ("fc2.weight", 0),
            ("fc2.weight", 1),
            ("fc2.bias", 0),
            ("fc3.weight", 1),
        ]
    }
    x = torch.randn(30, 5, dtype=torch.float64)
    result = align(a, b, spec=spec, data=x)
    np.testing.assert_array_equal(result.permutations["residual"], torch.argsort(p).numpy())
    _assert_same_state(result.model, a)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-12, atol=1e-12)

    missing = {"residual": spec["residual"][:-1]}  # fc3's columns forgotten
    with pytest.raises(InputError, match="another function"):
        align(a, b, spec=missing, data=x)
    with pytest.raises(InputError, match=r"'fc9\.weight'"):
        align(a, b, spec={"h": [("fc9.weight", 0)]})
    with pytest.raises(InputError, match="same size"):
        align(a, b, spec={"h": [("fc1.weight", 0), ("fc1.weight", 1)]})
    with pytest.raises(InputError, match="both"):
        align(a, b, spec={"h": [("fc1.bias", 0)], "g": [("fc1.bias", 0)]})


def test_permutation_spec_lists_flatten_blocks():
    spec = permutation_spec(_cnn())
    assert spec["3"][-1] == ("8.weight", 1, 4)  # 2 x 2 positions per channel
    assert ("1.running_var", 0, 1) in spec["0"]
    assert "8" not in spec  # the output units never move


def test_a_single_layer_has_nothing_to_permute():
    a, b = nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2))
    result = align(a, b)
    assert result.permutations == {} and result.units_moved() == 0
    _assert_same_state(result.model, b)


def test_alignment_result_protocol(tmp_path):
    a, b = _cnn(0), _cnn(1)
    result = align(a, b)
    loaded = check_protocol(result, tmp_path, numbers=("weights", "units moved"), name="align.h5")
    assert isinstance(loaded, Alignment)
    with pytest.raises(InputError, match="apply"):
        _ = loaded.model
    _assert_same_state(loaded.apply(b), result.model)
    assert "units moved" in repr(result)


@pytest.mark.slow
def test_alignment_lowers_the_barrier_between_trained_mlps():
    import lossvista as lv
    from lossvista.demo import digits_data

    X, y = digits_data("train")
    X = X.reshape(len(X), -1)

    def trained(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()
        return model

    a, b = trained(0), trained(1)
    obj = lv.Objective(a, nn.functional.cross_entropy, (X, y))
    plain = lv.interpolate(obj, a, b, steps=21, progress=False)
    weights = lv.interpolate(obj, a, align(a, b).model, steps=21, progress=False)
    acts = lv.interpolate(
        obj, a, align(a, b, data=X, method="activations").model, steps=21, progress=False
    )
    print(
        f"barrier: unaligned {plain.barrier:.4f}, weights {weights.barrier:.4f}, activations {acts.barrier:.4f}"
    )
    assert weights.barrier < plain.barrier
    assert acts.barrier < plain.barrier
