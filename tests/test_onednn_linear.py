"""Linear layers through oneDNN on the CPU (``onednn_linear``, issue 10): every point equals the
plain forward up to float32 rounding, only plain ``nn.Linear`` layers are taken, calls oneDNN
cannot take run the layer's own forward, and the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import (
    assert_unchanged,
    classification_data,
    make_cnn,
    make_mlp,
    plane_losses,
    snapshot,
)
from lossvista import _input_layers, _onednn, _tuning
from lossvista.engine import EngineConfig, PointEvaluator

F = nn.functional
pytestmark = pytest.mark.skipif(
    not _onednn.available(), reason="this PyTorch has no oneDNN linear operation"
)
#: oneDNN sums in another order than the BLAS: float32 rounding, nothing more
RTOL = 1e-5


def _grid(n: int, k: int = 2, seed: int = 0) -> np.ndarray:
    points = np.random.default_rng(seed).uniform(-1, 1, size=(n, k))
    points[0] = 0.0
    return points


def _counted(monkeypatch) -> list[int]:
    """Counts the calls that went to oneDNN."""
    calls: list[int] = []
    op = _onednn._op()
    monkeypatch.setattr(_onednn, "_op", lambda: lambda *a: calls.append(1) or op(*a))
    return calls


class Tokens(nn.Module):
    """A transformer-style block: 3-D activations through Linear layers, a Linear subclass with
    its own forward (not taken) and a hooked Linear (taken: hooks run around the forward)."""

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 12)
        self.mix = nn.Linear(12, 12)
        self.scaled = Tokens.Scaled(12, 12)
        self.head = nn.Linear(12, 3)
        self.seen: list[tuple[int, ...]] = []
        self.mix.register_forward_hook(lambda m, i, o: self.seen.append(tuple(o.shape)))

    def forward(self, x):  # x: (batch, 8) -> 4 tokens per sample
        h = self.embed(x).unsqueeze(1).expand(-1, 4, -1).contiguous()
        h = h + F.gelu(self.mix(h))
        h = self.scaled(h)
        return self.head(h.mean(1))


def _float32(model: nn.Module):
    return model.float(), classification_data(dtype=torch.float32)


@pytest.mark.parametrize("build, taken", [(lambda: make_mlp(dtype=torch.float32), 3), (Tokens, 3)])
def test_points_equal_the_plain_forward_to_float32_rounding(build, taken, monkeypatch):
    model, data = _float32(build())
    before = snapshot(model)
    assert len(_onednn.layers(model)) == taken
    calls = _counted(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, data, batch_size=20)  # 4 batches
    directions = lv.random_directions(model, 2, seed=1)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(6)
    plain, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    assert not calls
    config = EngineConfig("loop", None, 1, onednn_linear=True)
    hooked = len(getattr(model, "seen", []))
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    assert len(calls) == len(coefficients) * 4 * taken
    if isinstance(model, Tokens):  # the hook ran around the oneDNN forward
        assert len(model.seen) - hooked == len(coefficients) * 4
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=RTOL, atol=0)
    np.testing.assert_allclose(values["loss"], plain["loss"], rtol=RTOL, atol=0)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_only_float32_cpu_linear_layers_with_their_own_forward_are_taken():
    assert _onednn.layers(make_mlp(dtype=torch.float64)) == []  # oneDNN has no float64 product
    assert _onednn.layers(make_mlp(dtype=torch.bfloat16)) == []
    cnn = make_cnn(dtype=torch.float32)
    assert _onednn.layers(cnn) == [cnn[-1]]  # its head; the convolutions are oneDNN's already
    model = make_mlp(dtype=torch.float32)
    model[0].forward = lambda x: F.linear(x, model[0].weight, model[0].bias)  # the user's own
    assert model[0] not in _onednn.layers(model)
    assert Tokens().scaled not in _onednn.layers(Tokens())


def test_calls_oneDNN_cannot_take_run_the_layer_itself(monkeypatch):
    layer = nn.Linear(6, 4)
    x = torch.randn(6, 5).t()  # not contiguous
    calls = _counted(monkeypatch)
    with _onednn.linear(layer), torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        one = x.contiguous()[0]  # 1-D
        assert torch.equal(layer(one), F.linear(one, layer.weight, layer.bias))
        assert not calls  # a 1-D input, a strided one: the layer's own forward
        layer(x.contiguous())
        assert len(calls) == 1
    with _onednn.linear(layer):  # gradients on: the layer's own forward (oneDNN's has none)
        out = layer(x.contiguous())
        out.sum().backward()
    assert len(calls) == 1 and layer.weight.grad is not None
    assert "forward" not in layer.__dict__


def test_an_exception_mid_run_leaves_the_model_as_it_was():
    model, data = _float32(make_mlp())
    before = snapshot(model)
    calls = [0]

    def failing(output, target):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(output, target)

    obj = lv.Objective(model, failing, data)
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
    with pytest.raises(RuntimeError, match="boom"):
        evaluator.run(_grid(5), config=EngineConfig(onednn_linear=True), progress=False)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_with_the_stored_input_layers_the_first_layer_is_stored_and_the_others_oneDNN(
    monkeypatch,
):
    model, data = _float32(make_mlp())
    calls = _counted(monkeypatch)
    served: list[int] = []
    combined = _input_layers._combined
    monkeypatch.setattr(_input_layers, "_combined", lambda *a: served.append(1) or combined(*a))
    obj = lv.Objective(model, F.cross_entropy, data)  # one batch
    directions = lv.random_directions(model, 2, seed=2)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(5)
    config = EngineConfig("loop", None, 1, precompute_input=True, onednn_linear=True)
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    assert len(served) == len(coefficients)  # the first Linear, from its stored outputs
    # the two other layers at every point, plus the first layer's outputs computed once
    # (origin and two directions) and the probe's forward pass
    assert len(calls) >= 2 * len(coefficients)
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=RTOL, atol=0)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_tuning_tries_it_on_the_cpu_for_float32_linear_layers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)  # let every candidate run
    for dtype, tried in ((torch.float32, True), (torch.float64, False)):
        _tuning.clear_memory()
        model = make_mlp(dtype=dtype)
        obj = lv.Objective(model, F.cross_entropy, classification_data(dtype=dtype))
        evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
        _, report = evaluator.run(_grid(60), progress=False)
        options = [t.get("onednn_linear") for t in report.trials if "seconds_per_point" in t]
        assert any(options) is tried
        assert ("onednn_linear" in _tuning.possible_refinements(evaluator)) is tried


def test_never_paired_with_compile_which_cannot_lower_it():
    """Inductor fails to lower oneDNN's linear (a 10,000-image ResNet's compile trial failed on
    it and lost compile's 1.3x): the compiled form of a configuration drops it, and a
    configuration that asks for both runs the layers' own forward under compile."""
    from lossvista import _strategies

    best = EngineConfig("loop", 64, 1, fold_batchnorm=True, onednn_linear=True)
    assert _tuning.compiled_form(best) == EngineConfig(
        "loop", 64, 1, fold_batchnorm=True, compile=True
    )
    model, data = _float32(make_mlp())
    obj = lv.Objective(model, F.cross_entropy, data)
    both = EngineConfig("loop", None, 1, onednn_linear=True, compile=True)
    with _strategies.configured(obj, both):
        assert all(not _onednn.is_forward(m.__dict__.get("forward")) for m in model.modules())
    with _strategies.configured(obj, EngineConfig("loop", None, 1, onednn_linear=True)):
        assert sum(_onednn.is_forward(m.__dict__.get("forward")) for m in model.modules()) == 3


def _gpt2():
    """A HuggingFace GPT-2 from a tiny config (no download): 2 blocks of 4 ``Conv1D`` layers."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=23,
        n_positions=12,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 23, (24, 12), generator=torch.Generator().manual_seed(1))

    def next_token(output, ids):
        logits = output.logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return model, (ids, ids), next_token


def test_gpt2s_conv1d_layers_go_through_oneDNN_with_their_weight_transposed_per_point(
    monkeypatch,
):
    model, data, loss = _gpt2()
    before = snapshot(model)
    conv1d = [m for m in model.modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 8 and set(conv1d) <= set(_onednn.layers(model))
    calls = _counted(monkeypatch)
    transposes: list[int] = []
    original = torch.Tensor.contiguous

    def counted(tensor, *args, **kwargs):
        if not tensor.is_contiguous():  # a copy is made: the transposed weights (2-D)
            transposes.append(tensor.dim())
        return original(tensor, *args, **kwargs)

    obj = lv.Objective(model, loss, data, batch_size=8)  # 3 batches
    directions = lv.random_directions(model, 2, seed=3)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(5)
    plain, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    monkeypatch.setattr(torch.Tensor, "contiguous", counted)
    config = EngineConfig("loop", None, 1, onednn_linear=True)
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    monkeypatch.setattr(torch.Tensor, "contiguous", original)
    assert len(calls) == len(coefficients) * 3 * 9  # 8 Conv1D and the head, every batch
    assert transposes.count(2) == len(coefficients) * 8  # each weight once per point
    reference = plane_losses(model, data, directions, coefficients, loss=loss)
    np.testing.assert_allclose(values["loss"], plain["loss"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(values["loss"], reference, rtol=RTOL, atol=0)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_only_huggingfaces_own_conv1d_is_taken(monkeypatch):
    class Conv1D(nn.Module):  # the same name and computation, but not HuggingFace's class
        def __init__(self):
            super().__init__()
            self.nf, self.weight, self.bias = 3, nn.Parameter(torch.ones(4, 3)), None

        def forward(self, x):
            return x @ self.weight

    assert _onednn.layers(Conv1D()) == []
    model = _gpt2()[0]
    block = model.transformer.h[0]
    assert _onednn.is_conv1d(block.attn.c_attn)
    block.mlp.c_fc.forward = lambda x: x  # the user's own: not taken
    assert block.mlp.c_fc not in _onednn.layers(model)
    layer, x = block.attn.c_attn, torch.randn(16)
    calls = _counted(monkeypatch)
    with _onednn.linear(layer) as taken, torch.no_grad():
        assert taken == 1 and _onednn.is_forward(layer.__dict__["forward"])
        torch.testing.assert_close(layer(x), x @ layer.weight + layer.bias)
        assert not calls  # a 1-D call runs the layer's own forward
        torch.testing.assert_close(layer(x[None]), x[None] @ layer.weight + layer.bias)
        assert len(calls) == 1
    assert "forward" not in layer.__dict__
