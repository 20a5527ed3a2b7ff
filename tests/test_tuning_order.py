"""The order in which the engine's tuning tries configurations, and when it stops trying more
(issue 10): the largest batches first, no smaller batch after they got slower, no larger vmap
block after a slow one. Point costs are simulated on a fake clock, so the decisions are deterministic."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import make_mlp
from lossvista import _tuning
from lossvista.engine import PointEvaluator

F = nn.functional


@pytest.fixture
def evaluator(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 100.0)
    _tuning.clear_memory()
    model = make_mlp()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2000,), generator=g)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    return PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))


def _simulate(monkeypatch, evaluator, cost) -> list[dict]:
    """Run the tuning with ``cost(config)`` seconds per point on a fake clock (exact whatever
    the machine's load); the trials it recorded."""
    clock = [0.0]

    def evaluate(config, coefficients):
        clock[0] += cost(config) * len(coefficients)
        return np.tile([1.0, 1.0], (len(coefficients), 1))

    monkeypatch.setattr(evaluator, "_evaluate", evaluate)
    monkeypatch.setattr(evaluator, "_use", lambda config: None)
    monkeypatch.setattr(_tuning, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    report = lv.engine.EngineReport(config=evaluator._default_config())
    coefficients = np.zeros((400, 2))
    config, _, _ = _tuning.tune(
        evaluator, coefficients, report, _tuning.candidate_configs(evaluator)
    )
    return report.trials, config


def _loops(trials) -> list[dict]:
    return [t for t in trials if t["strategy"] == "loop" and not t.get("compile")]


def _loop_order(trials) -> list:
    return [t["batch_size"] for t in _loops(trials)]


def test_large_batches_first_and_smaller_ones_skipped_once_slower(monkeypatch, evaluator):
    per_batch = {2000: 0.001, 512: 0.002, 128: 0.004, 64: 0.008, 32: 0.016}

    def cost(config):
        if config.strategy == "vmap":
            return 0.02
        return per_batch[config.batch_size] * (0.9 if config.precompute_input else 1.0)

    trials, config = _simulate(monkeypatch, evaluator, cost)
    assert _loop_order(trials)[:2] == [512, 512]  # the default, then its refinement
    assert _loop_order(trials)[2:] == [2000, 128, 64, 32, 2000]
    flipped = [t for t in trials if t["strategy"] == "loop" and not t.get("compile")][-1]
    assert not flipped["precompute_input"]  # the option flipped at the batch size that won
    skipped = {t["batch_size"]: t.get("skipped") for t in trials if t["strategy"] == "loop"}
    assert skipped[64] == skipped[32] == "smaller batches were slower"
    vmap = [t for t in trials if t["strategy"] == "vmap"]
    assert [t["points_per_call"] for t in vmap] == sorted(t["points_per_call"] for t in vmap)
    assert "seconds_per_point" in vmap[0] and vmap[1]["skipped"] == "vmap was slower"
    assert (config.batch_size, config.precompute_input) == (2000, True)


def test_small_batches_are_tried_while_they_get_faster(monkeypatch, evaluator):
    per_batch = {2000: 0.016, 512: 0.008, 128: 0.004, 64: 0.002, 32: 0.003}
    trials, config = _simulate(
        monkeypatch,
        evaluator,
        lambda c: 0.05 if c.strategy == "vmap" else per_batch[c.batch_size],
    )
    timed = [
        t["batch_size"] for t in trials if "seconds_per_point" in t and t["strategy"] == "loop"
    ]
    assert {2000, 128, 64, 32} <= set(timed)
    assert config.batch_size == 64


def test_layout_options_are_tried_again_at_the_batch_size_that_won(monkeypatch, evaluator):
    """Stored input layers that win at the default batch and lose at a smaller one (their
    memory traffic, as on 10,000 images of the ResNet-style model): flipped, they are left out."""
    per_batch = {2000: 0.016, 512: 0.008, 128: 0.002, 64: 0.003, 32: 0.004}

    def cost(config):
        if config.strategy == "vmap":
            return 0.05
        stored = 0.9 if config.batch_size >= 512 else 2.0
        return per_batch[config.batch_size] * (stored if config.precompute_input else 1.0)

    trials, config = _simulate(monkeypatch, evaluator, cost)
    default = [t for t in trials if t["batch_size"] == 512 and t["strategy"] == "loop"]
    assert default[-1]["precompute_input"]  # it won at the default's batch size
    assert (config.batch_size, config.precompute_input) == (128, False)


def test_a_flipped_option_must_be_clearly_faster_to_be_kept(monkeypatch, evaluator):
    """2% is within the noise of millisecond points: the option measured at the default's
    batch stays."""
    per_batch = {2000: 0.016, 512: 0.008, 128: 0.002, 64: 0.003, 32: 0.004}

    def cost(config):
        if config.strategy == "vmap":
            return 0.05
        stored = 0.9 if config.batch_size >= 512 else 1.0 / 0.98
        return per_batch[config.batch_size] * (stored if config.precompute_input else 1.0)

    trials, config = _simulate(monkeypatch, evaluator, cost)
    flipped = [t for t in _loops(trials) if t["batch_size"] == 128 and not t["precompute_input"]]
    assert len(flipped) == 1 and flipped[0]["seconds_per_point"] < 0.002 / 0.98  # faster
    assert (config.batch_size, config.precompute_input) == (128, True)


# -- torch.compile decided per grid from the remembered measurement ------------------------------
def _remembered(evaluator, config, per_point, compiled=None) -> str:
    from lossvista._identity import tuning_signature

    signature = tuning_signature(evaluator, "auto")
    _tuning.remember(signature, config, per_point, compiled)
    _tuning.clear_memory()  # read back from the cache file
    return signature


def _no_compiling(monkeypatch):
    from lossvista import _compile

    monkeypatch.setattr(_tuning, "tune", lambda *a: pytest.fail("tuned again"))
    monkeypatch.setattr(_compile.torch, "compile", lambda fn, **k: fn)  # instant, eager


@pytest.mark.parametrize("points, used", [(50, False), (400, True)])
def test_a_remembered_compile_measurement_decides_for_each_grid(
    monkeypatch, evaluator, points, used
):
    from lossvista.engine import EngineConfig

    _no_compiling(monkeypatch)
    eager = EngineConfig("loop", 2000, 1)
    # compiling took 1 s and saves 5 ms per point: it repays itself from 200 points on
    measured = {"seconds": 1.0, "per_point": 0.005, "eager_per_point": 0.010}
    _remembered(evaluator, dataclasses_replace(eager, compile=True), 0.005, measured)
    _, report = evaluator.run(np.zeros((points, 2)), strategy="auto", progress=False)
    assert report.config.compile is used
    assert ("compile used" if used else "compile not used") in report.trials[0]["why"]


def test_a_failed_compile_is_never_tried_again(monkeypatch, evaluator):
    from lossvista.engine import EngineConfig

    _no_compiling(monkeypatch)
    monkeypatch.setattr(_tuning, "COMPILE_MIN_WORK", 0.0)
    _remembered(evaluator, EngineConfig("loop", 2000, 1), 0.01, {"error": "no compiler"})
    _, report = evaluator.run(np.zeros((400, 2)), strategy="auto", progress=False)
    assert not report.config.compile
    assert len(report.trials) == 1


def test_compile_is_measured_once_on_a_grid_large_enough(monkeypatch, evaluator):
    from lossvista.engine import EngineConfig

    _no_compiling(monkeypatch)
    monkeypatch.setattr(_tuning, "COMPILE_MIN_WORK", 0.0)
    signature = _remembered(evaluator, EngineConfig("loop", 2000, 1), 0.01)
    assert _tuning.recall_compile(signature) is None  # remembered without a measurement
    values, report = evaluator.run(np.zeros((60, 2)), strategy="auto", progress=False)
    timed = [t for t in report.trials if t.get("compile") and "compile_seconds" in t]
    assert len(timed) == 1 and "eager_seconds_per_point" in timed[0]
    _tuning.clear_memory()
    measured = _tuning.recall_compile(signature)
    assert measured is not None and measured["per_point"] == timed[0]["seconds_per_point"]
    assert len(values["loss"]) == 60 and np.isfinite(values["loss"]).all()
    _, again = evaluator.run(np.zeros((60, 2)), strategy="auto", progress=False)
    assert not [t for t in again.trials if "compile_seconds" in t]  # decided, not measured


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_the_long_run_estimate_uses_the_chosen_speed_not_the_tuning_time(monkeypatch):
    import re

    from lossvista import _estimate

    monkeypatch.setattr(_estimate, "LONG_RUN_SECONDS", 0.0)
    original = _tuning.choose

    def slow_choose(*args):  # tuning that takes long (a compile trial, slow candidates)
        time.sleep(0.5)
        config, _, kept = original(*args)
        return config, 1e-4, kept  # the chosen configuration runs 0.1 ms per point

    monkeypatch.setattr(_tuning, "choose", slow_choose)
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, (torch.randn(40, 8, dtype=torch.float64),
                                                torch.randint(0, 3, (40,))))  # fmt: skip
    with pytest.warns(lv.LongRunWarning, match="long run") as caught:
        lv.plane(obj, lv.random_directions(model, 2, seed=0), steps=(8, 8), progress=False)
    message = str(caught[0].message)
    per_point = float(re.search(r"\(([0-9.e+-]+) ms per point\)", message).group(1))
    assert per_point == pytest.approx(0.1)  # not the 0.5 s of tuning over the first chunk


def test_slow_points_are_timed_once_and_vmap_is_not_tried_on_a_busy_cpu(monkeypatch, evaluator):
    monkeypatch.setattr(_tuning, "SLOW_POINT", 0.004)
    monkeypatch.setattr(_tuning, "VMAP_CPU_LIMIT", 0.004)
    calls: dict = {}
    per_batch = {2000: 0.005, 512: 0.006, 128: 0.007, 64: 0.008, 32: 0.009}

    def cost(config):
        calls[config] = calls.get(config, 0) + 1
        return per_batch[config.batch_size]

    trials, config = _simulate(monkeypatch, evaluator, cost)
    assert set(calls.values()) == {2}  # a warm-up and one timed point each
    vmap = [t for t in trials if t["strategy"] == "vmap"]
    assert vmap and all("on the CPU" in t["skipped"] for t in vmap)
    assert config.batch_size == 2000
