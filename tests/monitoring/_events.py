"""Reading TensorBoard event files back (the oracle of what was written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def events(folder: Path):
    """An ``EventAccumulator`` over every event file in ``folder``, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalar_series(accumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def as_stored(value: float) -> float:
    """What TensorBoard keeps of a float: its float32 value."""
    return float(np.float32(value))
