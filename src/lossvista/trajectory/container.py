"""The :class:`Trajectory`: parameter snapshots of a training run and the step of each.

A trajectory comes from a :class:`~lossvista.trajectory.TrajectoryRecorder` inside a training
loop (kept in memory or appended to an HDF5 file), from checkpoint files
(:meth:`Trajectory.from_checkpoints`, ordered by :func:`checkpoint_files`), or from a list of
state dicts.

**Trajectory file** (HDF5, written with h5py; ``format = "lossvista-trajectory"``, version 1):

| item | shape / type | meaning |
|---|---|---|
| attribute ``format``, ``format_version`` | str, int | ``"lossvista-trajectory"``, ``1`` |
| attribute ``lossvista_version``, ``created`` | str | library version, ISO 8601 UTC time |
| attribute ``names`` | JSON list | parameter names, in order |
| attribute ``norm_names`` | JSON list or ``null`` | parameters of normalisation layers, when known |
| attribute ``meta`` | JSON object | where the snapshots came from (recorder, checkpoint files) |
| dataset ``steps`` | ``(P,)`` int64 | training step of every snapshot |
| dataset ``params/<name>`` | ``(P, *shape)`` | the parameter in every snapshot; attribute ``dtype``: the torch dtype |

Datasets grow along their first axis (a recorder appends one snapshot per write, opening and
closing the file each time, so a killed run keeps every finished snapshot). ``bfloat16``
parameters are stored as float32 and cast back on reading.
"""

from __future__ import annotations

import copy
import glob
import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from .._checks import check_int
from .._result import Result, register_reader
from ..checkpoint import load_checkpoint, load_state_dict_file
from ..errors import InputError
from ..params import TensorDict, norm_layer_parameter_names, parameters_of, select_names
from ._storage import FORMAT, FileSnapshots, Layout, MemorySnapshots

__all__ = ["Trajectory", "checkpoint_files"]

TrajectoryLike = Any  # a Trajectory or a sequence of state dicts / models


class Trajectory(Result, Sequence[TensorDict]):
    """Parameter snapshots ``{name: tensor}`` (on the CPU) and the training step of each.

    ``trajectory[i]`` is snapshot ``i`` (a dict; do not modify its tensors in place),
    ``trajectory[a:b]`` an in-memory trajectory of some of them, ``len(trajectory)`` their number.
    A trajectory read from (or recorded into) an HDF5 file reads snapshots lazily from it.
    Two trajectories are equal when their steps, snapshots, ``norm_names`` and ``meta`` are
    (wherever they are kept); :meth:`save` writes the trajectory file of the module docstring,
    which ``lossvista.load`` reads back.

    Args:
        snapshots: models or mappings name -> tensor (state dicts: only floating-point entries that
            are not BatchNorm buffers are kept). Every snapshot must have the same names and shapes.
        steps: the step of each snapshot; default ``0, 1, 2, ...``.
        norm_names: names of the parameters of normalisation layers (for ``ignore="bn"``); when
            ``None``, ``"bn"`` means every 1-D tensor that is not a bias.
        meta: where the snapshots came from (JSON-friendly).
    """

    result_kind = "trajectory"
    file_format = "hdf5"

    def __init__(
        self,
        snapshots: Iterable[nn.Module | Mapping[str, torch.Tensor]] = (),
        steps: Iterable[int] | None = None,
        *,
        norm_names: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._source: MemorySnapshots | FileSnapshots = MemorySnapshots()
        self._layout: Layout = {}
        self.norm_names = None if norm_names is None else frozenset(norm_names)
        self.meta: dict[str, Any] = dict(meta or {})
        snapshots = list(snapshots)
        step_list = list(range(len(snapshots))) if steps is None else list(steps)
        if len(step_list) != len(snapshots):
            raise InputError(
                f"got {len(snapshots)} snapshots but {len(step_list)} steps; give one step each"
            )
        for snapshot, step in zip(snapshots, step_list):
            self.append(snapshot, step)

    @classmethod
    def _on_file(cls, source: FileSnapshots) -> Trajectory:
        trajectory = cls(norm_names=source.norm_names, meta=source.meta)
        trajectory._source = source
        trajectory._layout = dict(source.layout)
        return trajectory

    # -- description ----------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names of every snapshot, in order."""
        return tuple(self._layout)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: shape for n, (shape, _) in self._layout.items()}

    @property
    def numel(self) -> int:
        """Entries per snapshot (``D``)."""
        return sum(math.prod(shape) for shape, _ in self._layout.values())

    @property
    def steps(self) -> np.ndarray:
        """The step of every snapshot, ``(P,)`` int64."""
        return self._source.step_array()

    @property
    def path(self) -> Path | None:
        """The HDF5 file holding the snapshots, or ``None`` when they are in memory."""
        return self._source.path

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        count = len(self)
        steps = self.steps
        span = f", steps {steps[0]}..{steps[-1]}" if count else ""
        where = f"file={str(self.path)!r}" if self.path else "in memory"
        return (
            f"Trajectory({count} snapshots{span}, {len(self._layout)} tensors, "
            f"{self.numel} entries each, {where})"
        )

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        snapshots = list(self)
        params = {
            name: torch.stack([snapshot[name] for snapshot in snapshots])
            if snapshots
            else torch.empty((0, *shape), dtype=dtype)
            for name, (shape, dtype) in self._layout.items()
        }
        return {
            "steps": self.steps,
            "params": params,
            "norm_names": None if self.norm_names is None else sorted(self.norm_names),
            "meta": self.meta,
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Trajectory:
        params, steps = state["params"], [int(s) for s in state["steps"]]
        snapshots = [{name: value[i] for name, value in params.items()} for i in range(len(steps))]
        return cls(snapshots, steps, norm_names=state["norm_names"], meta=state["meta"])

    def _summary(self) -> list[tuple[str, Any]]:
        steps = self.steps
        return [
            ("snapshots", len(self)),
            ("steps", f"{steps[0]}..{steps[-1]}" if len(steps) else "none"),
            ("tensors", len(self._layout)),
            ("entries_per_snapshot", self.numel),
            ("file", str(self.path) if self.path else "in memory"),
        ]

    @overload
    def __getitem__(self, index: int) -> TensorDict: ...

    @overload
    def __getitem__(self, index: slice) -> Trajectory: ...

    def __getitem__(self, index: int | slice) -> TensorDict | Trajectory:
        count = len(self)
        if isinstance(index, slice):
            picked = range(*index.indices(count))
            steps = self.steps
            return Trajectory(
                [self[i] for i in picked],
                [int(steps[i]) for i in picked],
                norm_names=self.norm_names,
                meta=self.meta,
            )
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise InputError(f"index a trajectory with an integer or a slice, not {index!r}")
        if not -count <= index < count:
            raise IndexError(f"snapshot {index} out of range for {count} snapshots")
        return self._source.read(int(index) % count)

    def __iter__(self) -> Iterator[TensorDict]:
        for index in range(len(self)):
            yield self[index]

    # -- values ---------------------------------------------------------------------------------
    def block(self, name: str) -> np.ndarray:
        """One parameter in every snapshot: a ``(P, numel)`` float64 array."""
        if name not in self._layout:
            raise InputError(f"the trajectory has no parameter {name!r}; it has {list(self.names)}")
        shape, _ = self._layout[name]
        return self._source.block(name, math.prod(shape))

    def matrix(self, names: Iterable[str] | None = None) -> np.ndarray:
        """The ``P x D`` float64 matrix of the snapshots (columns: ``names`` in order, flattened)."""
        chosen = self.names if names is None else tuple(names)
        if not chosen:
            raise InputError("no parameter names to build a matrix from")
        return np.concatenate([self.block(n) for n in chosen], axis=1)

    # -- growing --------------------------------------------------------------------------------
    def append(
        self, params: nn.Module | Mapping[str, torch.Tensor], step: int | None = None
    ) -> None:
        """Add a snapshot (copied to the CPU); ``step`` defaults to the previous step + 1.

        A trajectory on a file appends to that file.
        """
        tensors = _snapshot(params)
        if not self._layout and len(self) == 0:
            self._layout = {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
        tensors = _in_layout(self._layout, tensors)
        if step is None:
            steps = self.steps
            step = int(steps[-1]) + 1 if len(steps) else 0
        self._source.extend([(tensors, check_int(step, "step"))])

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the trajectory to an HDF5 file (layout in the module docstring); read it back
        with ``lossvista.load`` or :meth:`load`."""
        path = Path(path)
        if self.path is not None and path.resolve() == self.path.resolve():
            return path  # already there
        if not self._layout:
            raise InputError("cannot save an empty trajectory")
        steps = self.steps
        items = ((self[i], int(steps[i])) for i in range(len(self)))
        FileSnapshots.create(path, self._layout, self.norm_names, self.meta, items)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        """Open a trajectory file; snapshots are read from it when used."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"trajectory file {str(path)!r} does not exist")
        return cls._on_file(FileSnapshots(path))

    @classmethod
    def create(
        cls,
        path: str | Path,
        layout: Layout,
        *,
        norm_names: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """An empty trajectory on a new HDF5 file (replacing any file at ``path``) to append to.

        ``layout`` maps every parameter name to ``(shape, dtype)``.
        """
        norm = None if norm_names is None else frozenset(norm_names)
        return cls._on_file(FileSnapshots.create(Path(path), dict(layout), norm, meta or {}))

    @classmethod
    def from_checkpoints(
        cls,
        paths: str | Path | Iterable[str | Path],
        *,
        weights_only: bool = True,
        model: nn.Module | None = None,
        params: str | Iterable[str] | None = None,
    ) -> Trajectory:
        """A trajectory read from checkpoint files (see :func:`checkpoint_files` for the order).

        Args:
            paths: files or glob patterns (``"run/ckpt_*.pt"``); the matches of a pattern are
                sorted naturally (``ckpt_2`` before ``ckpt_10``).
            weights_only: read with ``torch.load(weights_only=True)``; ``False`` unpickles
                arbitrary objects and can run code: trusted files only.
            model: when given, every checkpoint is loaded into a copy of it (the model itself is
                not touched), so names follow the model (a ``module.`` prefix is removed), shapes
                are checked, and ``ignore="bn"`` finds normalisation layers by type.
            params: only these parameter names or globs.

        The step of each snapshot is the last number in its file name when every name has one
        and they increase, else its position.
        """
        files = checkpoint_files(paths)
        template = None if model is None else copy.deepcopy(model)
        snapshots = []
        for file in files:
            if template is None:
                tensors = parameters_of(load_state_dict_file(file, weights_only=weights_only))
            else:
                tensors = dict(
                    load_checkpoint(template, file, weights_only=weights_only).named_parameters()
                )
            chosen = select_names(list(tensors), params)
            snapshots.append({n: tensors[n].detach().to("cpu", copy=True) for n in chosen})
        norm_names = None if model is None else norm_layer_parameter_names(model)
        meta = {"source": "checkpoints", "files": [str(f) for f in files]}
        return cls(snapshots, _steps_from_names(files), norm_names=norm_names, meta=meta)


register_reader(FORMAT, Trajectory.load)


def checkpoint_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and glob patterns into a list of files.

    The matches of each pattern are sorted naturally (numbers by value: ``ckpt_2`` before
    ``ckpt_10``); the patterns and plain files keep the order given.

    Raises:
        InputError: a pattern matches no file, or a named file does not exist.
    """
    entries = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not entries:
        raise InputError("no checkpoint files given")
    files: list[Path] = []
    for entry in entries:
        text = str(entry)
        if glob.has_magic(text):
            matches = sorted((m for m in glob.glob(text) if os.path.isfile(m)), key=_natural_key)
            if not matches:
                raise InputError(f"pattern {text!r} matches no file; check the folder and pattern")
            files.extend(Path(m) for m in matches)
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise InputError(f"checkpoint {text!r} does not exist (or is not a file)")
    return files


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _steps_from_names(files: Sequence[Path]) -> list[int]:
    numbers = [re.findall(r"\d+", f.stem) for f in files]
    if all(numbers):
        steps = [int(found[-1]) for found in numbers]
        if all(a < b for a, b in itertools.pairwise(steps)):
            return steps
    return list(range(len(files)))


def _snapshot(params: nn.Module | Mapping[str, torch.Tensor]) -> TensorDict:
    tensors = parameters_of(params)
    if not tensors:
        raise InputError("a snapshot needs at least one floating-point parameter tensor")
    return {n: t.detach().to("cpu", copy=True) for n, t in tensors.items()}


def _in_layout(layout: Layout, tensors: TensorDict) -> TensorDict:
    """``tensors`` in the trajectory's name order, after checking names and shapes."""
    missing = [n for n in layout if n not in tensors]
    extra = [n for n in tensors if n not in layout]
    if missing or extra:
        raise InputError(
            f"a snapshot's parameter names differ from the trajectory's: missing {missing[:10]}, "
            f"unexpected {extra[:10]}"
        )
    wrong = [
        f"{n}: {tuple(t.shape)} vs {layout[n][0]}"
        for n, t in tensors.items()
        if tuple(t.shape) != layout[n][0]
    ]
    if wrong:
        raise InputError(f"a snapshot's shapes differ from the trajectory's: {wrong[:10]}")
    return {n: tensors[n] for n in layout}


def as_trajectory(trajectory: TrajectoryLike) -> Trajectory:
    """``trajectory`` itself, or a list of state dicts / models as an in-memory trajectory."""
    if isinstance(trajectory, Trajectory):
        return trajectory
    if isinstance(trajectory, (str, Path, Mapping, nn.Module)) or not isinstance(
        trajectory, Iterable
    ):
        raise InputError(
            f"expected a Trajectory or a list of state dicts, got {type(trajectory).__name__}"
        )
    return Trajectory(list(trajectory))
