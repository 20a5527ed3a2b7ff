"""What a grid costs: memory, file size and time, stated before or early in the run.

:func:`check_request` refuses, before any evaluation, a grid whose values cannot fit in the
memory that is available or whose surface file cannot fit on the store's disk, and announces a
grid of more than :data:`LARGE_GRID_POINTS` points (N-D grids grow fast) with a warning that
states its points, memory and file size before the run starts.
:class:`RunClock` watches the first finished chunk and, when the whole grid will take long
(:data:`LONG_RUN_SECONDS`), warns once with the estimated time (at the engine's measured speed),
memory and file size; the CLI prints that warning as a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from ._checks import caller_stacklevel
from .errors import InputError, LongRunWarning

#: Grids estimated to take longer than this are announced with a warning.
LONG_RUN_SECONDS = 600.0
#: Grids of more points than this are announced (points, memory, file size) before they start.
LARGE_GRID_POINTS = 100_000


def memory_bytes(points: int, n_values: int, ndim: int) -> int:
    """Bytes a grid holds in memory: its values twice (the result and the engine's copy), the
    coordinates of its points twice (their grid indices while they are built, then the
    coefficients), a flat index and a flag per point."""
    return points * (16 * n_values + 16 * ndim + 17)


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``, else free pages), ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_request(
    kind: str,
    shape: Sequence[int],
    n_values: int,
    directions: Sequence[Mapping[str, torch.Tensor]],
    store: Path | None,
    *,
    creating: bool,
) -> None:
    """Refuse (:class:`InputError`) a grid whose values or file cannot fit, with the numbers;
    announce (:class:`LongRunWarning`) one of more than :data:`LARGE_GRID_POINTS` points."""
    points = math.prod(shape)
    need = memory_bytes(points, n_values, len(shape))
    have = available_memory()
    if have is not None and need > have:
        raise InputError(
            f"{kind} of {_grid_text(shape)} points with {n_values} values each needs about "
            f"{size_text(need)} of memory for its values; this machine has {size_text(have)} "
            "available. Ask for fewer steps (or a smaller span at the same resolution)"
        )
    size = None if store is None else estimated_file_bytes(shape, n_values, directions)
    if points > LARGE_GRID_POINTS:
        stored = (
            f"a surface file of about {size_text(size)} ({str(store)!r})"
            if size is not None
            else "no file (pass store= to make it resumable)"
        )
        warnings.warn(
            f"large grid: this {kind} of {_grid_text(shape)} points with {n_values} values each "
            f"will hold about {size_text(need)} in memory and write {stored}; the time is "
            "estimated after the first chunk. Fewer steps make it smaller",
            LongRunWarning,
            stacklevel=caller_stacklevel(),
        )
    if store is None or size is None or not creating:
        return  # a resumed file has its space already
    folder = store.parent if str(store.parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if size > free:
        raise InputError(
            f"the surface file {str(store)!r} for {_grid_text(shape)} points would take about "
            f"{size_text(size)}, but its disk has {size_text(free)} free. Pass a store on a "
            "bigger disk, or ask for fewer steps"
        )


class RunClock:
    """Times the first chunk of a grid and warns once when the whole run will take long.

    The speed is the engine's measured seconds per point of the configuration it chose
    (:func:`note_speed`, told while :meth:`running`), else the first chunk's: that one includes
    the tuning, which on a grid of slow points (a compile trial, a few slow candidates) would
    make the estimate many times too long.
    """

    def __init__(
        self,
        kind: str,
        shape: Sequence[int],
        missing: int,
        n_values: int,
        directions: Sequence[Mapping[str, torch.Tensor]],
        store: Path | None,
    ) -> None:
        self.kind, self.shape, self.missing = kind, tuple(shape), missing
        self.memory = memory_bytes(math.prod(shape), n_values, len(self.shape))
        self.file = None if store is None else estimated_file_bytes(shape, n_values, directions)
        self.store = store
        self.started = time.perf_counter()
        self.done = 0
        self.warned = False
        self.per_point: float | None = None  # the engine's, once it has chosen

    @contextlib.contextmanager
    def running(self, listen: bool = True) -> Iterator[RunClock]:
        """Inside, :func:`note_speed` tells this clock the engine's speed (unless ``listen`` is
        false: ranks sharing a grid each tell their own speed, not the job's)."""
        token = _CLOCK.set(self if listen else None)
        try:
            yield self
        finally:
            _CLOCK.reset(token)

    def finished(self, points: int) -> None:
        """``points`` more are done; after the first chunk, estimate the rest."""
        self.done += points
        if self.warned or self.done <= 0:
            return
        self.warned = True  # one estimate, from the first chunk (tuning included)
        per_point = self.per_point or (time.perf_counter() - self.started) / self.done
        remaining = per_point * max(self.missing - self.done, 0)
        if remaining < LONG_RUN_SECONDS:
            return
        stored = (
            f"and write a surface file of about {size_text(self.file)} ({str(self.store)!r}); "
            "stop it with Ctrl-C at any time and run the same call again to resume"
            if self.file is not None
            else "and keep nothing if interrupted: pass store= to make it resumable"
        )
        warnings.warn(
            f"long run: this {self.kind} of {_grid_text(self.shape)} points will take about "
            f"{time_text(remaining)} more ({per_point * 1e3:.3g} ms per point), hold about "
            f"{size_text(self.memory)} of values in memory, {stored}. Fewer steps make it "
            "quicker",
            LongRunWarning,
            stacklevel=caller_stacklevel(),
        )


_CLOCK: contextvars.ContextVar[RunClock | None] = contextvars.ContextVar(
    "lossvista_run_clock", default=None
)


def note_speed(per_point: float | None) -> None:
    """The engine's measured seconds per point of its chosen configuration (tuning excluded),
    for the estimate of the grid running (nothing outside :meth:`RunClock.running`)."""
    clock = _CLOCK.get()
    if clock is not None and per_point is not None and per_point > 0:
        clock.per_point = float(per_point)


def size_text(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def time_text(seconds: float) -> str:
    for unit, scale in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _grid_text(shape: Sequence[int]) -> str:
    total = f"{math.prod(shape):,}"
    return total if len(shape) == 1 else f"{' x '.join(str(n) for n in shape)} = {total}"


def estimated_file_bytes(
    shape: Sequence[int], n_values: int, directions: Sequence[Mapping[str, torch.Tensor]]
) -> int:
    """About the size of a surface file: values (8 bytes) and a flag per point, directions."""
    points = math.prod(shape)
    stored = sum(t.numel() * t.element_size() for d in directions for t in d.values())
    return points * (8 * n_values + 1) + stored + 8 * sum(shape) + 64 * 1024
