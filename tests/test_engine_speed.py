"""Engine options that make a point cheaper (issue 10): each gives the plain evaluation's
values up to rounding, is used only where it is valid, and leaves the model as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

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
from lossvista import _compile, _fold, _normalize, _strategies, _tuning
from lossvista.engine import EngineConfig, PointEvaluator

F = nn.functional


def _grid(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus a projected shortcut; ``tap`` also reads conv2's output,
    so (conv2, bn2) must not be folded when it is set."""

    def __init__(self, tap: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.shortcut = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4, affine=False))
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.tap = tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        z = self.conv2(h)
        out = F.relu(self.bn2(z) + self.shortcut(x))
        if self.tap:
            out = out + 0.1 * z
        return self.head(out.flatten(1))


def _residual(tap: bool = False) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    X, y = classification_data(image=True)
    return with_statistics(Residual(tap).double(), X), (X, y)


def _cnn() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    X, y = classification_data(image=True)
    return with_statistics(make_cnn(), X), (X, y)


def _no_patch_left(model: nn.Module) -> bool:
    return all("forward" not in m.__dict__ for m in model.modules())


# -- BatchNorm folding --------------------------------------------------------------------------
def test_folded_weight_and_bias_are_the_closed_form():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3).double()
    bn = nn.BatchNorm2d(5).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    weight, bias = _fold.folded_weight_bias(conv, bn)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(weight, conv.weight * s[:, None, None, None], rtol=1e-14, atol=0)
    expected_bias = (conv.bias - bn.running_mean) * s + bn.bias
    torch.testing.assert_close(bias, expected_bias, rtol=1e-13, atol=1e-15)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, weight, bias), bn(conv(x)), rtol=1e-12, atol=1e-13)


def test_pairs_follow_the_data_flow():
    model, _ = _residual()
    pairs = {(id(c), id(b)) for c, b in _fold.foldable_pairs(model)}
    expected = {
        (id(model.conv1), id(model.bn1)),
        (id(model.conv2), id(model.bn2)),
        (id(model.shortcut[0]), id(model.shortcut[1])),
    }
    assert pairs == expected
    tapped, _ = _residual(tap=True)  # conv2's output also feeds the sum: not foldable
    found = {(id(c), id(b)) for c, b in _fold.foldable_pairs(tapped)}
    assert (id(tapped.conv2), id(tapped.bn2)) not in found
    assert (id(tapped.conv1), id(tapped.bn1)) in found


def test_an_untraceable_model_folds_its_sequential_pairs_only():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_cnn()

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
                return self.body(x)
            return self.body(-x)

    model = Untraceable().eval()
    pairs = _fold.foldable_pairs(model)
    assert [(c, b) for c, b in pairs] == [
        (model.body[0], model.body[1]),
        (model.body[3], model.body[4]),
    ]


@pytest.mark.parametrize("strategy, per_call", [("loop", 1), ("vmap", 3)])
@pytest.mark.parametrize("build", [_cnn, _residual])
def test_folding_equals_the_unfolded_model_at_moved_points(build, strategy, per_call, monkeypatch):
    model, data = build()
    before = snapshot(model)
    calls = []
    original = _fold._folded_forward
    monkeypatch.setattr(_fold, "_folded_forward", lambda *a: calls.append(1) or original(*a))
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=3, norm="filter")  # moves BN affine too
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(6, seed=1) * 2
    config = EngineConfig(strategy, None, per_call, fold_batchnorm=True)
    folded, _ = evaluator.run(coefficients, config=config, progress=False)
    assert calls, "the folded forward was not used"
    plain, _ = evaluator.run(
        coefficients, config=EngineConfig(strategy, None, per_call), progress=False
    )
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(folded["loss"], reference, rtol=1e-12, atol=0)
    np.testing.assert_allclose(plain["loss"], reference, rtol=1e-12, atol=0)
    assert_unchanged(model, before)
    assert _no_patch_left(model)


@pytest.mark.parametrize("bn", ["recompute", "perturb"])
def test_folding_is_not_applied_when_statistics_are_not_fixed(bn, monkeypatch):
    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data, bn=bn)
    assert _strategies.fold_pairs(obj) == []
    calls = []
    monkeypatch.setattr(_fold, "_folded_forward", lambda *a: calls.append(1))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(obj, 2, seed=0))
    config = EngineConfig("loop", None, 1, fold_batchnorm=True)
    evaluator.run(_grid(3) * 0.01, config=config, progress=False)
    assert not calls


def test_folding_is_not_applied_in_train_mode():
    model, _ = _cnn()
    assert len(_fold.foldable_pairs(model)) == 2
    model.train()
    assert _fold.foldable_pairs(model) == []
    model.eval()
    model[1].register_forward_hook(lambda *a: None)  # a hook would miss the BN's output
    assert [b for _, b in _fold.foldable_pairs(model)] == [model[4]]


def test_tuning_tries_folding_and_keeps_it_only_as_measured(monkeypatch):
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)
    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=3)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(80)
    values, report = evaluator.run(coefficients, strategy="auto", progress=False)
    tried = [t for t in report.trials if t.get("fold_batchnorm") and "seconds_per_point" in t]
    assert tried
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)
    timed = [t for t in report.trials if "seconds_per_point" in t]
    chosen = report.config.as_dict()
    best = min((t for t in timed if not t.get("compile")), key=lambda t: t["seconds_per_point"])
    assert {k: best[k] for k in chosen} == chosen


# -- channels-last, precision -------------------------------------------------------------------
def test_channels_last_gives_the_same_losses_and_puts_the_layout_back():
    model, data = _residual()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=4)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(5)
    for fold in (False, True):
        config = EngineConfig("loop", None, 1, fold_batchnorm=fold, channels_last=True)
        values, _ = evaluator.run(coefficients, config=config, progress=False)
        reference = plane_losses(model, data, directions, coefficients)
        np.testing.assert_allclose(values["loss"], reference, rtol=1e-12, atol=0)
    assert_unchanged(model, before)
    assert all(w.is_contiguous() for w in _strategies.conv_weights(model))


def test_channels_last_holds_copies_inside():
    model, _ = _cnn()
    weights = _strategies.conv_weights(model)
    originals = [w.data for w in weights]
    with _strategies.channels_last(model):
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        # a copy where the layout differs (a 1-channel 3x3 kernel is already channels-last)
        assert weights[1].data.data_ptr() != originals[1].data_ptr()
    assert all(
        w.data_ptr() == o.data_ptr() and w.is_contiguous() for w, o in zip(weights, originals)
    )


@pytest.mark.parametrize("stored", [False, True])  # with the input layers stored too
def test_an_exception_mid_run_leaves_no_trace(stored):
    model, (X, y) = _cnn()
    before = snapshot(model)
    seen = []

    def loss(output, target):
        seen.append(1)
        if len(seen) > 3:
            raise RuntimeError("boom")
        return F.cross_entropy(output, target)

    obj = lv.Objective(model, loss, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))
    config = EngineConfig(
        "loop", None, 1, fold_batchnorm=True, channels_last=True, precompute_input=stored
    )
    with pytest.raises(RuntimeError, match="boom"):
        evaluator.run(_grid(10), config=config, progress=False)
    assert_unchanged(model, before)
    assert _no_patch_left(model)
    assert all(w.is_contiguous() for w in _strategies.conv_weights(model))


def test_bfloat16_autocast_computes_the_loss_in_float32():
    model = make_mlp(dtype=torch.float32, width=32)
    X, y = classification_data(n=200, dtype=torch.float32)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    directions = lv.random_directions(model, 2, seed=0)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(4)
    seen = []
    model[-1].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    half, _ = evaluator.run(
        coefficients, config=EngineConfig("loop", None, 1, precision="bfloat16"), progress=False
    )
    assert set(seen) == {torch.bfloat16}  # the last layer ran in bfloat16 ...
    full, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    # ... and the loss is bfloat16 logits' loss: close to float32 (8 mantissa bits), not equal
    np.testing.assert_allclose(half["loss"], full["loss"], rtol=3e-2)
    assert not np.array_equal(half["loss"], full["loss"])
    assert _no_patch_left(model)


def test_bad_engine_options_are_refused():
    with pytest.raises(lv.InputError, match="precision"):
        EngineConfig("loop", None, 1, precision="float8")
    with pytest.raises(lv.InputError, match="strategy"):
        EngineConfig("grid")  # type: ignore[arg-type]
    assert _compile.check_precision("float16") == "float16"


# -- points per pass ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_points_per_pass_is_validated(bad):
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data())
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    with pytest.raises(lv.InputError, match="points_per_pass"):
        evaluator.run(_grid(4), strategy="vmap", points_per_pass=bad, progress=False)
    with pytest.raises(lv.InputError, match="points_per_pass"):
        EngineConfig("vmap", None, bad)


def test_points_per_pass_is_respected(monkeypatch):
    model = make_mlp()
    data = classification_data()
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=1)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    blocks = []
    original = PointEvaluator._evaluate_vmap
    monkeypatch.setattr(
        PointEvaluator,
        "_evaluate_vmap",
        lambda self, config, c: blocks.append(len(c)) or original(self, config, c),
    )
    coefficients = _grid(10)
    values, report = evaluator.run(coefficients, strategy="vmap", points_per_pass=3, progress=False)
    assert report.config.points_per_call == 3
    assert max(blocks) == 3 and sum(blocks) == 10
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12)
    assert all(c.points_per_call == 3 for c in evaluator._vmap_configs())


def test_points_per_pass_default_is_bounded_by_free_memory(monkeypatch):
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=300))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    params = sum(s[0].numel() * s.element_size() for s in evaluator.stacks.values())
    sample = 8 * 8 + 8  # float64 inputs of 8 features and an int64 target
    per_point = 2 * params + _strategies.ACTIVATION_FACTOR * sample * 128
    monkeypatch.setattr(_strategies, "free_memory_bytes", lambda device: 20 * per_point)
    # a quarter of the free memory: 5 points of the 128-sample batches
    assert evaluator._vmap_configs()[0].points_per_call == 5
    monkeypatch.setattr(_strategies, "free_memory_bytes", lambda device: 10**15)
    assert [c.points_per_call for c in evaluator._vmap_configs()] == [32, 8]


# -- torch.compile ------------------------------------------------------------------------------
def test_compile_is_never_tried_for_a_small_grid(monkeypatch):
    monkeypatch.setattr(_compile.torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data)
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    _, report = evaluator.run(_grid(120), strategy="auto", progress=False)
    assert not report.config.compile
    skipped = [t for t in report.trials if t.get("compile")]
    assert len(skipped) == 1 and "too small" in skipped[0]["skipped"]


def test_a_failing_compile_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(_tuning, "COMPILE_MIN_WORK", 0.0)

    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(_compile.torch, "compile", broken)
    model, data = _cnn()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=2)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(60)
    values, report = evaluator.run(coefficients, strategy="auto", progress=False)
    failed = [t for t in report.trials if t.get("compile")]
    assert len(failed) == 1 and "no C++ compiler" in failed[0]["error"]
    assert not report.config.compile
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-12)
    assert_unchanged(model, before)
    assert _no_patch_left(model)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("cc") is None,
    reason="no C++ compiler for torch.compile",
)
def test_compiled_forward_gives_the_same_losses():
    torch._dynamo.reset()
    model, data = _residual()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    directions = lv.random_directions(model, 2, seed=5)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(4)
    config = EngineConfig("loop", None, 1, fold_batchnorm=True, compile=True)
    values, _ = evaluator.run(coefficients, config=config, progress=False)
    reference = plane_losses(model, data, directions, coefficients)
    np.testing.assert_allclose(values["loss"], reference, rtol=1e-10)
    assert_unchanged(model, before)
    assert _no_patch_left(model)


# -- half-precision normalisation ---------------------------------------------------------------
def test_norm_of_a_large_half_precision_tensor_does_not_overflow():
    big = torch.full((100_000,), 1000.0, dtype=torch.float16)
    assert torch.isinf((big * big).sum())  # the naive float16 sum of squares overflows
    norm = _normalize.wide_norm(big)
    assert torch.isfinite(norm)
    assert float(norm) == pytest.approx(1000.0 * 100_000**0.5, rel=1e-7)


@pytest.mark.parametrize("norm, groups", [("model", None), ("filter", "filter")])
def test_normalising_half_precision_directions_stays_finite(norm, groups):
    raw = {"w": torch.full((100_000,), 1000.0, dtype=torch.float16).reshape(1000, 100)}
    weights = {"w": torch.full((1000, 100), 900.0, dtype=torch.float16)}
    group_list = _normalize.groups(weights, ["w"], norm, {}) if groups else None
    out = _normalize.normalize(raw, weights, norm, group_list, [])["w"]
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    # each group rescaled to the weights' norm: every entry becomes 900
    torch.testing.assert_close(out.float(), torch.full((1000, 100), 900.0), rtol=1e-3, atol=0)
    w_norm, d_norm = _normalize.wide_norm(weights["w"]), _normalize.wide_norm(out)
    assert float(d_norm) == pytest.approx(float(w_norm), rel=1e-3)


# -- remembered choices -------------------------------------------------------------------------
def _remembered_run(monkeypatch, config: EngineConfig, per_point: float):
    from lossvista._identity import tuning_signature

    model, data = _cnn()
    obj = lv.Objective(model, F.cross_entropy, data)
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=6))
    _tuning.remember(tuning_signature(evaluator, "auto"), config, per_point)
    _tuning.clear_memory()  # read back from the cache file
    monkeypatch.setattr(_tuning, "tune", lambda *a: pytest.fail("tuned again"))
    monkeypatch.setattr(_compile.torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    return evaluator.run(_grid(60), strategy="auto", progress=False)


def test_a_remembered_refined_choice_is_used_again(monkeypatch):
    config = EngineConfig("loop", 65, 1, fold_batchnorm=True, channels_last=True)
    _, report = _remembered_run(monkeypatch, config, 1e-3)
    assert report.config == config
    assert report.trials[0]["remembered"]


def test_a_remembered_compile_is_dropped_for_a_small_grid(monkeypatch):
    config = EngineConfig("loop", 65, 1, fold_batchnorm=True, compile=True)
    _, report = _remembered_run(monkeypatch, config, 1e-3)  # 60 points: 0.06 s of work
    assert report.config == EngineConfig("loop", 65, 1, fold_batchnorm=True)
    assert "compile not used" in report.trials[0]["why"]


def test_points_per_pass_reaches_the_engine_from_the_verbs_and_the_cli(tmp_path):
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data())
    directions = lv.random_directions(model, 2, seed=1)
    loop = lv.plane(obj, directions, steps=(5, 4), strategy="loop", progress=False)
    vmap = lv.plane(
        obj, directions, steps=(5, 4), strategy="vmap", points_per_pass=3, progress=False,
        store=tmp_path / "vmap.h5",
    )  # fmt: skip
    assert lv.load(tmp_path / "vmap.h5").settings["engine"]["points_per_call"] == 3
    np.testing.assert_allclose(vmap.values["loss"], loop.values["loss"], rtol=1e-5)
    line = lv.line(obj, directions[0], steps=7, strategy="vmap", points_per_pass=2, progress=False)
    assert line.settings["engine"]["points_per_call"] == 2
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        for bad in (0, -1, 1.5):  # refused before the centre is evaluated
            with pytest.raises(lv.InputError, match="points_per_pass"):
                lv.plane(obj, directions, steps=3, points_per_pass=bad, progress=False)
    finally:
        hook.remove()
    assert calls == []


def test_cli_points_per_pass(tmp_path):
    from click.testing import CliRunner

    from lossvista.cli import main

    models = Path(__file__).parent / "cli_models.py"
    args = [
        "plane", "--model", f"{models}:make_model", "--data", f"{models}:make_data",
        "--steps", "4", "--strategy", "vmap", "--no-png", "--quiet",
    ]  # fmt: skip
    done = CliRunner().invoke(main, [*args, "--points-per-pass", "3", "--out", tmp_path / "s.h5"])
    assert done.exit_code == 0, done.output
    assert lv.load(tmp_path / "s.h5").settings["engine"]["points_per_call"] == 3
    refused = CliRunner().invoke(main, [*args, "--points-per-pass", "0", "--out", tmp_path / "x"])
    assert refused.exit_code == 2 and "--points-per-pass" in refused.output
    half = CliRunner().invoke(main, [*args, "--precision", "bfloat16", "--out", tmp_path / "h.h5"])
    assert half.exit_code == 0, half.output
    stored = lv.load(tmp_path / "h.h5")
    assert stored.settings["precision"] == stored.settings["engine"]["precision"] == "bfloat16"
    mixed = CliRunner().invoke(main, [*args, "--out", tmp_path / "h.h5"])  # resume, full precision
    assert mixed.exit_code != 0 and "precision" in mixed.output


def test_precision_reaches_the_engine_and_is_part_of_the_files_identity(tmp_path):
    model = make_mlp(dtype=torch.float32)
    obj = lv.Objective(model, F.cross_entropy, classification_data(dtype=torch.float32))
    directions = lv.random_directions(model, 2, seed=1)
    full = lv.plane(obj, directions, steps=(5, 4), strategy="loop", progress=False)
    store = tmp_path / "bf16.h5"
    half = lv.plane(
        obj, directions, steps=(5, 4), strategy="loop", precision="bfloat16", progress=False,
        store=store,
    )  # fmt: skip
    assert half.settings["engine"]["precision"] == "bfloat16"
    assert half.settings["precision"] == "bfloat16" and full.settings["precision"] is None
    # bfloat16 keeps 8 bits of mantissa: close to the float32 losses, but not equal to them
    np.testing.assert_allclose(half.values["loss"], full.values["loss"], rtol=3e-2)
    assert not np.array_equal(half.values["loss"], full.values["loss"])
    assert half.center == full.center  # the centre check runs in the model's own dtype
    with pytest.raises(lv.StoreMismatchError, match="precision"):
        lv.plane(obj, directions, steps=(5, 4), strategy="loop", progress=False, store=store)
    again = lv.plane(
        obj, directions, steps=(5, 4), strategy="loop", precision="bfloat16", progress=False,
        store=store,
    )  # fmt: skip
    np.testing.assert_array_equal(again.values["loss"], half.values["loss"])
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(lv.InputError, match="precision"):
            lv.plane(obj, directions, steps=3, precision="float8", progress=False)
    finally:
        hook.remove()
    assert calls == []  # refused before the centre was evaluated


def test_precision_is_refused_for_a_model_autocast_would_not_change():
    model = make_mlp()  # float64: autocast leaves it alone, so "bfloat16" would be a false label
    obj = lv.Objective(model, F.cross_entropy, classification_data())
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(lv.InputError, match=r"float64.*model.float\(\)"):
            lv.line(obj, lv.random_directions(model, 1)[0], steps=3, precision="bfloat16")
    finally:
        hook.remove()
    assert calls == []
