"""Finished points on their way out of the engine, and the engine's small helpers.

:class:`Collector` keeps every point's values and hands each full chunk to the sink (a surface
file or an in-memory array); blocks of points are aligned to their indices
(:func:`block_end`) so a resumed grid groups its points as the uninterrupted one did.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._averaging import Totals
from .errors import InputError, translated
from .objective import Objective

#: While data-parallel evaluation runs (:mod:`lossvista._dist`): this process's value -> rank
#: 0's (a broadcast). A chunk's sums are all-reduced when it is handed on, so every process must
#: close its chunks at the same points: they agree once on a chunk size, from rank 0's clock.
FLUSH_AGREE: contextvars.ContextVar[Callable[[int], int] | None] = contextvars.ContextVar(
    "lossvista_flush_agree", default=None
)


class Collector:
    """Finished points on their way out: kept in memory and handed to the sink chunk by chunk.

    A chunk is handed on when it holds ``chunk_size`` points or, with ``max_seconds``, when its
    first point started that long ago (whichever comes first): what a slow model computed
    reaches the store within seconds even where the points per chunk were guessed. Processes
    that share the data of every point (:data:`FLUSH_AGREE` set) instead agree after the first
    block on the points that fit in ``max_seconds`` by rank 0's clock, and count from then on.
    """

    def __init__(
        self,
        objective: Objective,
        indices: np.ndarray,
        sink: Any,
        chunk_size: int | None,
        max_seconds: float | None = None,
    ):
        self.objective = objective
        self.indices = indices
        self.sink = sink
        self.chunk_size = chunk_size
        self.max_seconds = max_seconds
        self._opened = time.perf_counter()  # when the open chunk's work started
        self._agreed = False  # the processes agreed on a chunk size (data shared)
        self.values = {name: np.full(len(indices), np.nan) for name in objective.value_names}
        self.nonfinite = 0
        self.samples: int | None = None
        self.bar: Any = None
        self._positions: list[int] = []
        self._rows: list[np.ndarray] = []

    def add(self, start: int, rows: np.ndarray) -> None:
        """Rows of vectors for the points ``start, start + 1, ...``."""
        self._positions.extend(range(start, start + len(rows)))
        self._rows.extend(rows)
        if self.bar is not None:
            self.bar.update(len(rows))
        self.flush_if_full()

    def restart_clock(self) -> None:
        """The open chunk's work starts now (after the tuning, which is not a chunk's work)."""
        self._opened = time.perf_counter()

    def flush_if_full(self) -> None:
        if not self._positions:
            return
        agree = FLUSH_AGREE.get() if self.max_seconds is not None else None
        late = False
        if self.max_seconds is not None:
            seconds = time.perf_counter() - self._opened
            late = agree is None and seconds >= self.max_seconds
            if agree is not None and not self._agreed:  # every process asks here, once
                per_point = seconds / len(self._positions)
                fit = max(1, int(self.max_seconds / max(per_point, 1e-9)))
                self.chunk_size = agree(min(self.chunk_size or fit, fit))
                self._agreed = True
        if late or (self.chunk_size is not None and len(self._positions) >= self.chunk_size):
            self.flush()

    def flush(self) -> None:
        self._opened = time.perf_counter()
        if not self._positions:
            return
        positions = np.array(self._positions)
        totals = Totals.from_vectors(np.stack(self._rows), len(self.objective.metric_names))
        self.samples = int(totals.count[-1])
        values = self.objective._means(totals)
        bad = ~np.isfinite(values["loss"])
        self.nonfinite += int(bad.sum())
        for name in self.values:
            column = np.where(np.isfinite(values[name]) & ~bad, values[name], np.nan)
            self.values[name][positions] = column
            values[name] = column
        self._positions.clear()
        self._rows.clear()
        if self.sink is not None:
            self.sink(self.indices[positions], values)


def block_end(indices: np.ndarray, position: int, step: int, limit: int) -> int:
    """End of the block of up to ``step`` points starting at ``position``: the points whose
    integer index lies in the same ``index // step`` block (so a resumed run, which starts at
    another position, groups its points as the first run did)."""
    if step == 1:
        return min(position + 1, limit)
    if not np.issubdtype(indices.dtype, np.integer):
        return min(position + step, limit)
    block = int(indices[position]) // step
    stop = position + 1
    while stop < limit and stop - position < step and int(indices[stop]) // step == block:
        stop += 1
    return stop


def is_vmap_failure(exc: RuntimeError) -> bool:
    """True for torch.vmap's own refusals (a missing batching rule, data-dependent control
    flow, an in-place update of an unbatched tensor with a batched value)."""
    text = str(exc)
    return "vmap" in text or "atching rule" in text


def vmap_error(model: torch.nn.Module, exc: RuntimeError) -> InputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
    return translated(
        InputError,
        f"strategy='vmap' cannot batch the operations of this {type(model).__name__} under "
        f"torch.vmap ({first}); models with RNN layers, data-dependent control flow or buffers "
        "updated inside forward need one point per forward pass: use strategy='loop', or "
        "strategy='auto', which tries vmap and falls back to the loop",
        exc,
    )
