"""Where a :class:`~lossvista.trajectory.Trajectory` keeps its snapshots: CPU tensors in memory, or
an HDF5 trajectory file read lazily (the file layout is in the docstring of
:mod:`lossvista.trajectory.container`).

Files are created through :func:`lossvista._hdf5.create_file` (complete or not there at all) and
opened through :func:`lossvista._hdf5.open_file` (every failure a ``StoreError`` naming the file).
Both sources answer the same few calls (``len``, ``read``, ``block``, ``step_array``, ``extend``)
so that the trajectory does not care where its snapshots live.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _hdf5
from .._json import json_ready
from .._version import __version__
from ..errors import StoreError
from ..params import TensorDict

FORMAT = "lossvista-trajectory"
FORMAT_VERSION = 1
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]
_WHAT = "trajectory file"


class MemorySnapshots:
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


class FileSnapshots:
    """Snapshots in an HDF5 trajectory file, read lazily."""

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
    ) -> FileSnapshots:
        """Write a new file (replacing any file at ``path``, atomically) holding ``items``."""

        def fill(f: Any) -> None:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["lossvista_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            f.attrs["names"] = json.dumps(list(layout))
            f.attrs["norm_names"] = json.dumps(None if norm_names is None else sorted(norm_names))
            f.attrs["meta"] = json.dumps(json_ready(meta), sort_keys=True)
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

        _hdf5.create_file(path, fill, what=_WHAT)
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
        return _hdf5.open_file(self.path, mode, what=_WHAT)


def _append(f: Any, layout: Layout, items: Iterable[tuple[TensorDict, int]]) -> None:
    for tensors, step in items:
        index = f["steps"].shape[0]
        f["steps"].resize((index + 1,))
        f["steps"][index] = step
        for name in layout:
            dataset = f["params"][name]
            dataset.resize((index + 1, *dataset.shape[1:]))
            dataset[index] = _numpy(tensors[name])


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
