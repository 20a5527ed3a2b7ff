"""The engine protocol that :class:`~lossvista.Objective` once made public, deprecated.

Kept as a mixin so the objective's own module stays small; every method warns and delegates to
its private successor.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._averaging import Averaging, Totals
from ._data import Batch


class DeprecatedEngineProtocol:
    """``batches``, ``forward``, ``point_totals``... : deprecated public names."""

    if TYPE_CHECKING:  # what the objective provides
        _averaging: Averaging

        @property
        def metric_names(self) -> tuple[str, ...]: ...
        def _batches(self, batch_size: int | None = None) -> Iterator[Batch]: ...
        def _default_batch_size(self) -> int | None: ...
        def _is_sliceable(self) -> bool: ...
        def _forward(self, inputs: Any) -> Any: ...
        def _recompute_batchnorm(self) -> None: ...
        def _point_vector(self, batch_size: int | None = None) -> torch.Tensor: ...
        def _means(self, totals: Totals) -> dict[str, np.ndarray]: ...

    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Deprecated (internal to the engine)."""
        _deprecated("batches")
        return self._batches(batch_size)

    def default_batch_size(self) -> int | None:
        """Deprecated (internal to the engine)."""
        _deprecated("default_batch_size")
        return self._default_batch_size()

    def is_sliceable(self) -> bool:
        """Deprecated (internal to the engine)."""
        _deprecated("is_sliceable")
        return self._is_sliceable()

    def forward(self, inputs: Any) -> torch.Tensor:
        """Deprecated: call the model yourself."""
        _deprecated("forward")
        return self._forward(inputs)

    def recompute_batchnorm(self) -> None:
        """Deprecated (internal to the engine)."""
        _deprecated("recompute_batchnorm")
        self._recompute_batchnorm()

    def batch_totals(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Deprecated: ``[n*loss, n*metric..., (squares)]`` of a batch."""
        _deprecated("batch_totals")
        return self._averaging.batch_vector(output, target)[1:]

    def point_totals(self, batch_size: int | None = None) -> tuple[torch.Tensor, int]:
        """Deprecated: summed batch totals at the current parameters and the sample count."""
        _deprecated("point_totals")
        vector = self._point_vector(batch_size)
        return vector[1:], int(vector[0])

    def finalize(self, totals: np.ndarray) -> dict[str, np.ndarray]:
        """Deprecated: rows ``[count, *totals]`` to arrays of values."""
        _deprecated("finalize")
        return self._means(Totals.from_vectors(totals, len(self.metric_names)))


def _deprecated(name: str) -> None:
    warnings.warn(
        f"Objective.{name}() is internal to the engine and will be removed; use "
        "Objective.evaluate() or lv.line/lv.plane",
        DeprecationWarning,
        stacklevel=3,
    )
