"""The :class:`Objective`: a model, a loss and a data set, evaluated exactly.

The value of an objective is the *sample-weighted* mean of the loss over every sample of the data
(or of a fixed, seeded subset): a batch of ``n`` samples contributes ``n * loss_fn(output, y)``, so
an uneven last batch is weighted correctly. ``loss_fn`` must return the mean over its batch (the
PyTorch default, ``reduction="mean"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._checks import check_optional_int
from .errors import DataError, InputError
from .params import preserved, select_names

Metric = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BNPolicy = Literal["eval", "recompute"]
Batch = tuple[Any, torch.Tensor]

#: Data sets up to this many bytes are cached on the evaluation device.
DEVICE_CACHE_BYTES = 2 * 1024**3
#: Default evaluation batch size for tensor data when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 512


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose arg-max class equals the target (a class index or one-hot row).

    A single logit per sample (``output`` of shape ``(N,)`` or ``(N, 1)``) is read as a binary
    classifier with threshold 0.
    """
    if output.dim() == 1 or output.shape[-1] == 1:
        predicted = (output.reshape(target.shape[0]) > 0).to(target.dtype)
        return (predicted == target.reshape(-1)).to(output.dtype).mean()
    if target.shape == output.shape:
        target = target.argmax(dim=-1)
    return (output.argmax(dim=-1) == target).to(output.dtype).mean()


BUILTIN_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "accuracy": accuracy,
}


class Objective:
    """A model, a loss function and data: the function whose landscape lossvista draws.

    Args:
        model: the ``nn.Module``. It is never changed: every evaluation restores its parameters,
            buffers, ``requires_grad`` flags and train/eval mode, also after an exception.
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the batch.
        data: a tuple ``(X, y)`` of tensors, a ``DataLoader``, or any iterable of ``(X, y)``
            batches. ``X`` may be a tensor, a tuple of tensors (``model(*X)``) or a dict
            (``model(**X)``); ``y`` is a tensor whose first dimension counts samples.
        metrics: extra quantities averaged like the loss: ``"accuracy"`` or callables
            ``f(output, target) -> scalar`` (named by their ``__name__``), or a dict name -> callable.
        params: parameter names or globs (``"fc.*"``) that directions may move; default all.
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if bn not in ("eval", "recompute"):
            raise InputError(f"bn must be 'eval' or 'recompute', got {bn!r}")
        batch_size = check_optional_int(batch_size, "batch_size", 1)
        subset = check_optional_int(subset, "subset (samples)", 2)
        self.model = model
        self.loss_fn = loss_fn
        self.metric_fns = _resolve_metrics(metrics)
        all_names = [n for n, _ in model.named_parameters()]
        if not all_names:
            raise InputError("the model has no parameters to perturb")
        self.param_names: tuple[str, ...] = select_names(all_names, params)
        self.device = _resolve_device(model, device)
        self.batch_size = batch_size
        self.subset = subset
        self.seed = int(seed)
        self.bn: BNPolicy = bn
        self._data = _DataSource(data, self.device, subset=subset, seed=self.seed)

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

    def parameters(self) -> dict[str, torch.Tensor]:
        """The selected parameters, detached views of the model's own tensors (not copies)."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.param_names}

    def settings(self) -> dict[str, Any]:
        """The settings that define the objective's values (stored with every surface)."""
        return {
            "loss_fn": _callable_name(self.loss_fn),
            "metrics": list(self.metric_fns),
            "params": list(self.param_names),
            "bn": self.bn,
            "subset": self.subset,
            "seed": self.seed,
            "n_samples": self.n_samples,
            "population": self.population,
            "model": type(self.model).__name__,
        }

    def __repr__(self) -> str:
        n = self.n_samples if self.n_samples is not None else "?"
        return (
            f"Objective({type(self.model).__name__}, loss={_callable_name(self.loss_fn)}, "
            f"samples={n}{'' if self.subset is None else ' (subset)'}, "
            f"metrics={list(self.metric_fns)}, params={len(self.param_names)} tensors, "
            f"bn={self.bn!r}, device={self.device})"
        )

    # -- evaluation at the model's own parameters ---------------------------------------------
    def evaluate(self, params: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Loss and metrics (with ``*_stderr`` for subsets) at the model's current parameters.

        Args:
            params: optional values for some parameters (name -> tensor), used instead of the
                model's own for this evaluation only.
        """
        with preserved(self.model), torch.inference_mode():
            self.model.eval()
            if params is not None:
                named = dict(self.model.named_parameters())
                unknown = [n for n in params if n not in named]
                if unknown:
                    raise InputError(f"params has names the model lacks: {unknown[:10]}")
                for name, value in params.items():
                    named[name].copy_(value)
            totals, count = self.point_totals()
        row = np.concatenate([[count], totals.cpu().numpy()])
        return {name: float(v[0]) for name, v in self.finalize(row).items()}

    def loss(self) -> float:
        """The loss at the model's current parameters."""
        return self.evaluate()["loss"]

    # -- the pieces the engine builds on --------------------------------------------------------
    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Batches ``(inputs, target)`` on the evaluation device (default: the objective's size)."""
        return self._data.batches(batch_size or self.default_batch_size())

    def default_batch_size(self) -> int | None:
        return self.batch_size or (DEFAULT_BATCH_SIZE if self._data.is_tensor else None)

    def is_sliceable(self) -> bool:
        """True when the data are tensors that any batch size can slice (the engine may tune)."""
        return self._data.is_tensor and self.batch_size is None

    def forward(self, inputs: Any) -> torch.Tensor:
        return call_model(self.model, inputs)

    def batch_totals(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Float64 vector ``[n*loss, n*metric..., (sums of squares for subsets)]`` of a batch.

        Works under ``torch.vmap`` (the engine maps it over many parameter points at once).
        """
        loss = self.loss_fn(output, target)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InputError(
                f"loss_fn returned {shape}, expected a scalar mean over the batch; use "
                "reduction='mean' (the default) or average the per-sample losses yourself"
            )
        n = target.shape[0]
        if self.metric_fns:
            values = torch.stack([loss, *(fn(output, target) for fn in self.metric_fns.values())])
        else:
            values = loss.unsqueeze(0)
        totals = values.double() * n
        if self.subset is None:
            return totals
        fns = [self.loss_fn, *self.metric_fns.values()]
        squares = [(_per_sample(fn, output, target).double() ** 2).sum() for fn in fns]
        return torch.cat([totals, torch.stack(squares)])

    def recompute_batchnorm(self) -> None:
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
        for inputs, _ in self.batches():
            self.forward(inputs)
        for m in modules:
            m.eval()

    def point_totals(self, batch_size: int | None = None) -> tuple[torch.Tensor, int]:
        """Summed :meth:`batch_totals` over all data at the model's current parameters, and the
        number of samples.

        The caller sets the parameters, eval mode and inference mode; this applies the BatchNorm
        policy and accumulates in float64 on the device.
        """
        if self.bn == "recompute":
            self.recompute_batchnorm()
        total, count = None, 0
        for inputs, target in self.batches(batch_size):
            stats = self.batch_totals(self.forward(inputs), target)
            total = stats if total is None else total + stats
            count += target.shape[0]
        if total is None:
            raise DataError("the data yielded no batches; pass a non-empty data set")
        return total, count

    def finalize(self, totals: np.ndarray) -> dict[str, np.ndarray]:
        """Turn rows ``[count, *totals]`` (shape ``(P, 1 + n_totals)``) into arrays of values.

        For a subset, ``<metric>_stderr`` is the standard error of the subset mean as an estimate
        of the full-data mean: ``sqrt(s^2 / n * (1 - n / N))`` with the per-sample variance
        ``s^2``, the subset size ``n`` and the data-set size ``N`` (finite-population correction).
        """
        totals = np.atleast_2d(np.asarray(totals, dtype=np.float64))
        count = totals[:, :1]
        if np.any(count == 0):
            raise DataError("the data yielded no samples; pass a non-empty data set")
        k = len(self.metric_names)
        means = totals[:, 1 : 1 + k] / count
        out = {name: means[:, i] for i, name in enumerate(self.metric_names)}
        if self.subset is not None:
            squares = totals[:, 1 + k : 1 + 2 * k] / count
            variance = np.clip(squares - means**2, 0.0, None) * count / np.maximum(count - 1, 1)
            shrink = np.clip(1.0 - count / float(self.population or count.max()), 0.0, 1.0)
            stderr = np.sqrt(variance / count * shrink)
            out.update({f"{name}_stderr": stderr[:, i] for i, name in enumerate(self.metric_names)})
        return out


# -- helpers -------------------------------------------------------------------------------------
def call_model(model: Callable[..., torch.Tensor], inputs: Any) -> torch.Tensor:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def call_functional(
    model: nn.Module, state: Mapping[str, torch.Tensor], inputs: Any
) -> torch.Tensor:
    """``model(inputs)`` with its parameters and buffers replaced by ``state`` (torch.func)."""
    from torch.func import functional_call

    if isinstance(inputs, Mapping):
        return functional_call(model, state, (), dict(inputs))
    if isinstance(inputs, (tuple, list)):
        return functional_call(model, state, tuple(inputs))
    return functional_call(model, state, (inputs,))


def _per_sample(fn: Callable, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Values of a mean-reduced ``fn`` for every sample separately."""
    try:
        return torch.vmap(lambda o, t: fn(o.unsqueeze(0), t.unsqueeze(0)))(output, target)
    except Exception:  # some losses have no batching rule: fall back to a loop
        return torch.stack([fn(output[i : i + 1], target[i : i + 1]) for i in range(len(target))])


def _resolve_metrics(metrics: Any) -> dict[str, Callable]:
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
                if m not in BUILTIN_METRICS:
                    raise InputError(
                        f"unknown metric {m!r}; built in: {sorted(BUILTIN_METRICS)}, or pass a "
                        "callable f(output, target) -> scalar"
                    )
                items.append((m, BUILTIN_METRICS[m]))
            elif callable(m):
                items.append((_callable_name(m), m))
            else:
                raise InputError(f"metric {m!r} is neither a name nor a callable")
    out: dict[str, Callable] = {}
    for name, fn in items:
        if not callable(fn):
            raise InputError(f"metric {name!r} is not callable")
        if name == "loss" or name in out or name.endswith("_stderr"):
            raise InputError(f"metric name {name!r} is reserved or repeated; give it another name")
        out[name] = fn
    return out


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "metric" if name == "<lambda>" else name


def _resolve_device(model: nn.Module, device: Any) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]
    model_device = tensors[0].device if tensors else torch.device("cpu")
    if device is None:
        return model_device
    device = torch.device(device)
    if device.type != model_device.type or (
        device.index is not None
        and model_device.index is not None
        and device.index != model_device.index
    ):
        raise InputError(
            f"the model is on {model_device} but device={device}; move it first with "
            f"model.to({str(device)!r}) (lossvista never moves the caller's model)"
        )
    return model_device


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _index(obj: Any, index: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, Mapping):
        return {k: _index(v, index) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_index(v, index) for v in obj)
    raise DataError(f"inputs of type {type(obj).__name__} cannot be indexed by sample")


def _leading(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            raise DataError("inputs must have a leading sample dimension, got a 0-d tensor")
        return obj.shape[0]
    if isinstance(obj, Mapping):
        sizes = {_leading(v) for v in obj.values()}
    elif isinstance(obj, (tuple, list)):
        sizes = {_leading(v) for v in obj}
    else:
        raise DataError(
            f"inputs must be tensors (or tuples/dicts of them), got {type(obj).__name__}"
        )
    if len(sizes) != 1:
        raise DataError(f"input tensors disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def _split_batch(batch: Any) -> Batch:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
    else:
        raise DataError(
            "every batch must be a pair (inputs, target); got "
            f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}"
        )
    if not isinstance(target, torch.Tensor) or target.dim() == 0:
        raise DataError("the target of a batch must be a tensor with a leading sample dimension")
    if _leading(inputs) != target.shape[0]:
        raise DataError(
            f"a batch has {_leading(inputs)} inputs but {target.shape[0]} targets; they must match"
        )
    return inputs, target


class _DataSource:
    """Normalises the accepted data forms into batches on the device, caching when it fits."""

    def __init__(self, data: Any, device: torch.device, *, subset: int | None, seed: int):
        self.device = device
        self.is_tensor = False
        self._tensors: Batch | None = None
        self._cached: list[Batch] | None = None
        self._stream: Any = None
        self.n_samples: int | None = None
        self.population: int | None = None

        if _is_tensor_pair(data):
            self._set_tensors(*_split_batch(tuple(data)), subset=subset, seed=seed)
        elif isinstance(data, DataLoader) and subset is not None:
            self._set_loader_subset(data, subset, seed)
        elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
            raise DataError(
                f"data must be a tuple (X, y) of tensors, a DataLoader or an iterable of (X, y) "
                f"batches; got {type(data).__name__}"
            )
        elif isinstance(data, Sized) and len(data) == 0:
            raise DataError("the data set is empty (no batches); pass at least one sample")
        elif subset is not None:
            self._set_tensors(*_concat([_split_batch(b) for b in data]), subset=subset, seed=seed)
        elif iter(data) is data:  # a one-shot iterator: it must be cached to be read twice
            self._set_cache([_split_batch(b) for b in data])
        else:
            self._stream = data

    def _set_tensors(self, inputs: Any, target: torch.Tensor, *, subset: int | None, seed: int):
        population = target.shape[0]
        if population == 0:
            raise DataError("the data set is empty (0 samples); pass at least one sample")
        self.population = population
        if subset is not None:
            index = _subset_index(population, subset, seed)
            inputs, target = _index(inputs, index), target[index]
        self.is_tensor = True
        if _nbytes((inputs, target)) <= DEVICE_CACHE_BYTES:
            inputs, target = _to_device(inputs, self.device), _to_device(target, self.device)
        self._tensors = (inputs, target)
        self.n_samples = target.shape[0]

    def _set_loader_subset(self, loader: DataLoader, subset: int, seed: int) -> None:
        dataset = loader.dataset
        try:
            population = len(dataset)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError("subset= needs a DataLoader over a sized, indexable dataset") from exc
        index = _subset_index(population, subset, seed)
        size = loader.batch_size or DEFAULT_BATCH_SIZE
        batches = [
            _split_batch(loader.collate_fn([dataset[int(i)] for i in index[s : s + size]]))
            for s in range(0, len(index), size)
        ]
        self._set_tensors(*_concat(batches), subset=None, seed=seed)
        self.population = population

    def _set_cache(self, batches: list[Batch]) -> None:
        self._cached = [
            (_to_device(x, self.device), _to_device(y, self.device)) for x, y in batches
        ]
        count = sum(int(y.shape[0]) for _, y in self._cached)
        if count == 0:
            raise DataError("the data set is empty (0 samples); pass at least one sample")
        self.n_samples = self.population = count

    def batches(self, batch_size: int | None) -> Iterator[Batch]:
        if self._tensors is not None:
            inputs, target = self._tensors
            n = target.shape[0]
            size = min(batch_size or n, n)
            for start in range(0, n, size):
                piece = slice(start, start + size)
                yield (
                    _to_device(_index(inputs, piece) if size < n else inputs, self.device),
                    _to_device(target[piece] if size < n else target, self.device),
                )
            return
        if self._cached is not None:
            yield from self._cached
            return
        # A re-iterable source (DataLoader, list): cache on the first full pass when it fits.
        cache: list[Batch] | None = []
        size = 0
        for batch in self._stream:
            inputs, target = _split_batch(batch)
            inputs, target = _to_device(inputs, self.device), _to_device(target, self.device)
            if cache is not None:
                size += _nbytes((inputs, target))
                if size <= DEVICE_CACHE_BYTES:
                    cache.append((inputs, target))
                else:
                    cache = None
            yield inputs, target
        if cache is not None:
            self._set_cache(cache)


def _is_tensor_pair(data: Any) -> bool:
    """True for ``(X, y)`` with tensor ``y`` and ``X`` a tensor or a tuple/dict of tensors."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    inputs, target = data
    if not isinstance(target, torch.Tensor):
        return False
    if isinstance(inputs, torch.Tensor):
        return True
    values = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    return (
        isinstance(values, (tuple, list))
        and len(values) > 0
        and all(isinstance(v, torch.Tensor) for v in values)
    )


def _subset_index(population: int, subset: int, seed: int) -> torch.Tensor:
    if subset > population:
        raise DataError(f"subset={subset} is larger than the data set ({population} samples)")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(population, generator=generator)[:subset].sort().values


def _concat(batches: list[Batch]) -> Batch:
    if not batches:
        raise DataError("the data set is empty (no batches); pass at least one sample")

    def cat(parts: list[Any]) -> Any:
        first = parts[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(parts)
        if isinstance(first, Mapping):
            return {k: cat([p[k] for p in parts]) for k in first}
        return type(first)(cat([p[i] for p in parts]) for i in range(len(first)))

    return cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
