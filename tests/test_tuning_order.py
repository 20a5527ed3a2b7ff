"""The order in which the engine's tuning tries configurations, and when it stops trying more
(issue 10): the largest batches first, no smaller batch after they got slower, no larger vmap
block after a slow one. Point costs are simulated (sleeps), so the decisions are deterministic."""

from __future__ import annotations

import time

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
    """Run the tuning with ``cost(config)`` seconds per point; the trials it recorded."""
    tried = []

    def evaluate(config, coefficients):
        tried.append(config)
        time.sleep(cost(config) * len(coefficients))
        return np.tile([1.0, 1.0], (len(coefficients), 1))

    monkeypatch.setattr(evaluator, "_evaluate", evaluate)
    report = lv.engine.EngineReport(config=evaluator._default_config())
    coefficients = np.zeros((400, 2))
    config, _, _ = _tuning.tune(
        evaluator, coefficients, report, _tuning.candidate_configs(evaluator)
    )
    return report.trials, config


def _loop_order(trials) -> list:
    return [t["batch_size"] for t in trials if t["strategy"] == "loop" and not t.get("compile")]


def test_large_batches_first_and_smaller_ones_skipped_once_slower(monkeypatch, evaluator):
    per_batch = {2000: 0.001, 512: 0.002, 128: 0.004, 64: 0.008, 32: 0.016}

    def cost(config):
        if config.strategy == "vmap":
            return 0.02
        return per_batch[config.batch_size] * (0.9 if config.precompute_input else 1.0)

    trials, config = _simulate(monkeypatch, evaluator, cost)
    assert _loop_order(trials)[:2] == [512, 512]  # the default, then its refinement
    assert _loop_order(trials)[2:] == [2000, 128, 64, 32]
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
