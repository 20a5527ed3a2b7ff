"""How the engine picks its configuration, and remembers the pick so the same call gives the same bits.

With ``strategy="auto"`` the engine times candidate configurations (data batch size, loop or
vmap, points per pass) on the first points of a grid and keeps the fastest. Timing is noisy, and
configurations add up a point's batches in other groupings, so two of them can differ in the
last bits of a float32 value. Therefore:

- trial results are only kept when they were computed with the configuration that is chosen
  (every other trial point is evaluated again with it), so a grid never mixes configurations;
- the choice is remembered per :func:`~lossvista._identity.tuning_signature` (architecture,
  shapes, data shapes, device, request), in memory for the process and in a small JSON file
  (``$LOSSVISTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lossvista``, else ``~/.cache/lossvista``),
  so the same call on the same machine evaluates with the same configuration and gives the same
  bits. A cache that cannot be read or written never fails a run (:mod:`lossvista._tuning_cache`);
- ``torch.compile`` is the one option a grid's size decides: the compile trial's measurement
  (seconds compiling, seconds per point with and without) is remembered with the choice, and a
  later grid compiles exactly when the time it saves exceeds that compile time. A signature
  whose compile was never measured (its first grid was too small) is measured on the first
  grid with at least ``COMPILE_MIN_WORK`` of work.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batch_sample import BatchSample, sample_for, sampled
from ._identity import tuning_signature
from ._tuning_cache import (  # noqa: F401 - re-exported: the tuning's remembered choices
    _REFINED,
    CACHE_ENTRIES,
    CACHE_FILE,
    cache_dir,
    clear_memory,
    recall,
    recall_compile,
    remember,
)

if TYPE_CHECKING:  # pragma: no cover
    from .engine import EngineConfig, EngineReport, PointEvaluator

#: Grids with fewer points than this are not worth tuning: they use the default loop.
TUNE_MIN_POINTS = 50
#: Trying candidate configurations may cost at most this share of the estimated work.
TUNE_BUDGET = 0.05
#: ``torch.compile`` is tried only when the rest of the grid takes at least this many seconds
#: with the best eager configuration: compiling takes ~10-60 s, which then costs at most a
#: small share of the work, and it is kept only when the time it saves exceeds its compile time.
COMPILE_MIN_WORK = 300.0
#: A trial stops after its warm-up and one timed point when that point took this long (a
#: slow point is measured well enough once; 3 timed points would cost seconds each).
SLOW_POINT = 0.25
#: On a CPU, vmap blocks are not tried once the best loop takes this long per point: vmap saves
#: per-forward overhead, which a point this long does not have. On the benchmark machine it was
#: 2-10x slower than the loop for every benchmark model; a block of 8 points of the ResNet-style
#: model (44 ms each in the loop) took 2.6 s to try, 10% of a 21x21 plane, and the digits CNN's
#: (1.9 ms; 7 ms in vmap) 2% of a 51x51 one. It won only where a loop point took 0.07 ms (a
#: small MLP on 65 samples: 0.026 ms in blocks of 32) and tied at 0.19 ms (on 1,024 samples).
VMAP_CPU_LIMIT = 0.001
#: After a vmap trial this many times slower per point than the best loop, the other vmap
#: candidates are not tried (on a CPU, vmap is rarely faster than a loop over large batches);
#: after a loop batch size this much slower than the best and slower than the larger batch size
#: before it, the smaller batch sizes are not tried.
GIVE_UP = 1.5

#: A layout option flipped at the batch size that won (:data:`_LAYOUT`) is kept only when this
#: much faster: it was measured at the default's batch, and millisecond points are noisy.
FLIP_MARGIN = 0.95
_LAYOUT = ("fold_batchnorm", "channels_last", "precompute_input", "onednn_linear")

#: Trial points kept for the main run: (first position, rows), or None.
Kept = tuple[int, np.ndarray] | None


def choose(
    evaluator: PointEvaluator, coefficients: np.ndarray, report: EngineReport, strategy: str
) -> tuple[EngineConfig, float | None, Kept]:
    """The configuration for this grid: remembered for its signature, or measured now.

    A remembered choice is used as it is, except for ``torch.compile``: a grid's size decides
    whether compiling repays itself, so it is decided again from the remembered compile
    measurement (:func:`repays`), or, never measured for this signature and enough work on
    this grid, measured now (one trial: the compiled forward against the remembered speed).
    """
    candidates = candidate_configs(evaluator)
    signature = tuning_signature(evaluator, strategy)
    remembered = recall(signature, candidates, possible_refinements(evaluator))
    if remembered is not None:
        config, per_point = remembered
        trial = {**config.as_dict(), "seconds_per_point": per_point, "remembered": True}
        report.trials.append(trial)
        n = len(coefficients)
        compiled = recall_compile(signature)
        if compiled is not None and config.strategy == "loop":
            use = repays(compiled, n)
            config = compiled_form(config) if use else dataclasses.replace(config, compile=False)
            per_point = compiled["per_point"] if use else compiled["eager_per_point"]
            trial["why"] = (
                f"compile {'used' if use else 'not used'}: measured {compiled['seconds']:.1f} s "
                f"compiling against {compiled['eager_per_point'] - compiled['per_point']:.4g} s "
                f"saved per point, {n} points"
            )
            return config, per_point, None
        work = (per_point or 0.0) * n
        if config.compile and work < COMPILE_MIN_WORK:  # remembered for a larger grid
            config = dataclasses.replace(config, compile=False)
            trial["why"] = f"compile not used: about {work:.1f} s of work on this grid"
        elif compiled is None and config.strategy == "loop" and work >= COMPILE_MIN_WORK:
            chosen = _try_compile(evaluator, coefficients, report, config, per_point)
            remember(signature, chosen[0], chosen[1] or 0.0, compile_measured(report))
            return chosen
        return config, per_point, None
    config, per_point, kept = tune(evaluator, coefficients, report, candidates)
    if per_point is not None:
        remember(signature, config, per_point, compile_measured(report))
    return config, per_point, kept


def _try_compile(
    evaluator: PointEvaluator,
    coefficients: np.ndarray,
    report: EngineReport,
    config: EngineConfig,
    per_point: float | None,
) -> tuple[EngineConfig, float | None, Kept]:
    """One trial of ``config`` compiled on the first points, against its remembered speed."""
    trials = _Trials(evaluator, coefficients, report)
    trials.best = (per_point or float("inf"), config, None)
    trials.budget = float("inf")
    trials.run(compiled_form(config))
    return trials.chosen()


def repays(compiled: dict[str, float], n_points: int) -> bool:
    """True when compiling (its measured seconds) saves more than it costs on ``n_points``."""
    saved = (compiled["eager_per_point"] - compiled["per_point"]) * n_points
    return saved > compiled["seconds"]


def compile_measured(report: EngineReport) -> dict[str, Any] | None:
    """The compile trial of ``report`` (seconds compiling, seconds per point compiled and with
    the best eager configuration), or ``{"error": ...}`` when compiling failed; None if none."""
    for trial in reversed(report.trials):
        if not trial.get("compile") or "skipped" in trial:
            continue
        if "error" in trial:
            return {"error": str(trial["error"])}
        if "compile_seconds" in trial and "eager_seconds_per_point" in trial:
            return {
                "seconds": float(trial["compile_seconds"]),
                "per_point": float(trial["seconds_per_point"]),
                "eager_per_point": float(trial["eager_seconds_per_point"]),
            }
    return None


def _cpu(evaluator: PointEvaluator) -> bool:
    import torch

    return torch.device(evaluator.objective.device).type == "cpu"


def candidate_configs(evaluator: PointEvaluator) -> list[EngineConfig]:
    """The default configuration first, then other loop batch sizes (the largest first), then
    vmap blocks (the smallest first)."""
    from .engine import EngineConfig

    default = evaluator._default_config()
    candidates = [default]
    # the largest batches first: they win on most models, and a small grid's tuning budget may
    # run out before the small batches (which win where activations outgrow the CPU caches)
    others = [b for b in evaluator._batch_sizes() if b != default.batch_size]
    others.sort(key=lambda b: -1 if b is None else b, reverse=True)
    candidates += [EngineConfig("loop", b, 1) for b in others]
    # the vmap block with the fewest points first: when it is much slower than the loop, the
    # larger (costlier to try) blocks are skipped
    return candidates + sorted(evaluator._vmap_configs(), key=lambda c: c.points_per_call)


def tune(
    evaluator: PointEvaluator,
    coefficients: np.ndarray,
    report: EngineReport,
    candidates: list[EngineConfig],
) -> tuple[EngineConfig, float | None, Kept]:
    """Time the candidates on the first points; return (best, seconds per point, kept rows).

    The default configuration goes first and gives an estimate of the whole job; a further
    candidate is tried only while the trials stay within ``TUNE_BUDGET`` of that estimate. The
    default's layout is refined first (:func:`refinements`: BatchNorm folded, channels-last
    weights, the layers that read the data stored, then linear layers through oneDNN; each kept
    only when faster), the other batchings are tried with the layout that won (a batch size
    that gives the default's one batch of the whole set is not timed again), each layout
    option is flipped once at a batch size that beat the default's, and last
    ``torch.compile`` of the best, only where the grid's work repays compiling. On a large
    data set a trial times a sample of each point's batches (:mod:`lossvista._batch_sample`)
    and keeps nothing; otherwise the rows of the chosen configuration's trial are kept when it
    is a loop (a loop point does not depend on its neighbours), and every other trial point is
    evaluated again.
    """
    trials = _Trials(evaluator, coefficients, report)
    steps = refinements(evaluator)
    layout, compiled = steps[:-1], steps[-1]
    if not trials.run(candidates[0]) or trials.best is None:
        return candidates[0], None, None
    for make in layout:  # the default's layout options first: they hardly depend on batching
        if not trials.run_refined(make):
            return trials.chosen()
    best = trials.best[1]
    slow_small = False
    no_vmap: str | None = None  # why no (more) vmap block is tried
    previous: float | None = None  # the last loop batch size's seconds per point
    n = evaluator.objective.n_samples or 0
    default_batch = min(candidates[0].batch_size or 0, n)
    for candidate in candidates[1:]:  # other batchings, with the layout options that won
        loop = candidate.strategy == "loop"
        if loop and n and min(candidate.batch_size or 0, n) == default_batch > 0:
            same = "the same batches as the default (the whole set in one)"
            report.trials.append({**candidate.as_dict(), "skipped": same})
            continue
        if not loop and no_vmap is None and _cpu(evaluator) and trials.best[0] >= VMAP_CPU_LIMIT:
            # a loop point this long keeps the cores busy: vmap has no overhead to save
            no_vmap = f"a loop point takes {trials.best[0]:.3g} s on the CPU"
        if (no_vmap and not loop) or (slow_small and loop):
            why = no_vmap if not loop else "smaller batches were slower"
            report.trials.append({**candidate.as_dict(), "skipped": why})
            continue
        candidate = dataclasses.replace(
            candidate,
            fold_batchnorm=best.fold_batchnorm,
            channels_last=best.channels_last and loop,
            precompute_input=best.precompute_input and loop,
            onednn_linear=best.onednn_linear and loop,
        )
        if not trials.run(candidate):
            return trials.chosen()
        last, fastest = trials.last, trials.best[0] if trials.best is not None else None
        if last is not None and fastest is not None:
            # much slower than the best loop: larger vmap blocks, or smaller batches (tried from
            # the largest down, once they got slower), will not win here
            slower = last >= GIVE_UP * fastest
            if loop:
                slow_small = slower and previous is not None and last > previous
                previous = last
            elif slower:
                no_vmap = "vmap was slower"
    if trials.best is not None and trials.best[1].batch_size != candidates[0].batch_size:
        _flip_layout(evaluator, trials)
    trials.run_refined(compiled)
    return trials.chosen()


def _flip_layout(evaluator: PointEvaluator, trials: _Trials) -> None:
    """Each layout option of the best loop flipped once: what one saves depends on the batch
    (stored input layers were 2.4x slower at b=128 on 10,000 images of the benchmark's ResNet)."""
    trials.margin = FLIP_MARGIN
    for name in (option for option in _LAYOUT if option in possible_refinements(evaluator)):
        best = trials.chosen()[0]
        flipped: dict[str, Any] = {name: not getattr(best, name)}
        if best.strategy != "loop" or not trials.run(dataclasses.replace(best, **flipped)):
            break
    trials.margin = 1.0


class _Trials:
    """Candidate configurations timed one after another on consecutive points of the grid."""

    def __init__(self, evaluator: PointEvaluator, coefficients: np.ndarray, report: EngineReport):
        self.evaluator, self.coefficients, self.report = evaluator, coefficients, report
        self.position, self.spent = 0, 0.0
        self.budget: float | None = None
        self.best: tuple[float, EngineConfig, Kept] | None = None
        self.last: float | None = None  # seconds per point of the last candidate timed
        self.margin = 1.0  # a candidate replaces the best when this much faster

    def chosen(self) -> tuple[EngineConfig, float | None, Kept]:
        if self.best is None:  # pragma: no cover - the default's trial sets it
            raise RuntimeError("no configuration was timed")
        return self.best[1], self.best[0], self.best[2]

    def run_refined(self, make: Any) -> bool:
        """Time ``make(best, self)`` when it gives a new configuration; False when out of points."""
        if self.best is None:  # pragma: no cover
            return False
        candidate = make(self.best[1], self)
        if candidate is None or candidate == self.best[1]:
            return True
        return self.run(candidate)

    def remaining_work(self) -> float:
        """Seconds the rest of the grid takes with the best configuration so far."""
        per_point = self.best[0] if self.best is not None else 0.0
        return per_point * (len(self.coefficients) - self.position)

    def run(self, candidate: EngineConfig) -> bool:
        """Time ``candidate``; False when the grid has no points left for it."""
        # Loop: a warm-up point (compiling, for compile), then the fastest of 3; vmap: one block.
        calls = 4 if candidate.strategy == "loop" else 1
        planned = calls * candidate.points_per_call
        objective = self.evaluator.objective
        n = objective.n_samples if objective._is_sliceable() else None
        sample = sample_for(n, candidate.batch_size)
        if sample is None and self.position + planned > len(self.coefficients):
            return False
        if self.budget is not None and self.best is not None and not candidate.compile:
            # what it may cost at most, against what the trials so far did cost
            cost = planned * self.best[0] * (2.0 if candidate.strategy == "vmap" else 1.5)
            if sample is not None and n:
                cost *= min(1.0, sample.batches * (candidate.batch_size or n) / n)
            if self.spent + cost > self.budget:
                self.report.trials.append({**candidate.as_dict(), "skipped": "tuning budget"})
                return True
        started, counted = time.perf_counter(), self.budget is not None  # not the default's
        try:
            return self._timed(candidate, calls, sample)
        finally:
            if counted:
                self.spent += time.perf_counter() - started

    def _timed(self, candidate: EngineConfig, calls: int, sample: BatchSample | None) -> bool:
        """Time ``candidate`` on the next points of the grid (kept when it wins and is a loop),
        or, with a ``sample``, on samples of their batches (used for the timing only)."""
        start, timings, rows, self.last = self.position, [], [], None
        width, n_points = candidate.points_per_call, len(self.coefficients)
        try:
            self.evaluator._use(candidate)  # set up on the whole data, outside the sample
            for call in range(calls):  # the next points (a sample uses none up; may wrap)
                ahead = call * width if sample is not None else 0
                points = self.coefficients[(self.position + ahead + np.arange(width)) % n_points]
                tick = time.perf_counter()
                with sampled(sample):
                    values = self.evaluator._evaluate(candidate, points)
                timings.append((time.perf_counter() - tick) / len(points))
                if sample is None:
                    rows.append(values)
                    self.position += len(points)
                if len(timings) >= 2 and timings[-1] >= SLOW_POINT:
                    break  # one timed point of this length is measurement enough
        except Exception as exc:  # vmap may lack a batching rule, compile a compiler, memory
            if self.best is None:  # the default configuration must work
                raise
            self.report.trials.append({**candidate.as_dict(), "error": repr(exc)[:300]})
            return True
        timed = min(timings[1:] or timings)
        per_point = timed * (sample.scale if sample is not None else 1.0)
        self.last = per_point
        trial: dict[str, Any] = {**candidate.as_dict(), "seconds_per_point": per_point}
        if sample is not None:  # the share of the data timed; the point's time estimated
            trial["sampled"] = round(1.0 / sample.scale, 4)
        faster = self.best is None or per_point < self.best[0] * self.margin
        if candidate.compile and self.best is not None:
            compile_seconds = max(timings[0] - timed, 0.0) * width
            left = n_points - self.position
            saving = (self.best[0] - per_point) * left
            trial["compile_seconds"] = compile_seconds
            trial["eager_seconds_per_point"] = self.best[0]
            # compile time counted against what it saves
            faster = saving > compile_seconds
            trial["why"] = (
                f"saves {saving:.1f} s on {left} points against {compile_seconds:.1f} s compiling"
            )
        self.report.trials.append(trial)
        if faster:
            loop = candidate.strategy == "loop" and sample is None
            self.best = (per_point, candidate, (start, np.concatenate(rows)) if loop else None)
        if self.budget is None:
            self.budget = TUNE_BUDGET * per_point * n_points
        return True


def compiled_form(config: EngineConfig) -> EngineConfig:
    """``config`` compiled: without oneDNN linear layers, which inductor cannot lower (it
    generates its own products; the compile trial measures against the eager best with them)."""
    return dataclasses.replace(config, compile=True, onednn_linear=False)


def possible_refinements(evaluator: PointEvaluator) -> frozenset[str]:
    """The options of :data:`_REFINED` that this evaluator's model and objective allow."""
    from . import _strategies

    objective = evaluator.objective
    possible = {"compile"}
    if _strategies.fold_pairs(objective, evaluator._setup):
        possible.add("fold_batchnorm")
    if _strategies.conv_weights(objective.model):
        possible.add("channels_last")
    if _strategies.input_layers_possible(evaluator):
        possible.add("precompute_input")
    if _onednn_possible(evaluator):
        possible.add("onednn_linear")
    return frozenset(possible)


def _onednn_possible(evaluator: PointEvaluator) -> bool:
    """True on the CPU when oneDNN's linear works here and the model has layers it may take;
    found once per evaluator, before any trial patches the model's layers."""
    from . import _onednn

    setup = evaluator._setup
    if "onednn" not in setup:
        model = evaluator.objective.model
        setup["onednn"] = _cpu(evaluator) and bool(_onednn.layers(model)) and _onednn.available()
    return bool(setup["onednn"])


def refinements(evaluator: PointEvaluator) -> list[Any]:
    """Steps that derive a candidate from the best configuration so far (None: not possible)."""
    from . import _strategies

    objective = evaluator.objective

    def fold(best: EngineConfig, trials: _Trials) -> EngineConfig | None:
        if best.fold_batchnorm or not _strategies.fold_pairs(objective, evaluator._setup):
            return None
        return dataclasses.replace(best, fold_batchnorm=True)

    def channels_last(best: EngineConfig, trials: _Trials) -> EngineConfig | None:
        if best.strategy != "loop" or not _strategies.conv_weights(objective.model):
            return None
        return dataclasses.replace(best, channels_last=True)

    def precomputed(best: EngineConfig, trials: _Trials) -> EngineConfig | None:
        if best.strategy != "loop" or not _strategies.input_layers_possible(evaluator):
            return None
        return dataclasses.replace(best, precompute_input=True)

    def onednn(best: EngineConfig, trials: _Trials) -> EngineConfig | None:
        if best.strategy != "loop" or not _onednn_possible(evaluator):
            return None
        return dataclasses.replace(best, onednn_linear=True)

    def compiled(best: EngineConfig, trials: _Trials) -> EngineConfig | None:
        if best.strategy != "loop":
            return None
        work = trials.remaining_work()
        if work < COMPILE_MIN_WORK:
            trials.report.trials.append(
                {
                    **compiled_form(best).as_dict(),
                    "skipped": f"grid too small to repay compiling: about {work:.1f} s of work "
                    f"left, compile is tried from {COMPILE_MIN_WORK:.0f} s",
                }
            )
            return None
        return compiled_form(best)

    return [fold, channels_last, precomputed, onednn, compiled]
