"""Data handling and model calls: every accepted form of data becomes batches on the device.

:class:`DataSource` normalises a tuple ``(X, y)`` of tensors, a ``DataLoader`` or any iterable of
``(X, y)`` batches (``X`` a tensor, a tuple of tensors or a dict), draws seeded subsets, and caches
the batches on the evaluation device when they fit (numpy arrays become tensors). :func:`call_model`
and :func:`call_functional` call a model on such inputs (``model(X)``, ``model(*X)``,
``model(**X)``); :func:`batch_failure` turns an exception of the caller's model or loss on a batch
into a :class:`~lossvista.DataError` that shows the batch, its shapes and dtypes, and a remedy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .errors import DataError, InputError, translated

Batch = tuple[Any, torch.Tensor]

#: Data sets up to this many bytes are cached on the evaluation device.
DEVICE_CACHE_BYTES = 2 * 1024**3
#: Default evaluation batch size for tensor data when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 512


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

    # functional_call refuses mappings that are not dicts; a dict is passed on as it is
    tensors = state if isinstance(state, dict) else dict(state)
    if isinstance(inputs, Mapping):
        return functional_call(model, tensors, (), dict(inputs))
    if isinstance(inputs, (tuple, list)):
        return functional_call(model, tensors, tuple(inputs))
    return functional_call(model, tensors, (inputs,))


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v) for v in obj)
    return 0


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def select_samples(obj: Any, index: Any) -> Any:
    """The samples ``index`` (a slice or index tensor) of inputs: tensors, tuples or dicts."""
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, Mapping):
        return {k: select_samples(v, index) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(select_samples(v, index) for v in obj)
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
        inputs, target = _arrays_to_tensors(batch)
    else:
        raise DataError(
            "every batch must be a pair (inputs, target); got "
            f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}"
        )
    if target is None:
        raise DataError(_NO_TARGET)
    if not isinstance(target, torch.Tensor) or target.dim() == 0:
        raise DataError(
            "the target y of a batch must be a tensor with a leading sample dimension, got "
            f"{describe(target)}; convert it with torch.as_tensor(y)"
        )
    if _leading(inputs) != target.shape[0]:
        raise DataError(
            f"a batch has {_leading(inputs)} inputs but {target.shape[0]} targets; they must match"
        )
    return inputs, target


class DataSource:
    """Normalises the accepted data forms into batches on the device, caching when it fits."""

    def __init__(self, data: Any, device: torch.device, *, subset: int | None, seed: int):
        self.device = device
        self.is_tensor = False
        self._tensors: Batch | None = None
        self._cached: list[Batch] | None = None
        self._stream: Any = None
        self.n_samples: int | None = None
        self.population: int | None = None

        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = _arrays_to_tensors(data)
            if data[1] is None:
                raise DataError(_NO_TARGET)
            if isinstance(data[0], torch.Tensor) and not isinstance(data[1], torch.Tensor):
                raise DataError(
                    f"data is a pair (X, y) with X {describe(data[0])} but y {describe(data[1])}; "
                    "pass y as a tensor (torch.as_tensor(y)) whose first dimension counts samples"
                )
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
            inputs, target = select_samples(inputs, index), target[index]
        self.is_tensor = True
        if _nbytes((inputs, target)) <= DEVICE_CACHE_BYTES:
            inputs, target = to_device(inputs, self.device), to_device(target, self.device)
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
        self._cached = [(to_device(x, self.device), to_device(y, self.device)) for x, y in batches]
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
                    to_device(select_samples(inputs, piece) if size < n else inputs, self.device),
                    to_device(target[piece] if size < n else target, self.device),
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
            inputs, target = to_device(inputs, self.device), to_device(target, self.device)
            if cache is not None:
                size += _nbytes((inputs, target))
                if size <= DEVICE_CACHE_BYTES:
                    cache.append((inputs, target))
                else:
                    cache = None
            yield inputs, target
        if cache is not None:
            self._set_cache(cache)


_NO_TARGET = (
    "the target y is None; lossvista averages loss_fn(model(X), y) and needs a target for every "
    "sample: pass (X, y), or a dummy target such as torch.zeros(len(X)) for a loss that ignores it"
)


def _arrays_to_tensors(value: Any) -> Any:
    """``value`` with every numpy array (inside tuples, lists and dicts) as a tensor."""
    if isinstance(value, np.ndarray):
        try:
            return torch.as_tensor(value)
        except (TypeError, RuntimeError) as exc:
            raise DataError(
                f"a numpy array of dtype {value.dtype} cannot become a tensor ({exc}); pass "
                "numeric arrays"
            ) from exc
    if isinstance(value, Mapping):
        items = {k: _arrays_to_tensors(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, (tuple, list)):
        converted = [_arrays_to_tensors(v) for v in value]
        unchanged = all(a is b for a, b in zip(converted, value))
        return value if unchanged else type(value)(converted)
    return value


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


# -- devices ----------------------------------------------------------------------------------------
def resolve_device(model: nn.Module, device: Any) -> torch.device:
    """The device of the model's tensors, checked against ``device`` (never moves the model)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise InputError(
            "the model's tensors are on the meta device (shapes without values), so there is "
            "nothing to evaluate; materialise it first, e.g. model.to_empty(device='cpu') and "
            "model.load_state_dict(...)"
        )
    model_device = tensors[0].device if tensors else torch.device("cpu")
    if device is None:
        return model_device
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"device={device!r} is not a device torch knows ({exc}); pass e.g. 'cpu', 'cuda', "
            "'cuda:0' or 'mps'"
        ) from exc
    if wanted.type == "meta":
        raise InputError("device='meta' holds no values and cannot evaluate; pass 'cpu' or 'cuda'")
    if wanted.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (wanted.index is not None and wanted.index >= count):
            raise InputError(
                f"device={str(device)!r} is not available: this machine has {count} CUDA "
                "device(s); pass device=None to evaluate where the model is"
            )
    if wanted.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device='mps' is not available on this machine; pass device=None")
    if wanted.type != model_device.type or (
        wanted.index is not None
        and model_device.index is not None
        and wanted.index != model_device.index
    ):
        raise InputError(
            f"the model is on {model_device} but device={wanted}; move it first with "
            f"model.to({str(wanted)!r}) (lossvista never moves the caller's model)"
        )
    return model_device


# -- failures of the caller's model or loss on a batch ------------------------------------------
def describe(obj: Any, limit: int = 160) -> str:
    """``float32 (65, 8)`` for a tensor, the same inside tuples and dicts, else the type name."""
    kind = type(obj).__name__
    if isinstance(obj, torch.Tensor):
        text = f"{str(obj.dtype).removeprefix('torch.')} {tuple(obj.shape)}"
    elif isinstance(obj, Mapping):
        inner = "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
        text = inner if kind == "dict" else f"{kind} {inner}"
    elif isinstance(obj, (tuple, list)) and len(obj) > 4:
        text = f"{kind} of {len(obj)} {', '.join(sorted({type(v).__name__ for v in obj}))}"
    elif isinstance(obj, (tuple, list)):
        inner = "(" + ", ".join(describe(v) for v in obj) + ")"
        text = inner if kind == "tuple" else f"{kind} {inner}"
    else:
        text = kind
    return text if len(text) <= limit else text[: limit - 3] + "..."


def batch_failure(
    what: str,
    exc: Exception,
    *,
    batch: int | str | None,
    inputs: Any = None,
    target: Any = None,
    output: Any = None,
    hint: str = "",
) -> DataError:
    """A :class:`DataError` (also of ``exc``'s builtin class) for ``raise ... from exc``.

    ``batch``: its index (counting from 0) or a description; ``None`` entries are not shown.
    """
    where = "a batch" if batch is None else batch if isinstance(batch, str) else f"batch {batch}"
    named = (("inputs", inputs), ("target", target), ("model output", output))
    seen = [f"{name} {describe(value)}" for name, value in named if value is not None]
    reason = str(exc).strip().rstrip(".")
    message = f"{what} failed on {where}: {', '.join(seen)}: {type(exc).__name__}: {reason}"
    return translated(DataError, f"{message}. {hint}" if hint else message, exc)


def forward_hint(model: nn.Module, inputs: Any) -> str:
    """What to check when ``model(inputs)`` fails: a dtype that differs from the parameters'."""
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    given = {t.dtype for t in _tensors(inputs) if t.is_floating_point()}
    if len(floats) == 1 and given and given != floats:
        (dtype,) = floats
        name = str(dtype).removeprefix("torch.")
        return (
            f"The model's parameters are {name} but X is "
            f"{', '.join(sorted(str(d).removeprefix('torch.') for d in given))}: convert X with "
            f"X.to(torch.{name}) (numpy: X.astype(np.{name}))"
        )
    return "Check that X has the shape and dtype the model expects"


def loss_hint(what: str, output: Any, target: Any) -> str:
    """What to check when ``loss_fn(output, target)`` (or a metric) fails."""
    if not isinstance(output, torch.Tensor):
        return (
            f"The model returns a {type(output).__name__}, not a tensor: pass a {what} that picks "
            "the logits, e.g. lambda out, y: F.cross_entropy(out.logits, y) (or out[0])"
        )
    if (
        isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and target.numel()
        and output.dim() == 2
    ):
        low, high, classes = int(target.min()), int(target.max()), output.shape[1]
        if high >= classes or (low < 0 and low != -100):  # -100: cross_entropy's ignore_index
            return (
                f"y holds labels from {low} to {high} but the model outputs {classes} classes: "
                f"class labels must lie in [0, {classes - 1}]"
            )
    return f"Check that y has the shape, dtype and values {what} expects for this output"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []
