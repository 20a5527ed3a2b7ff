"""The layers that read the data, computed once per direction (``precompute_input``, issue 10):
every point equals the plain forward up to rounding, only calls on the data are served, and the
model is left as it was."""

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
    with_statistics,
)
from lossvista import _input_layers, _patches, _strategies, _tuning
from lossvista.engine import EngineConfig, PointEvaluator

F = nn.functional
# directions that move the BatchNorms meet their zero-initialised biases
pytestmark = pytest.mark.filterwarnings("ignore:norm='filter' gives a zero direction")


def _grid(n: int, k: int = 2, seed: int = 0) -> np.ndarray:
    points = np.random.default_rng(seed).uniform(-1, 1, size=(n, k))
    points[0] = 0.0  # the origin itself
    return points


class Residual(nn.Module):
    """Two layers read the data: the stem conv (folded with its BatchNorm) and the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.conv2(h) + self.shortcut(x)).flatten(1))


class Normalised(nn.Module):
    """The first layer reads ``(x - 0.5) * 2``, a new tensor: not the data, never served."""

    def __init__(self):
        super().__init__()
        self.body = make_mlp()

    def forward(self, x):
        return self.body((x - 0.5) * 2)


def _mlp():
    return make_mlp(), classification_data()


def _mlp_inplace():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)
    ).double()  # the in-place ReLU must not change the stored outputs
    return model, classification_data()


def _flat_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, classification_data(image=True)  # the Linear reads a view of the data


def _cnn():
    X, y = classification_data(image=True)
    return with_statistics(make_cnn(), X), (X, y)


def _residual():
    torch.manual_seed(0)
    X, y = classification_data(image=True)
    return with_statistics(Residual().double(), X), (X, y)


def _served(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = _input_layers._combined
    monkeypatch.setattr(_input_layers, "_combined", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize(
    "build, options, layers",
    [
        (_mlp, {}, (1, 1)),
        (_mlp_inplace, {}, (1, 1)),
        (_flat_mlp, {}, (1, 1)),
        (_cnn, {}, (1, 1)),
        # layers served (BatchNorm left alone, moved): a folded conv whose BatchNorm scale
        # moves is not linear in the point any more
        (_cnn, {"fold_batchnorm": True, "channels_last": True}, (1, 0)),
        (_residual, {"fold_batchnorm": True}, (2, 1)),
        (_residual, {"channels_last": True}, (2, 2)),
    ],
)
@pytest.mark.parametrize("ignore", [("bias", "bn"), ()])
def test_stored_layers_equal_the_plain_forward(build, options, layers, ignore, monkeypatch):
    model, data = build()
    before = snapshot(model)
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, data, batch_size=20)  # 4 batches
    directions = lv.random_directions(model, 3, seed=1, norm="filter", ignore=ignore)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(7, k=3)
    config = EngineConfig("loop", None, 1, precompute_input=True, **options)
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    assert len(served) == len(coefficients) * 4 * layers[0 if ignore else 1]
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)
    again, _ = evaluator.run(coefficients[::-1], config=config, progress=False)
    np.testing.assert_array_equal(again["loss"], values["loss"][::-1])  # order-free
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_folded_convolution_whose_batchnorm_scale_moves_is_run_as_usual(monkeypatch):
    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=3, norm="filter", ignore=())  # moves BN
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    pairs = _strategies.fold_pairs(obj)
    convs = [c for c in _input_layers.candidates(model, pairs, set(evaluator.stacks))]
    assert [type(c.module) for c in convs] == [nn.Linear]  # the head only
    unfolded = _input_layers.candidates(model, [], set(evaluator.stacks))
    assert [type(c.module) for c in unfolded] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    served = _served(monkeypatch)
    config = EngineConfig("loop", None, 1, fold_batchnorm=True, precompute_input=True)
    values, _ = evaluator.run(_grid(4), config=config, progress=False)
    assert not served
    reference = plane_losses(model, data, directions, _grid(4))
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)


def test_half_precision_layers_are_not_stored():
    model = make_mlp(dtype=torch.bfloat16)
    assert _input_layers.candidates(model, [], set()) == []
    assert len(_input_layers.candidates(model.float(), [], set())) == 3


def test_a_layer_that_reads_a_computed_tensor_is_run_as_usual(monkeypatch):
    model = Normalised().double()
    data = classification_data()
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=0)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    config = EngineConfig("loop", None, 1, precompute_input=True)
    values, _ = evaluator.run(_grid(3), config=config, progress=False)
    assert not served
    reference = plane_losses(model, data, directions, _grid(3))
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)


def test_outputs_over_the_memory_budget_are_not_stored(monkeypatch):
    monkeypatch.setattr(_strategies, "DEVICE_CACHE_BYTES", 1000)
    model, data = _mlp()
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=0)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    config = EngineConfig("loop", None, 1, precompute_input=True)
    values, _ = evaluator.run(_grid(3), config=config, progress=False)
    assert not served  # 65 samples x 16 outputs x 8 bytes x 3 > 1000
    reference = plane_losses(model, data, directions, _grid(3))
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "options", [{"strategy": "vmap", "points_per_call": 2}, {"precision": "bfloat16"}]
)
def test_not_used_with_vmap_or_autocast(options, monkeypatch):
    model = make_mlp(dtype=torch.float32)
    X, y = classification_data(dtype=torch.float32)
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
    evaluator.run(_grid(4), config=EngineConfig(precompute_input=True, **options), progress=False)
    assert not served


def test_a_loader_is_served_once_its_batches_are_cached(monkeypatch):
    model, (X, y) = _mlp()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    obj = lv.Objective(model, F.cross_entropy, loader)
    directions = lv.random_directions(model, 2, seed=0)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    assert not _input_layers.holds_batches(obj)  # not read yet
    obj.loss()  # one pass caches the batches
    assert _input_layers.holds_batches(obj)
    served = _served(monkeypatch)
    config = EngineConfig("loop", None, 1, precompute_input=True)
    values, _ = evaluator.run(_grid(3), config=config, progress=False)
    assert len(served) == 3 * 5
    reference = plane_losses(model, (X, y), directions, _grid(3))
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)


def test_tuning_tries_it_and_a_remembered_choice_is_used_again(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)
    _tuning.clear_memory()
    model, data = _mlp()
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=3)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    assert "precompute_input" in _tuning.possible_refinements(evaluator)
    coefficients = _grid(80)
    values, report = evaluator.run(coefficients, strategy="auto", progress=False)
    tried = [t for t in report.trials if t.get("precompute_input") and "seconds_per_point" in t]
    assert tried
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)
    _tuning.clear_memory()  # from the file now
    _, again = evaluator.run(coefficients, strategy="auto", progress=False)
    assert again.config == report.config
    assert again.trials[0].get("remembered")


def test_a_rank_of_the_data_mode_stores_its_share_of_the_batches(monkeypatch):
    from lossvista._data import BATCH_SHARE

    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data, batch_size=16)  # 5 batches
    directions = lv.random_directions(model, 2, seed=2, norm="filter", ignore=("bias", "bn"))
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(4)
    stored = EngineConfig("loop", None, 1, True, True, precompute_input=True)
    plain = EngineConfig("loop", None, 1)
    for rank in (0, 1):
        served = _served(monkeypatch)
        token = BATCH_SHARE.set((rank, 2))
        try:
            shared, _ = evaluator.run(coefficients, config=stored, progress=False)
            reference, _ = evaluator.run(coefficients, config=plain, progress=False)
        finally:
            BATCH_SHARE.reset(token)
        assert len(served) == len(coefficients) * (3 if rank == 0 else 2)
        np.testing.assert_allclose(shared["loss"], reference["loss"], rtol=1e-12, atol=0)


def test_tuning_tries_storing_only_where_a_layer_reads_the_data():
    for model, data, expected in (
        (*_mlp(), True),
        (Normalised().double(), classification_data(), False),
    ):
        obj = lv.Objective(model, F.cross_entropy, data)
        evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
        assert _strategies.input_layers_possible(evaluator) is expected
        assert ("precompute_input" in _tuning.possible_refinements(evaluator)) is expected


def test_finding_the_layers_outside_a_run_leaves_the_model_as_it_was():
    model, data = _cnn()
    model.train()  # a forward in train mode would move the BatchNorm statistics
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
    assert _strategies.input_layers_possible(evaluator)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_stored_layers_under_torch_compile(monkeypatch):
    """The stored path stays out of the compiled graph (a graph break) and is still used."""
    torch._dynamo.reset()
    model = make_mlp(dtype=torch.float32)
    X, y = classification_data(dtype=torch.float32)
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=20)
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
    coefficients = _grid(4)
    config = EngineConfig("loop", None, 1, precompute_input=True, compile=True)
    compiled, _ = evaluator.run(coefficients, config=config, progress=False)
    assert len(served) == len(coefficients) * 4
    plain, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    np.testing.assert_allclose(compiled["loss"], plain["loss"], rtol=1e-6, atol=0)
    assert all("forward" not in m.__dict__ for m in model.modules())


class FirstConv(nn.Module):
    """A first convolution of the given shape on 2-channel 7x6 images, then a pool and a head."""

    def __init__(self, out_channels=4, **conv):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, out_channels, **{"kernel_size": 3, **conv})
        self.head = nn.LazyLinear(3)

    def forward(self, x):  # pooling pairs of rows: rows and columns must not be swapped
        return self.head(F.max_pool2d(torch.tanh(self.conv(x)), (2, 1), ceil_mode=True).flatten(1))


def _patches_served(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = _patches.product
    monkeypatch.setattr(_patches, "product", lambda *a: calls.append(1) or original(*a))
    return calls


def _plane_and_oracle(model, data, directions, config, coefficients, batch_size):
    """The engine's losses under ``config`` and the plain forward's (the oracle)."""
    obj = lv.Objective(model, F.cross_entropy, data, batch_size=batch_size)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    return values["loss"], plane_losses(model, data, directions, coefficients)


def _image_data(n=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, 7, 6, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize(
    "conv",
    [
        {},
        {"stride": 2, "padding": (1, 2)},
        {"kernel_size": (3, 2), "dilation": (2, 1), "bias": False},
        {"padding": "valid", "stride": (1, 2)},
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_first_convolution_is_served_from_its_patches(conv, channels_last, monkeypatch):
    """Patches of 2 x 3 x 3 (+1) numbers for 12 channels (1.6 per output number, and the
    product) against 3 stored outputs: patches, every point equal to the plain forward."""
    data = _image_data()
    model = FirstConv(12, **conv).double()
    model(data[0][:1])  # the lazy head takes its shape
    before = snapshot(model)
    products = _patches_served(monkeypatch)
    directions = lv.random_directions(model, 2, seed=1, ignore=())
    config = EngineConfig("loop", None, 1, precompute_input=True, channels_last=channels_last)
    # 4 batches, the last of 3
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(5), batch_size=10)
    assert len(products) == 5 * 4
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_patches_of_a_folded_convolution_follow_its_batchnorm_shift(monkeypatch):
    """The digits-style stem (one channel, 3x3, folded BatchNorm whose shift moves): served
    from its patches, equal to the plain forward of the unfolded model."""
    model, data = _cnn()
    products = _patches_served(monkeypatch)
    random = lv.random_directions(model, 2, seed=4, norm="filter", ignore=("bn",))
    # the BatchNorm's shift moves, its scale does not
    directions = [{**d, "1.bias": torch.randn_like(d["1.bias"])} for d in random]
    config = EngineConfig("loop", None, 1, True, True, precompute_input=True)
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(6), batch_size=20)
    assert len(products) == 6 * 4
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "channels, conv",
    [
        (2, {}),  # 19 numbers per patch for 2 channels: more than the 3 stored outputs
        # 85 numbers for 64 channels (1.3 per output number), but 85 multiply-adds too
        (64, {"kernel_size": (7, 6)}),
    ],
)
def test_patches_are_not_used_where_the_stored_outputs_cost_less(channels, conv, monkeypatch):
    data = _image_data()
    model = FirstConv(channels, **conv).double()
    model(data[0][:1])
    products, served = _patches_served(monkeypatch), _served(monkeypatch)
    directions = lv.random_directions(model, 2, seed=1, ignore=())
    config = EngineConfig("loop", None, 1, precompute_input=True)
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(4), batch_size=10)
    assert not products and len(served) == 4 * 4  # the conv's stored outputs
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("patchable", [True, False])
def test_the_memory_budget_counts_the_patches(patchable, monkeypatch):
    """make_cnn's stem on 65 images: 10 numbers per patch for 4 output channels (2.5 per
    output number, 2.8 with the product) against 3 stored outputs; a budget between the two
    admits only patches."""
    model, data = _cnn()
    per_sample = 4 * 6 * 6 * 8  # the stem's output bytes
    monkeypatch.setattr(_strategies, "DEVICE_CACHE_BYTES", int(65 * per_sample * 2.75))
    if not patchable:
        monkeypatch.setattr(_patches, "patchable", lambda module: False)
    served = _served(monkeypatch)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=0, norm="filter", ignore=("bias", "bn"))
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    config = EngineConfig("loop", None, 1, precompute_input=True)
    values, _ = evaluator.run(_grid(3), config=config, progress=False)
    assert len(served) == (3 if patchable else 0)  # the stem: the only layer reading the data
    reference = plane_losses(model, data, directions, _grid(3))
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)


def test_patches_of_a_stem_without_bias_folded_with_its_batchnorm(monkeypatch):
    """A ResNet-style stem (3 channels, no bias of its own, folded BatchNorm): the folded
    shift is the bias column of its patches."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),  # 28 numbers per patch for 16 channels
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 3),
    ).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, 5, 5, generator=g, dtype=torch.float64)
    data = (X, torch.randint(0, 3, (40,), generator=g))
    model = with_statistics(model, X)
    products = _patches_served(monkeypatch)
    directions = lv.random_directions(model, 2, seed=5, norm="filter", ignore=("bn",))
    config = EngineConfig("loop", None, 1, fold_batchnorm=True, precompute_input=True)
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(5), batch_size=16)
    assert len(products) == 5 * 3
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


class TwoCalls(nn.Module):
    """The stem called on the first image alone (3-D) and then on the batch (4-D)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 12, 3)
        self.head = nn.Linear(12 * 5 * 4, 3)

    def forward(self, x):
        first = self.conv(x[0]).sum()
        return self.head(torch.tanh(self.conv(x)).flatten(1)) + first


def test_a_three_dimensional_call_of_a_patched_stem_runs_the_layer(monkeypatch):
    data = _image_data()
    model = TwoCalls().double()
    products = _patches_served(monkeypatch)
    directions = lv.random_directions(model, 2, seed=1, ignore=())
    config = EngineConfig("loop", None, 1, precompute_input=True)
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(3), batch_size=10)
    assert len(products) == 3 * 4  # the 4-D calls only
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


class Sequence1d(nn.Module):
    """A 1-D CNN on one-channel sequences of 23 steps: stem, pool, head."""

    def __init__(self, **conv):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, **{"kernel_size": 5, **conv})
        self.head = nn.LazyLinear(3)

    def forward(self, x):  # pooling pairs of steps: the positions must keep their order
        return self.head(F.max_pool1d(torch.relu(self.conv(x)), 2, ceil_mode=True).flatten(1))


@pytest.mark.parametrize(
    "conv", [{}, {"stride": 2, "padding": 3, "dilation": 2}, {"padding": "valid", "bias": False}]
)
def test_a_first_1d_convolution_is_served_from_its_patches(conv, monkeypatch):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(30, 1, 23, generator=g, dtype=torch.float64)
    data = (X, torch.randint(0, 3, (30,), generator=g))
    model = Sequence1d(**conv).double()
    model(X[:1])  # the lazy head takes its shape
    products = _patches_served(monkeypatch)
    directions = lv.random_directions(model, 2, seed=3, ignore=())
    config = EngineConfig("loop", None, 1, precompute_input=True, channels_last=True)
    # 4 batches, the last of 6
    got, expected = _plane_and_oracle(model, data, directions, config, _grid(4), batch_size=8)
    assert len(products) == 4 * 4
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
