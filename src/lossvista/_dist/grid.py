"""A grid's missing points shared between the ranks of a :class:`~lossvista._dist.team.Team`
(the points and the data modes of :mod:`lossvista._dist`), called by
:func:`lossvista._grid.run_grid`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import InputError
from .team import Team, _portable, can_share_data, data_share, single_process

#: Seconds of work per rank and round of the points mode (``chunk_size`` not given): the first
#: round deals one block per rank, the next ones as many points as the slowest rank computes in
#: this time at the speed it showed in the round before. Finished points reach the store within
#: a round, so a crash loses at most this much work per rank, whatever a point costs.
ROUND_SECONDS = 5.0
#: At most this many points per rank and round (fast models: rounds of a few seconds at most).
ROUND_POINTS_MAX = 4096
#: ``distributed_mode="auto"`` takes the data mode when the points mode's rounds would take at
#: least this many times the evenly shared work (ranks idle in a last, short round).
DATA_MODE_GAIN = 1.25
#: A model whose tensors take more than this share of its device's memory "fills" the device:
#: ``distributed_mode="auto"`` then takes the data mode.
FILLS_DEVICE = 0.5


def check_same(team: Team, settings: dict[str, Any]) -> None:
    """Refuse, on every rank, a grid whose ranks disagree on what it is: directions, origin,
    data, loss or axes (e.g. directions drawn without a seed, so different on every rank)."""
    keys = ("kind", "span", "steps", "direction_fingerprints", "origin_fingerprint", "identity")
    mine = json.dumps({k: settings.get(k) for k in keys}, sort_keys=True, default=str)
    every = team.all_gather(hashlib.sha256(mine.encode()).hexdigest())
    differ = [rank for rank, digest in enumerate(every) if digest != every[0]]
    if differ:
        raise InputError(
            f"the ranks {differ} of this job describe another grid than rank 0 (directions, "
            "origin, data, loss or axes differ), so their points would not belong together; "
            "make every rank build the same objective and directions (e.g. "
            "lv.random_directions(obj, 2, seed=0): a seed, not the global random state)"
        )


class _Chosen(Exception):
    """Raised through the engine once it has chosen its configuration (rank 0's tuning)."""

    def __init__(self, config: Any) -> None:
        super().__init__("configuration chosen")
        self.config = config


def solve(
    team: Team,
    solver: Any,
    evaluator: Any,
    grid: Any,
    missing: np.ndarray,
    sink: Callable[[np.ndarray, dict[str, np.ndarray]], None],
    *,
    options: Any,
    config: Any,
    on_config: Callable[[Any], None],
) -> Any:
    """Evaluate the ``missing`` flat indices of ``grid`` with the ranks of ``team`` (every rank
    calls this with the same arguments); ``sink`` gets every finished chunk on every rank.

    Returns the engine configuration used (``None`` for solvers without one).
    """
    from .._grid import EngineSolver

    quiet = dataclasses.replace(options, progress=False)
    if config is None and isinstance(solver, EngineSolver):
        # The configuration a single process would choose for these points (rank 0 tunes it),
        # so that every rank computes every point exactly as one process would.
        config = team.agree(lambda: _chosen_config(solver, evaluator, grid, missing, quiet))
        on_config(config)
    mode = _mode(team, evaluator.objective, len(missing), options.distributed_mode, config)
    step = max(getattr(config, "points_per_call", 1), 1)
    if mode == "data":  # the engine's chunks, closed at the same points on every rank
        shown = dataclasses.replace(quiet, progress=options.progress)
        if not team.is_writer:
            shown = dataclasses.replace(shown, progress=False)
        with data_share(team):
            return solver(
                evaluator, grid.points_at(missing), missing, sink, options=shown,
                config=config, on_config=lambda _: None, desc=grid.kind,
            )  # fmt: skip
    from tqdm.auto import tqdm

    size = RoundSize(step, options.chunk_size)
    shown = options.progress and team.is_writer
    used = config
    with tqdm(
        total=len(missing), desc=grid.kind, unit="pt", disable=None if shown else True
    ) as bar:
        for share in _rounds(missing, step, size, team.world):
            mine = share[team.rank]
            chunks: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
            failure: BaseException | None = None
            started = time.perf_counter()
            if len(mine):
                try:
                    with single_process():
                        used = solver(
                            evaluator, grid.points_at(mine), mine,
                            lambda flat, values, into=chunks: into.append((flat, values)),
                            options=quiet, config=config, on_config=lambda _: None,
                            desc=grid.kind,
                        )  # fmt: skip
                except Exception as exc:  # raised on every rank below, after the others' chunks
                    failure = exc
            seconds = time.perf_counter() - started
            error = None if failure is None else _portable(failure)
            gathered = team.all_gather((chunks, error, seconds, len(mine)))
            for finished, *_ in gathered:
                for flat, values in finished:
                    sink(flat, values)
                    bar.update(len(flat))
            errors = [error for _, error, *_ in gathered if error is not None]
            if errors:
                raise failure if failure is not None else errors[0]
            size.measured([(seconds, count) for *_, seconds, count in gathered])
    return used


def _chosen_config(solver: Any, evaluator: Any, grid: Any, missing: np.ndarray, options: Any):
    def stop(config: Any) -> None:
        raise _Chosen(config)

    try:
        return solver(
            evaluator, grid.points_at(missing), missing, lambda *_: None, options=options,
            config=None, on_config=stop, desc=grid.kind,
        )  # fmt: skip
    except _Chosen as chosen:
        return chosen.config


def _mode(team: Team, objective: Any, n_missing: int, requested: str, config: Any) -> str:
    """``"points"`` or ``"data"`` for ``requested`` (the same on every rank)."""
    if requested == "points":
        return "points"
    why_not = can_share_data(objective, team, getattr(config, "batch_size", None))
    if requested == "data":
        if why_not is not None:
            raise InputError(
                f"distributed_mode='data' cannot be used: {why_not}; pass "
                "distributed_mode='points' (or 'auto')"
            )
        return "data"
    if why_not is not None:
        return "points"
    if n_missing < team.world or team.agree(lambda: fills_device(objective)):  # rank 0's device
        return "data"
    # blocks of points are dealt evenly, but a rank with one block more than another keeps the
    # others waiting for it at the end: the data mode shares every point
    step = max(getattr(config, "points_per_call", 1), 1)
    points_time = math.ceil(math.ceil(n_missing / step) / team.world) * step  # busiest rank
    return "data" if points_time >= DATA_MODE_GAIN * n_missing / team.world else "points"


def fills_device(objective: Any) -> bool:
    """True when the model's parameters and buffers take more than :data:`FILLS_DEVICE` of
    the evaluation device's memory (CUDA only). Such a model evaluates a point slowly, in small
    batches: the points mode would hold a round of whole points per rank in flight (lost if the
    job dies) and leave ranks idle in its last round, while in the data mode every rank helps
    with each point and finished points reach the store one after another."""
    import torch

    device = torch.device(objective.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    model = objective.model
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return held > FILLS_DEVICE * total


class RoundSize:
    """Points per rank of the next round of the points mode: ``fixed`` (the ``chunk_size``
    option) when given; else one block (``step`` points) first, then :data:`ROUND_SECONDS` of
    work at the slowest rank's speed in the round before (the same on every rank: every rank
    measures from the same gathered timings)."""

    def __init__(self, step: int, fixed: int | None = None) -> None:
        self.step, self.fixed = step, fixed
        self.points = fixed or step

    def __call__(self) -> int:
        return self.points

    def measured(self, timings: list[tuple[float, int]]) -> None:
        """``(seconds, points)`` of every rank in the round just finished."""
        rates = [seconds / count for seconds, count in timings if count > 0]
        if self.fixed or not rates:
            return
        points = int(ROUND_SECONDS / max(max(rates), 1e-9))
        self.points = min(max(self.step, points // self.step * self.step), ROUND_POINTS_MAX)


def _rounds(
    missing: np.ndarray, step: int, per_rank: Callable[[], int], world: int
) -> Iterator[list[np.ndarray]]:
    """Rounds of the points mode: per rank a run of whole blocks (``index // step``, the groups
    the engine evaluates together) of about ``per_rank()`` points (asked before every round);
    the blocks of a last, shorter round are dealt evenly."""
    if not len(missing):
        return
    cuts = np.flatnonzero(np.diff(missing // step)) + 1
    blocks = np.split(missing, cuts)
    start = 0
    while start < len(blocks):
        window = blocks[start : start + max(1, per_rank() // step) * world]
        start += len(window)
        share = -(-len(window) // world)  # a last, short round shared evenly too
        yield [
            np.concatenate(window[r * share : (r + 1) * share] or [missing[:0]])
            for r in range(world)
        ]
