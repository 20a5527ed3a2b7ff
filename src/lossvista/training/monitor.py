"""A monitor for any training loop: learning curves, gradient and weight norms, and two questions
about the curve (is it on a plateau, from which epoch on has it converged).

**History file** (JSON, written by :meth:`TrainingMonitor.save`; ``format =
"lossvista-training-history"``, ``version = 1``): ``{"format": ..., "version": 1, "history":
{list name: [values]}}`` with the lists of :attr:`TrainingMonitor.history`. The file is strict
JSON: a non-finite number is written as ``{"__lossvista__": "float", "value": "nan"}`` (or
``"inf"``, ``"-inf"``); files of earlier versions with a bare ``NaN`` still load. ``lossvista.load`` (or
:meth:`TrainingMonitor.load`) reads it back as a monitor without a model: its history, plot and
questions work, recording does not.

**Streaming to TensorBoard** (``TrainingMonitor(..., writer=w)`` or :meth:`~TrainingMonitor.
stream_to`): every value is also written as it is recorded, under ``<prefix>/<history name>``
(``prefix`` defaults to ``"monitor"``): ``after_backward`` values at the count of backward passes,
``step_end`` values at the count of steps, ``epoch_end`` values at the epoch; missing values
(``None``) are not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .. import _json, _tensorboard
from .._checks import check_int, check_optional_int
from .._result import Result, _write_text, register_reader
from ..errors import InputError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["TrainingMonitor"]

HISTORY_FORMAT = "lossvista-training-history"
HISTORY_FORMAT_VERSION = 1
#: Default share of the total decrease used by :meth:`TrainingMonitor.convergence_epoch`.
DEFAULT_RTOL = 0.05
#: The first part of the TensorBoard tags a streaming monitor writes.
STREAM_PREFIX = "monitor"

_STEP_KEYS = ("step_loss", "step_weight_norm", "step_lr")
_EPOCH_KEYS = ("epoch", "loss", "val_loss", "weight_norm", "lr", "epoch_grad_norm", "steps")


class TrainingMonitor(Result):
    """Learning curves, gradient and weight norms, recorded from calls in a training loop.

    Place the calls like this (every call is optional)::

        monitor = TrainingMonitor(model, optimizer)
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                monitor.after_backward()      # gradient norms
                optimizer.step()
                monitor.step_end(loss)        # batch loss, weight norm, learning rate
            monitor.epoch_end(train_loss, val_loss=val_loss)

    ``history`` is a plain dict of lists of floats (``None`` where a value is missing), ready for
    ``json.dump``. Three families of lists, each growing with its own call:

    - ``after_backward()``: ``"grad_norm"`` (L2 norm of all gradients together) and
      ``"grad_norm/<name>"`` (of each parameter tensor, by its ``named_parameters`` name; the
      norm of a layer is the root of the sum of its tensors' squares);
    - ``step_end()``: ``"step_loss"``, ``"step_weight_norm"``, ``"step_lr"``;
    - ``epoch_end()``: ``"epoch"``, ``"loss"``, ``"val_loss"``, ``"weight_norm"``, ``"lr"``,
      ``"epoch_grad_norm"`` (mean of the gradient norms since the previous epoch) and ``"steps"``
      (``step_end`` calls so far).

    Norms are computed in float64 over the parameters that require gradients (weight norm: over
    all parameters). The learning rate is that of the optimizer's first parameter group.

    The monitor is a result too: two are equal when their histories are, ``save`` writes the
    history file of the module docstring and ``lossvista.load`` reads it back (as a monitor
    without a model, ``model is None``).

    Args:
        model: the model being trained (only read).
        optimizer: where the learning rate is read; can also be passed to :meth:`step_end` and
            :meth:`epoch_end`.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or a folder to create one in) that
            receives every value as it is recorded (see :meth:`stream_to`).
    """

    result_kind = "training_monitor"
    file_format = "json"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        writer: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._writer: Any = None
        self._prefix = STREAM_PREFIX
        if writer is not None:
            self.stream_to(writer)
        self.model: nn.Module | None = model
        self.optimizer = optimizer
        self._trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.history: dict[str, list[Any]] = {"grad_norm": []}
        self.history.update({f"grad_norm/{n}": [] for n, _ in self._trained})
        self.history.update({key: [] for key in (*_STEP_KEYS, *_EPOCH_KEYS)})
        self._epoch_grads: list[float] = []

    @classmethod
    def from_history(cls, history: Mapping[str, Sequence[Any]]) -> TrainingMonitor:
        """A monitor without a model holding ``history`` (from a file, or another monitor's):
        it can plot and answer :meth:`plateau` and :meth:`convergence_epoch`, not record."""
        if not isinstance(history, Mapping) or not all(
            isinstance(v, Sequence) and not isinstance(v, str) for v in history.values()
        ):
            raise InputError("history must be a mapping name -> list of values")
        monitor = cls.__new__(cls)
        monitor.model = None
        monitor.optimizer = None
        monitor._trained = []
        monitor.history = {str(k): list(v) for k, v in history.items()}
        for key in ("grad_norm", *_STEP_KEYS, *_EPOCH_KEYS):
            monitor.history.setdefault(key, [])
        monitor._epoch_grads = []
        monitor._writer = None
        monitor._prefix = STREAM_PREFIX
        return monitor

    def stream_to(self, writer: Any, *, prefix: str = STREAM_PREFIX) -> TrainingMonitor:
        """Also write every value recorded from now on to ``writer``; returns the monitor.

        Args:
            writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``),
                a folder to create one in (``pip install 'lossvista[tensorboard]'``), or
                ``None`` to stop streaming.
            prefix: the first part of the tags: ``<prefix>/grad_norm``,
                ``<prefix>/grad_norm/<name>``, ``<prefix>/step_loss``, ``<prefix>/loss``...

        The values already in the history are not written; call ``writer.flush()`` (or
        ``close()``) to see the latest ones before the writer's periodic flush.
        """
        if isinstance(writer, (str, Path)):
            writer = _tensorboard.summary_writer(writer)
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise InputError(
                "writer must be a torch.utils.tensorboard.SummaryWriter (with add_scalar), a "
                f"folder or None, got {type(writer).__name__}"
            )
        if not isinstance(prefix, str):
            raise InputError(f"prefix must be a string, got {prefix!r}")
        self._writer, self._prefix = writer, prefix
        return self

    # -- recording ------------------------------------------------------------------------------
    def after_backward(self) -> float:
        """Record the gradient norms of the current ``.grad`` values; returns the total norm."""
        self._recorded_model()
        total = 0.0
        for name, p in self._trained:
            norm = None
            if p.grad is not None:
                norm = float(torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float64))
                total += norm * norm
            self.history[f"grad_norm/{name}"].append(norm)
        total = math.sqrt(total)
        self.history["grad_norm"].append(total)
        self._epoch_grads.append(total)
        names = ("grad_norm", *(f"grad_norm/{n}" for n, _ in self._trained))
        self._stream(names, len(self.history["grad_norm"]))
        return total

    def step_end(self, loss: Any, *, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Record the batch loss, the weight norm and the learning rate after an optimizer step."""
        self.history["step_loss"].append(_scalar(loss, "loss"))
        self.history["step_weight_norm"].append(self.weight_norm())
        self.history["step_lr"].append(_learning_rate(optimizer or self.optimizer))
        self._stream(_STEP_KEYS, len(self.history["step_loss"]))

    def epoch_end(
        self,
        loss: Any,
        val_loss: Any = None,
        *,
        epoch: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Record the epoch's loss (and validation loss), weight norm and learning rate.

        ``epoch`` defaults to the previous epoch + 1 (starting at 1).
        """
        epochs = self.history["epoch"]
        epoch = check_optional_int(epoch, "epoch")
        epoch = (epochs[-1] + 1 if epochs else 1) if epoch is None else epoch
        grads = self._epoch_grads
        record = {
            "epoch": epoch,
            "loss": _scalar(loss, "loss"),
            "val_loss": None if val_loss is None else _scalar(val_loss, "val_loss"),
            "weight_norm": self.weight_norm(),
            "lr": _learning_rate(optimizer or self.optimizer),
            "epoch_grad_norm": float(np.mean(grads)) if grads else None,
            "steps": len(self.history["step_loss"]),
        }
        for key, value in record.items():
            self.history[key].append(value)
        self._epoch_grads = []
        self._stream(_EPOCH_KEYS[1:], epoch)

    def weight_norm(self) -> float:
        """L2 norm of all parameters together (float64)."""
        squares = sum(
            float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64)) ** 2
            for p in self._recorded_model().parameters()
        )
        return math.sqrt(squares)

    # -- questions ------------------------------------------------------------------------------
    def plateau(self, window: int = 5, threshold: float = 1e-3, metric: str = "loss") -> bool:
        """Whether the last ``window`` values of ``metric`` improved on the best earlier value by
        less than ``threshold`` relative to it.

        With ``best_before = min(v[:-window])`` and ``best_now = min(v[-window:])``, a plateau is
        ``best_before - best_now < threshold * |best_before|`` (the ``rel`` rule of
        ``torch.optim.lr_scheduler.ReduceLROnPlateau``). Needs ``window + 1`` values; with fewer it
        returns False. ``metric`` names a history list (``"loss"``, ``"val_loss"``,
        ``"step_loss"``); missing values are skipped.
        """
        window = check_int(window, "window", minimum=1)
        if not threshold >= 0:
            raise InputError(f"threshold must be >= 0, got {threshold!r}")
        values = self._series(metric)
        if len(values) < window + 1:
            return False
        best_before, best_now = float(np.min(values[:-window])), float(np.min(values[-window:]))
        return bool(best_before - best_now < threshold * abs(best_before))

    def convergence_epoch(
        self, threshold: float | None = None, *, rtol: float = DEFAULT_RTOL, metric: str = "loss"
    ) -> int | None:
        """The epoch at which ``metric`` converged, or ``None`` when it did not.

        - With ``threshold``: the first epoch whose value is ``<= threshold``.
        - Without: the first epoch from which every later value stays within
          ``rtol * |v_first - v_final|`` of the final value ``v_final`` (the remaining change is
          under ``rtol`` of the total change: scale-free, also for losses that go to 0).
        """
        values = self._series(metric, keep_missing=True)
        epochs = self.history["epoch"] if metric != "step_loss" else range(1, len(values) + 1)
        pairs = [(e, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        if not pairs:
            return None
        if threshold is not None:
            return next((int(e) for e, v in pairs if v <= threshold), None)
        if not rtol >= 0:
            raise InputError(f"rtol must be >= 0, got {rtol!r}")
        final, band = pairs[-1][1], rtol * abs(pairs[0][1] - pairs[-1][1])
        start = len(pairs) - 1
        while start > 0 and abs(pairs[start - 1][1] - final) <= band:
            start -= 1
        return int(pairs[start][0])

    # -- output ---------------------------------------------------------------------------------
    def plot(self, ax: Axes | Sequence[Axes] | None = None) -> Figure:
        """Learning curves (left) and norms on a log scale (right); returns the figure.

        ``ax``: two axes, or one (the norms then go on a twin axis), or ``None`` for a new figure.
        Drawn by :func:`lossvista.plot.plot_history`.
        """
        from ..plot import plot_history

        return plot_history(self.history, ax)

    def save(self, path: str | Path) -> Path:
        """Write ``history`` as strict JSON (layout in the module docstring);
        ``lossvista.load`` reads it back."""
        path = Path(path)
        payload = {"format": HISTORY_FORMAT, "version": HISTORY_FORMAT_VERSION, **self._state()}
        _write_text(path, _json.dumps(payload, indent=1), what="training history file")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainingMonitor:
        """Read a history file written by :meth:`save`: a monitor without a model."""
        path = Path(path)
        try:
            data = _json.loads(path.read_bytes())
        except OSError as exc:
            raise StoreError(f"cannot read training history {str(path)!r}: {exc}") from exc
        except ValueError as exc:
            raise StoreError(f"{str(path)!r} is not a JSON training history ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != HISTORY_FORMAT:
            raise StoreError(
                f"{str(path)!r} is not a training history (no format={HISTORY_FORMAT!r})"
            )
        if int(data.get("version", 1)) > HISTORY_FORMAT_VERSION:
            raise StoreError(
                f"{str(path)!r} uses history format {data['version']}; this lossvista reads up "
                f"to {HISTORY_FORMAT_VERSION}: upgrade lossvista"
            )
        return cls._from_state(data)

    def __repr__(self) -> str:
        return (
            f"TrainingMonitor({len(self.history['epoch'])} epochs, "
            f"{len(self.history['step_loss'])} steps, {len(self.history['grad_norm'])} backward passes)"
        )

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"history": self.history}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> TrainingMonitor:
        return cls.from_history(state["history"])

    def _summary(self) -> list[tuple[str, Any]]:
        h = self.history
        rows: list[tuple[str, Any]] = [
            ("epochs", len(h["epoch"])),
            ("steps", len(h["step_loss"])),
            ("backward_passes", len(h["grad_norm"])),
        ]
        losses = [v for v in h["loss"] if v is not None]
        finite = [v for v in losses if math.isfinite(v)]
        if losses:
            rows.append(("final_loss", losses[-1]))
        if finite:
            rows.append(("best_loss", min(finite)))
        for key in ("val_loss", "weight_norm", "lr"):
            present = [v for v in h[key] if v is not None]
            if present:
                rows.append((f"final_{key}", present[-1]))
        return rows

    def _recorded_model(self) -> nn.Module:
        if self.model is None:
            raise InputError(
                "this monitor has no model (it was read from a file); record with "
                "TrainingMonitor(model, optimizer)"
            )
        return self.model

    def _stream(self, names: Sequence[str], step: int) -> None:
        """Write the last value of every list in ``names`` at ``step`` (when streaming)."""
        if self._writer is None:
            return
        for name in names:
            value = self.history[name][-1]
            if value is not None:
                self._writer.add_scalar(f"{self._prefix}/{name}", value, global_step=step)

    def _series(self, metric: str, keep_missing: bool = False) -> list[Any]:
        if metric not in self.history or metric.startswith("grad_norm/"):
            names = [k for k in self.history if not k.startswith("grad_norm/")]
            raise InputError(f"unknown metric {metric!r}; the history has {names}")
        values = self.history[metric]
        return list(values) if keep_missing else [v for v in values if v is not None]


register_reader(HISTORY_FORMAT, TrainingMonitor.load)


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise InputError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a number, got {value!r}") from exc


def _learning_rate(optimizer: torch.optim.Optimizer | None) -> float | None:
    if optimizer is None or not optimizer.param_groups:
        return None
    lr = optimizer.param_groups[0].get("lr")
    return None if lr is None else _scalar(lr, "lr")
