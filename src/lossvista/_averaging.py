"""The one averaging kernel: batch means combined into the exact mean over the data.

``loss_fn`` returns the mean over the items of its batch. A batch of ``n`` items therefore
contributes ``n * loss`` to a sum that is divided by the total number of items at the end, so
batches of any size (an uneven last batch included) give the same value up to rounding. The
engine (values at many points) and the differentiable view (gradients, curvature) both build on
:meth:`Averaging.items` and :class:`Totals`; neither writes the weighting itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import DataError, InputError

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Totals:
    """Item-weighted sums over the data at ``P`` points.

    Attributes:
        count: ``(P,)`` items averaged over.
        sums: ``(P, k)`` sums ``sum_b n_b * mean_b`` of the loss and each metric.
        squares: ``(P, k)`` sums of squared per-item values (subsets: for standard errors).
    """

    count: np.ndarray
    sums: np.ndarray
    squares: np.ndarray | None = None

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | Sequence[np.ndarray], k: int) -> Totals:
        """Rows ``[count, *sums, *squares]`` (see :meth:`Averaging.batch_vector`) as totals."""
        rows = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        squares = rows[:, 1 + k : 1 + 2 * k] if rows.shape[1] > 1 + k else None
        return cls(rows[:, 0], rows[:, 1 : 1 + k], squares)

    @classmethod
    def concat(cls, parts: Sequence[Totals]) -> Totals:
        squares = None if parts[0].squares is None else np.concatenate([p.squares for p in parts])  # type: ignore[misc]
        return cls(
            np.concatenate([p.count for p in parts]),
            np.concatenate([p.sums for p in parts]),
            squares,
        )

    def __len__(self) -> int:
        return len(self.count)


class Averaging:
    """How one objective's loss and metrics are averaged (shared by every evaluation path).

    Args:
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the batch's items.
        metrics: name -> ``f(output, target) -> scalar`` mean, averaged like the loss.
        with_squares: also sum squared per-item values (needed for subset standard errors).
    """

    def __init__(self, loss_fn: MetricFn, metrics: Mapping[str, MetricFn], *, with_squares: bool):
        self.loss_fn = loss_fn
        self.metrics = dict(metrics)
        self.with_squares = with_squares
        self.names: tuple[str, ...] = ("loss", *self.metrics)

    @staticmethod
    def items(target: torch.Tensor, output: torch.Tensor | None = None) -> int:
        """The number of items a batch's mean averages over: its samples."""
        return int(target.shape[0])

    def batch_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, checked to be a scalar (differentiable)."""
        loss = self.loss_fn(output, target)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InputError(
                f"loss_fn returned {shape}, expected a scalar mean over the batch; use "
                "reduction='mean' (the default) or average the per-sample losses yourself"
            )
        return loss

    def batch_vector(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Float64 vector ``[n, n*loss, n*metric..., (squares)]`` of one batch.

        Vectors add up over batches; works under ``torch.vmap`` (many points per pass).
        """
        loss = self.batch_loss(output, target)
        n = self.items(target, output)
        if self.metrics:
            values = torch.stack([loss, *(fn(output, target) for fn in self.metrics.values())])
        else:
            values = loss.unsqueeze(0)
        count = torch.full((1,), float(n), dtype=torch.float64, device=values.device)
        parts = [count, values.double() * n]
        if self.with_squares:
            fns = [self.loss_fn, *self.metrics.values()]
            parts.append(
                torch.stack([(per_item(fn, output, target).double() ** 2).sum() for fn in fns])
            )
        return torch.cat(parts)

    def means(self, totals: Totals, population: int | None = None) -> dict[str, np.ndarray]:
        """Values per point: the means and, with squares, ``<name>_stderr``.

        The standard error of a subset mean as an estimate of the full-data mean is
        ``sqrt(s^2 / n * (1 - n / N))`` with the per-item variance ``s^2``, the subset size ``n``
        and the data-set size ``N`` (finite-population correction).
        """
        count = totals.count[:, None]
        if np.any(count == 0):
            raise DataError("the data yielded no samples; pass a non-empty data set")
        means = totals.sums / count
        out = {name: means[:, i] for i, name in enumerate(self.names)}
        if totals.squares is not None:
            squares = totals.squares / count
            variance = np.clip(squares - means**2, 0.0, None) * count / np.maximum(count - 1, 1)
            shrink = np.clip(1.0 - count / float(population or count.max()), 0.0, 1.0)
            stderr = np.sqrt(variance / count * shrink)
            out.update({f"{name}_stderr": stderr[:, i] for i, name in enumerate(self.names)})
        return out


def per_item(fn: MetricFn, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Values of a mean-reduced ``fn`` for every sample separately."""
    try:
        return torch.vmap(lambda o, t: fn(o.unsqueeze(0), t.unsqueeze(0)))(output, target)
    except Exception:  # some losses have no batching rule: fall back to a loop
        return torch.stack([fn(output[i : i + 1], target[i : i + 1]) for i in range(len(target))])
