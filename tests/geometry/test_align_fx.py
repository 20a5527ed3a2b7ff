"""Permutation alignment of traced models: residual connections share one permutation.

The oracles: each model is permuted by hand (every tensor written out, independently of the
traced specification) and alignment must recover the permutations and the reference's tensors
bit for bit; the aligned model computes model_b's function in float64.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, snapshot
from lossvista.errors import InputError
from lossvista.geometry import _fx_spec, _fx_trace
from lossvista.geometry import _permutation_spec as _walker
from lossvista.geometry.align import align, permutation_spec

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class Block(nn.Module):
    """``x + bn2(conv2(relu(bn1(conv1(x)))))``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class ResNet(nn.Module):
    """Conv stem + BN + ReLU, two residual blocks, global average pool, Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block1, self.block2 = Block(6, 5), Block(6, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(self.stem(x)))
        return self.head(torch.flatten(self.pool(h), 1))


class ResMLP(nn.Module):
    """``fc1 -> relu -> h + down(gelu(up(h))) -> LayerNorm -> head``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.up, self.down = nn.Linear(5, 7), nn.Linear(7, 9), nn.Linear(9, 7)
        self.norm, self.head = nn.LayerNorm(7), nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = h + self.down(nn.functional.gelu(self.up(h)))
        return self.head(self.norm(h))


def _resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet().double()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
        model.train()
        model(torch.randn(32, 2, 5, 5, dtype=torch.float64) * 2 + 0.5)
    return model.eval()


def _resmlp(seed: int = 0) -> ResMLP:
    torch.manual_seed(seed)
    model = ResMLP().double()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    return model


def _permute_resnet(a: ResNet, p: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> ResNet:
    """``a`` with the residual stream's channels reordered by ``p`` and each block's inner
    channels by ``q1``, ``q2`` (every tensor written out by hand)."""
    sd = a.state_dict()
    out = dict(sd)
    out["stem.0.weight"], out["stem.0.bias"] = sd["stem.0.weight"][p], sd["stem.0.bias"][p]
    for t in BN_TENSORS:
        out[f"stem.1.{t}"] = sd[f"stem.1.{t}"][p]
    for block, q in (("block1", q1), ("block2", q2)):
        out[f"{block}.conv1.weight"] = sd[f"{block}.conv1.weight"][q][:, p]
        out[f"{block}.conv1.bias"] = sd[f"{block}.conv1.bias"][q]
        out[f"{block}.conv2.weight"] = sd[f"{block}.conv2.weight"][p][:, q]
        out[f"{block}.conv2.bias"] = sd[f"{block}.conv2.bias"][p]
        for t in BN_TENSORS:
            out[f"{block}.bn1.{t}"] = sd[f"{block}.bn1.{t}"][q]
            out[f"{block}.bn2.{t}"] = sd[f"{block}.bn2.{t}"][p]
    out["head.weight"] = sd["head.weight"][:, p]
    b = copy.deepcopy(a)
    b.load_state_dict(out)
    return b


def _permute_resmlp(a: ResMLP, p: torch.Tensor, q: torch.Tensor) -> ResMLP:
    sd = a.state_dict()
    out = dict(sd)
    out["fc1.weight"], out["fc1.bias"] = sd["fc1.weight"][p], sd["fc1.bias"][p]
    out["up.weight"], out["up.bias"] = sd["up.weight"][q][:, p], sd["up.bias"][q]
    out["down.weight"], out["down.bias"] = sd["down.weight"][p][:, q], sd["down.bias"][p]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"][p], sd["norm.bias"][p]
    out["head.weight"] = sd["head.weight"][:, p]
    b = copy.deepcopy(a)
    b.load_state_dict(out)
    return b


def _assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def _inverse(p: torch.Tensor) -> np.ndarray:
    return torch.argsort(p).numpy()


STREAM = "stem.0+block1.conv2+block2.conv2"


def test_traced_spec_of_a_resnet_joins_the_residual_stream():
    spec = permutation_spec(_resnet())
    assert sorted(spec) == sorted([STREAM, "block1.conv1", "block2.conv1"])
    stream = {(n, axis) for n, axis, _ in spec[STREAM]}
    assert ("head.weight", 1) in stream and ("block2.conv1.weight", 1) in stream
    assert ("stem.1.running_var", 0) in stream and ("block1.bn2.running_mean", 0) in stream
    assert {(n, axis) for n, axis, _ in spec["block1.conv1"]} == {
        ("block1.conv1.weight", 0),
        ("block1.conv1.bias", 0),
        *((f"block1.bn1.{t}", 0) for t in BN_TENSORS),
        ("block1.conv2.weight", 1),
    }
    assert all(block == 1 for entries in spec.values() for _, _, block in entries)
    assert not any(n == "head.weight" and axis == 0 for n, axis, _ in spec[STREAM])


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_align_recovers_a_resnet_permutation_exactly(method):
    a = _resnet()
    g = torch.Generator().manual_seed(1)
    p, q1, q2 = torch.randperm(6, generator=g), torch.randperm(5, generator=g), torch.randperm(4)
    b = _permute_resnet(a, p, q1, q2)
    before_a, before_b = snapshot(a), snapshot(b)
    x = torch.randn(64, 2, 5, 5, dtype=torch.float64, generator=g)
    result = align(a, b, method=method, data=x if method == "activations" else None)
    assert result.settings["found_by"] == "torch.fx"
    np.testing.assert_array_equal(result.permutations[STREAM], _inverse(p))
    np.testing.assert_array_equal(result.permutations["block1.conv1"], _inverse(q1))
    np.testing.assert_array_equal(result.permutations["block2.conv1"], _inverse(q2))
    _assert_same_state(result.model, a)  # parameters and running statistics
    assert_unchanged(a, before_a)
    assert_unchanged(b, before_b)
    torch.testing.assert_close(result.model.eval()(x), b(x), rtol=1e-10, atol=1e-10)


def test_aligned_resnet_keeps_the_function_of_an_unrelated_model():
    a, b = _resnet(0), _resnet(1)
    result = align(a, b)
    assert result.units_moved() > 0
    x = torch.randn(40, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(result.model.eval()(x), b(x), rtol=1e-10, atol=1e-10)
    # the weight matching only increases the summed inner product of the weights
    with torch.no_grad():
        inner = sum(float((pa * pb).sum()) for pa, pb in zip(a.parameters(), b.parameters()))
        after = sum(
            float((pa * pb).sum()) for pa, pb in zip(a.parameters(), result.model.parameters())
        )
    assert after > inner
    activations = align(a, b, data=x, method="activations")
    torch.testing.assert_close(activations.model.eval()(x), b(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_align_recovers_a_residual_mlp_with_layer_norm(method):
    a = _resmlp()
    p, q = torch.randperm(7), torch.randperm(9)
    b = _permute_resmlp(a, p, q)
    x = torch.randn(200, 5, dtype=torch.float64)
    result = align(a, b, method=method, data=x)
    assert set(result.permutations) == {"fc1+down", "up"}
    np.testing.assert_array_equal(result.permutations["fc1+down"], _inverse(p))
    np.testing.assert_array_equal(result.permutations["up"], _inverse(q))
    _assert_same_state(result.model, a)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-10, atol=1e-10)
    unrelated = align(a, _resmlp(3), method=method, data=x)
    torch.testing.assert_close(unrelated.model(x), _resmlp(3)(x), rtol=1e-10, atol=1e-10)


class ViewNet(nn.Module):
    """conv -> BN -> relu -> view(N, -1) -> Linear -> BatchNorm1d -> relu -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)
        self.fc, self.bn_fc, self.out = nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = h.view(h.size(0), -1)
        return self.out(torch.relu(self.bn_fc(self.fc(h))))


def test_view_and_batchnorm1d_need_shapes_and_then_align_exactly():
    torch.manual_seed(0)
    a = ViewNet().double()
    with torch.no_grad():
        a.train()
        a(torch.randn(30, 1, 6, 6, dtype=torch.float64))
    a.eval()
    with pytest.raises(InputError, match=r"'view'.*example_input="):
        align(a, copy.deepcopy(a))
    p, q = torch.randperm(3), torch.randperm(5)
    sd = a.state_dict()
    out = dict(sd)
    for name in ("conv.weight", "conv.bias", *(f"bn.{t}" for t in BN_TENSORS)):
        out[name] = sd[name][p]
    # view of (3, 4, 4): input column c * 16 + s of fc belongs to channel c
    out["fc.weight"] = sd["fc.weight"].reshape(5, 3, 16)[q][:, p].reshape(5, 48)
    for name in ("fc.bias", *(f"bn_fc.{t}" for t in BN_TENSORS)):
        out[name] = sd[name][q]
    out["out.weight"] = sd["out.weight"][:, q]
    b = copy.deepcopy(a)
    b.load_state_dict(out)
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    spec = permutation_spec(a, example_input=x[:1])
    assert ("fc.weight", 1, 16) in spec["conv"]
    assert ("bn_fc.running_var", 0, 1) in spec["fc"]
    result = align(a, b, example_input=x[:2])
    np.testing.assert_array_equal(result.permutations["conv"], _inverse(p))
    np.testing.assert_array_equal(result.permutations["fc"], _inverse(q))
    _assert_same_state(result.model, a)
    assert _state_equal(align(a, b, data=x).model, result.model)


def _state_equal(m1: nn.Module, m2: nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[n], s2[n]) for n in s1)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([torch.relu(self.left(x)), self.right(x)], dim=1))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.gate, self.out = nn.Linear(4, 3), Gate(), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gate(self.fc(x)))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(4, 3), nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x) * self.scale)


def test_unsupported_operations_are_named():
    with pytest.raises(
        InputError, match=r"node 'cat' \(cat\) of Branches cannot be aligned.*spec="
    ):
        align(Branches(), Branches())
    with pytest.raises(
        InputError, match=r"module 'gate' \(Gate\) of Gated cannot be traced.*spec="
    ):
        align(Gated(), Gated())
    with pytest.raises(InputError, match=r"node 'mul'.*parameter or constant.*spec="):
        align(Scaled(), Scaled())
    lstm = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8), nn.Linear(8, 2))
    with pytest.raises(
        InputError, match=r"module '1' \(LSTM\) of Sequential cannot be aligned.*spec="
    ):
        permutation_spec(lstm)
    with pytest.raises(InputError, match="example_input must be"):
        align(_resmlp(), _resmlp(), example_input=[1, 2])
    with pytest.raises(InputError, match="fails on the example input"):
        permutation_spec(_resmlp(), example_input=torch.zeros(2, 4, dtype=torch.float64))
    # a hand spec still aligns what tracing cannot
    spec = {"fc": [("fc.weight", 0), ("fc.bias", 0), ("out.weight", 1)]}
    torch.manual_seed(0)
    gated = Gated().double()
    x = torch.randn(10, 4, dtype=torch.float64)
    result = align(gated, Gated().double(), spec=spec, data=x)
    assert result.settings["found_by"] == "spec"


def _sequential_models() -> list[nn.Sequential]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    first = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    rest = [nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    cnn = nn.Sequential(first, *rest, nn.Linear(24, 3))
    return [mlp.double(), cnn.double()]


def test_sequential_models_trace_to_the_walkers_spec_and_answers(monkeypatch):
    """fx tracing of nn.Sequential chains gives the walker's spec, permutations and models."""
    cases = []
    for model in _sequential_models():
        x = torch.randn(60, *((8,) if isinstance(model[0], nn.Linear) else (1, 6, 6)))
        other = copy.deepcopy(model)
        with torch.no_grad():
            for t in other.parameters():
                t.normal_()
        found = _fx_spec.discover(model)
        assert found.traced
        assert found.spec == _walker.discover(model)[0]
        cases.append((model, other, x.double()))
    methods = ("weights", "activations")
    traced = [[align(a, b, data=x, method=m) for m in methods] for a, b, x in cases]

    def untraceable(*_args: object, **_kwargs: object) -> None:
        raise InputError("cannot be traced")

    monkeypatch.setattr(_fx_trace, "trace", untraceable)
    for (a, b, x), results in zip(cases, traced, strict=True):
        assert not _fx_spec.discover(a).traced
        for result, method in zip(results, methods, strict=True):
            walked = align(a, b, data=x, method=method)
            assert result.settings["found_by"] == "torch.fx"
            assert walked.settings["found_by"] == "nn.Sequential"
            assert walked.permutations.keys() == result.permutations.keys()
            for name in result.permutations:
                np.testing.assert_array_equal(walked.permutations[name], result.permutations[name])
            assert _state_equal(walked.model, result.model)
