"""Permutation alignment of traced graphs beyond chains and residual blocks: a broadcast gate,
a layer used twice (under two names), a residual from the input, and the barrier between
independently trained residual networks on the digits.

Oracles as in ``test_align_fx.py``: permutations written out by hand, recovered exactly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lossvista.errors import InputError
from lossvista.geometry.align import align, permutation_spec


def _inverse(p: torch.Tensor) -> np.ndarray:
    return torch.argsort(p).numpy()


def _assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


class Squeeze(nn.Module):
    """A squeeze-and-excitation gate: ``h * sigmoid(fc_e(tanh(fc_s(mean(h)))))`` broadcast over
    the positions joins the convolution's channels and fc_e's outputs into one permutation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc_s, self.fc_e = nn.Conv2d(2, 6, 3), nn.Linear(6, 3), nn.Linear(3, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc_e(torch.tanh(self.fc_s(h.mean((2, 3))))))
        h = h * gate.view(-1, 6, 1, 1)
        return self.head(h.mean(dim=(2, 3)))


class Shared(nn.Module):
    """The same layer applied twice, registered under two names (its tensors appear twice in
    the state dict): its inputs and outputs share one permutation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.mid, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.again = self.mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mid(torch.tanh(self.fc1(x))))
        return self.out(torch.tanh(self.again(h)))


def test_broadcast_gate_and_a_shared_layer_are_recovered_exactly():
    torch.manual_seed(0)
    a = Squeeze().double()
    p, q = torch.randperm(6), torch.randperm(3)
    sd = a.state_dict()
    out = dict(sd)
    out["conv.weight"], out["conv.bias"] = sd["conv.weight"][p], sd["conv.bias"][p]
    out["fc_s.weight"], out["fc_s.bias"] = sd["fc_s.weight"][q][:, p], sd["fc_s.bias"][q]
    out["fc_e.weight"], out["fc_e.bias"] = sd["fc_e.weight"][p][:, q], sd["fc_e.bias"][p]
    out["head.weight"] = sd["head.weight"][:, p]
    b = copy.deepcopy(a)
    b.load_state_dict(out)
    x = torch.randn(50, 2, 5, 5, dtype=torch.float64)
    with pytest.raises(InputError, match=r"'fc_s'.*unknown rank.*example_input="):
        align(a, b)
    for method in ("weights", "activations"):
        result = align(a, b, data=x, method=method)
        assert set(result.permutations) == {"conv+fc_e", "fc_s"}
        np.testing.assert_array_equal(result.permutations["conv+fc_e"], _inverse(p))
        np.testing.assert_array_equal(result.permutations["fc_s"], _inverse(q))
        _assert_same_state(result.model, a)
        torch.testing.assert_close(result.model(x), b(x), rtol=1e-10, atol=1e-10)

    torch.manual_seed(1)
    a = Shared().double()
    p = torch.randperm(6)
    sd = a.state_dict()
    out = dict(sd)
    out["fc1.weight"], out["fc1.bias"] = sd["fc1.weight"][p], sd["fc1.bias"][p]
    out["mid.weight"], out["mid.bias"] = sd["mid.weight"][p][:, p], sd["mid.bias"][p]
    out["again.weight"], out["again.bias"] = out["mid.weight"], out["mid.bias"]
    out["out.weight"] = sd["out.weight"][:, p]
    b = copy.deepcopy(a)
    b.load_state_dict(out)
    result = align(a, b)
    assert list(result.permutations) == ["fc1+mid"]
    np.testing.assert_array_equal(result.permutations["fc1+mid"], _inverse(p))
    _assert_same_state(result.model, a)
    assert result.model.again is result.model.mid
    x = torch.randn(20, 4, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), b(x), rtol=1e-10, atol=1e-10)


def test_a_residual_from_the_input_pins_the_stream():
    """``h = fc1(x) + x``: the sum holds the input's axes, which never move; only the inner
    hidden layer is permuted."""

    class InputResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x + self.fc2(torch.relu(self.fc1(x))))

    spec = permutation_spec(InputResidual())
    assert spec == {"fc1": [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]}


class DigitsBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class DigitsResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block, self.head = DigitsBlock(), nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.block(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class DigitsResMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.up = nn.Linear(64, 32), nn.Linear(32, 64)
        self.down, self.head = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.head(h + self.down(torch.relu(self.up(h))))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("architecture", "bn"), [(DigitsResMLP, "eval"), (DigitsResNet, "recompute")]
)
def test_alignment_lowers_the_barrier_between_trained_residual_networks(architecture, bn):
    import lossvista as lv
    from lossvista.demo import digits_data

    X, y = digits_data("train")
    X, y = X[:600], y[:600]

    def trained(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = architecture()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()
        return model.eval()

    a, b = trained(0), trained(1)
    obj = lv.Objective(a, nn.functional.cross_entropy, (X, y), bn=bn)
    plain = lv.interpolate(obj, a, b, steps=11, progress=False)
    weights = align(a, b)
    assert any("+" in name for name in weights.permutations)  # the residual stream
    after = lv.interpolate(obj, a, weights.model, steps=11, progress=False)
    acts = align(a, b, data=X, method="activations")
    after_acts = lv.interpolate(obj, a, acts.model, steps=11, progress=False)
    print(
        f"{architecture.__name__} barrier: unaligned {plain.barrier:.4f}, weights "
        f"{after.barrier:.4f}, activations {after_acts.barrier:.4f}"
    )
    assert after.barrier < plain.barrier
    assert after_acts.barrier < plain.barrier
