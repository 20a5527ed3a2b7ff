"""Optimizer comparisons and sweeps: the same seeded model trained several ways, side by side.

:func:`compare_optimizers` and :func:`sweep` train fresh models from a factory (the same seeded
initialisation for every run), record them with a :class:`~lossvista.training.TrainingMonitor`,
and return a :class:`Comparison`: a table (final and best loss, convergence epoch, wall time, final
sharpness when ``lossvista.sharpness`` is available), the histories, the final state dicts,
learning curves, and landscapes of the final models on shared directions.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..directions import Norm, random_directions
from ..errors import InputError
from ..landscape import Landscape
from ..objective import Objective, call_model
from ..slices import plane
from .monitor import TrainingMonitor

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Comparison", "compare_optimizers", "sweep"]

#: Default settings of the final-sharpness column, passed to ``lossvista.sharpness.sharpness``:
#: average-case sharpness, Gaussian noise of standard deviation 0.01 on every parameter.
DEFAULT_SHARPNESS: Mapping[str, Any] = {"kind": "average", "rho": 0.01}

OptimizerSpec = (
    tuple[type[torch.optim.Optimizer], Mapping[str, Any]]
    | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(eq=False, repr=False)
class Comparison:
    """Runs of the same model under several optimizers or hyper-parameters.

    Attributes:
        table: one row per run: ``name``, the run's settings (``batch_size`` and the varied
            optimizer arguments for a sweep), ``final_loss`` (exact loss of the final model over
            the training data, eval mode), ``best_loss`` and ``best_epoch``, ``convergence_epoch``
            (:meth:`TrainingMonitor.convergence_epoch`), ``final_val_loss`` (with validation
            data), ``wall_time_s`` (training steps only), ``sharpness`` (of the final model;
            ``None`` when not computed) and ``diverged`` (training stopped at a non-finite loss).
        histories: run name -> :attr:`TrainingMonitor.history`.
        models: run name -> final ``state_dict`` (CPU copies).
        settings: what produced the runs (epochs, seed, optimizers, sharpness settings).
        model_factory, loss_fn, data: what the runs were trained with (for :meth:`shared_plane`).
    """

    table: list[dict[str, Any]]
    histories: dict[str, dict[str, list[Any]]]
    models: dict[str, dict[str, torch.Tensor]]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_factory: Callable[[], nn.Module] | None = None
    loss_fn: LossFn | None = None
    data: Any = None

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.table]

    def __repr__(self) -> str:
        return f"Comparison({len(self.table)} runs, epochs={self.settings.get('epochs')})\n{self.to_markdown()}"

    def to_markdown(self, columns: Sequence[str] | None = None) -> str:
        """The table as Markdown (floats to 4 significant digits, missing values as ``-``)."""
        if not self.table:
            return ""
        columns = list(columns or self.table[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for row in self.table:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None, *, metric: str = "loss", log: bool = True) -> Figure:
        """Overlay ``metric`` per epoch (``"loss"``, ``"val_loss"``, ``"weight_norm"``,
        ``"epoch_grad_norm"``) for every run; returns the figure. Drawn by
        :func:`lossvista.plot.plot_comparison`."""
        from ..plot import plot_comparison

        return plot_comparison(self, ax, metric=metric, log=log)

    def save(self, path: str | Path) -> Path:
        """Write the table, histories and settings as JSON (the models: ``torch.save(c.models)``)."""
        path = Path(path)
        payload = {"table": self.table, "histories": self.histories, "settings": self.settings}
        try:
            path.write_text(json.dumps(payload, indent=1, default=str))
        except OSError as exc:
            raise InputError(f"cannot write {str(path)!r}: {exc}") from exc
        return path

    def shared_plane(
        self,
        *,
        data: Any = None,
        loss_fn: LossFn | None = None,
        names: Sequence[str] | None = None,
        span: Any = (-1.0, 1.0),
        steps: int | tuple[int, int] = (21, 21),
        norm: Norm = "filter",
        ignore: str | Iterable[str] | None = ("bias", "bn"),
        seed: int = 0,
        per_model_normalization: bool = True,
        progress: bool = False,
        **plane_kwargs: Any,
    ) -> dict[str, Landscape]:
        """The loss on one plane of directions around every final model, for side-by-side basins.

        The directions come from one seed. With ``per_model_normalization`` (the default) the
        same Gaussian draw is filter-normalised to each model's own weights, so that models with
        different weight scales are compared fairly (Li et al. 2018, §5, small vs large batch);
        with ``False`` the very same direction tensors, normalised to the first model, are used
        for every model.

        Args:
            data: evaluation data (default: the training data).
            loss_fn: default: the training loss.
            names: runs to include (default: all).
            span, steps: of every plane (see :func:`lossvista.plane`).
            norm, ignore, seed: of the random directions (see :func:`lossvista.random_directions`).
            per_model_normalization: see above.
            progress: progress bars.
            **plane_kwargs: passed on to :func:`lossvista.plane` (``strategy``, ...).

        Returns:
            Run name -> 2-D :class:`~lossvista.Landscape` centred on that run's final model.
        """
        if self.model_factory is None:
            raise InputError("this comparison has no model_factory to rebuild its models from")
        data = self.data if data is None else data
        loss_fn = self.loss_fn if loss_fn is None else loss_fn
        if data is None or loss_fn is None:
            raise InputError("shared_plane needs data= and loss_fn=")
        chosen = self.names if names is None else list(names)
        unknown = [n for n in chosen if n not in self.models]
        if unknown or not chosen:
            raise InputError(f"unknown runs {unknown}; this comparison has {self.names}")
        landscapes: dict[str, Landscape] = {}
        directions = None
        for name in chosen:
            model = _build_model(self.model_factory, self.settings.get("seed", 0))
            model.load_state_dict(self.models[name])
            objective = Objective(model, loss_fn, data)
            if directions is None or per_model_normalization:
                directions = random_directions(objective, 2, norm=norm, ignore=ignore, seed=seed)
            landscapes[name] = plane(
                objective, directions, span=span, steps=steps, progress=progress, **plane_kwargs
            )
        return landscapes


@dataclasses.dataclass
class _Run:
    """One training run: its name, optimizer builder, batch size, table columns and settings."""

    name: str
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    batch_size: int | None
    columns: dict[str, Any]
    settings: dict[str, Any]


def compare_optimizers(
    model_factory: Callable[[], nn.Module],
    data: Any,
    optimizers: Mapping[str, OptimizerSpec],
    *,
    epochs: int,
    loss_fn: LossFn,
    seed: int = 0,
    batch_size: int | None = None,
    val_data: Any = None,
    sharpness: Mapping[str, Any] | None = DEFAULT_SHARPNESS,
    convergence: float | None = None,
    device: torch.device | str | None = None,
) -> Comparison:
    """Train the same seeded model with several optimizers and compare the runs.

    Every run builds its model with ``model_factory()`` under ``torch.manual_seed(seed)`` (so all
    start from the same weights; the global random state is restored afterwards), trains it for
    ``epochs`` epochs and records it with a :class:`TrainingMonitor`. The epoch loss is the exact
    loss of the model over all training data in eval mode (so runs with different batch sizes
    compare fairly). A run stops early, marked ``diverged``, at a non-finite batch loss.

    Args:
        model_factory: builds a fresh ``nn.Module``; called without arguments.
        data: ``(X, y)`` tensors or a ``DataLoader`` (used as it is).
        optimizers: name -> ``(optimizer class, keyword arguments)``, e.g.
            ``{"sgd": (torch.optim.SGD, {"lr": 0.1}), "adam": (torch.optim.Adam, {"lr": 1e-3})}``,
            or name -> ``callable(parameters) -> optimizer``. Optimizers whose ``step`` needs a
            closure (LBFGS) are not supported.
        epochs: passes over the data.
        loss_fn: ``loss_fn(output, target)``, mean over the batch.
        seed: seed of the initialisation and of the batch order.
        batch_size: with tensor data, mini-batches of this size drawn in a seeded random order
            (the same order for every run); ``None`` trains full-batch (one step per epoch).
        val_data: optional validation data (any form :class:`~lossvista.Objective` accepts).
        sharpness: keyword arguments of ``lossvista.sharpness.sharpness(objective, **kwargs)``
            for the final model over the training data (default: average-case sharpness with
            ``rho=0.01``; its ``seed`` defaults to ``seed``); ``None`` skips it. Without that
            module the column is ``None``.
        convergence: the loss threshold of the convergence epoch; default: the 5% rule of
            :meth:`TrainingMonitor.convergence_epoch`.
        device: where to train (default: where the factory puts the model).

    Returns:
        A :class:`Comparison`.
    """
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise InputError("optimizers must be a non-empty mapping name -> (class, kwargs)")
    runs = []
    for name, spec in optimizers.items():
        settings = _spec_settings(spec)
        columns = {"optimizer": settings["optimizer"]}
        runs.append(
            _Run(str(name), _optimizer_builder(spec, str(name)), batch_size, columns, settings)
        )
    return _compare(
        runs,
        model_factory,
        data,
        epochs=epochs,
        loss_fn=loss_fn,
        seed=seed,
        val_data=val_data,
        sharpness=sharpness,
        convergence=convergence,
        device=device,
    )


def sweep(
    model_factory: Callable[[], nn.Module],
    data: Any,
    grid: Mapping[str, Sequence[Any]],
    *,
    epochs: int,
    loss_fn: LossFn,
    optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    val_data: Any = None,
    sharpness: Mapping[str, Any] | None = DEFAULT_SHARPNESS,
    convergence: float | None = None,
    device: torch.device | str | None = None,
) -> Comparison:
    """Train one run per combination of ``grid`` values and compare them.

    ``grid`` maps ``"batch_size"`` (mini-batch size for tensor data; ``None`` = full batch) and
    any keyword argument of ``optimizer`` (``"lr"``, ``"momentum"``, ``"weight_decay"``...) to the
    values to try; every combination is run (in the grid's order), on top of
    ``optimizer_kwargs``. The small-batch vs large-batch study is
    ``sweep(f, (X, y), {"batch_size": [8, 512], "lr": [0.05]}, epochs=..., loss_fn=...)``. The
    other arguments are those of :func:`compare_optimizers`.

    Returns:
        A :class:`Comparison` whose rows carry the grid values as columns.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise InputError("grid must be a non-empty mapping name -> list of values")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise InputError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}")
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise InputError(f"optimizer must be a torch.optim.Optimizer class, got {optimizer!r}")
    runs = []
    for combination in itertools.product(*grid.values()):
        point = dict(zip(grid, combination))
        kwargs = {
            **(optimizer_kwargs or {}),
            **{k: v for k, v in point.items() if k != "batch_size"},
        }
        name = ", ".join(f"{k}={v}" for k, v in point.items())
        build = _optimizer_builder((optimizer, kwargs), name)
        settings = {"optimizer": optimizer.__name__, **kwargs, **point}
        runs.append(_Run(name, build, point.get("batch_size"), dict(point), settings))
    return _compare(
        runs,
        model_factory,
        data,
        epochs=epochs,
        loss_fn=loss_fn,
        seed=seed,
        val_data=val_data,
        sharpness=sharpness,
        convergence=convergence,
        device=device,
        extra_settings={
            "optimizer": optimizer.__name__,
            "optimizer_kwargs": dict(optimizer_kwargs or {}),
        },
    )


def _compare(
    runs: list[_Run],
    model_factory: Callable[[], nn.Module],
    data: Any,
    *,
    epochs: int,
    loss_fn: LossFn,
    seed: int,
    val_data: Any,
    sharpness: Mapping[str, Any] | None,
    convergence: float | None,
    device: torch.device | str | None,
    extra_settings: Mapping[str, Any] | None = None,
) -> Comparison:
    if not callable(model_factory):
        raise InputError("model_factory must be callable (it builds a fresh model)")
    if not callable(loss_fn):
        raise InputError("loss_fn must be callable")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    if len({run.name for run in runs}) != len(runs):
        raise InputError("run names must be unique")
    table, histories, models = [], {}, {}
    for run in runs:
        row, history, state = _train(
            run,
            model_factory,
            data,
            epochs,
            loss_fn,
            seed,
            val_data,
            sharpness,
            convergence,
            device,
        )
        table.append(row)
        histories[run.name] = history
        models[run.name] = state
    settings = {
        "epochs": epochs,
        "seed": seed,
        "sharpness": None if sharpness is None else dict(sharpness),
        "convergence": convergence,
        **(extra_settings or {}),
    }
    settings["runs"] = {run.name: run.settings for run in runs}
    return Comparison(table, histories, models, settings, model_factory, loss_fn, data)


def _train(
    run: _Run,
    model_factory: Callable[[], nn.Module],
    data: Any,
    epochs: int,
    loss_fn: LossFn,
    seed: int,
    val_data: Any,
    sharpness: Mapping[str, Any] | None,
    convergence: float | None,
    device: torch.device | str | None,
) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, torch.Tensor]]:
    """Train one run; returns its table row, its history and its final state dict."""
    with torch.random.fork_rng(devices=[]):
        model = _build_model(model_factory, seed)
        if device is not None:
            model.to(device)
        optimizer = run.make_optimizer(model.parameters())
        batches = _training_batches(data, run.batch_size, seed)
        objective = Objective(model, loss_fn, data)
        validation = None if val_data is None else Objective(model, loss_fn, val_data)
        monitor = TrainingMonitor(model, optimizer)
        seconds, diverged = 0.0, False
        for _ in range(epochs):
            started = time.perf_counter()
            diverged = not _train_epoch(model, optimizer, batches, loss_fn, monitor)
            seconds += time.perf_counter() - started
            val_loss = None if validation is None else validation.loss()
            monitor.epoch_end(objective.loss(), val_loss=val_loss)
            if diverged:
                break
        final = monitor.history["loss"][-1]
        value = None if diverged else _final_sharpness(objective, sharpness, seed)
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
        "convergence_epoch": monitor.convergence_epoch(convergence),
        **({} if validation is None else {"final_val_loss": validation.loss()}),
        "wall_time_s": seconds,
        "sharpness": value,
        "diverged": diverged,
    }
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return row, monitor.history, state


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
        inputs, target = _to_device(inputs, device), _to_device(target, device)
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


def _build_model(model_factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``model_factory()`` under ``torch.manual_seed(seed)``, leaving the global state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"model_factory() returned a {type(model).__name__}, not an nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("the model built by model_factory() has no trainable parameter")
    return model


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
    if batch_size is None:
        return [(inputs, target)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        TensorDataset(inputs, target), batch_size=batch_size, shuffle=True, generator=generator
    )


def _optimizer_builder(
    spec: Any, name: str
) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    if isinstance(spec, tuple) and len(spec) == 2:
        cls, kwargs = spec
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise InputError(f"optimizer {name!r}: {cls!r} is not a torch.optim.Optimizer class")
        if not isinstance(kwargs, Mapping):
            raise InputError(f"optimizer {name!r}: the keyword arguments must be a dict")
        return lambda params: cls(params, **kwargs)
    if callable(spec) and not isinstance(spec, type):
        return spec
    raise InputError(
        f"optimizer {name!r} must be (class, kwargs) such as (torch.optim.SGD, {{'lr': 0.1}}) or "
        f"a callable params -> optimizer, got {spec!r}"
    )


def _spec_settings(spec: Any) -> dict[str, Any]:
    if isinstance(spec, tuple) and len(spec) == 2:
        return {"optimizer": spec[0].__name__, **dict(spec[1])}
    return {"optimizer": getattr(spec, "__name__", type(spec).__name__)}


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
    return float(getattr(result, "value", result))


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
