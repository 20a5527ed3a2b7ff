"""The training runs a comparison drives: one seeded model, one optimizer, a few epochs.

Every run builds its model with the factory under ``torch.manual_seed(seed)`` (the global random
state is restored afterwards), trains it on seeded mini-batches (or the full batch, or the user's
``DataLoader``), records it with a :class:`~lossvista.training.TrainingMonitor`, and hands back
its table row, its history and a CPU copy of its final state dict.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .._checks import check_optional_int
from .._data import call_model, to_device
from ..errors import InputError
from ..objective import Objective
from .monitor import TrainingMonitor

OptimizerSpec = (
    tuple[type[torch.optim.Optimizer], Mapping[str, Any]]
    | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
)
OptimizerBuilder = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Run:
    """One training run: its name, optimizer builder, batch size, table columns and settings."""

    name: str
    make_optimizer: OptimizerBuilder
    batch_size: int | None
    columns: dict[str, Any]
    settings: dict[str, Any]


@dataclasses.dataclass
class Training:
    """What every run of a comparison shares."""

    model_factory: Callable[[], nn.Module]
    data: Any
    epochs: int
    loss_fn: LossFn
    seed: int
    val_data: Any
    sharpness: Mapping[str, Any] | None
    convergence: float | None
    device: torch.device | str | None


def train_run(
    run: Run, training: Training
) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, torch.Tensor]]:
    """Train one run; returns its table row, its history and its final state dict."""
    loss_fn, seed = training.loss_fn, training.seed
    with torch.random.fork_rng(devices=[]):
        model = build_model(training.model_factory, seed)
        if training.device is not None:
            model.to(training.device)
        optimizer = run.make_optimizer(model.parameters())
        batches = _training_batches(training.data, run.batch_size, seed)
        objective = Objective(model, loss_fn, training.data)
        validation = (
            None if training.val_data is None else Objective(model, loss_fn, training.val_data)
        )
        monitor = TrainingMonitor(model, optimizer)
        seconds, diverged = 0.0, False
        for _ in range(training.epochs):
            started = time.perf_counter()
            diverged = not _train_epoch(model, optimizer, batches, loss_fn, monitor)
            seconds += time.perf_counter() - started
            val_loss = None if validation is None else validation.loss()
            monitor.epoch_end(objective.loss(), val_loss=val_loss)
            if diverged:
                break
        final = monitor.history["loss"][-1]
        value = None if diverged else _final_sharpness(objective, training.sharpness, seed)
    epochs_losses = [
        (e, v)
        for e, v in zip(monitor.history["epoch"], monitor.history["loss"])
        if math.isfinite(v)
    ]
    best_epoch, best_loss = min(epochs_losses, key=lambda pair: pair[1], default=(None, None))
    row = {
        "name": run.name,
        **run.columns,
        "final_loss": final,
        "best_loss": best_loss,
        "best_epoch": best_epoch,
        "convergence_epoch": monitor.convergence_epoch(training.convergence),
        **({} if validation is None else {"final_val_loss": validation.loss()}),
        "wall_time_s": seconds,
        "sharpness": value,
        "diverged": diverged,
    }
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return row, monitor.history, state


def build_model(model_factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``model_factory()`` under ``torch.manual_seed(seed)``, leaving the global state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"model_factory() returned a {type(model).__name__}, not an nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("the model built by model_factory() has no trainable parameter")
    return model


def optimizer_builder(spec: Any, name: str) -> OptimizerBuilder:
    """A callable ``parameters -> optimizer`` from ``(class, kwargs)`` or such a callable."""
    if isinstance(spec, tuple) and len(spec) == 2:
        cls, kwargs = spec
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise InputError(f"optimizer {name!r}: {cls!r} is not a torch.optim.Optimizer class")
        if not isinstance(kwargs, Mapping):
            raise InputError(f"optimizer {name!r}: the keyword arguments must be a dict")
        return lambda params: cls(params, **kwargs)
    if callable(spec) and not isinstance(spec, type):
        return spec  # type: ignore[no-any-return]
    raise InputError(
        f"optimizer {name!r} must be (class, kwargs) such as (torch.optim.SGD, {{'lr': 0.1}}) or "
        f"a callable params -> optimizer, got {spec!r}"
    )


def spec_settings(spec: Any) -> dict[str, Any]:
    """The settings of an optimizer spec, for the table and ``Comparison.settings``."""
    if isinstance(spec, tuple) and len(spec) == 2:
        return {"optimizer": spec[0].__name__, **dict(spec[1])}
    return {"optimizer": getattr(spec, "__name__", type(spec).__name__)}


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Any, torch.Tensor]],
    loss_fn: LossFn,
    monitor: TrainingMonitor,
) -> bool:
    """One pass over the batches; returns False when a batch loss is not finite."""
    device = next(model.parameters()).device
    model.train()
    for inputs, target in batches:
        inputs, target = to_device(inputs, device), to_device(target, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(call_model(model, inputs), target)
        if not torch.isfinite(loss.detach()):
            monitor.step_end(loss)
            return False
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end(loss)
    return True


def _training_batches(data: Any, batch_size: int | None, seed: int) -> Iterable[Any]:
    """Batches of one epoch (re-iterable): the loader, the full batch, or seeded mini-batches."""
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise InputError(
                "batch_size needs tensor data (X, y); a DataLoader keeps its own batch size"
            )
        return data
    if not (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        raise InputError(
            f"data must be a tuple (X, y) of tensors or a DataLoader, got {type(data).__name__}"
        )
    inputs, target = data
    if len(inputs) != len(target) or len(target) == 0:
        raise InputError(f"X has {len(inputs)} samples and y {len(target)}; they must match (> 0)")
    batch_size = check_optional_int(batch_size, "batch_size", minimum=1)
    if batch_size is None:
        return [(inputs, target)]
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        TensorDataset(inputs, target), batch_size=batch_size, shuffle=True, generator=generator
    )


def _final_sharpness(
    objective: Objective, options: Mapping[str, Any] | None, seed: int
) -> float | None:
    """``lossvista.sharpness.sharpness(objective, **options)`` as a float; ``None`` without it."""
    if options is None:
        return None
    try:
        from ..sharpness import sharpness as measure
    except ImportError:
        return None
    kwargs = {"seed": seed, **options}
    result = measure(objective, **kwargs)
    return float(result.value)
