"""The restore guard: whatever happens inside, the model leaves as it came in.

:func:`preserved` puts back parameters, buffers, ``requires_grad``, train/eval mode and BatchNorm
momentum on exit, also after an exception or a Ctrl-C; :class:`BufferReset` (from
:func:`restoring`) also puts back, before every point of a grid, the buffers a forward pass
changes, so no point sees another's buffer updates.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checks import caller_stacklevel
from .errors import LossvistaWarning


# -- the restore guard ----------------------------------------------------------------------------
@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore parameters, buffers, ``requires_grad``, train/eval mode and BatchNorm momentum on
    exit, whatever happens.

    Values are copied back in place (so optimisers holding references keep working), also when
    the body raises or is interrupted with Ctrl-C; a buffer the body replaced by another tensor
    is put back as the original tensor. The restoring itself cannot be interrupted half-way: in
    the main thread a Ctrl-C (SIGINT) that arrives while it runs is held back and delivered to
    the program's own handler once the model is whole again, so the ``KeyboardInterrupt`` still
    reaches the caller, after the restoring.
    """
    with restoring(model):
        yield model


@contextlib.contextmanager
def restoring(model: nn.Module, *, skip: Iterable[nn.Module] = ()) -> Iterator[BufferReset]:
    """:func:`preserved`, handing out a :class:`BufferReset` that puts the buffers a forward
    pass changes back to their values on entry (those of ``skip`` modules excepted)."""
    saved = _Snapshot(model)
    try:
        yield BufferReset(saved, skip)
    finally:
        _run_uninterrupted(saved.restore)


class _Snapshot:
    """Everything :func:`preserved` puts back, copied on entry."""

    def __init__(self, model: nn.Module):
        self.params = [(p, p.detach().clone(), p.requires_grad) for p in model.parameters()]
        # (module, name, the tensor on entry, its value): a forward may replace the tensor.
        copies: dict[int, torch.Tensor] = {}  # one copy of a buffer shared by several modules
        self.buffers: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        for m in model.modules():
            for name, b in m._buffers.items():
                if b is not None:
                    if id(b) not in copies:
                        copies[id(b)] = b.detach().clone()
                    self.buffers.append((m, name, b, copies[id(b)]))
        self.modes = [(m, m.training) for m in model.modules()]
        self.momenta = [
            (m, m.momentum)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def restore(self) -> None:
        """Put everything back (idempotent, so it can simply run again after an interruption)."""
        with torch.no_grad():
            for p, saved, requires_grad in self.params:
                p.copy_(saved)
                p.requires_grad_(requires_grad)
            for index in range(len(self.buffers)):
                self.restore_buffer(index)
        for m, training in self.modes:
            m.training = training
        for m, momentum in self.momenta:
            m.momentum = momentum

    def restore_buffer(self, index: int) -> None:
        module, name, original, saved = self.buffers[index]
        if module._buffers.get(name) is not original:
            module._buffers[name] = original
        # A model built under inference mode has inference tensors: written in that mode only.
        with torch.inference_mode() if original.is_inference() else torch.no_grad():
            original.copy_(saved)


class BufferReset:
    """Puts back, before every point, the buffers that a forward pass changes.

    Models that update buffers inside ``forward`` (an EMA normaliser, a cache, a BatchNorm
    variant that updates its statistics in eval mode) would otherwise carry one point's update
    into the next, so a value would depend on the order of evaluation. :meth:`check` after an
    evaluation finds the changed buffers (replaced tensors and in-place writes, by the version
    counter, at every call; by value after the first, which also sees writes through ``.data``);
    :meth:`reset` before the next restores those only, so a model whose forward changes nothing
    costs nothing.
    """

    def __init__(self, snapshot: _Snapshot, skip: Iterable[nn.Module] = ()):
        skipped = {id(m) for m in skip}
        self._snapshot = snapshot
        self._watched = [
            i for i, (m, _, _, _) in enumerate(snapshot.buffers) if id(m) not in skipped
        ]
        self._versions = {i: _version(snapshot.buffers[i][2]) for i in self._watched}
        self._changed: list[int] = []
        self._compared = False

    def reset(self) -> None:
        for index in self._changed:
            self._snapshot.restore_buffer(index)

    def check(self) -> None:
        """Find the buffers changed since the last check."""
        still = []
        for index in self._watched:
            module, name, original, saved = self._snapshot.buffers[index]
            version = self._versions[index]
            if (
                module._buffers.get(name) is not original
                or version != _version(original)
                or ((version is None or not self._compared) and not torch.equal(original, saved))
            ):
                self._changed.append(index)
            else:
                still.append(index)
        self._watched = still
        self._compared = True


class VarianceGuard:
    """``bn="perturb"``: a point whose moved BatchNorm ``running_var`` has an entry ``<= 0``
    is refused. The 2018 scripts did not check (BatchNorm then takes the square root of a
    negative number); here the point's values are NaN (its item count is kept) and
    :meth:`warn` reports how many points were refused, once per run."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], moving: Sequence[str]):
        self.moving = list(moving)
        self._variances = [tensors[n] for n in moving if n.rsplit(".", 1)[-1] == "running_var"]
        self.refused: set[bytes] = set()  # coefficients (points re-evaluated count once)

    def checked(self, c: np.ndarray, totals: torch.Tensor) -> np.ndarray:
        """A point's ``[count, *sums, ...]`` on the CPU, with NaN sums if it is refused."""
        vector = totals.cpu().numpy()
        if all(bool((v > 0).all()) for v in self._variances):
            return vector
        self.refused.add(np.asarray(c, dtype=np.float64).tobytes())
        vector = vector.copy()
        vector[1:] = np.nan
        return vector

    def warn(self, n_points: int) -> None:
        if self.refused:
            warnings.warn(
                f"bn='perturb': at {len(self.refused)} of {n_points} points a BatchNorm "
                "running_var entry (origin + sum_i c_i d_i) is <= 0; their values are NaN. Use a "
                "smaller span, or directions with smaller (or no: ignore=['*.running_var']) "
                "running_var parts",
                LossvistaWarning,
                stacklevel=caller_stacklevel(),
            )


def _version(t: torch.Tensor) -> int | None:
    """The version counter of ``t`` (bumped by every in-place write); None for an inference
    tensor, which has none (such buffers are compared by value at every check)."""
    return None if t.is_inference() else t._version


def _run_uninterrupted(work: Callable[[], None]) -> None:
    """Run ``work`` to its end even when Ctrl-C arrives meanwhile, then deliver the interrupt.

    In the main thread SIGINT goes to a handler that only records it while ``work`` runs;
    afterwards the previous handler is put back and called with the recorded signal (Python's
    default handler raises ``KeyboardInterrupt``). A Ctrl-C that was already pending raises its
    ``KeyboardInterrupt`` while the handler is swapped (Python runs pending handlers first); it
    is held back the same way and raised once ``work`` is done. Elsewhere (other threads, where
    Python never runs signal handlers, SIGINT ignored, or a handler installed outside Python)
    ``work`` just runs.
    """
    interrupted: KeyboardInterrupt | None = None
    held: list[FrameType | None] = []
    previous: Any = None
    while previous is None:
        try:
            current = signal.getsignal(signal.SIGINT)
            if (
                threading.current_thread() is not threading.main_thread()
                or current is None
                or current == signal.SIG_IGN
            ):
                break
            previous = signal.signal(signal.SIGINT, lambda _, frame: held.append(frame))
        except KeyboardInterrupt as exc:  # pending from before the swap: keep it for later
            interrupted = exc
        except ValueError:  # not the main interpreter: signals cannot be handled here
            break
    try:
        work()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted is not None:
        raise interrupted
    if held:
        _deliver(previous, held[0])


def _deliver(handler: Any, frame: FrameType | None) -> None:
    """Hand a held SIGINT to ``handler`` as the signal itself would have."""
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)  # the default action: the process ends
