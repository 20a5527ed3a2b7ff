"""A point timed on a sample of its batches: the engine's tuning on large data sets.

The tuning (:mod:`lossvista._tuning`) times candidate configurations point by point. With
10,000 images in batches of 64, a point of a small ResNet takes a second on a CPU, and a trial
(a warm-up point, then timed ones) takes several: the tuning of the benchmark's 21x21 plane
cost 48 s, 10% of the job. Yet the time per batch is steady after the first few batches.

Inside :func:`sampled`, a pass over tensor data (:meth:`lossvista._data.DataSource.batches`)
yields only its first ``batches - 1`` batches and its last one (the last may be shorter, and a
compiled forward must meet that shape in its trial too), and counts the samples it took and
those of the whole pass. A point's time is then estimated as the sampled pass's time times
:attr:`BatchSample.scale`. The values of a sampled pass are partial sums: they serve the timing
and are never kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

#: A sample holds at least this many batches ...
SAMPLE_BATCHES = 4
#: ... and at least this many samples; a pass is sampled only when it has at least twice as
#: many batches (a smaller saving is not worth the estimate).
SAMPLE_SAMPLES = 1024

#: The sample of the passes that run now (None: whole passes).
BATCH_SAMPLE: contextvars.ContextVar[BatchSample | None] = contextvars.ContextVar(
    "lossvista_batch_sample", default=None
)


@dataclasses.dataclass
class BatchSample:
    """The first ``batches - 1`` batches of every pass and its last one; counts of samples
    taken and of samples in the whole passes, over all passes made with it."""

    batches: int
    taken: int = 0
    total: int = 0

    @property
    def scale(self) -> float:
        """Whole passes' samples per sampled one: a sampled pass's time times this estimates
        a whole pass's."""
        return self.total / self.taken if self.taken else 1.0

    def passes(self, batches: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """``batches`` sampled (they are views of held tensors: skipping them costs nothing)."""
        last: tuple[tuple[Any, Any], int] | None = None
        for index, batch in enumerate(batches):
            size = _samples(batch)
            self.total += size
            if index < self.batches - 1:
                self.taken += size
                yield batch
            else:
                last = (batch, size)
        if last is not None:
            self.taken += last[1]
            yield last[0]


def _samples(batch: tuple[Any, Any]) -> int:
    target = batch[1]
    shape = getattr(target, "shape", None)
    return int(shape[0]) if shape else 1


def sample_for(n_samples: int | None, batch_size: int | None) -> BatchSample | None:
    """The sample for passes over ``n_samples`` held samples in batches of ``batch_size``, or
    None when a pass has too few batches for a sample to save much."""
    if not n_samples or not batch_size or batch_size >= n_samples:
        return None
    batches = math.ceil(n_samples / batch_size)
    wanted = max(SAMPLE_BATCHES, math.ceil(SAMPLE_SAMPLES / batch_size))
    return BatchSample(wanted) if batches >= 2 * wanted else None


@contextlib.contextmanager
def sampled(sample: BatchSample | None) -> Iterator[None]:
    """Passes over the data inside use ``sample`` (whole passes when it is None)."""
    token = BATCH_SAMPLE.set(sample)
    try:
        yield
    finally:
        BATCH_SAMPLE.reset(token)
