"""Record a model's parameters during training into a :class:`~lossvista.trajectory.Trajectory`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._checks import check_int
from ..errors import InputError
from ..params import TensorDict, norm_layer_parameter_names, select_names
from .container import Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.hooks import RemovableHandle

__all__ = ["TrajectoryRecorder"]


class TrajectoryRecorder:
    """Record a model's parameters during training; it never changes the model.

    Call :meth:`record` from the training loop, or let :meth:`hook` call it after every
    optimizer step. Only every ``every``-th call takes a snapshot (the first one does). Used as a
    context manager, leaving the block removes the hooks and, when the block ends normally, calls
    :meth:`finish` so that the trajectory ends at the final parameters.

    Args:
        model: the model being trained.
        every: snapshot one call in ``every``.
        store: an HDF5 file to append snapshots to (replaced if it exists) instead of memory.
        params: only these parameter names or globs (default: all parameters).

    Example:
        >>> rec = TrajectoryRecorder(model, every=10)
        >>> for step, (x, y) in enumerate(loader):
        ...     train_step(x, y)
        ...     rec.record(step=step)
        >>> directions = pca_directions(rec.trajectory)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 1,
        store: str | Path | None = None,
        params: str | Iterable[str] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.every = check_int(every, "every", minimum=1)
        named = dict(model.named_parameters())
        if not named:
            raise InputError("the model has no parameters to record")
        chosen = select_names(list(named), params)
        self._params = {n: named[n] for n in chosen}
        norm_names = norm_layer_parameter_names(model) & set(chosen)
        meta = {"source": "recorder", "model": type(model).__name__, "every": self.every}
        if store is None:
            self._trajectory = Trajectory(norm_names=norm_names, meta=meta)
        else:
            layout = {n: (tuple(p.shape), p.dtype) for n, p in self._params.items()}
            self._trajectory = Trajectory.create(store, layout, norm_names=norm_names, meta=meta)
        self._calls = 0
        self._last_step: int | None = None
        self._last_call_taken = False
        self._last_snapshot: TensorDict | None = None
        self._handles: list[RemovableHandle] = []

    @property
    def trajectory(self) -> Trajectory:
        """The snapshots recorded so far."""
        return self._trajectory

    def record(self, step: int | None = None) -> bool:
        """Snapshot the parameters if this call is one in ``every``; returns whether it did.

        ``step`` defaults to the number of earlier calls (0, 1, 2, ...).
        """
        step = self._calls if step is None else check_int(step, "step")
        take = self._calls % self.every == 0
        self._calls += 1
        self._last_step = step
        self._last_call_taken = take
        if take:
            self._take(step)
        return take

    def finish(self, step: int | None = None) -> bool:
        """Snapshot the current parameters unless the last snapshot already holds them.

        ``step`` defaults to the step of the last :meth:`record` call when that call took no
        snapshot, else to that step + 1 (0 when nothing was recorded). Returns whether a snapshot
        was taken.
        """
        if self._last_snapshot is not None and all(
            torch.equal(p.detach().cpu(), self._last_snapshot[n]) for n, p in self._params.items()
        ):
            return False
        if step is None:
            last = self._last_step
            step = 0 if last is None else (last if not self._last_call_taken else last + 1)
        self._take(check_int(step, "step"))
        return True

    def hook(
        self, optimizer: torch.optim.Optimizer, *, record_initial: bool = True
    ) -> RemovableHandle:
        """Call :meth:`record` after every ``optimizer.step()``; returns the hook's handle.

        With ``record_initial`` the current parameters are recorded first (as step 0), so step
        ``k`` is the model after ``k`` optimizer steps.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if record_initial:
            self.record()

        def after_step(*_: Any) -> None:
            self.record()

        handle = optimizer.register_step_post_hook(after_step)
        self._handles.append(handle)
        return handle

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.remove_hooks()
        if exc_type is None:
            self.finish()

    def __repr__(self) -> str:
        return f"TrajectoryRecorder(every={self.every}, calls={self._calls}, {self._trajectory!r})"

    def _take(self, step: int) -> None:
        snapshot = {n: p.detach().to("cpu", copy=True) for n, p in self._params.items()}
        self._trajectory.append(snapshot, step)
        self._last_snapshot = snapshot
