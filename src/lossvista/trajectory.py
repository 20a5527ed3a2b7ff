"""Training trajectories: record parameters, PCA directions, projections, non-linear reductions.

A :class:`Trajectory` is a sequence of parameter snapshots (``{name: tensor}`` on the CPU) with the
training step of each. It comes from a :class:`TrajectoryRecorder` inside a training loop (kept in
memory or appended to an HDF5 file), from checkpoint files (:meth:`Trajectory.from_checkpoints`),
or from a list of state dicts.

**PCA directions** (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets", §7). Let
``M`` be the ``P x D`` float64 matrix whose rows are the snapshots restricted to the parameters
that are not ignored (columns: the flattened parameters in name order). With
``center="final"`` the rows are taken relative to the last snapshot, ``A = M - 1 m_P^T``; with
``center="mean"`` relative to their mean, ``A = M - 1 mean(M)^T`` (classical PCA). For the thin
SVD ``A = U S V^T`` (``s_1 >= s_2 >= ...``):

- direction ``k`` is the right singular vector ``v_k`` (unit norm; its largest-magnitude entry is
  made positive, scikit-learn's sign convention), zero on ignored parameters;
- ``explained_variance_[k] = s_k^2 / (P - 1)`` and
  ``explained_variance_ratio_[k] = s_k^2 / sum_j s_j^2 = s_k^2 / ||A||_F^2``.

For ``center="mean"`` these are exactly ``sklearn.decomposition.PCA`` on ``M``. For
``center="final"`` they are the principal axes of the second moment about the final point (the
PCA of the zero-mean matrix ``[A; -A]``), so the final model sits at the origin of the plane, as
in the 2018 paper. They are computed from the ``P x P`` Gram matrix ``A A^T``, accumulated one
parameter at a time, so memory grows with ``P^2`` and one parameter, never with ``P x D``.

**Projection**: the coordinates of a snapshot ``theta`` on directions ``d_1..d_n`` around an
origin ``o`` are the least-squares solution ``c = G^{-1} b`` with the Gram matrix
``G_ij = <d_i, d_j>`` and ``b_i = <d_i, theta - o>``; they are exact for points of the plane even
when the directions are not orthogonal, and ``residual_norm = ||theta - o - sum_i c_i d_i||`` says
how far a snapshot is from it.

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
import dataclasses
import datetime as _dt
import glob
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import load_checkpoint, load_state_dict_file
from .directions import Direction, as_direction
from .errors import DirectionError, InputError, StoreError
from .params import (
    TensorDict,
    ignored_names,
    norm_layer_parameter_names,
    parameters_of,
    select_names,
)
from .store import check_writable

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch.utils.hooks import RemovableHandle

__all__ = [
    "PCADirections",
    "Projection",
    "Trajectory",
    "TrajectoryEmbedding",
    "TrajectoryRecorder",
    "checkpoint_files",
    "pca_directions",
    "project",
    "reduce_trajectory",
    "span_covering",
]

Center = Literal["final", "mean"]
Method = Literal["pca", "umap", "autoencoder"]
Ignore = str | Iterable[str] | None
TrajectoryLike = Any  # a Trajectory or a sequence of state dicts / models

FORMAT = "lossvista-trajectory"
FORMAT_VERSION = 1
_CENTERS = ("final", "mean")
_METHODS = ("pca", "umap", "autoencoder")
#: Eigenvalues of the Gram matrix below this fraction of the largest one count as zero.
_RANK_RTOL = 1e-12
_UMAP_MISSING = "method='umap' needs the optional package umap-learn: pip install umap-learn"
_AUTOENCODER_DEFAULTS = {"hidden": 64, "epochs": 2000, "lr": 1e-2}
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


# -- storage of snapshots ----------------------------------------------------------------------------
class _MemorySnapshots:
    """Snapshots kept as CPU tensors."""

    path = None

    def __init__(self) -> None:
        self.snapshots: list[TensorDict] = []
        self.steps: list[int] = []

    def __len__(self) -> int:
        return len(self.steps)

    def read(self, index: int) -> TensorDict:
        return dict(self.snapshots[index])

    def block(self, name: str, numel: int) -> np.ndarray:
        if not self.snapshots:
            return np.zeros((0, numel))
        return np.stack([s[name].double().reshape(-1).numpy() for s in self.snapshots])

    def step_array(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.int64)

    def extend(self, items: Iterable[tuple[TensorDict, int]]) -> None:
        for tensors, step in items:
            self.snapshots.append(tensors)
            self.steps.append(step)


class _FileSnapshots:
    """Snapshots in an HDF5 trajectory file (layout in the module docstring), read lazily."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._open("r") as f:
            if f.attrs.get("format") != FORMAT:
                raise StoreError(
                    f"{str(self.path)!r} is not a lossvista trajectory file (no "
                    f"format={FORMAT!r} attribute)"
                )
            version = int(f.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise StoreError(
                    f"{str(self.path)!r} uses trajectory format {version}; this lossvista reads up "
                    f"to {FORMAT_VERSION}: upgrade lossvista"
                )
            names = json.loads(f.attrs["names"])
            group = f["params"]
            self.layout: Layout = {
                n: (tuple(group[n].shape[1:]), _dtype(group[n].attrs["dtype"])) for n in names
            }
            norm = json.loads(f.attrs["norm_names"])
            self.norm_names = None if norm is None else frozenset(norm)
            self.meta = json.loads(f.attrs["meta"])

    @classmethod
    def create(
        cls,
        path: Path,
        layout: Layout,
        norm_names: frozenset[str] | None,
        meta: Mapping[str, Any],
        items: Iterable[tuple[TensorDict, int]] = (),
    ) -> _FileSnapshots:
        """Write a new file (replacing any file at ``path``) holding ``items``."""
        path = Path(path)
        check_writable(path)
        tmp = path.with_name(path.name + ".tmp")
        h5py = _h5py()
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["lossvista_version"] = __version__
                f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
                f.attrs["names"] = json.dumps(list(layout))
                f.attrs["norm_names"] = json.dumps(
                    None if norm_names is None else sorted(norm_names)
                )
                f.attrs["meta"] = json.dumps(_plain(meta), sort_keys=True)
                f.create_dataset("steps", shape=(0,), maxshape=(None,), dtype="i8")
                group = f.create_group("params")
                for name, (shape, dtype) in layout.items():
                    dataset = group.create_dataset(
                        name,
                        shape=(0, *shape),
                        maxshape=(None, *shape),
                        dtype=_storage_dtype(dtype),
                        chunks=(1, *shape) if shape else (64,),
                    )
                    dataset.attrs["dtype"] = str(dtype)
                _append(f, layout, items)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot create trajectory file {str(path)!r}: {exc}") from exc
        return cls(path)

    def __len__(self) -> int:
        with self._open("r") as f:
            return int(f["steps"].shape[0])

    def read(self, index: int) -> TensorDict:
        with self._open("r") as f:
            group = f["params"]
            return {
                n: torch.from_numpy(np.asarray(group[n][index])).to(dtype)
                for n, (_, dtype) in self.layout.items()
            }

    def block(self, name: str, numel: int) -> np.ndarray:
        with self._open("r") as f:
            values = f["params"][name][()]
        return np.asarray(values, dtype=np.float64).reshape(values.shape[0], numel)

    def step_array(self) -> np.ndarray:
        with self._open("r") as f:
            return np.asarray(f["steps"][()], dtype=np.int64)

    def extend(self, items: Iterable[tuple[TensorDict, int]]) -> None:
        with self._open("r+") as f:
            _append(f, self.layout, items)
            f.flush()

    def _open(self, mode: str) -> Any:
        try:
            return _h5py().File(self.path, mode)
        except OSError as exc:
            raise StoreError(f"cannot open trajectory file {str(self.path)!r}: {exc}") from exc


def _append(f: Any, layout: Layout, items: Iterable[tuple[TensorDict, int]]) -> None:
    for tensors, step in items:
        index = f["steps"].shape[0]
        f["steps"].resize((index + 1,))
        f["steps"][index] = step
        for name in layout:
            dataset = f["params"][name]
            dataset.resize((index + 1, *dataset.shape[1:]))
            dataset[index] = _numpy(tensors[name])


# -- the trajectory ----------------------------------------------------------------------------------
class Trajectory(Sequence[TensorDict]):
    """Parameter snapshots ``{name: tensor}`` (on the CPU) and the training step of each.

    ``trajectory[i]`` is snapshot ``i`` (a dict; do not modify its tensors in place),
    ``trajectory[a:b]`` an in-memory trajectory of some of them, ``len(trajectory)`` their number.
    A trajectory read from (or recorded into) an HDF5 file reads snapshots lazily from it.

    Args:
        snapshots: models or mappings name -> tensor (state dicts: only floating-point entries that
            are not BatchNorm buffers are kept). Every snapshot must have the same names and shapes.
        steps: the step of each snapshot; default ``0, 1, 2, ...``.
        norm_names: names of the parameters of normalisation layers (for ``ignore="bn"``); when
            ``None``, ``"bn"`` means every 1-D tensor that is not a bias.
        meta: where the snapshots came from (JSON-friendly).
    """

    def __init__(
        self,
        snapshots: Iterable[nn.Module | Mapping[str, torch.Tensor]] = (),
        steps: Iterable[int] | None = None,
        *,
        norm_names: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._source: _MemorySnapshots | _FileSnapshots = _MemorySnapshots()
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
    def _on_file(cls, source: _FileSnapshots) -> Trajectory:
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

    def __getitem__(self, index: Any) -> Any:
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
        self._source.extend([(tensors, _integer(step, "step"))])

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the trajectory to an HDF5 file (layout in the module docstring)."""
        path = Path(path)
        if self.path is not None and path.resolve() == self.path.resolve():
            return path  # already there
        if not self._layout:
            raise InputError("cannot save an empty trajectory")
        steps = self.steps
        items = ((self[i], int(steps[i])) for i in range(len(self)))
        _FileSnapshots.create(path, self._layout, self.norm_names, self.meta, items)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        """Open a trajectory file; snapshots are read from it when used."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"trajectory file {str(path)!r} does not exist")
        return cls._on_file(_FileSnapshots(path))

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
        return cls._on_file(_FileSnapshots.create(Path(path), dict(layout), norm, meta or {}))

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


# -- recording ---------------------------------------------------------------------------------------
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
        self.every = _integer(every, "every", minimum=1)
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
        step = self._calls if step is None else _integer(step, "step")
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
        self._take(_integer(step, "step"))
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
        handle = optimizer.register_step_post_hook(lambda *_: self.record())
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


# -- PCA directions ----------------------------------------------------------------------------------
class PCADirections(tuple):
    """Principal directions of a trajectory: a tuple of :class:`~lossvista.Direction`.

    Usable wherever directions are (``lv.plane(obj, pca_dirs)``), when the objective's model sits
    at ``origin``. Attributes follow scikit-learn's names (module docstring for the definitions).

    Attributes:
        explained_variance_: ``s_k^2 / (P - 1)`` for each direction.
        explained_variance_ratio_: ``s_k^2 / ||A||_F^2``: the share of the trajectory's spread
            (about the centre) along each direction.
        singular_values_: ``s_k``.
        origin: the centre, name -> tensor over every parameter of the trajectory (the final
            snapshot for ``center="final"``, the mean snapshot for ``"mean"``).
        center: ``"final"`` or ``"mean"``.
        steps: the steps of the snapshots the directions were computed from.
    """

    def __new__(
        cls,
        directions: Iterable[Direction] = (),
        *,
        explained_variance_: Any = (),
        explained_variance_ratio_: Any = (),
        singular_values_: Any = (),
        origin: Mapping[str, torch.Tensor] | None = None,
        center: Center = "final",
        steps: Any = (),
    ) -> PCADirections:
        self = super().__new__(cls, tuple(directions))
        self.explained_variance_ = np.asarray(explained_variance_, dtype=np.float64)
        self.explained_variance_ratio_ = np.asarray(explained_variance_ratio_, dtype=np.float64)
        self.singular_values_ = np.asarray(singular_values_, dtype=np.float64)
        self.origin = dict(origin or {})
        self.center = center
        self.steps = np.asarray(steps, dtype=np.int64)
        return self

    @property
    def axis_labels(self) -> tuple[str, ...]:
        """``("PC1 (83.2%)", "PC2 (9.1%)", ...)``."""
        return tuple(
            f"PC{i + 1} ({100 * r:.1f}%)" for i, r in enumerate(self.explained_variance_ratio_)
        )

    def __repr__(self) -> str:
        return f"PCADirections({len(self)} directions, center={self.center!r}: {', '.join(self.axis_labels)})"


def pca_directions(
    trajectory: TrajectoryLike,
    n: int = 2,
    *,
    center: Center = "final",
    ignore: Ignore = ("bias", "bn"),
) -> PCADirections:
    """The ``n`` principal directions of a trajectory (definitions in the module docstring).

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        n: how many directions.
        center: ``"final"`` (relative to the last snapshot, Li et al. 2018) or ``"mean"``
            (classical PCA, equal to scikit-learn's).
        ignore: parameters left out of the PCA, whose directions are zero: ``"bias"``, ``"bn"``,
            globs, or ``()``.

    Returns:
        :class:`PCADirections`: unit-norm, mutually orthogonal directions over every parameter of
        the trajectory, in the snapshots' dtypes, with the explained variance and the origin.

    Raises:
        DirectionError: fewer than ``n + 1`` snapshots, or snapshots that span fewer than ``n``
            dimensions; ``ignore`` leaving nothing.
    """
    traj, names = _prepare(trajectory, n, ignore)
    center = _check_center(center)
    spectrum = _Spectrum.of(traj, names, center)
    spectrum.require_rank(n)
    axes, _, _ = _principal_axes(traj, names, center, spectrum, n)
    ratio = spectrum.values[:n] / spectrum.total
    meta = {"kind": "pca", "norm": None, "center": center, "ignore": _plain(ignore)}
    directions = []
    for k in range(n):
        tensors = {}
        for name in traj.names:
            shape, dtype = traj._layout[name]
            if name in axes:
                tensors[name] = torch.from_numpy(axes[name][k].copy()).reshape(shape).to(dtype)
            else:
                tensors[name] = torch.zeros(shape, dtype=dtype)
        info = {**meta, "index": k, "explained_variance_ratio": float(ratio[k])}
        directions.append(Direction(tensors, info))
    return PCADirections(
        directions,
        explained_variance_=spectrum.values[:n] / (len(traj) - 1),
        explained_variance_ratio_=ratio,
        singular_values_=np.sqrt(spectrum.values[:n]),
        origin=_reference_snapshot(traj, center),
        center=center,
        steps=traj.steps,
    )


@dataclasses.dataclass
class _Spectrum:
    """Eigen-decomposition of the Gram matrix ``K = A A^T`` of the centred snapshot matrix."""

    gram: np.ndarray  # (P, P)
    values: np.ndarray  # eigenvalues, descending, >= 0: the squared singular values of A
    vectors: np.ndarray  # (P, P), column k belongs to values[k]
    total: float  # ||A||_F^2 = trace(K)

    @classmethod
    def of(cls, traj: Trajectory, names: Sequence[str], center: Center) -> _Spectrum:
        count = len(traj)
        gram = np.zeros((count, count))
        for _, block in _centred_blocks(traj, names, center):
            gram += block @ block.T
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        return cls(gram, values, vectors[:, order], float(np.trace(gram)))

    @property
    def rank(self) -> int:
        if not self.values.size or self.values[0] <= 0.0:
            return 0
        return int(np.sum(self.values > _RANK_RTOL * self.values[0]))

    def require_rank(self, n: int) -> None:
        if self.rank < n:
            raise DirectionError(
                f"the {len(self.values)} snapshots span only {self.rank} dimension(s) of parameter "
                f"space, fewer than the {n} needed; record more (distinct) snapshots or ask for "
                "fewer dimensions"
            )

    def coordinates(self) -> np.ndarray:
        """``U_r S_r``: the snapshots in the orthonormal basis of their span, ``(P, rank)``."""
        r = self.rank
        return self.vectors[:, :r] * np.sqrt(self.values[:r])


def _centred_blocks(
    traj: Trajectory, names: Iterable[str], center: Center
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, A_block)``: each parameter's ``(P, numel)`` columns of the centred matrix."""
    for name in names:
        block = traj.block(name)
        yield name, block - (block[-1] if center == "final" else block.mean(axis=0))


def _principal_axes(
    traj: Trajectory, names: Sequence[str], center: Center, spectrum: _Spectrum, n: int
) -> tuple[dict[str, np.ndarray], float, np.ndarray]:
    """The top ``n`` right singular vectors per parameter ``(n, numel)``, sign-fixed; the squared
    norm of the part of ``A`` they leave out (``||A - U_n U_n^T A||_F^2``); and the signs applied
    (the scores ``U_n S_n`` take the same ones)."""
    scale = np.sqrt(spectrum.values[:n])
    vectors = spectrum.vectors[:, :n]
    axes, left_out = {}, 0.0
    for name, block in _centred_blocks(traj, names, center):
        inner = vectors.T @ block  # (n, numel) = S_n V_n^T on this block
        axes[name] = inner / scale[:, None]
        left_out += float(np.sum((block - vectors @ inner) ** 2))
    signs = _signs(axes.values(), n)
    return {name: value * signs[:, None] for name, value in axes.items()}, left_out, signs


def _signs(blocks: Iterable[np.ndarray], n: int) -> np.ndarray:
    """+1/-1 per row so that the largest-magnitude entry of each row becomes positive."""
    largest, signs = np.zeros(n), np.ones(n)
    for block in blocks:
        if not block.size:
            continue
        where = np.abs(block).argmax(axis=1)
        value = block[np.arange(n), where]
        bigger = np.abs(value) > largest
        largest = np.where(bigger, np.abs(value), largest)
        signs = np.where(bigger, np.where(value < 0, -1.0, 1.0), signs)
    return signs


def _reference_snapshot(traj: Trajectory, center: Center) -> TensorDict:
    if center == "final":
        return traj[-1]
    return {
        n: torch.from_numpy(traj.block(n).mean(axis=0)).reshape(shape).to(dtype)
        for n, (shape, dtype) in traj._layout.items()
    }


# -- projection ------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Projection:
    """Coordinates of every snapshot of a trajectory on a set of directions.

    Attributes:
        coordinates: ``(P, n)`` float64, the least-squares coordinates of each snapshot.
        steps: ``(P,)`` the snapshots' steps.
        residual_norm: ``(P,)`` distance of each snapshot from the plane ``origin + span(d)``
            (0 up to rounding for snapshots that lie in it), over the directions' parameters.
        axis_labels: one name per direction (``"PC1 (83.2%)"`` for PCA directions).
    """

    coordinates: np.ndarray
    steps: np.ndarray
    residual_norm: np.ndarray
    axis_labels: tuple[str, ...] = ()


def project(
    trajectory: TrajectoryLike,
    directions: Sequence[Mapping[str, torch.Tensor]],
    *,
    origin: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> Projection:
    """The coordinates of every snapshot on ``directions`` around ``origin``.

    The coordinates solve ``min_c ||theta - origin - sum_i c_i d_i||`` through the Gram matrix of
    the directions, so they are exact for snapshots in the plane even when the directions are not
    orthogonal. The trajectory and the model are never changed.

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        directions: directions over (some of) the trajectory's parameters, all with the same
            names; a :class:`PCADirections` gives the axis labels and the default origin.
        origin: the point the coordinates are relative to: a model or mapping name -> tensor
            (``objective.parameters()`` for a plane around the objective's model). Default: the
            origin of :class:`PCADirections`, else the final snapshot.

    Returns:
        A :class:`Projection`.
    """
    traj = _as_trajectory(trajectory)
    if len(traj) == 0:
        raise InputError("the trajectory is empty")
    dirs = _as_directions(directions)
    names = _direction_names(traj, dirs)
    if origin is None:
        origin = getattr(directions, "origin", None) or traj[-1]
    reference = _origin_tensors(origin, traj, names)
    blocks = {n: np.stack([d[n].double().cpu().reshape(-1).numpy() for d in dirs]) for n in names}
    gram = sum(b @ b.T for b in blocks.values())
    if np.linalg.matrix_rank(gram) < len(dirs):
        raise DirectionError("the directions are linearly dependent (or zero); they span no plane")
    # Two passes over the parameters, so that memory holds one parameter's block at a time.
    inner = sum((traj.block(n) - reference[n]) @ blocks[n].T for n in names)  # (P, n)
    coordinates = np.linalg.solve(gram, inner.T).T
    squared = sum(
        np.sum((traj.block(n) - reference[n] - coordinates @ blocks[n]) ** 2, axis=1) for n in names
    )
    labels = getattr(directions, "axis_labels", None) or tuple(
        f"direction {i + 1}" for i in range(len(dirs))
    )
    return Projection(coordinates, traj.steps, np.sqrt(squared), tuple(labels))


def span_covering(coordinates: Any, margin: float = 0.2) -> tuple[tuple[float, float], ...]:
    """A span per axis that covers the points and the origin, with ``margin`` on every side.

    Args:
        coordinates: a ``(P, n)`` array, or an object with such a ``coordinates`` attribute
            (a :class:`Projection`).
        margin: padding on each side, as a fraction of the axis' extent (an axis with no extent
            borrows the largest extent of the others, or 1).

    Returns:
        ``((lo, hi), ...)``, one pair per axis, ready for ``lv.plane(..., span=...)``.
    """
    points = np.asarray(getattr(coordinates, "coordinates", coordinates), dtype=np.float64)
    if points.ndim != 2 or len(points) == 0 or not np.all(np.isfinite(points)):
        raise InputError(
            f"coordinates must be a non-empty finite (P, n) array, got shape {points.shape}"
        )
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise InputError(f"margin must be a finite number >= 0, got {margin!r}")
    lo = np.minimum(points.min(axis=0), 0.0)
    hi = np.maximum(points.max(axis=0), 0.0)
    extent = hi - lo
    fallback = float(extent.max()) if extent.max() > 0 else 1.0
    pad = margin * np.where(extent > 0, extent, fallback)
    pad = np.where(extent + 2 * pad > 0, pad, 0.5 * fallback)  # a span needs lo < hi
    return tuple((float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad))


# -- non-linear reductions -------------------------------------------------------------------------
@dataclasses.dataclass(eq=False, repr=False)
class TrajectoryEmbedding:
    """A low-dimensional picture of a trajectory and how faithful it is.

    Attributes:
        method: ``"pca"``, ``"umap"`` or ``"autoencoder"``.
        embedding: ``(P, n)`` coordinates of the snapshots.
        steps: ``(P,)`` their steps.
        trustworthiness: how well the embedding keeps each snapshot's nearest neighbours (1 is
            perfect; Venna & Kaski 2001, the value of ``sklearn.manifold.trustworthiness``);
            ``None`` for fewer than 3 snapshots.
        n_neighbors: the neighbourhood size of ``trustworthiness``.
        reconstruction_error: mean squared error, per parameter entry, of mapping the embedding
            back to parameter space (PCA and autoencoder; ``None`` for UMAP).
        explained_variance_ratio_: for PCA, the share of variance of each component.
        seed: the seed of randomised methods.
        settings: the method's settings.
    """

    method: str
    embedding: np.ndarray
    steps: np.ndarray
    trustworthiness: float | None
    n_neighbors: int | None
    reconstruction_error: float | None
    explained_variance_ratio_: np.ndarray | None = None
    seed: int | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        trust = "n/a" if self.trustworthiness is None else f"{self.trustworthiness:.4f}"
        error = "n/a" if self.reconstruction_error is None else f"{self.reconstruction_error:.4g}"
        return (
            f"TrajectoryEmbedding({self.method}, {len(self.embedding)} snapshots -> "
            f"{self.embedding.shape[1]}-D, trustworthiness={trust} (k={self.n_neighbors}), "
            f"reconstruction_error={error})"
        )

    @property
    def axis_labels(self) -> tuple[str, ...]:
        if self.explained_variance_ratio_ is not None:
            return tuple(
                f"PC{i + 1} ({100 * r:.1f}%)" for i, r in enumerate(self.explained_variance_ratio_)
            )
        return tuple(f"{self.method} {i + 1}" for i in range(self.embedding.shape[1]))

    def plot(self, ax: Axes | None = None) -> Figure:
        """The first two embedding coordinates as a path coloured by step; returns the figure."""
        if self.embedding.shape[1] < 2:
            raise InputError("plot() needs an embedding with at least 2 dimensions")
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.subplots()[1]
        x, y = self.embedding[:, 0], self.embedding[:, 1]
        ax.plot(x, y, color="grey", linewidth=1, zorder=1)
        points = ax.scatter(x, y, c=self.steps, cmap="viridis", zorder=2)
        ax.figure.colorbar(points, ax=ax, label="step")
        ax.set_xlabel(self.axis_labels[0])
        ax.set_ylabel(self.axis_labels[1])
        trust = (
            "" if self.trustworthiness is None else f", trustworthiness {self.trustworthiness:.3f}"
        )
        ax.set_title(f"trajectory — {self.method}{trust}")
        return ax.figure


def reduce_trajectory(
    trajectory: TrajectoryLike,
    method: Method = "pca",
    n: int = 2,
    *,
    seed: int = 0,
    ignore: Ignore = ("bias", "bn"),
    n_neighbors: int = 5,
    options: Mapping[str, Any] | None = None,
) -> TrajectoryEmbedding:
    """Embed the snapshots in ``n`` dimensions and measure how faithful the embedding is.

    Every method works on the snapshots expressed exactly in the orthonormal basis of their
    (at most ``P - 1``-dimensional) centred span, an isometry of parameter space computed from
    the Gram matrix, so the cost grows with the number of snapshots, not the model size.

    - ``"pca"``: classical (mean-centred) PCA, equal to scikit-learn's ``PCA``; the embedding
      equals :func:`project` on ``pca_directions(..., center="mean")`` around the mean.
      ``reconstruction_error`` is the exact MSE of the inverse transform.
    - ``"autoencoder"``: a seeded MLP autoencoder (``span -> hidden -> n -> hidden -> span``,
      tanh, float64, full-batch Adam with a cosine decay of the learning rate) trained on the
      span coordinates, centred and scaled to unit mean square; ``reconstruction_error`` is the
      MSE of its reconstruction in parameter space. It is measured on the snapshots the network
      was trained on: with few snapshots a wide network can memorise them, so read it together
      with ``trustworthiness``. ``options``: ``hidden`` (64), ``epochs`` (2000), ``lr`` (0.01).
    - ``"umap"``: ``umap.UMAP(n_components=n, random_state=seed, n_neighbors=min(15, P - 1),
      **options)`` from the optional package ``umap-learn``; no reconstruction error.

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        method: ``"pca"``, ``"umap"`` or ``"autoencoder"``.
        n: dimensions of the embedding.
        seed: seed of the autoencoder's initialisation and of UMAP.
        ignore: parameters left out, as in :func:`pca_directions`.
        n_neighbors: neighbourhood size of the trustworthiness (scikit-learn's default 5),
            capped at ``(P - 1) // 2`` so that it stays below ``P / 2``.
        options: method-specific settings (above).

    Returns:
        A :class:`TrajectoryEmbedding`.

    Raises:
        ImportError: ``method="umap"`` without umap-learn installed.
    """
    if method not in _METHODS:
        raise InputError(f"method must be one of {list(_METHODS)}, got {method!r}")
    traj, names = _prepare(trajectory, n, ignore)
    _integer(n_neighbors, "n_neighbors", minimum=1)
    options = dict(options or {})
    spectrum = _Spectrum.of(traj, names, "mean")
    entries = len(traj) * sum(math.prod(traj.shapes[name]) for name in names)
    ratio = error = None
    settings: dict[str, Any] = {"ignore": _plain(ignore), "options": _plain(options)}
    if method == "pca":
        spectrum.require_rank(n)
        if options:
            raise InputError(f"method='pca' takes no options, got {sorted(options)}")
        _, left_out, signs = _principal_axes(traj, names, "mean", spectrum, n)
        embedding = spectrum.vectors[:, :n] * np.sqrt(spectrum.values[:n]) * signs
        ratio = spectrum.values[:n] / spectrum.total
        error = left_out / entries
    else:
        spectrum.require_rank(1)
        coordinates = spectrum.coordinates()
        if method == "umap":
            embedding = _umap(coordinates, n, seed, options)
        else:
            embedding, rebuilt = _autoencoder(coordinates, n, seed, options)
            outside_span = max(spectrum.total - float(np.sum(coordinates**2)), 0.0)
            error = (float(np.sum((coordinates - rebuilt) ** 2)) + outside_span) / entries
            settings["options"] = {**_AUTOENCODER_DEFAULTS, **options}
    k = min(int(n_neighbors), (len(traj) - 1) // 2)
    trust = None if k < 1 else _trustworthiness(_distances_from_gram(spectrum.gram), embedding, k)
    return TrajectoryEmbedding(
        method=method,
        embedding=np.asarray(embedding, dtype=np.float64),
        steps=traj.steps,
        trustworthiness=trust,
        n_neighbors=k if k >= 1 else None,
        reconstruction_error=error,
        explained_variance_ratio_=ratio,
        seed=None if method == "pca" else int(seed),
        settings=settings,
    )


def _distances_from_gram(gram: np.ndarray) -> np.ndarray:
    diagonal = np.diag(gram)
    return np.sqrt(np.clip(diagonal[:, None] + diagonal[None, :] - 2.0 * gram, 0.0, None))


def _trustworthiness(high: np.ndarray, embedding: np.ndarray, k: int) -> float:
    """Trustworthiness (Venna & Kaski 2001) from the original distances and an embedding:
    ``1 - 2 / (P k (2P - 3k - 1)) * sum_i sum_{j in U_k(i)} (r(i, j) - k)``, where ``U_k(i)``
    are the embedding's ``k`` nearest neighbours of ``i`` that are not among its ``k`` nearest in
    the original space and ``r(i, j)`` is the rank of ``j`` among ``i``'s original neighbours."""
    count = len(high)
    original = high.copy()
    np.fill_diagonal(original, np.inf)
    order = np.argsort(original, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(count)[:, None]
    ranks[rows, order] = np.arange(1, count + 1)
    low = np.sum((embedding[:, None, :] - embedding[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(low, np.inf)
    neighbours = np.argsort(low, axis=1, kind="stable")[:, :k]
    excess = ranks[rows, neighbours] - k
    penalty = float(np.sum(excess[excess > 0]))
    return 1.0 - penalty * 2.0 / (count * k * (2.0 * count - 3.0 * k - 1.0))


def _umap(coordinates: np.ndarray, n: int, seed: int, options: Mapping[str, Any]) -> np.ndarray:
    try:
        import umap
    except ImportError as exc:
        raise ImportError(_UMAP_MISSING) from exc
    settings = {"n_neighbors": min(15, len(coordinates) - 1), **options}
    reducer = umap.UMAP(n_components=n, random_state=int(seed), **settings)
    return np.asarray(reducer.fit_transform(coordinates), dtype=np.float64)


def _autoencoder(
    coordinates: np.ndarray, n: int, seed: int, options: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Train the autoencoder; returns the codes ``(P, n)`` and the reconstruction ``(P, r)``."""
    unknown = sorted(set(options) - set(_AUTOENCODER_DEFAULTS))
    if unknown:
        raise InputError(
            f"unknown autoencoder options {unknown}; known: {sorted(_AUTOENCODER_DEFAULTS)}"
        )
    settings = {**_AUTOENCODER_DEFAULTS, **options}
    hidden = _integer(settings["hidden"], "hidden", minimum=1)
    epochs = _integer(settings["epochs"], "epochs", minimum=1)
    width = coordinates.shape[1]
    scale = float(np.sqrt(np.mean(coordinates**2))) or 1.0
    inputs = torch.from_numpy(coordinates / scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoder = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, n)).double()
        decoder = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, width)).double()
    optimizer = torch.optim.Adam(
        [*encoder.parameters(), *decoder.parameters()], lr=float(settings["lr"])
    )
    # Decaying to 0 ends on a settled iterate rather than one of Adam's oscillations.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = ((decoder(encoder(inputs)) - inputs) ** 2).mean()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        codes = encoder(inputs)
        rebuilt = decoder(codes) * scale
    return codes.numpy(), rebuilt.numpy()


# -- helpers -----------------------------------------------------------------------------------------
def _h5py() -> Any:
    import h5py  # lazily: only needed when files are touched

    return h5py


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


def _as_trajectory(trajectory: TrajectoryLike) -> Trajectory:
    if isinstance(trajectory, Trajectory):
        return trajectory
    if isinstance(trajectory, (str, Path, Mapping, nn.Module)) or not isinstance(
        trajectory, Iterable
    ):
        raise InputError(
            f"expected a Trajectory or a list of state dicts, got {type(trajectory).__name__}"
        )
    return Trajectory(list(trajectory))


def _prepare(trajectory: TrajectoryLike, n: int, ignore: Ignore) -> tuple[Trajectory, list[str]]:
    """The trajectory, checked to have more than ``n`` snapshots, and its parameters not ignored."""
    traj = _as_trajectory(trajectory)
    n = _integer(n, "n", minimum=1)
    if len(traj) < n + 1:
        raise DirectionError(
            f"the trajectory has {len(traj)} snapshot(s); {n} directions need at least {n + 1}"
        )
    shells = {name: torch.empty(shape, device="meta") for name, shape in traj.shapes.items()}
    norm_names = None if traj.norm_names is None else set(traj.norm_names)
    skipped = ignored_names(shells, ignore, norm_names)
    names = [name for name in traj.names if name not in skipped]
    if not names:
        raise DirectionError(
            f"ignore={ignore!r} leaves no parameter; pass ignore=() to keep them all"
        )
    return traj, names


def _check_center(center: Any) -> Center:
    if center not in _CENTERS:
        raise InputError(f"center must be 'final' or 'mean', got {center!r}")
    return center


def _as_directions(directions: Any) -> list[Direction]:
    if isinstance(directions, Mapping) or not isinstance(directions, Sequence) or not directions:
        raise InputError("directions must be a non-empty sequence of directions (d1, d2, ...)")
    return [as_direction(d) for d in directions]


def _direction_names(traj: Trajectory, dirs: Sequence[Direction]) -> list[str]:
    """The names the projection uses: the directions' names the trajectory has (elsewhere the
    directions must be zero, as they are on parameters left out of a recording)."""
    names = list(dirs[0])
    for i, d in enumerate(dirs):
        if set(d) != set(names):
            raise DirectionError("all directions must cover the same parameter names")
        wrong = [n for n in names if n in traj.shapes and tuple(d[n].shape) != traj.shapes[n]]
        if wrong:
            raise DirectionError(
                f"direction {i + 1} has shapes unlike the trajectory's for {wrong[:10]}"
            )
    missing = [n for n in names if n not in traj.shapes and any(bool(d[n].any()) for d in dirs)]
    if missing:
        raise DirectionError(
            f"the directions move parameters the trajectory lacks: {missing[:10]}; record those "
            "parameters or build the directions on the same model"
        )
    present = [n for n in names if n in traj.shapes]
    if not present:
        raise DirectionError("the directions share no parameter name with the trajectory")
    return present


def _origin_tensors(
    origin: nn.Module | Mapping[str, torch.Tensor], traj: Trajectory, names: Sequence[str]
) -> dict[str, np.ndarray]:
    try:
        tensors = parameters_of(origin)
    except InputError as exc:
        raise InputError(f"origin: {exc}") from exc
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DirectionError(f"origin lacks parameters of the directions: {missing[:10]}")
    out = {}
    for name in names:
        value = tensors[name].detach()
        if tuple(value.shape) != traj.shapes[name]:
            raise DirectionError(
                f"origin {name!r} has shape {tuple(value.shape)}, the trajectory {traj.shapes[name]}"
            )
        out[name] = value.double().cpu().reshape(-1).numpy()
    return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def _storage_dtype(dtype: torch.dtype) -> np.dtype:
    return _numpy(torch.empty(0, dtype=dtype)).dtype


def _dtype(text: Any) -> torch.dtype:
    name = str(text).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise StoreError(f"unknown dtype {text!r} in a trajectory file")
    return value


def _integer(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _plain(value: Any) -> Any:
    """A JSON-friendly copy (sets and tuples become lists, other objects their ``str``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
