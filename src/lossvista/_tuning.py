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
  bits. A cache that cannot be read or written never fails a run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ._identity import tuning_signature

if TYPE_CHECKING:  # pragma: no cover
    from .engine import EngineConfig, EngineReport, PointEvaluator

#: Grids with fewer points than this are not worth tuning: they use the default loop.
TUNE_MIN_POINTS = 50
#: Trying candidate configurations may cost at most this share of the estimated work.
TUNE_BUDGET = 0.05
#: The cache file keeps at most this many choices (the oldest are dropped).
CACHE_ENTRIES = 256
CACHE_FILE = "engine-tuning.json"
_CACHE_FORMAT = "lossvista-tuning-cache"
_MEMORY: dict[str, dict[str, Any]] = {}

#: Trial points kept for the main run: (first position, rows), or None.
Kept = tuple[int, np.ndarray] | None


def choose(
    evaluator: PointEvaluator, coefficients: np.ndarray, report: EngineReport, strategy: str
) -> tuple[EngineConfig, float | None, Kept]:
    """The configuration for this grid: remembered for its signature, or measured now."""
    candidates = candidate_configs(evaluator)
    signature = tuning_signature(evaluator, strategy)
    remembered = recall(signature, candidates)
    if remembered is not None:
        config, per_point = remembered
        report.trials.append(
            {**config.as_dict(), "seconds_per_point": per_point, "remembered": True}
        )
        return config, per_point, None
    config, per_point, kept = tune(evaluator, coefficients, report, candidates)
    if per_point is not None:
        remember(signature, config, per_point)
    return config, per_point, kept


def candidate_configs(evaluator: PointEvaluator) -> list[EngineConfig]:
    """The default configuration first, then other loop batch sizes, then vmap blocks."""
    from .engine import EngineConfig

    default = evaluator._default_config()
    candidates = [default]
    candidates += [
        EngineConfig("loop", b, 1) for b in evaluator._batch_sizes() if b != default.batch_size
    ]
    return candidates + evaluator._vmap_configs()


def tune(
    evaluator: PointEvaluator,
    coefficients: np.ndarray,
    report: EngineReport,
    candidates: list[EngineConfig],
) -> tuple[EngineConfig, float | None, Kept]:
    """Time the candidates on the first points; return (best, seconds per point, kept rows).

    The default configuration goes first and gives an estimate of the whole job; a further
    candidate is tried only while the trials stay within ``TUNE_BUDGET`` of that estimate. The
    rows of the chosen configuration's trial are kept when it is a loop (a loop point does not
    depend on its neighbours); every other trial point is evaluated again.
    """
    default = candidates[0]
    position, spent, budget = 0, 0.0, None
    best: tuple[float, EngineConfig, Kept] | None = None
    for candidate in candidates:
        # Loop: a warm-up point, then the fastest of 3; vmap: one call of its block.
        calls = 4 if candidate.strategy == "loop" else 1
        planned = calls * candidate.points_per_call
        if position + planned > len(coefficients):
            break
        if budget is not None and best is not None:
            cost = planned * best[0] * (2.0 if candidate.strategy == "vmap" else 1.5)
            if spent + cost > budget:
                report.trials.append({**candidate.as_dict(), "skipped": "tuning budget"})
                continue
            spent += cost
        start, timings, rows = position, [], []
        try:
            for _ in range(calls):
                stop = position + candidate.points_per_call
                tick = time.perf_counter()
                rows.append(evaluator._evaluate(candidate, coefficients[position:stop]))
                timings.append((time.perf_counter() - tick) / (stop - position))
                position = stop
        except Exception as exc:  # vmap may lack a batching rule or run out of memory
            if candidate.strategy == "loop":
                raise
            report.trials.append({**candidate.as_dict(), "error": repr(exc)[:300]})
            continue
        per_point = min(timings[1:] or timings)
        report.trials.append({**candidate.as_dict(), "seconds_per_point": per_point})
        if best is None or per_point < best[0]:
            kept = (start, np.concatenate(rows)) if candidate.strategy == "loop" else None
            best = (per_point, candidate, kept)
        if budget is None:
            budget = TUNE_BUDGET * per_point * len(coefficients)
    if best is None:
        return default, None, None
    return best[1], best[0], best[2]


# -- the remembered choices -----------------------------------------------------------------------
def cache_dir() -> Path:
    """``$LOSSVISTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lossvista``, else ``~/.cache/lossvista``."""
    explicit = os.environ.get("LOSSVISTA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lossvista"


def clear_memory() -> None:
    """Forget the choices remembered in this process (the cache file stays)."""
    _MEMORY.clear()


def recall(
    signature: str, candidates: list[EngineConfig]
) -> tuple[EngineConfig, float | None] | None:
    """The remembered choice for ``signature`` when it is one of this run's candidates."""
    from .engine import EngineConfig

    entry = _MEMORY.get(signature) or _read_cache().get(signature)
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return None
    try:
        config = EngineConfig.from_dict(entry["config"])
    except (TypeError, ValueError):
        return None
    if config not in candidates:  # a stale or edited entry: tune again
        return None
    per_point = entry.get("seconds_per_point")
    _MEMORY[signature] = entry
    return config, float(per_point) if isinstance(per_point, (int, float)) else None


def remember(signature: str, config: EngineConfig, per_point: float) -> None:
    entry = {
        "config": config.as_dict(),
        "seconds_per_point": float(per_point),
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _MEMORY[signature] = entry
    entries = _read_cache()
    entries[signature] = entry
    if len(entries) > CACHE_ENTRIES:
        newest = sorted(entries.items(), key=lambda kv: str(kv[1].get("saved", "")))
        entries = dict(newest[-CACHE_ENTRIES:])
    _write_cache(entries)


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        with open(cache_dir() / CACHE_FILE, "rb") as handle:
            data = json.loads(handle.read(4 * 1024 * 1024))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {str(k): v for k, v in entries.items() if isinstance(v, dict)}


def _write_cache(entries: dict[str, dict[str, Any]]) -> None:
    from . import _hdf5
    from .errors import StoreError

    text = json.dumps({"format": _CACHE_FORMAT, "version": 1, "entries": entries}, indent=1)

    def write(handle: BinaryIO) -> None:
        handle.write(text.encode())

    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        _hdf5.atomic_write(folder / CACHE_FILE, write, what="tuning cache")
    except (OSError, StoreError):
        pass  # the cache only saves time and keeps bits equal: never fail a run for it
