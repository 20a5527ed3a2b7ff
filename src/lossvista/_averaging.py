"""The one averaging kernel: batch means combined into the exact mean over the data.

``loss_fn`` returns the mean over the items of its batch: its samples by default, the target
entries that are not -100 with ``count="tokens"``, or what a ``count(output, target)`` callable
says. A batch of ``n`` items therefore contributes ``n * loss`` to a sum that is divided by the
total number of items at the end, so batches of any size (an uneven last batch included) give
the same value up to rounding. The engine (values at many points) and the differentiable view
(gradients, curvature) both build on :meth:`Averaging.count_of`, :meth:`Averaging.items` and
:class:`Totals`; neither writes the weighting itself.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._failures import batch_failure, describe, loss_hint
from ._nested import has_sample_dim, map_tensors, slice_output
from .errors import DataError, InputError, LossvistaError
from .store import RESERVED_NAMES

MetricFn = Callable[[Any, torch.Tensor], torch.Tensor]
Count = str | Callable[[Any, torch.Tensor], Any]
#: The named counts: the target's leading dimension, or its entries other than ``IGNORE_INDEX``.
COUNTS = ("samples", "tokens")
#: The target value PyTorch's losses ignore by default (``ignore_index``).
IGNORE_INDEX = -100
#: Relative tolerance of the batch-mean check by the dtype of the loss (others: 5e-2).
BATCH_MEAN_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}

#: While data-parallel evaluation runs (:mod:`lossvista._dist`): rows -> the sums of the
#: rows of every process (an all-reduce), applied by :meth:`Totals.from_vectors`.
TOTALS_REDUCE: contextvars.ContextVar[Callable[[np.ndarray], np.ndarray] | None] = (
    contextvars.ContextVar("lossvista_totals_reduce", default=None)
)


@dataclasses.dataclass(frozen=True)
class Totals:
    """Item-weighted sums over the data at ``P`` points.

    Attributes:
        count: ``(P,)`` items averaged over.
        sums: ``(P, k)`` sums ``sum_b n_b * mean_b`` of the loss and each metric.
        squares: ``(P, k)`` subsets only (standard errors): sums over the samples ``i`` of
            ``s_i^2``, where ``s_i = c_i * mean_i`` is sample ``i``'s item sum and ``c_i`` its
            items.
        samples: ``(P,)`` samples; count_squares: ``(P,)`` sums of ``c_i^2``; cross: ``(P, k)``
            sums of ``s_i * c_i`` (subsets only).
    """

    count: np.ndarray
    sums: np.ndarray
    squares: np.ndarray | None = None
    samples: np.ndarray | None = None
    count_squares: np.ndarray | None = None
    cross: np.ndarray | None = None

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | Sequence[np.ndarray], k: int) -> Totals:
        """Rows ``[count, *sums, (samples, count_squares, *squares, *cross)]`` (see
        :meth:`Averaging.batch_vector`) as totals."""
        rows = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        reduce = TOTALS_REDUCE.get()
        if reduce is not None:  # data-parallel: every process holds a share of the sums
            rows = reduce(rows)
        if rows.shape[1] <= 1 + k:
            return cls(rows[:, 0], rows[:, 1 : 1 + k])
        extra = rows[:, 1 + k :]
        return cls(
            rows[:, 0],
            rows[:, 1 : 1 + k],
            squares=extra[:, 2 : 2 + k],
            samples=extra[:, 0],
            count_squares=extra[:, 1],
            cross=extra[:, 2 + k : 2 + 2 * k],
        )

    @classmethod
    def concat(cls, parts: Sequence[Totals]) -> Totals:
        fields = {}
        for field in dataclasses.fields(cls):
            values = [getattr(p, field.name) for p in parts]
            fields[field.name] = None if values[0] is None else np.concatenate(values)
        return cls(**fields)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.count)


class Averaging:
    """How one objective's loss and metrics are averaged (shared by every evaluation path).

    Args:
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the batch's items.
        metrics: name -> ``f(output, target) -> scalar`` mean, averaged like the loss.
        with_squares: also sum per-sample moments (needed for subset standard errors).
        count: what the means average over: ``"samples"`` (the target's leading dimension),
            ``"tokens"`` (the target's entries other than -100, PyTorch's ``ignore_index``) or
            ``count(output, target) -> number`` (an int or a 0-d tensor).
    """

    def __init__(
        self,
        loss_fn: MetricFn,
        metrics: Mapping[str, MetricFn],
        *,
        with_squares: bool,
        count: Count = "samples",
    ):
        if not (count in COUNTS or (callable(count) and not isinstance(count, str))):
            raise InputError(
                f"count must be 'samples', 'tokens' or a callable count(output, target) -> "
                f"number of items, got {count!r}"
            )
        self.loss_fn = loss_fn
        self.metrics = dict(metrics)
        self.with_squares = with_squares
        self.count = count
        self.names: tuple[str, ...] = ("loss", *self.metrics)

    @property
    def unit(self) -> str:
        """What one item is, in words: ``samples``, ``tokens`` or ``items``."""
        return self.count if isinstance(self.count, str) else "items"

    @property
    def needs_output(self) -> bool:
        """True when the count reads the model's output (a callable)."""
        return callable(self.count)

    def items(self, target: torch.Tensor, output: Any = None) -> float:
        """The number of items a batch's mean averages over (checked; not under ``vmap``)."""
        self.check_count(output, target)
        return float(self.count_of(output, target))

    def count_of(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The batch's items as a 0-d float64 tensor (works under ``torch.vmap``)."""
        if self.count == "samples":
            return torch.tensor(float(target.shape[0]), dtype=torch.float64, device=target.device)
        if self.count == "tokens":
            return (target != IGNORE_INDEX).sum().double()
        return _count_tensor(self.count(output, target), target)  # type: ignore[operator]

    def check_count(self, output: Any, target: torch.Tensor) -> None:
        """Refuse a count that is not a number of items (once, on the first batch)."""
        if self.count == "tokens" and target.is_floating_point():
            raise InputError(
                "count='tokens' counts the entries of an integer target that are not -100 "
                f"(ignore_index), but the target is {describe(target)}; pass count='samples' or "
                "a callable count(output, target) -> number of items"
            )
        if not callable(self.count):
            return
        name = callable_name(self.count)
        value = self.count(output, target)
        number = None
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
            number = float(value.detach().reshape(()))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        ):
            number = float(value)
        if number is None or not math.isfinite(number) or number < 0:
            raise InputError(
                f"count={name} returned {describe(value)} ({value!r:.60}); it must return the "
                "number of items the batch's mean loss averages over: an int or a 0-d tensor, "
                "finite and not negative"
            )

    def batch_loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, checked to be a scalar (differentiable)."""
        return self._scalar("loss_fn", self.loss_fn(output, target))

    def batch_vector(
        self,
        output: Any,
        target: torch.Tensor,
        *,
        batch: int | str | None = None,
        inputs: Any = None,
    ) -> torch.Tensor:
        """Float64 vector ``[n, n*loss, n*metric..., (moments)]`` of one batch of ``n`` items.

        Vectors add up over batches; works under ``torch.vmap`` (many points per pass). A batch
        without items (every target entry ignored) adds zeros, not its NaN mean. With ``batch``
        (its index or a description) an exception of the loss or a metric becomes a
        :class:`~lossvista.DataError` that shows the batch (``inputs`` only for the message),
        the shapes and dtypes seen and a remedy; without, it propagates as it is.
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
        stacked = torch.stack([v.double() for v in values])
        n = self.count_of(output, target).to(stacked.device)
        parts = [n.reshape(1), torch.where(n > 0, stacked * n, torch.zeros_like(stacked))]
        if self.with_squares:
            parts.append(self._moments(output, target).to(stacked.device))
        return torch.cat(parts)

    def _moments(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """``[samples, sum c_i^2, *sum s_i^2, *sum s_i c_i]`` over the batch's samples ``i``."""
        fns = [self.loss_fn, *self.metrics.values()]
        means = torch.stack([per_item(fn, output, target).double() for fn in fns], dim=1)
        counts = self._sample_counts(output, target).to(means.device)[:, None]
        sums = torch.where(counts > 0, means * counts, torch.zeros_like(means))
        return torch.cat(
            [
                torch.ones_like(counts).sum().reshape(1),
                (counts**2).sum().reshape(1),
                (sums**2).sum(dim=0),
                (sums * counts).sum(dim=0),
            ]
        )

    def _sample_counts(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """``(n,)`` items of every sample."""
        n = target.shape[0]
        if self.count == "samples":
            return torch.ones(n, dtype=torch.float64, device=target.device)
        if self.count == "tokens":
            return (target != IGNORE_INDEX).reshape(n, -1).sum(dim=1).double()
        return per_item(lambda o, t: self.count_of(o, t), output, target).double()

    def check_batch_mean(
        self, whole: torch.Tensor, halves: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
    ) -> None:
        """Refuse a loss or metric that is not a mean over the items of its batch.

        ``whole`` and ``halves`` are :meth:`batch_vector` rows of one batch and of its two halves
        (split by sample). For a mean over the counted items, the halves' item-weighted sums
        (each half weighted by its own count) add up to the whole batch's; a sum
        (``reduction="sum"``) does not, and would make every value depend on the batch size,
        which the engine may change. Non-finite values are not judged here.
        """
        rtol = BATCH_MEAN_RTOL.get(dtype, 5e-2)
        first, second = (h.detach().double().cpu() for h in halves)
        total = whole.detach().double().cpu()
        n, n_first, n_second = (float(v[0]) for v in (total, first, second))
        unit = self.unit
        for i, name in enumerate(self.names, start=1):
            parts = (float(total[i]), float(first[i]), float(second[i]))
            if not all(math.isfinite(v) for v in parts) or min(n, n_first, n_second) <= 0:
                continue
            whole_sum, first_sum, second_sum = parts
            scale = abs(whole_sum) + abs(first_sum) + abs(second_sum)
            if abs(whole_sum - first_sum - second_sum) <= rtol * scale:
                continue
            label = "loss_fn" if i == 1 else f"metric {name!r}"
            value, in_first, in_second = whole_sum / n, first_sum / n_first, second_sum / n_second
            looks_like = (
                f" It behaves like a sum over the {unit}."
                if abs(value - in_first - in_second) <= rtol * (abs(value) + abs(in_first) + 1e-300)
                else " (A mean over something else, such as the tokens ignore_index leaves, is "
                f"not a mean over the {unit} either: pass count='tokens' for a loss averaged "
                "over the target entries that are not -100, or a callable count.)"
                if self.count == "samples"
                else f" (A mean over something else is not a mean over the {unit} either.)"
            )
            raise InputError(
                f"{label} is not a mean over the {unit} of its batch: on the first batch "
                f"({n:g} {unit}) it gives {value:.6g}, but on its halves ({n_first:g} and "
                f"{n_second:g} {unit}) {in_first:.6g} and {in_second:.6g}, whose {unit}-weighted "
                f"mean is {(first_sum + second_sum) / n:.6g}.{looks_like} lossvista weights "
                f"every batch by its number of {unit} (count={self.count_name!r}) and may change "
                "the batch size, so the values would depend on the batching: use "
                'reduction="mean" (the PyTorch default), or divide by the batch size yourself'
            )

    @property
    def count_name(self) -> str:
        """``"samples"``, ``"tokens"`` or the callable's name."""
        return self.count if isinstance(self.count, str) else callable_name(self.count)

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
        """Values per point: the item-weighted means and, for subsets, ``<name>_stderr``.

        A subset is a seeded simple random sample of ``n`` of the data set's ``N`` samples
        (never of single tokens: the items of one sample are not independent). Its value is the
        ratio ``r = sum_i s_i / sum_i c_i`` (item sums ``s_i`` and items ``c_i`` of its samples),
        and the standard error of ``r`` as an estimate of the full-data value is the ratio
        estimator's (Cochran, *Sampling Techniques*, 1977, eq. 6.13):
        ``sqrt((1 - n/N) / n * sum_i (s_i - r c_i)^2 / (n - 1)) / mean_i(c_i)``. With one item
        per sample it is the familiar ``sqrt(s^2 / n * (1 - n / N))`` of a sample mean.
        """
        count = totals.count[:, None]
        if np.any(count == 0):
            raise DataError(self.no_items_message())
        means = totals.sums / count
        out = {name: means[:, i] for i, name in enumerate(self.names)}
        if totals.squares is not None and totals.samples is not None:
            n = totals.samples[:, None]
            residual = (
                totals.squares
                - 2.0 * means * totals.cross
                + means**2 * totals.count_squares[:, None]  # type: ignore[index]
            )
            mean_count = count / n
            variance = np.clip(residual, 0.0, None) / np.maximum(n - 1, 1) / mean_count**2
            shrink = np.clip(1.0 - n / float(population or n.max()), 0.0, 1.0)
            stderr = np.sqrt(variance / n * shrink)
            out.update({f"{name}_stderr": stderr[:, i] for i, name in enumerate(self.names)})
        return out

    def no_items_message(self) -> str:
        if self.count == "samples":
            return "the data yielded no samples; pass a non-empty data set"
        if self.count == "tokens":
            return (
                "the data hold no tokens to average: every target entry equals -100 "
                "(ignore_index); pass data with at least one target entry that is not -100"
            )
        return f"count={self.count_name} gave 0 items over the whole data set; nothing to average"


def _count_tensor(value: Any, target: torch.Tensor) -> torch.Tensor:
    """A count (int, float or tensor) as a 0-d float64 tensor on the target's device."""
    if isinstance(value, torch.Tensor):
        return value.reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64, device=target.device)


def per_item(fn: Callable[[Any, torch.Tensor], Any], output: Any, target: torch.Tensor):
    """Values of a mean-reduced ``fn`` for every sample separately (``(n,)``).

    Outputs that are not tensors keep their type (:func:`~lossvista._nested.slice_output`).
    """
    n = target.shape[0]
    if has_sample_dim(output, n):
        try:
            return torch.vmap(
                lambda o, t: fn(map_tensors(o, lambda x: x.unsqueeze(0)), t.unsqueeze(0))
            )(output, target)
        except Exception:  # some losses have no batching rule: fall back to a loop
            pass
    values = []
    for i in range(n):
        value = fn(slice_output(output, slice(i, i + 1), n), target[i : i + 1])
        values.append(value if isinstance(value, torch.Tensor) else _count_tensor(value, target))
    return torch.stack([v.reshape(()) for v in values])


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
