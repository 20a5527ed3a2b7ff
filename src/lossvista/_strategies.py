"""The evaluation options an :class:`~lossvista.engine.EngineConfig` switches on, applied to a
model for the time of a run, and what each needs to be possible.

- ``fold_batchnorm``: BatchNorm folded into the preceding convolution (:mod:`lossvista._fold`);
  only under ``bn="eval"`` (running statistics that stay fixed), never under ``"recompute"``
  (statistics re-estimated in train mode) or ``"perturb"`` (statistics moved point by point).
- ``channels_last``: the 4-D convolution weights held in channels-last memory layout (loop
  strategy), which lets oneDNN/cuDNN pick their faster NHWC kernels. The model's own tensors
  are swapped for channels-last copies and put back on exit; the engine writes every point's
  values into the copies.
- ``precompute_input``: the layers that read the data (a first convolution or linear layer)
  computed once per direction and batch, each point combining the stored outputs
  (:mod:`lossvista._input_layers`; loop strategy in the model's own dtype).
- ``onednn_linear``: float32 ``nn.Linear`` layers through oneDNN's inner product on the CPU
  (:mod:`lossvista._onednn`; loop strategy in float32), where the BLAS is slower.
- ``compile`` and ``precision``: the forward wrapped (:mod:`lossvista._compile`).

Data need nothing here: :class:`~lossvista._data.DataSource` already moves tensor data (and a
loader's batches after one pass) to the evaluation device once when they fit
(``DEVICE_CACHE_BYTES``), so no batch is copied per point.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import _compile, _fold, _input_layers, _onednn
from ._data import DEVICE_CACHE_BYTES
from ._nested import nbytes
from ._restore import preserved
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import EngineConfig, PointEvaluator
    from .objective import Objective

#: Points per vmap pass may take at most this share of the free memory (estimated).
MEMORY_SHARE = 0.25
#: Activation memory of one sample at one point, as a multiple of the sample's input bytes.
ACTIVATION_FACTOR = 32


def fold_pairs(objective: Objective, cache: dict[str, Any] | None = None) -> list[_fold.Pair]:
    """The pairs that may be folded for this objective (none unless ``bn="eval"``); found once
    per ``cache`` (a trace of a large model takes a moment)."""
    if objective.bn != "eval":
        return []
    if cache is None:
        return _fold.foldable_pairs(objective.model)
    if "pairs" not in cache:
        cache["pairs"] = _fold.foldable_pairs(objective.model)
    return cache["pairs"]


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """The 4-D weights of the model's ``Conv2d`` modules (what channels-last re-lays)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4]


@contextlib.contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """Conv weights as channels-last copies inside; the original tensors back on exit."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for weight in conv_weights(model):
                saved.append((weight, weight.data))
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for weight, data in saved:
            weight.data = data


@contextlib.contextmanager
def configured(
    objective: Objective,
    config: EngineConfig,
    cache: dict[str, Any] | None = None,
    evaluator: PointEvaluator | None = None,
) -> Iterator[_input_layers.InputLayers | None]:
    """The model set up for ``config`` (folding, layout, stored input layers, compiled/autocast
    forward) inside; yields the :class:`~lossvista._input_layers.InputLayers` to tell the point
    (``None`` when not used).

    ``cache`` (kept by the caller between runs) holds what may be reused: the fold pairs and
    their folded forwards. ``evaluator`` (its origin and directions) is needed for
    ``precompute_input``.
    """
    model = objective.model
    cache = {} if cache is None else cache
    loop = config.strategy == "loop"
    with contextlib.ExitStack() as stack:
        pairs = fold_pairs(objective, cache) if config.fold_batchnorm else []
        if config.fold_batchnorm:
            forwards = cache.setdefault("forwards", {})
            stack.enter_context(_fold.folded(pairs, forwards))
        if config.channels_last and loop:
            stack.enter_context(channels_last(model))
        # not under compile: inductor cannot lower oneDNN's linear (tuning never pairs them)
        if config.onednn_linear and loop and not config.compile and config.precision is None:
            stack.enter_context(_onednn.linear(model))
        layers = None
        stored = config.precompute_input and loop and config.precision is None
        if stored and evaluator is not None:
            device = torch.device(objective.device)
            budget = min(DEVICE_CACHE_BYTES, int(MEMORY_SHARE * free_memory_bytes(device)))
            layers = _input_layers.InputLayers(evaluator, pairs, budget, config.batch_size)
            layers.channels_last, layers.compiled = config.channels_last, config.compile
            stack.enter_context(layers.patched())
        stack.enter_context(
            _compile.wrapped_forward(
                model,
                torch.device(objective.device),
                compile=config.compile and loop,
                precision=config.precision,
            )
        )
        yield layers


def input_layers_possible(evaluator: PointEvaluator) -> bool:
    """True when the data are held batches and a layer :mod:`lossvista._input_layers` could
    store reads them (one forward pass of the first batch finds out, once per evaluator)."""
    setup = evaluator._setup
    if "input_layers" not in setup:
        setup["input_layers"] = False
        if _input_layers.holds_batches(evaluator.objective):
            layers = _input_layers.InputLayers(evaluator, [], DEVICE_CACHE_BYTES, None)
            model = evaluator.objective.model
            # inside a run its guard puts changed buffers back (a copy-back would mark them all
            # changed); outside, the model is restored whole after an eval-mode pass
            running = evaluator._buffers is not None
            with contextlib.nullcontext() if running else preserved(model), layers.patched():
                model.eval()
                setup["input_layers"] = any(layer.first_bytes > 0 for layer in layers.layers)
    return bool(setup["input_layers"])


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's ``mem_get_info``, else the host's available pages."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def points_per_pass_bound(
    stacks: dict[str, torch.Tensor], sample_bytes: int, batch_size: int, device: torch.device
) -> int:
    """How many points one vmap pass may evaluate: each point holds its own copy of the moving
    parameters and its own activations (estimated as ``ACTIVATION_FACTOR`` times the batch's
    input bytes); all of them together stay within ``MEMORY_SHARE`` of the free memory."""
    params = sum(s[0].numel() * s.element_size() for s in stacks.values())
    per_point = 2 * params + ACTIVATION_FACTOR * sample_bytes * max(batch_size, 1)
    return max(1, int(MEMORY_SHARE * free_memory_bytes(device)) // max(per_point, 1))


def points_bound(evaluator: PointEvaluator, batch: int | None) -> int:
    """Points per vmap pass that fit in the free memory, for batches of ``batch`` samples."""
    objective = evaluator.objective
    first = next(iter(objective._batches(batch)), None)
    if first is None:
        return 1
    samples = max(int(first[1].shape[0]), 1)
    device = torch.device(objective.device)
    return points_per_pass_bound(evaluator.stacks, nbytes(first) // samples, samples, device)


def check_points_per_pass(value: object) -> int:
    """A positive number of points per forward pass, else an :class:`~lossvista.InputError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"points_per_pass must be a positive integer (points evaluated in one forward "
            f"pass), got {value!r}; pass e.g. points_per_pass=8, or leave it unset to let the "
            "engine bound it by the free memory"
        )
    return value
