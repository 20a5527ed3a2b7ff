"""The tuning's trials on a sample of the batches (issue 10): on a large data set a trial times
the first batches and the last one, estimates the whole point from them, and keeps nothing it
computed; the run still gives every point from the configuration chosen, whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import make_mlp
from lossvista import _batch_sample, _tuning
from lossvista._batch_sample import BatchSample, sample_for, sampled
from lossvista.engine import EngineConfig, EngineReport, PointEvaluator

F = nn.functional
N = 4000  # batches of 128: 32 of them, a sample of 8 (the first 7 and the last, of 32 samples)


@pytest.fixture
def evaluator(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path))
    _tuning.clear_memory()
    model = make_mlp()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    return PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=0))


def _batch_sizes_seen(model: nn.Module) -> list[int]:
    seen: list[int] = []
    model[0].register_forward_hook(lambda m, args, out: seen.append(int(args[0].shape[0])))
    return seen


@pytest.mark.parametrize(
    "n, batch, batches",
    [(4000, 128, 8), (4000, 64, 16), (10000, 512, 4), (10000, 32, 32), (2000, 512, None),
     (4000, 4000, None), (4000, None, None), (None, 64, None), (1000, 64, None)],
)  # fmt: skip
def test_a_pass_is_sampled_only_where_it_saves_at_least_half(n, batch, batches):
    sample = sample_for(n, batch)
    assert (sample.batches if sample is not None else None) == batches


def test_a_sample_is_the_first_batches_and_the_last_with_their_counts():
    sample = BatchSample(3)
    sizes = [128] * 9 + [40]
    taken = [len(b[1]) for b in sample.passes(iter([(None, torch.zeros(s)) for s in sizes]))]
    assert taken == [128, 128, 40]  # the last, shorter batch too: compile meets its shape
    assert (sample.taken, sample.total) == (296, 1192)
    assert sample.scale == pytest.approx(1192 / 296)
    assert BatchSample(3).scale == 1.0  # nothing counted yet


def test_the_data_yields_the_sample_only_inside_and_whole_passes_outside(evaluator):
    objective = evaluator.objective
    sample = sample_for(N, 128)
    with sampled(sample):
        inside = [int(target.shape[0]) for _, target in objective._batches(128)]
    assert inside == [128] * 7 + [32]
    assert sum(int(t.shape[0]) for _, t in objective._batches(128)) == N
    assert _batch_sample.BATCH_SAMPLE.get() is None


def test_a_sampled_trial_keeps_nothing_and_the_run_is_the_chosen_configuration_whole(evaluator):
    model = evaluator.objective.model
    seen = _batch_sizes_seen(model)
    points = np.random.default_rng(0).uniform(-1, 1, size=(60, 2))
    report = EngineReport(config=EngineConfig())
    trials = _tuning._Trials(evaluator, points, report)
    config = EngineConfig("loop", 128, 1, precompute_input=False)
    with evaluator._guarded():
        model.eval()
        evaluator._write_origin()
        assert trials.run(config)
        assert trials.position == 0 and trials.best[2] is None  # no grid point used or kept
        assert seen[-8:] == [128] * 7 + [32]  # the passes were over the sample
        trial = report.trials[-1]
        assert trial["sampled"] == pytest.approx(round(928 / N, 4))
        assert not evaluator.objective._data_verified  # only some batches were seen
    # a tuned run: sampled trials, then every point whole with the configuration chosen
    values, run = evaluator.run(points, strategy="auto", progress=False)
    assert any("sampled" in t for t in run.trials)
    again, _ = evaluator.run(points, config=run.config, progress=False)
    np.testing.assert_array_equal(values["loss"], again["loss"])
    X, y = evaluator.objective._data._tensors
    d1, d2 = lv.random_directions(model, 2, seed=0)
    origin = {n: p.detach() for n, p in model.named_parameters()}
    for c, value in list(zip(points, values["loss"]))[:3]:  # the whole data's mean, by hand
        at = {n: origin[n] + c[0] * d1[n] + c[1] * d2[n] for n in origin}
        expected = F.cross_entropy(torch.func.functional_call(model, at, (X,)), y)
        assert value == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("budget, fits", [(2 * 1024**3, True), (1_000_000, False)])
def test_stored_input_layers_set_up_in_a_sampled_trial_judge_the_whole_data(
    monkeypatch, evaluator, budget, fits
):
    """The set-up (which layers read the data, their outputs' size against the budget) sees
    the whole data although the trial's passes see a sample: the first layer's stored outputs
    take 1.5 MB for all 4,000 samples (0.36 MB for the sample's 928), so a 1 MB budget refuses
    them; the run goes on with that set-up, every batch served, the plain forward's values."""
    from lossvista import _strategies

    monkeypatch.setattr(_strategies, "DEVICE_CACHE_BYTES", budget)
    model = evaluator.objective.model
    points = np.random.default_rng(1).uniform(-1, 1, size=(8, 2))
    stored = EngineConfig("loop", 128, 1, precompute_input=True)
    with evaluator._guarded():
        model.eval()
        evaluator._write_origin()
        trials = _tuning._Trials(evaluator, points, EngineReport(config=EngineConfig()))
        assert trials.run(stored) and "sampled" in trials.report.trials[-1]
        rows = evaluator._evaluate(stored, points)  # the trial's set-up, whole passes
        layers = evaluator._layers
        assert layers is not None and layers.active is fits
        assert len(layers.layers[0].stored) == (N // 128 + 1 if fits else 0)
        plain = evaluator._evaluate(EngineConfig("loop", 128, 1), points)
    np.testing.assert_allclose(rows, plain, rtol=1e-12, atol=1e-12)


def test_the_tuning_estimates_a_whole_point_from_the_sample(monkeypatch, evaluator):
    """Point costs simulated per batch on a fake clock: a sampled trial's estimate is the
    sample's time times the whole pass's samples per sampled one, near the whole point's."""
    import types

    clock = [0.0]
    monkeypatch.setattr(_tuning, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    per_batch = {4000: 0.03, 512: 0.004, 128: 0.001, 64: 0.001, 32: 0.001}
    original = evaluator.objective._point_vector

    def point_vector(batch_size=None):
        for _ in evaluator.objective._batches(batch_size):
            clock[0] += per_batch[batch_size or 512]
        return original(batch_size)

    monkeypatch.setattr(evaluator.objective, "_point_vector", point_vector)
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 100.0)
    report = EngineReport(config=evaluator._default_config())
    with evaluator._guarded():
        evaluator.objective.model.eval()
        evaluator._write_origin()
        candidates = _tuning.candidate_configs(evaluator)
        _tuning.tune(evaluator, np.zeros((200, 2)), report, candidates)
    timed = {t["batch_size"]: t for t in report.trials if "seconds_per_point" in t}
    assert "sampled" not in timed[4000]
    assert timed[4000]["seconds_per_point"] == pytest.approx(0.03)
    assert timed[128]["sampled"] == pytest.approx(0.232)  # 7 x 128 + 32 of 4000 samples
    estimate = timed[128]["seconds_per_point"]
    assert estimate == pytest.approx(8 * 0.001 * N / 928)
    assert estimate == pytest.approx(32 * 0.001, rel=0.1)  # the whole point: 32 batches
