"""Data handling and model calls: every accepted form of data becomes batches on the device.

:class:`DataSource` normalises a tuple ``(X, y)`` of tensors, a ``DataLoader`` or any iterable of
``(X, y)`` batches (``X`` a tensor, a tuple of tensors or a dict), batches that are dicts (the
target under ``labels``, ``label``, ``target`` or ``y``, the rest keyword inputs, as HuggingFace
collators make them) or anything an ``unpack(batch) -> (inputs, target)`` hook splits; it draws
seeded subsets, and caches the batches on the evaluation device when they fit (numpy arrays become
tensors). :func:`call_model` and :func:`call_functional` call a model on such inputs
(``model(X)``, ``model(*X)``, ``model(**X)``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._batch_sample import BATCH_SAMPLE
from ._failures import (  # noqa: F401  (batch_failure, forward_hint, loss_hint: import paths)
    batch_failure,
    describe,
    forward_hint,
    loss_hint,
)
from ._nested import kept, nbytes, select_samples, to_device
from .errors import DataError, InputError, translated

Batch = tuple[Any, torch.Tensor]
Unpack = Callable[[Any], tuple[Any, Any]]

#: Keys a dict batch may hold its target under, in the order they are looked up.
TARGET_KEYS = ("labels", "label", "target", "y")

#: Data sets up to this many bytes are cached on the evaluation device.
DEVICE_CACHE_BYTES = 2 * 1024**3
#: Default evaluation batch size for tensor data when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 512

#: ``(rank, world)`` while data-parallel evaluation runs (:mod:`lossvista._dist`): every
#: :meth:`DataSource.batches` then yields only the batches ``i`` with ``i % world == rank``.
BATCH_SHARE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "lossvista_batch_share", default=None
)


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


def _leading(obj: Any) -> int:
    sizes = _leading_sizes(obj)
    if not sizes:
        raise DataError(f"inputs must be tensors (or tuples/dicts of them), got {describe(obj)}")
    if len(sizes) != 1:
        raise DataError(f"input tensors disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def _leading_sizes(obj: Any) -> set[int]:
    """Leading sizes of the tensors in ``obj`` (other values in tuples and dicts are skipped)."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            raise DataError("inputs must have a leading sample dimension, got a 0-d tensor")
        return {obj.shape[0]}
    values = obj.values() if isinstance(obj, Mapping) else obj
    if isinstance(obj, (Mapping, tuple, list)):
        return {size for v in values for size in _leading_sizes(v)}
    return set()


def split_batch(batch: Any, unpack: Unpack | None = None) -> Batch:
    """``(inputs, target)`` of one batch: through ``unpack``, a dict's target key, or a pair."""
    if unpack is not None:
        batch = _unpacked(batch, unpack)
    elif isinstance(batch, Mapping):
        batch = _split_dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = _arrays_to_tensors(batch)
    else:
        length = f" of length {len(batch)}" if hasattr(batch, "__len__") else ""
        raise DataError(
            f"every batch must be a pair (inputs, target) or a dict with the target under one of "
            f"{list(TARGET_KEYS)}; got {type(batch).__name__}{length}: {describe(batch)}. For any "
            "other structure pass Objective(..., unpack=fn) with fn(batch) -> (inputs, target)"
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


def _split_dict(batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """A dict batch: the target under the first of :data:`TARGET_KEYS`, the rest keyword inputs."""
    key = next((k for k in TARGET_KEYS if k in batch), None)
    if key is None:
        raise DataError(
            f"a batch is a dict with keys {list(batch)[:12]} but none of {list(TARGET_KEYS)} "
            "holds the target; name the target 'labels' (as HuggingFace collators do), or pass "
            "Objective(..., unpack=fn) with fn(batch) -> (inputs, target)"
        )
    inputs = {k: v for k, v in batch.items() if k != key}
    if not inputs:
        raise DataError(
            f"a dict batch holds only its target {key!r}; the other keys are the model's inputs"
        )
    return inputs, batch[key]


def _unpacked(batch: Any, unpack: Unpack) -> tuple[Any, Any]:
    name = getattr(unpack, "__name__", type(unpack).__name__)
    try:
        pair = unpack(batch)
    except Exception as exc:
        raise translated(
            DataError,
            f"unpack={name} failed on a batch {describe(batch)}: {type(exc).__name__}: {exc}",
            exc,
        ) from exc
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(
            f"unpack={name} must return a pair (inputs, target), got {describe(pair)}; inputs a "
            "tensor, a tuple of positional inputs or a dict of keyword inputs"
        )
    return pair[0], pair[1]


class DataSource:
    """Normalises the accepted data forms into batches on the device, caching when it fits.

    ``unpack(batch) -> (inputs, target)`` splits every batch the data yield (and a dict that
    holds the whole data set); without it a batch is a pair or a dict (see :func:`split_batch`).
    """

    def __init__(
        self,
        data: Any,
        device: torch.device,
        *,
        subset: int | None,
        seed: int,
        unpack: Unpack | None = None,
    ):
        self.device = device
        self.unpack = unpack
        self.is_tensor = False
        self._tensors: Batch | None = None
        self._cached: list[Batch] | None = None
        self._stream: Any = None
        self.n_samples: int | None = None
        self.population: int | None = None

        if unpack is None and isinstance(data, (tuple, list)) and len(data) == 2:
            data = _arrays_to_tensors(data)
            if data[1] is None:
                raise DataError(_NO_TARGET)
            if isinstance(data[0], torch.Tensor) and not isinstance(data[1], torch.Tensor):
                raise DataError(
                    f"data is a pair (X, y) with X {describe(data[0])} but y {describe(data[1])}; "
                    "pass y as a tensor (torch.as_tensor(y)) whose first dimension counts samples"
                )
        if isinstance(data, Mapping):  # one dict holding the whole data set
            pair = split_batch(data, unpack)
            if not _is_tensor_pair(pair):
                raise DataError(
                    f"data is a dict {describe(data)}; a dict given as data must hold the whole "
                    "data set as tensors with a leading sample dimension (pass batches as a "
                    "DataLoader or a list of dicts)"
                )
            self._set_tensors(*pair, subset=subset, seed=seed)
        elif unpack is None and _is_tensor_pair(data):
            self._set_tensors(*split_batch(tuple(data)), subset=subset, seed=seed)
        elif isinstance(data, DataLoader) and subset is not None:
            self._set_loader_subset(data, subset, seed)
        elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
            raise DataError(
                f"data must be a tuple (X, y) of tensors, a DataLoader or an iterable of (X, y) "
                f"batches (or of dicts); got {type(data).__name__}"
            )
        elif isinstance(data, Sized) and len(data) == 0:
            raise DataError("the data set is empty (no batches); pass at least one sample")
        elif subset is not None:
            self._set_subset_of([split_batch(b, unpack) for b in data], subset, seed)
        elif iter(data) is data:  # a one-shot iterator: it must be cached to be read twice
            self._set_cache([split_batch(b, unpack) for b in data])
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
        if nbytes((inputs, target)) <= DEVICE_CACHE_BYTES:
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
            split_batch(
                loader.collate_fn([dataset[int(i)] for i in index[s : s + size]]), self.unpack
            )
            for s in range(0, len(index), size)
        ]
        self._set_batches(batches, population)

    def _set_subset_of(self, batches: list[Batch], subset: int, seed: int) -> None:
        """The seeded subset of the samples of ``batches`` (each batch keeps its own shapes)."""
        population = sum(int(target.shape[0]) for _, target in batches)
        index = _subset_index(population, subset, seed)
        pieces, start = [], 0
        for inputs, target in batches:
            n = int(target.shape[0])
            local = index[(index >= start) & (index < start + n)] - start
            if len(local):
                pieces.append((select_samples(inputs, local), target[local]))
            start += n
        self._set_batches(pieces, population)

    def _set_batches(self, batches: list[Batch], population: int) -> None:
        """One tensor data set when the batches concatenate (any batch size may slice it), else
        the batches as they are (padded sequences of different lengths)."""
        try:
            inputs, target = _concat(batches)
        except (RuntimeError, KeyError, IndexError, TypeError):
            self._set_cache(batches)
        else:
            self._set_tensors(inputs, target, subset=None, seed=0)
        self.population = population

    def _set_cache(self, batches: list[Batch]) -> None:
        self._cached = [(to_device(x, self.device), to_device(y, self.device)) for x, y in batches]
        count = sum(int(y.shape[0]) for _, y in self._cached)
        if count == 0:
            raise DataError("the data set is empty (0 samples); pass at least one sample")
        self.n_samples = self.population = count

    def count_batches(self, batch_size: int | None) -> int | None:
        """How many batches :meth:`batches` yields (``None``: a stream of unknown length)."""
        if self._tensors is not None:
            n = int(self._tensors[1].shape[0])
            return -(-n // min(batch_size or n, n))
        if self._cached is not None:
            return len(self._cached)
        return len(self._stream) if isinstance(self._stream, Sized) else None

    def batches(self, batch_size: int | None) -> Iterator[Batch]:
        """The batches on the device (under :data:`BATCH_SHARE` only this process's share;
        under :data:`~lossvista._batch_sample.BATCH_SAMPLE` a sample of them)."""
        share, sample = BATCH_SHARE.get(), BATCH_SAMPLE.get()
        batches = self._all_batches(batch_size)
        if share is not None:
            rank, world = share
            batches = (batch for i, batch in enumerate(batches) if i % world == rank)
        return batches if sample is None else sample.passes(batches)

    def _all_batches(self, batch_size: int | None) -> Iterator[Batch]:
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
            inputs, target = split_batch(batch, self.unpack)
            inputs, target = to_device(inputs, self.device), to_device(target, self.device)
            if cache is not None:
                size += nbytes((inputs, target))
                if size <= DEVICE_CACHE_BYTES:
                    cache.append((kept(inputs), kept(target)))
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
        if isinstance(first, (tuple, list)):
            return type(first)(cat([p[i] for p in parts]) for i in range(len(first)))
        return first  # a value that is not per sample (use_cache=False)

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
