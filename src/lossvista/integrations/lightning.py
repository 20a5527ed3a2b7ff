"""A PyTorch Lightning callback that runs a :class:`~lossvista.LandscapeProbe` during ``fit``.

Lightning is imported when a :class:`LandscapeCallback` is created, not when this module is:
``lightning.pytorch`` (``pip install 'lossvista[lightning]'``), or the older ``pytorch_lightning``
package when only that one is installed (or only that one is already imported).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._checks import check_int
from .._tensorboard import log_results
from ..errors import InputError, LossvistaWarning, MissingDependencyError
from ..objective import Objective
from ..probe import LandscapeProbe, ProbeResults

__all__ = ["LIGHTNING_MISSING", "LandscapeCallback", "callback_base"]

LIGHTNING_MISSING = (
    "LandscapeCallback needs PyTorch Lightning: pip install 'lossvista[lightning]' "
    "(or the older pytorch_lightning package)"
)
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")
#: (our class, Lightning's Callback) -> the class that derives from both, made once.
_CONCRETE: dict[tuple[type, type], type] = {}


def callback_base() -> type:
    """Lightning's ``Callback`` class: of the package already imported, else of
    ``lightning.pytorch``, else of ``pytorch_lightning``.

    Raises:
        MissingDependencyError: neither package is installed (the message names the pip extra).
    """
    imported = [name for name in _PACKAGES if sys.modules.get(name) is not None]
    for name in (*imported, *_PACKAGES):
        try:
            return importlib.import_module(name).Callback  # type: ignore[no-any-return]
        except ImportError:
            continue
    raise MissingDependencyError(LIGHTNING_MISSING)


class LandscapeCallback:
    """Measure the landscape of the ``LightningModule`` at the end of every ``every_n_epochs``-th
    training epoch (a ``lightning.pytorch.Callback``).

    On rank 0 only (``trainer.is_global_zero``), after epochs ``every_n_epochs``,
    ``2 * every_n_epochs``, ... (counted from 1), it runs a :class:`~lossvista.LandscapeProbe`
    on the module at ``trainer.global_step`` and logs the results through every logger of the
    trainer: a ``TensorBoardLogger`` gets the scalars and the contour figure in its
    ``SummaryWriter`` (tags: :mod:`lossvista._tensorboard`), any other logger the scalars through
    ``log_metrics``. The module leaves as it came (weights, buffers, train mode, gradients,
    random state).

    The objective is, in this order:

    1. ``objective(pl_module)`` when ``objective`` (a callable) is given: full control
       (``unpack=``, ``count=``, a subset...);
    2. else ``lv.Objective(pl_module, loss_fn, data, metrics=metrics)`` with ``loss_fn`` given
       here or the module's own ``loss_fn`` attribute, and ``data`` given here (tensors
       ``(X, y)``, a ``DataLoader`` or batches) or else the trainer's validation dataloader
       (the first one when there are several; all of its batches, whatever
       ``limit_val_batches`` says). A loader must give the same batches on every pass.

    Args:
        every_n_epochs: measure after every this many epochs.
        objective: ``objective(pl_module) -> lv.Objective``.
        loss_fn: ``loss_fn(output, target)``, a mean over the batch.
        data: the data the landscape is measured on.
        metrics: extra metrics of the objective (``"accuracy"``, callables).
        plane, curvature, sharpness, progress: as for :class:`~lossvista.LandscapeProbe`.

    Attributes:
        epochs_: the epochs (from 1) it measured after; ``results_``: the latest
            :class:`~lossvista.probe.ProbeResults` (``None`` before the first).

    Raises:
        MissingDependencyError: Lightning is not installed (``pip install 'lossvista[lightning]'``).
        InputError: bad arguments, here; no loss function or no data, when ``fit`` starts or
            when it measures, before any evaluation.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> LandscapeCallback:
        if "_lossvista_concrete" not in cls.__dict__:
            base = callback_base()
            key = (cls, base)
            if key not in _CONCRETE:
                _CONCRETE[key] = type(
                    cls.__name__,
                    (cls, base),
                    {
                        "_lossvista_concrete": True,
                        "__module__": cls.__module__,
                        "__qualname__": cls.__qualname__,
                        "__doc__": cls.__doc__,
                    },
                )
            cls = _CONCRETE[key]
        return super().__new__(cls)  # type: ignore[no-any-return]

    def __init__(
        self,
        every_n_epochs: int = 1,
        *,
        objective: Callable[[Any], Objective] | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        data: Any = None,
        metrics: Sequence[Any] | Mapping[str, Callable] | None = None,
        plane: bool | Mapping[str, Any] | None = True,
        curvature: bool | Mapping[str, Any] | None = True,
        sharpness: bool | Mapping[str, Any] | None = True,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", 1)
        if objective is not None and not callable(objective):
            raise InputError(
                f"objective must be a callable objective(pl_module) -> lv.Objective, got "
                f"{type(objective).__name__}"
            )
        if objective is not None and (loss_fn is not None or data is not None):
            raise InputError(
                "pass either objective= or loss_fn=/data=, not both: objective(pl_module) "
                "builds the whole objective"
            )
        if loss_fn is not None and not callable(loss_fn):
            raise InputError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.objective, self.loss_fn, self.data, self.metrics = objective, loss_fn, data, metrics
        self.probe = LandscapeProbe(
            self._build_objective,
            every=1,
            plane=plane,
            curvature=curvature,
            sharpness=sharpness,
            progress=progress,
        )
        self.epochs_: list[int] = []
        self.results_: ProbeResults | None = None
        self._current: tuple[Any, Any] | None = None

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse, when ``fit`` starts, a callback that will have no loss function."""
        if stage == "fit" and self.objective is None:
            self._loss_fn(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Measure (rank 0) after the configured epochs and log through the trainer's loggers."""
        epoch = int(trainer.current_epoch) + 1
        if epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        step = int(trainer.global_step)
        self._current = (trainer, pl_module)
        try:
            results = self.probe.measure(step)
        finally:
            self._current = None
        for logger in getattr(trainer, "loggers", None) or ():
            log_results(logger, step, results)
        self.epochs_.append(epoch)
        self.results_ = results

    # -- the objective ----------------------------------------------------------------------------
    def _build_objective(self) -> Objective:
        if self._current is None:
            raise InputError("LandscapeCallback measures inside Trainer.fit only")
        trainer, module = self._current
        if self.objective is not None:
            return self.objective(module)
        loss_fn = self._loss_fn(module)
        data = self.data if self.data is not None else _validation_data(trainer)
        return Objective(module, loss_fn, data, metrics=self.metrics)

    def _loss_fn(self, module: Any) -> Callable[[Any, Any], Any]:
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(module, "loss_fn", None)
        if not callable(loss_fn):
            raise InputError(
                f"LandscapeCallback has no loss function for {type(module).__name__}: pass "
                "loss_fn= (or objective=) to it, or give the module a loss_fn attribute"
            )
        return loss_fn  # type: ignore[no-any-return]


def _validation_data(trainer: Any) -> Any:
    loaders = getattr(trainer, "val_dataloaders", None)
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise InputError(
            "LandscapeCallback has no data: pass data= (or objective=) to it, or give the "
            "trainer a validation dataloader"
        )
    from torch.utils.data import DistributedSampler

    sampler = getattr(loaders, "sampler", None)
    if isinstance(sampler, DistributedSampler) and sampler.num_replicas > 1:
        warnings.warn(
            f"LandscapeCallback measures on rank 0's share of the validation data (1 of "
            f"{sampler.num_replicas} parts: the loader's DistributedSampler); pass data= (the "
            "whole validation set) for the landscape of all of it",
            LossvistaWarning,
            stacklevel=2,
        )
    return loaders
