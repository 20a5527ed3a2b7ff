"""The :class:`Objective`: a model, a loss and a data set, evaluated exactly.

The value of an objective is the *item-weighted* mean of the loss over the data (or a fixed,
seeded subset of its samples): a batch of ``n`` items contributes ``n * loss_fn(output, y)``, so
an uneven last batch is weighted correctly. Items are samples by default, the target entries
other than -100 with ``count="tokens"`` (a language model's token-level cross-entropy), or what a
``count(output, target)`` callable says. ``loss_fn`` must return the mean over its batch's items
(the PyTorch default, ``reduction="mean"``); the first evaluation checks that on the first batch,
and turns a failure of the model or the loss into a :class:`~lossvista.DataError` that shows the
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ._averaging import IGNORE_INDEX, Averaging, Count, Totals, callable_name, resolve_metrics
from ._batch_sample import BATCH_SAMPLE, sampled
from ._checks import check_optional_int, renamed
from ._data import (  # noqa: F401  (DEVICE_CACHE_BYTES, call_functional: old import paths)
    DEFAULT_BATCH_SIZE,
    DEVICE_CACHE_BYTES,
    Batch,
    DataSource,
    Unpack,
    batch_failure,
    call_functional,
    call_model,
    forward_hint,
    resolve_device,
    select_samples,
)
from ._identity import callable_identity
from ._nested import has_sample_dim, logits_of, slice_output
from ._objective_compat import DeprecatedEngineProtocol
from .errors import DataError, InputError, LossvistaError
from .params import batchnorm_statistics, preserved, select_parameters

Metric = str | Callable[[Any, torch.Tensor], torch.Tensor]
BNPolicy = Literal["eval", "recompute", "perturb"]


def accuracy(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Share of predictions whose arg-max class equals the target (a class index or one-hot row).

    A single logit per sample (``output`` of shape ``(N,)`` or ``(N, 1)``) is read as a binary
    classifier with threshold 0. An output that is not a tensor is read through ``.logits`` or
    ``["logits"]`` (HuggingFace ``ModelOutput``, dicts, dataclasses). Integer targets equal to
    -100 (``ignore_index``) are left out, so on token targets ``(N, T)`` it is the mean over the
    tokens ``count="tokens"`` counts.
    """
    output = logits_of(output, "metric 'accuracy'")
    if output.dim() == 1 or output.shape[-1] == 1:
        predicted = (output.reshape(target.shape[0]) > 0).to(target.dtype)
        return (predicted == target.reshape(-1)).to(output.dtype).mean()
    if target.shape == output.shape:
        target = target.argmax(dim=-1)
    correct = (output.argmax(dim=-1) == target).to(output.dtype)
    if target.is_floating_point():
        return correct.mean()
    kept = (target != IGNORE_INDEX).to(output.dtype)
    return (correct * kept).sum() / kept.sum()


BUILTIN_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "accuracy": accuracy,
}


class Objective(DeprecatedEngineProtocol):
    """A model, a loss function and data: the function whose landscape lossvista draws.

    Args:
        model: the ``nn.Module``. It is never changed: every evaluation restores its parameters,
            buffers, ``requires_grad`` flags and train/eval mode, also after an exception.
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the batch.
        data: a tuple ``(X, y)`` of tensors, a ``DataLoader``, or any iterable of ``(X, y)``
            batches. ``X`` may be a tensor, a tuple of tensors (``model(*X)``) or a dict
            (``model(**X)``); ``y`` is a tensor whose first dimension counts samples. Batches
            may also be dicts, as HuggingFace collators make them: the target is the value under
            the first of ``labels``, ``label``, ``target``, ``y``, the other entries are keyword
            inputs (``model(input_ids=..., attention_mask=...)``); one such dict of tensors may
            also hold the whole data set.
        metrics: extra quantities averaged like the loss: ``"accuracy"`` or callables
            ``f(output, target) -> scalar`` (named by their ``__name__``), or a dict name -> callable.
            They are averaged over the same items as the loss (see ``count``); the built-in
            accuracy reads ``.logits`` of outputs that are not tensors and leaves out -100
            targets.
        params: the parameters directions may move: ``None`` / ``"trainable"`` (default: those
            with ``requires_grad=True``, so a frozen backbone under an adapter stays put),
            ``"all"`` (frozen ones included), or names and globs (``"fc.*"``). Recorded in
            ``settings()["param_selection"]``.
        device: where to evaluate; defaults to the model's device. The model must already be there.
        batch_size: evaluation batch size for tensor data (any size gives the same value up to
            rounding; by default 512, and slices let the engine pick the fastest). Ignored for
            loaders, which keep their own batches.
        subset: evaluate on a fixed random subset of this many samples (seeded by ``seed``);
            values then come with a standard error (``loss_stderr``, ...).
        seed: seed of the subset.
        bn: ``"eval"`` uses BatchNorm running statistics; ``"recompute"`` re-estimates them from
            the data at every point (a train-mode pass over the batches with a cumulative
            average, as ``torch.optim.swa_utils.update_bn`` does) before evaluating in eval mode.
            The estimate averages per-batch statistics, so it depends on the batch size
            (``batch_size``, default 512 for tensors; a loader's own batches).
            ``"perturb"`` evaluates like ``"eval"`` (eval mode, running statistics), but the
            running statistics move along the directions too, as the 2018 ``loss-landscape``
            scripts' ``dir_type=states`` did: directions made for this objective
            (``lv.random_directions(obj, ...)``) also hold every BatchNorm ``running_mean`` and
            ``running_var`` (not ``num_batches_tracked``; see :attr:`buffer_names`), and a point
            ``c`` sets them to ``origin + sum_i c_i d_i`` like the parameters. A point where some
            ``running_var`` entry is ``<= 0`` is not evaluated: its values are NaN and the run
            warns (:class:`~lossvista.LossvistaWarning`). Evaluated by the loop strategy only.
        count: the items the batch's mean loss averages over, which weight each batch:
            ``"samples"`` (default: the target's first dimension), ``"tokens"`` (the target's
            entries that are not -100, PyTorch's ``ignore_index``: a language model's
            token-level cross-entropy with padding), or a callable ``count(output, target)``
            returning that number (an int or a 0-d tensor; it must not depend on the parameter
            values, e.g. ``lambda out, y: int(mask.sum())``). The value is the item-weighted mean
            ``sum_b n_b * loss_b / sum_b n_b``. **The batch size cannot change the value (beyond
            float rounding) exactly when ``count`` returns the number of items the loss
            averages over**, for every batch; then it equals the model's own mean over all
            items of the data (a token mean over the whole set). Labels that the loss shifts
            (HuggingFace causal LMs: ``labels`` equal the inputs and the loss compares
            ``logits[:, :-1]`` with ``labels[:, 1:]``) need the count of the shifted targets,
            ``count=lambda out, y: (y[:, 1:] != -100).sum()``: ``"tokens"`` would also count
            the first position, which no loss term uses. A count that reads the output should
            return a tensor (not ``int(...)``), so the engine can evaluate many points at once
            under ``torch.vmap``. A loss averaged over tokens
            with the default ``"samples"`` weights every sequence alike within a batch: its
            value depends on the batch size, which the engine may tune. A batch with zero items
            (all ignored) adds nothing; data with no item at all is a ``DataError``.
            Subsets draw *samples* (sequences), never single tokens; the standard error is then
            the ratio estimator's (see :meth:`Averaging.means
            <lossvista._averaging.Averaging.means>`): it covers the full-data value at the
            nominal rate for large enough subsets.
        unpack: ``unpack(batch) -> (inputs, target)`` for batches of any other structure (and
            for dicts whose target key is not one of the above); ``inputs`` a tensor, a tuple of
            positional inputs or a dict of keyword inputs. It is applied to every batch the data
            yield (or to one dict holding the whole data set).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        *,
        metrics: Sequence[Metric] | Mapping[str, Callable] | None = None,
        params: str | Iterable[str] | None = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
        subset: int | None = None,
        seed: int = 0,
        bn: BNPolicy = "eval",
        count: Count = "samples",
        unpack: Unpack | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if bn not in ("eval", "recompute", "perturb"):
            raise InputError(f"bn must be 'eval', 'recompute' or 'perturb', got {bn!r}")
        if unpack is not None and not callable(unpack):
            raise InputError(
                f"unpack must be a callable unpack(batch) -> (inputs, target), got {unpack!r}"
            )
        batch_size = check_optional_int(batch_size, "batch_size", 1)
        subset = check_optional_int(subset, "subset (samples)", 2)
        self.model = model
        self.loss_fn = loss_fn
        self.metric_fns = resolve_metrics(metrics, BUILTIN_METRICS)
        all_names = [n for n, _ in model.named_parameters()]
        if not all_names:
            raise InputError("the model has no parameters to perturb")
        selection = select_parameters(model, params)
        self.param_names: tuple[str, ...] = selection.names
        self.param_selection = selection.label
        self.device = resolve_device(model, device)
        self.batch_size = batch_size
        self.subset = subset
        self.seed = int(seed)
        self.bn: BNPolicy = bn
        self._averaging = Averaging(
            loss_fn, self.metric_fns, with_squares=subset is not None, count=count
        )
        self.count = count
        self.unpack = unpack
        self._data = DataSource(data, self.device, subset=subset, seed=self.seed, unpack=unpack)
        self._first_batch_checked = False
        self._data_verified = False  # True after a full pass: later failures are not the data's

    # -- description ---------------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, ...]:
        """``("loss", *metrics)``: the averaged quantities."""
        return ("loss", *self.metric_fns)

    @property
    def value_names(self) -> tuple[str, ...]:
        """Names of the values of one evaluation: metrics, then their standard errors (subsets)."""
        if self.subset is None:
            return self.metric_names
        return (*self.metric_names, *(f"{m}_stderr" for m in self.metric_names))

    @property
    def n_samples(self) -> int | None:
        """Samples per evaluation (``None`` for a stream not yet read)."""
        return self._data.n_samples

    @property
    def population(self) -> int | None:
        """Size of the whole data set the subset is drawn from (equals n_samples without subset)."""
        return self._data.population

    @property
    def batchnorm_modules(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @property
    def buffer_names(self) -> tuple[str, ...]:
        """The buffers directions move: under ``bn="perturb"`` the ``running_mean`` and
        ``running_var`` of every BatchNorm layer that tracks them; empty otherwise."""
        return tuple(self.perturbed_buffers())

    def perturbed_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers of :attr:`buffer_names`, detached views of the model's own tensors."""
        return batchnorm_statistics(self.model) if self.bn == "perturb" else {}

    def parameters(self) -> dict[str, torch.Tensor]:
        """The selected parameters, detached views of the model's own tensors (not copies)."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.param_names}

    def settings(self) -> dict[str, Any]:
        """The settings that define the objective's values (stored with every surface)."""
        return {
            "loss_fn": callable_name(self.loss_fn),
            "metrics": list(self.metric_fns),
            "params": list(self.param_names),
            "param_selection": self.param_selection,
            "bn": self.bn,
            **({"perturbed_buffers": list(self.buffer_names)} if self.bn == "perturb" else {}),
            "count": self.count if isinstance(self.count, str) else callable_identity(self.count),
            "subset": self.subset,
            "seed": self.seed,
            "n_samples": self.n_samples,
            "population": self.population,
            "model": type(self.model).__name__,
        }

    def __repr__(self) -> str:
        n = self.n_samples if self.n_samples is not None else "?"
        return (
            f"Objective({type(self.model).__name__}, loss={callable_name(self.loss_fn)}, "
            f"samples={n}{'' if self.subset is None else ' (subset)'}, "
            f"count={self._averaging.count_name!r}, "
            f"metrics={list(self.metric_fns)}, params={len(self.param_names)} tensors, "
            f"bn={self.bn!r}, device={self.device})"
        )

    # -- evaluation at the model's own parameters ---------------------------------------------
    @renamed(params="at")
    def evaluate(self, at: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Loss and metrics (with ``*_stderr`` for subsets) at the model's current parameters.

        Args:
            at: optional values for some parameters (name -> tensor), used instead of the
                model's own for this evaluation only (``params=`` is its deprecated old name:
                the constructor's ``params`` selects parameters by name). Under
                ``bn="perturb"`` it may also hold the buffers of :attr:`buffer_names`.
        """
        with preserved(self.model), torch.inference_mode():
            self.model.eval()
            if at is not None:
                named = {**dict(self.model.named_parameters()), **self.perturbed_buffers()}
                unknown = [n for n in at if n not in named]
                if unknown:
                    raise InputError(f"at= has names the model lacks: {unknown[:10]}")
                for name, value in at.items():
                    named[name].copy_(value)
            vector = self._point_vector()
        totals = Totals.from_vectors(vector.cpu().numpy(), len(self.metric_names))
        return {name: float(v[0]) for name, v in self._means(totals).items()}

    def loss(self) -> float:
        """The loss at the model's current parameters."""
        return self.evaluate()["loss"]

    # -- what the engine and the differentiable view build on (private) -------------------------
    def _batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Batches ``(inputs, target)`` on the evaluation device (default: the objective's size).

        The first call checks the first batch (:meth:`_check_first_batch`): every evaluation path
        starts here, so a loss that is not a batch mean is refused before any work.
        """
        if not self._first_batch_checked:
            self._check_first_batch()
        return self._data.batches(batch_size or self._default_batch_size())

    def _check_first_batch(self) -> None:
        """Refuse a loss or metric that is not a mean over the batch, once per objective.

        The model's output for the first batch is split by sample into two halves (an output
        that is not a tensor keeps its type): the mean of the halves' losses, each weighted by
        its own count of items, must equal the whole batch's loss; so a token mean passes with
        ``count="tokens"`` and a sum fails whatever the count. The count is checked too. Costs
        one forward pass of one batch (two when the output has no leading sample dimension to
        split), in eval mode. A failing model or loss raises a :class:`DataError` showing the
        batch.
        """
        with sampled(None):  # not counted in a trial's sample: the check reads one batch
            first = next(iter(self._data.batches(self._default_batch_size())), None)
        if first is None:
            return  # an empty data set is refused where the batches are summed
        inputs, target = first
        # preserved: a forward pass that updates buffers (an EMA normaliser) leaves no trace
        with preserved(self.model), torch.no_grad():
            self.model.eval()
            output = self._call_model(inputs, target, 0)
            self._check_count(inputs, output, target)
            whole = self._averaging.batch_vector(output, target, batch=0, inputs=inputs)
            halves = self._halves(inputs, output, target)
        if halves is not None:
            floats = [p.dtype for p in self.model.parameters() if p.is_floating_point()]
            dtype = output.dtype if isinstance(output, torch.Tensor) else floats[0]
            self._averaging.check_batch_mean(whole, halves, dtype)
        self._first_batch_checked = True

    def _halves(
        self, inputs: Any, output: Any, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`Averaging.batch_vector` rows of the two halves of a batch (None: too small)."""
        n = target.shape[0]
        if n < 2:
            return None
        rows = []
        split = has_sample_dim(output, n)  # a ModelOutput/dict keeps its type when sliced
        for half, piece in (("first", slice(0, n // 2)), ("second", slice(n // 2, n))):
            if split:
                part = slice_output(output, piece, n)
            else:  # no sample dimension to split: evaluate the half of the inputs
                try:
                    part = self._forward(select_samples(inputs, piece))
                except Exception:
                    return None  # a model that needs whole batches: nothing to compare
            where = f"the {half} half of batch 0 (the whole batch worked)"
            rows.append(self._averaging.batch_vector(part, target[piece], batch=where))
        return rows[0], rows[1]

    def _check_count(self, inputs: Any, output: Any, target: torch.Tensor) -> None:
        """The count on the first batch: a number of items, or an error that shows the batch."""
        try:
            self._averaging.check_count(output, target)
        except LossvistaError:
            raise
        except Exception as exc:
            raise batch_failure(
                f"count={self._averaging.count_name}",
                exc,
                batch=0,
                inputs=inputs,
                target=target,
                output=output,
                hint="count(output, target) must return the number of items of the batch",
            ) from exc

    def _call_model(self, inputs: Any, target: torch.Tensor, batch: int | None) -> Any:
        """``model(inputs)``; with ``batch``, an exception becomes a :class:`DataError` showing
        the batch (``None``: it propagates as it is)."""
        try:
            return self._forward(inputs)
        except LossvistaError:
            raise
        except Exception as exc:
            if batch is None:
                raise
            hint = forward_hint(self.model, inputs)
            if target.shape[0] == 1 and any(m.training for m in self.batchnorm_modules):
                hint = (
                    "bn='recompute' re-estimates BatchNorm statistics batch by batch, and this "
                    "batch holds a single sample, whose statistics BatchNorm cannot compute: "
                    + (
                        "pass more than one sample, or bn='eval'"
                        if self.n_samples == 1
                        else f"pass a batch_size that leaves no batch of one sample (there are "
                        f"{self.n_samples} samples; batch_size={self.n_samples} uses one batch), "
                        "or bn='eval'"
                        if self._data.is_tensor
                        else "use a loader whose batches never hold one sample (drop_last=True), "
                        "or bn='eval'"
                    )
                )
            raise batch_failure(
                "the model", exc, batch=batch, inputs=inputs, target=target, hint=hint
            ) from exc

    def _default_batch_size(self) -> int | None:
        return self.batch_size or (DEFAULT_BATCH_SIZE if self._data.is_tensor else None)

    def _is_sliceable(self) -> bool:
        """True when the data are tensors that any batch size can slice (the engine may tune)."""
        return self._data.is_tensor and self.batch_size is None

    def _forward(self, inputs: Any) -> Any:
        return call_model(self.model, inputs)

    def _recompute_batchnorm(self) -> None:
        """Re-estimate BatchNorm running statistics from the data at the current parameters.

        Must run inside a :func:`~lossvista.params.preserved` block: it overwrites buffers.
        """
        modules = self.batchnorm_modules
        if not modules:
            return
        for m in modules:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        for index, (inputs, target) in enumerate(self._batches()):
            self._call_model(inputs, target, None if self._data_verified else index)
        for m in modules:
            m.eval()

    def _point_vector(self, batch_size: int | None = None) -> torch.Tensor:
        """Summed :meth:`Averaging.batch_vector` over all data at the model's current parameters.

        The caller sets the parameters, eval mode and inference mode; this applies the BatchNorm
        policy and accumulates in float64 on the device.
        """
        if self.bn == "recompute":
            self._recompute_batchnorm()
        total = None
        for index, (inputs, target) in enumerate(self._batches(batch_size)):
            # Until one pass has worked, a failure is most likely the data's: show the batch.
            batch = None if self._data_verified else index
            output = self._call_model(inputs, target, batch)
            vector = self._averaging.batch_vector(output, target, batch=batch, inputs=inputs)
            total = vector if total is None else total + vector
        if total is None:
            raise DataError("the data yielded no batches; pass a non-empty data set")
        if BATCH_SAMPLE.get() is None:  # a sampled pass (the tuning's) saw only some batches
            self._data_verified = True
        return total

    def _means(self, totals: Totals) -> dict[str, np.ndarray]:
        return self._averaging.means(totals, self.population)
