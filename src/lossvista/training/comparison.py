"""Optimizer comparisons and sweeps: the same seeded model trained several ways, side by side.

:func:`compare_optimizers` and :func:`sweep` train fresh models from a factory (the same seeded
initialisation for every run; the runs themselves are in :mod:`lossvista.training._runs`), record
them with a :class:`~lossvista.training.TrainingMonitor`, and return a :class:`Comparison`: a table
(final and best loss, convergence epoch, wall time, final sharpness when ``lossvista.sharpness``
is available), the histories, the final state dicts and learning curves. Landscapes of the final
models on shared directions come from :func:`~lossvista.training.shared_plane`.

**Comparison file** (JSON, written by :meth:`Comparison.save`; ``format =
"lossvista-comparison"``, version 1): an object with ``format``, ``format_version``,
``lossvista_version``, ``table`` (list of row objects), ``histories`` (run name -> history, the
layout of :attr:`TrainingMonitor.history`) and ``settings``. The file is strict JSON: a non-finite number is written as
``{"__lossvista__": "float", "value": "nan" | "inf" | "-inf"}`` (files of earlier versions with a
bare ``NaN`` still load), values JSON cannot hold as their ``str``. The
final models are not in the file (``torch.save(comparison.models, path)`` keeps them). Files
written before the format tag (no ``format`` key) are read by :meth:`Comparison.load`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import _json
from .._checks import check_int, check_optional_int
from .._result import Result, _write_text, register_reader
from .._version import __version__
from ..errors import InputError, StoreError
from ._runs import LossFn, OptimizerSpec, Run, Training, optimizer_builder, spec_settings, train_run
from .shared_plane import shared_plane

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..landscape import Landscape

__all__ = ["Comparison", "compare_optimizers", "sweep"]

#: Default settings of the final-sharpness column, passed to ``lossvista.sharpness.sharpness``:
#: average-case sharpness, Gaussian noise of standard deviation 0.01 on every parameter.
DEFAULT_SHARPNESS: Mapping[str, Any] = {"kind": "average", "rho": 0.01}
COMPARISON_FORMAT = "lossvista-comparison"
COMPARISON_FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False, repr=False)
class Comparison(Result):
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
        model_factory, loss_fn, data: what the runs were trained with (for
            :func:`~lossvista.training.shared_plane`).

    The result is the table, the histories and the settings: they are what :meth:`save` writes
    (JSON, layout in the module docstring), what ``as_dict()`` holds and what equality compares.
    The final models and the training ingredients stay in memory only.
    """

    table: list[dict[str, Any]]
    histories: dict[str, dict[str, list[Any]]]
    models: dict[str, dict[str, torch.Tensor]]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_factory: Callable[[], nn.Module] | None = None
    loss_fn: LossFn | None = None
    data: Any = None

    result_kind = "comparison"
    file_format = "json"

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.table]

    def __repr__(self) -> str:
        finished = [row for row in self.table if _finite(row.get("final_loss"))]
        best = min(finished, key=lambda row: row["final_loss"], default=None)
        lowest = (
            ""
            if best is None
            else f", lowest final_loss {best['final_loss']:.4g} ({best['name']!r})"
        )
        return f"Comparison({len(self.table)} runs, epochs={self.settings.get('epochs')}{lowest})"

    def __str__(self) -> str:
        return f"{self!r}\n{self.to_markdown()}"

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

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the table, histories and settings as JSON (layout in the module docstring; the
        models: ``torch.save(c.models, path)``); ``lossvista.load`` reads it back."""
        path = Path(path)
        payload = {
            "format": COMPARISON_FORMAT,
            "format_version": COMPARISON_FORMAT_VERSION,
            "lossvista_version": __version__,
            **self._state(),
        }
        _write_text(path, _json.dumps(payload, indent=1), what="comparison file")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read a file written by :meth:`save` (also one written before the format tag); the
        comparison has no models and cannot rebuild them."""
        path = Path(path)
        try:
            data = _json.loads(path.read_bytes())
        except OSError as exc:
            raise StoreError(f"cannot read comparison file {str(path)!r}: {exc}") from exc
        except ValueError as exc:
            raise StoreError(f"{str(path)!r} is not a JSON comparison file ({exc})") from exc
        tag = data.get("format") if isinstance(data, dict) else None
        if not isinstance(data, dict) or tag not in (None, COMPARISON_FORMAT):
            raise StoreError(f"{str(path)!r} is not a comparison file (format {tag!r})")
        if int(data.get("format_version", 1)) > COMPARISON_FORMAT_VERSION:
            raise StoreError(
                f"{str(path)!r} uses comparison format {data['format_version']}; this lossvista "
                f"reads up to {COMPARISON_FORMAT_VERSION}: upgrade lossvista"
            )
        missing = [key for key in ("table", "histories") if key not in data]
        if missing:
            raise StoreError(f"{str(path)!r} is not a comparison file (no {missing})")
        return cls._from_state(data)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"table": self.table, "histories": self.histories, "settings": self.settings}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Comparison:
        return cls(
            list(state["table"]), dict(state["histories"]), {}, dict(state.get("settings") or {})
        )

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("runs", len(self.table)),
            ("epochs", self.settings.get("epochs")),
        ]
        rows += [(f"{row['name']}: final_loss", row.get("final_loss")) for row in self.table]
        return rows

    # -- deprecated -----------------------------------------------------------------------------
    def shared_plane(self, **kwargs: Any) -> dict[str, Landscape]:
        """Deprecated: use ``lossvista.training.shared_plane(comparison, ...)`` (same arguments)."""
        warnings.warn(
            "Comparison.shared_plane(...) is deprecated; call "
            "lossvista.training.shared_plane(comparison, ...) with the same arguments",
            DeprecationWarning,
            stacklevel=2,
        )
        return shared_plane(self, **kwargs)


register_reader(COMPARISON_FORMAT, Comparison.load)


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
    batch_size = check_optional_int(batch_size, "batch_size", minimum=1)
    runs = []
    for name, spec in optimizers.items():
        settings = spec_settings(spec)
        columns = {"optimizer": settings["optimizer"]}
        runs.append(
            Run(str(name), optimizer_builder(spec, str(name)), batch_size, columns, settings)
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
        build = optimizer_builder((optimizer, kwargs), name)
        settings = {"optimizer": optimizer.__name__, **kwargs, **point}
        runs.append(Run(name, build, point.get("batch_size"), dict(point), settings))
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
    runs: list[Run],
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
    epochs = check_int(epochs, "epochs", minimum=1)
    seed = check_int(seed, "seed")
    if len({run.name for run in runs}) != len(runs):
        raise InputError("run names must be unique")
    training = Training(
        model_factory, data, epochs, loss_fn, seed, val_data, sharpness, convergence, device
    )
    table, histories, models = [], {}, {}
    for run in runs:
        row, history, state = train_run(run, training)
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
