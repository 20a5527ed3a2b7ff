"""The one averaging kernel: batch means combined into the exact mean over the data.

``loss_fn`` returns the mean over the items of its batch. A batch of ``n`` items therefore
contributes ``n * loss`` to a sum that is divided by the total number of items at the end, so
batches of any size (an uneven last batch included) give the same value up to rounding. The
engine (values at many points) and the differentiable view (gradients, curvature) both build on
:meth:`Averaging.items` and :class:`Totals`; neither writes the weighting itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._data import batch_failure, loss_hint
from .errors import DataError, InputError, LossvistaError
from .store import RESERVED_NAMES

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Relative tolerance of the batch-mean check by the dtype of the loss (others: 5e-2).
BATCH_MEAN_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}


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
        return self._scalar("loss_fn", self.loss_fn(output, target))

    def batch_vector(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        *,
        batch: int | str | None = None,
        inputs: Any = None,
    ) -> torch.Tensor:
        """Float64 vector ``[n, n*loss, n*metric..., (squares)]`` of one batch.

        Vectors add up over batches; works under ``torch.vmap`` (many points per pass). With
        ``batch`` (its index or a description) an exception of the loss or a metric becomes a
        :class:`~lossvista.DataError` that shows the batch (``inputs`` only for the message), the
        shapes and dtypes seen and a remedy; without, it propagates as it is.
        """
        values: list[torch.Tensor] = []
        for label, fn in (("loss_fn", self.loss_fn), *self._labelled_metrics()):
            try:
                value = fn(output, target)
            except LossvistaError:
                raise
            except Exception as exc:
                if batch is None:
                    raise
                raise batch_failure(
                    label,
                    exc,
                    batch=batch,
                    inputs=inputs,
                    target=target,
                    output=output,
                    hint=loss_hint(label, output, target),
                ) from exc
            values.append(self._scalar(label, value, like=values[0] if values else None))
        n = self.items(target, output)
        stacked = torch.stack([v.double() for v in values])
        count = torch.full((1,), float(n), dtype=torch.float64, device=stacked.device)
        parts = [count, stacked * n]
        if self.with_squares:
            fns = [self.loss_fn, *self.metrics.values()]
            parts.append(
                torch.stack([(per_item(fn, output, target).double() ** 2).sum() for fn in fns])
            )
        return torch.cat(parts)

    def check_batch_mean(
        self, whole: torch.Tensor, halves: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
    ) -> None:
        """Refuse a loss or metric that is not a mean over the samples of its batch.

        ``whole`` and ``halves`` are :meth:`batch_vector` rows of one batch and of its two halves.
        For a batch mean, the halves' item-weighted sums add up to the whole batch's; a sum
        (``reduction="sum"``) gives about twice as much, and would make every value depend on
        the batch size, which the engine may change. Non-finite values are not judged here.
        """
        rtol = BATCH_MEAN_RTOL.get(dtype, 5e-2)
        first, second = (h.detach().double().cpu() for h in halves)
        total = whole.detach().double().cpu()
        n, n_first, n_second = int(total[0]), int(first[0]), int(second[0])
        for i, name in enumerate(self.names, start=1):
            parts = (float(total[i]), float(first[i]), float(second[i]))
            if not all(math.isfinite(v) for v in parts):
                continue
            whole_sum, first_sum, second_sum = parts
            scale = abs(whole_sum) + abs(first_sum) + abs(second_sum)
            if abs(whole_sum - first_sum - second_sum) <= rtol * scale:
                continue
            label = "loss_fn" if i == 1 else f"metric {name!r}"
            value, in_first, in_second = whole_sum / n, first_sum / n_first, second_sum / n_second
            looks_like = (
                " It behaves like a sum over the samples."
                if abs(value - in_first - in_second) <= rtol * (abs(value) + abs(in_first) + 1e-300)
                else " (A mean over something else, such as the tokens ignore_index leaves, is "
                "not a mean over the samples either.)"
            )
            raise InputError(
                f"{label} is not a mean over the samples of its batch: on the first batch ({n} "
                f"samples) it gives {value:.6g}, but on its halves ({n_first} and {n_second} "
                f"samples) {in_first:.6g} and {in_second:.6g}, whose sample-weighted mean is "
                f"{(first_sum + second_sum) / n:.6g}.{looks_like} lossvista weights every batch "
                "by its number of samples and may change the batch size, so the values would "
                'depend on the batching: use reduction="mean" (the PyTorch default), or divide '
                "by the batch size yourself"
            )

    def _labelled_metrics(self) -> list[tuple[str, MetricFn]]:
        return [(f"metric {name!r}", fn) for name, fn in self.metrics.items()]

    @staticmethod
    def _scalar(label: str, value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
        """``value`` as a 0-d tensor; a batch of values (or anything else) is refused."""
        if isinstance(value, (int, float)) and like is not None:
            return torch.as_tensor(float(value), dtype=torch.float64, device=like.device)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            remedy = (
                "use reduction='mean' (the default) or average the per-sample losses yourself"
                if label == "loss_fn"
                else "return the mean over the batch, e.g. (output.argmax(1) == target).float()"
                ".mean()"
            )
            raise InputError(
                f"{label} returned {shape}, expected a scalar mean over the batch; {remedy}"
            )
        return value

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


# -- metrics and their names ------------------------------------------------------------------------
def resolve_metrics(metrics: Any, builtin: Mapping[str, MetricFn]) -> dict[str, MetricFn]:
    """``{name: fn}`` from names of ``builtin`` metrics, callables and dicts, names checked."""
    if metrics is None:
        return {}
    if isinstance(metrics, (str,)) or callable(metrics):
        metrics = [metrics]
    items: list[tuple[str, Any]]
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = []
        for m in metrics:
            if isinstance(m, str):
                if m not in builtin:
                    raise InputError(
                        f"unknown metric {m!r}; built in: {sorted(builtin)}, or pass a "
                        "callable f(output, target) -> scalar"
                    )
                items.append((m, builtin[m]))
            elif callable(m):
                items.append((callable_name(m), m))
            else:
                raise InputError(f"metric {m!r} is neither a name nor a callable")
    out: dict[str, MetricFn] = {}
    for name, fn in items:
        if not callable(fn):
            raise InputError(f"metric {name!r} is not callable")
        _check_metric_name(name, out)
        out[name] = fn
    return out


def _check_metric_name(name: Any, taken: Mapping[str, Any]) -> None:
    """A metric's name becomes a dataset of the surface file and a key of every result."""
    if not isinstance(name, str):
        raise InputError(f"metric names must be strings, got {name!r}; name it in a dict")
    problems = [
        (not name, "is empty"),
        ("/" in name, "contains '/' (a folder in the surface file)"),
        (name.endswith("_stderr"), "ends in '_stderr' (the suffix of standard errors)"),
        (name == "loss", "is reserved for the loss"),
        (name in RESERVED_NAMES, f"is reserved: the surface file uses {sorted(RESERVED_NAMES)}"),
        (name in taken, "is repeated"),
    ]
    for problem, reason in problems:
        if problem:
            raise InputError(
                f"metric name {name!r} {reason}; give it another name, e.g. "
                "metrics={'my_name': fn}"
            )


def callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "metric" if name == "<lambda>" else name
