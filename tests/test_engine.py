"""The engine: strategies agree, chunks reach the sink in order, tuning never mixes
configurations, and the same call gives the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, make_cnn, make_mlp
from lossvista import _collect, _tuning
from lossvista.engine import EngineConfig, PointEvaluator

F = nn.functional


@pytest.fixture(autouse=True)
def fresh_tuning_cache(tmp_path, monkeypatch):
    """Each test tunes from scratch: an empty cache folder and no remembered choices."""
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path / "cache"))
    _tuning.clear_memory()
    yield
    _tuning.clear_memory()


def _grid(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))


def _reference(model, X, y, d1, d2, coefficients):
    """Plain per-point evaluation on a copy: parameters written by hand, one full batch."""
    import copy

    clone = copy.deepcopy(model).eval()
    base = {n: p.detach().clone() for n, p in clone.named_parameters()}
    out = []
    with torch.no_grad():
        for a, b in coefficients:
            for n, p in clone.named_parameters():
                p.copy_(base[n] + a * d1[n] + b * d2[n])
            out.append(float(F.cross_entropy(clone(X), y)))
    return np.array(out)


@pytest.mark.parametrize("make", [make_mlp, make_cnn])
def test_loop_and_vmap_agree_with_a_plain_reference(make):
    model = make()
    X, y = classification_data(image=make is make_cnn)
    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=["accuracy"])
    d1, d2 = lv.random_directions(model, 2, seed=1)
    coefficients = _grid(20)
    expected = _reference(model, X, y, d1, d2, coefficients)
    evaluator = PointEvaluator(obj, obj.parameters(), (d1, d2))
    for config in (
        EngineConfig("loop", None, 1),
        EngineConfig("loop", 16, 1),
        EngineConfig("vmap", 16, 4),
        EngineConfig("vmap", 64, 7),
    ):
        values, report = evaluator.run(coefficients, config=config, progress=False)
        np.testing.assert_allclose(values["loss"], expected, rtol=1e-12, err_msg=str(config))
        assert report.config == config and report.points == 20
        assert np.all((values["accuracy"] >= 0) & (values["accuracy"] <= 1))


def test_chunks_reach_the_sink_in_order_and_complete():
    model = make_mlp()
    X, y = classification_data()
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    dirs = lv.random_directions(model, 2)
    evaluator = PointEvaluator(obj, obj.parameters(), dirs)
    received = []
    labels = np.arange(100, 130)
    values, _ = evaluator.run(
        _grid(30),
        labels,
        sink=lambda idx, vals: received.append((idx, vals["loss"])),
        strategy="loop",
        chunk_size=7,
        progress=False,
    )
    assert [len(idx) for idx, _ in received] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([idx for idx, _ in received]), labels)
    np.testing.assert_array_equal(np.concatenate([v for _, v in received]), values["loss"])


def test_a_chunk_the_engine_sizes_closes_after_chunk_seconds(monkeypatch):
    """A resumed run (its configuration given, so nothing measured) guesses 64 points per
    chunk; a chunk still reaches the sink once its work took CHUNK_SECONDS, however slow the
    points are. An explicit chunk_size is kept as asked."""
    from lossvista import engine

    model = make_mlp()
    X, y = classification_data()
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    config = EngineConfig("loop", None, 1)

    def chunks(**options) -> list[int]:
        received: list[int] = []
        evaluator.run(
            _grid(30), sink=lambda idx, vals: received.append(len(idx)), config=config,
            progress=False, **options,
        )  # fmt: skip
        return received

    assert chunks() == [30]  # 30 points of a small MLP: far below CHUNK_SECONDS
    monkeypatch.setattr(engine, "CHUNK_SECONDS", 0.0)  # "every point is slow"
    assert chunks() == [1] * 30
    assert chunks(chunk_size=7) == [7, 7, 7, 7, 2]
    # processes sharing the data agree once, after the first point, on rank 0's chunk size
    asked: list[int] = []
    token = _collect.FLUSH_AGREE.set(lambda size: asked.append(size) or 4)  # rank 0 says 4
    try:
        assert chunks() == [4] * 7 + [2]
    finally:
        _collect.FLUSH_AGREE.reset(token)
    assert asked == [1]  # this process's own answer, from its clock: one point per chunk


def test_auto_tuning_reports_trials_and_uses_one_configuration(monkeypatch):
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)  # let every candidate run
    model = make_mlp()
    X, y = classification_data(n=300)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    dirs = lv.random_directions(model, 2)
    evaluator = PointEvaluator(obj, obj.parameters(), dirs)
    coefficients = _grid(250)
    tuned, report = evaluator.run(coefficients, strategy="auto", progress=False)
    plain, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    np.testing.assert_allclose(tuned["loss"], plain["loss"], rtol=1e-12)
    tried = {(t["strategy"], t["batch_size"], t["points_per_call"]) for t in report.trials}
    assert ("loop", 300, 1) in tried and ("loop", 128, 1) in tried
    assert any(s == "vmap" for s, _, _ in tried)
    chosen = report.config
    best = min(report.trials, key=lambda t: t.get("seconds_per_point", np.inf))
    assert (chosen.strategy, chosen.batch_size, chosen.points_per_call) == (
        best["strategy"],
        best["batch_size"],
        best["points_per_call"],
    )
    # No trial point of another configuration is kept: every point has the bits of the chosen one.
    alone, _ = evaluator.run(coefficients, config=chosen, progress=False)
    np.testing.assert_array_equal(tuned["loss"], alone["loss"])


def test_tuning_stays_within_its_budget(monkeypatch):
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 0.0)
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=300))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    _, report = evaluator.run(_grid(100), strategy="auto", progress=False)
    ran = [t for t in report.trials if "seconds_per_point" in t]
    assert len(ran) == 1 and ran[0]["batch_size"] == obj._default_batch_size()
    whole = [t for t in report.trials[1:5] if t["batch_size"] == 300]
    assert len(whole) == 1 and "same batches as the default" in whole[0]["skipped"]
    assert all(t.get("skipped") == "tuning budget" for t in report.trials[1:5] if t not in whole)
    # default, the input layer stored, four other batch sizes (32, 64, 128 and all 300: one
    # batch, as the default's 512 gives), two vmap blocks; then compile, refused for a tiny grid
    assert len(report.trials) == 1 + 1 + 4 + 2 + 1
    assert report.trials[-1]["compile"] and "too small" in report.trials[-1]["skipped"]


def test_vmap_failure_falls_back_to_the_loop(monkeypatch):
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3).double()

        def forward(self, x):
            out = self.fc(x)
            if out.sum() > 1e9:  # data-dependent control flow: vmap cannot batch it
                return out * 2
            return out

    torch.manual_seed(0)
    model = DataDependent()
    X, y = classification_data(n=40)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    dirs = lv.random_directions(model, 2, ignore=())
    evaluator = PointEvaluator(obj, obj.parameters(), dirs)
    values, report = evaluator.run(_grid(220), strategy="auto", progress=False)
    assert report.config.strategy == "loop"
    assert any("error" in t for t in report.trials)
    assert np.isfinite(values["loss"]).all()


def test_bn_recompute_never_uses_vmap(cnn_problem):
    model, loss, data = cnn_problem
    obj = lv.Objective(model, loss, data, bn="recompute")
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2))
    assert evaluator._vmap_configs() == []
    with pytest.raises(lv.InputError, match="recompute"):
        evaluator.run(_grid(3), strategy="vmap", progress=False)


def test_config_round_trips_through_a_dict():
    config = EngineConfig("vmap", 128, 32)
    assert EngineConfig.from_dict(config.as_dict()) == config


def test_trial_points_of_other_configurations_are_evaluated_again(tmp_path, monkeypatch):
    """Every trial configuration gives its own last bits (float32); only the chosen one's
    points stay, so the tuned run equals a run of the chosen configuration bit for bit."""
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)
    model = make_mlp(dtype=torch.float32, width=64)
    X, y = classification_data(n=700, dtype=torch.float32)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=3))
    coefficients = _grid(120, seed=1)
    original = _tuning.tune
    for chosen in (EngineConfig("loop", 128, 1), EngineConfig("vmap", 128, 32)):
        # Force the choice: the trials of every other candidate must not leak into the result.
        monkeypatch.setattr(_tuning, "tune", _forcing(original, chosen))
        monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path / chosen.strategy))
        _tuning.clear_memory()
        tuned, report = evaluator.run(coefficients, strategy="auto", progress=False)
        assert report.config == chosen
        alone, _ = evaluator.run(coefficients, config=chosen, progress=False)
        np.testing.assert_array_equal(tuned["loss"], alone["loss"])


def _forcing(tune, chosen):
    def forced(evaluator, coefficients, report, candidates):
        _, per_point, kept = tune(evaluator, coefficients, report, candidates)
        if kept is not None and chosen.strategy != "loop":
            kept = None
        if chosen.strategy == "loop":
            # Keep the chosen loop's own trial rows, as the tuner does for its pick.
            start = 4 * [c for c in candidates if c.strategy == "loop"].index(chosen)
            rows = evaluator._evaluate(chosen, coefficients[start : start + 4])
            kept = (start, rows)
        return chosen, per_point, kept

    return forced


def test_vmap_blocks_follow_the_point_indices():
    """A resumed grid (other start, other subset) groups points as the first run did."""
    model = make_mlp(dtype=torch.float32, width=64)
    X, y = classification_data(n=200, dtype=torch.float32)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), lv.random_directions(model, 2, seed=4))
    coefficients = _grid(40, seed=2)
    config = EngineConfig("vmap", 64, 8)
    full, _ = evaluator.run(coefficients, config=config, progress=False)
    missing = np.arange(16, 40)  # what a resume after two blocks of 8 has left
    part, _ = evaluator.run(coefficients[missing], missing, config=config, progress=False)
    np.testing.assert_array_equal(part["loss"], full["loss"][missing])


def test_same_call_gives_the_same_bits_through_the_remembered_choice(tmp_path, monkeypatch):
    """A float32 plane evaluated twice, the second time with fresh process state (no choice in
    memory), reads the choice from the cache file and gives bit-identical values."""
    model = make_mlp(dtype=torch.float32, width=32)
    X, y = classification_data(n=600, dtype=torch.float32)
    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=["accuracy"])
    dirs = lv.random_directions(model, 2, seed=5)
    first = lv.plane(obj, dirs, steps=(9, 9), progress=False)
    cache = tmp_path / "cache" / _tuning.CACHE_FILE
    assert cache.exists()
    _tuning.clear_memory()
    seen = []
    monkeypatch.setattr(_tuning, "tune", lambda *a: seen.append(1) or pytest.fail("re-tuned"))
    second = lv.plane(obj, dirs, steps=(9, 9), progress=False)
    assert not seen
    assert second.settings["engine"] == first.settings["engine"]
    np.testing.assert_array_equal(second.values["loss"], first.values["loss"])
    np.testing.assert_array_equal(second.values["accuracy"], first.values["accuracy"])


def test_an_unusable_cache_never_fails_a_run(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(blocker))
    model = make_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=100))
    surface = lv.plane(obj, lv.random_directions(model, 2), steps=(8, 8), progress=False)
    assert surface.complete
    # A damaged or edited cache file is ignored (its entry is not a candidate: tune again).
    folder = tmp_path / "edited"
    folder.mkdir()
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(folder))
    (folder / _tuning.CACHE_FILE).write_text("{not json")
    _tuning.clear_memory()
    assert lv.plane(obj, lv.random_directions(model, 2), steps=(8, 8), progress=False).complete
