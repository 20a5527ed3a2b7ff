"""The one HDF5 helper: every file lossvista writes or reads goes through here.

- :func:`open_file` opens an existing file and turns every failure into a :class:`StoreError`
  that names the file (missing, unreadable or damaged, locked by another writer, disk full, ...).
- :func:`allocated_dataset` creates a dataset whose space is reserved (and filled) when the file
  is written, so later writes into it only overwrite bytes in place: they never need disk space
  and cannot leave the file unreadable when the disk is full.
- :func:`create_file` writes a new file next to its target under an unpredictable name
  (``tempfile.mkstemp``: created exclusively, never through a planted symlink) and moves it into
  place with ``os.replace`` only once it is complete, so a reader never sees half a file;
  :func:`atomic_write` does the same for any file (JSON results, directions).
- :func:`write_tree` / :func:`read_tree` keep a result's state in a group: arrays and tensors
  become datasets, mappings and sequences holding arrays become groups, everything else is
  stored as lossless JSON (see :mod:`lossvista._json`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import _json
from .errors import LossvistaError, StoreError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_JSON_ATTR = "__json__"
_SEQUENCE_ATTR = "__sequence__"
_TENSOR_ATTR = "__tensor_dtype__"
_ATTR_LIMIT = 30_000  # longer JSON goes into a string dataset (HDF5 attributes are capped ~64 KiB)


def h5py() -> Any:
    """The h5py module, imported lazily (it is only needed when files are touched)."""
    import h5py as module

    return module


def is_hdf5(path: str | Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def describe_os_error(exc: BaseException, path: str | Path | None = None) -> str:
    """A sentence for a failed read or write, with the remedy where there is one."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(exc) or "errno = 28" in str(exc):
        where = ""
        if path is not None:
            folder = Path(path).parent if str(Path(path).parent) else Path(".")
            where = f" (the disk holding {str(folder.resolve())!r}{_free_space(folder)})"
        return (
            f"the disk is full{where}; free some space and run the same command again: "
            "everything finished before is kept in the file and the run resumes from there"
        )
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a folder you can write to"
    text = str(exc).lower()
    if "unable to lock file" in text or "file locking" in text:
        return "another process has the file open for writing; wait for it to finish or use another path"
    if isinstance(exc, (RuntimeError, KeyError, ValueError)) or any(
        word in text for word in ("signature", "truncated", "bad ", "corrupt", "wrong b-tree")
    ):
        return (
            f"the file is damaged or was not written by lossvista ({exc}); restore it from a "
            "copy or write a new one"
        )
    return str(exc)


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f", {free / 1e6:.1f} MB free"


def allocated_dataset(
    group: Any,
    name: str,
    *,
    shape: tuple[int, ...],
    dtype: Any,
    fillvalue: Any,
    data: Any = None,
) -> Any:
    """A contiguous dataset whose space is allocated (and filled) when it is created."""
    h5 = h5py()
    dcpl = h5.h5p.create(h5.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5.h5d.ALLOC_TIME_EARLY)
    return group.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        data=data,
        fillvalue=fillvalue,
        dcpl=dcpl,
        track_times=False,
    )


def is_allocated(dataset: Any) -> bool:
    """True when a contiguous dataset's space is reserved in the file (writes go in place)."""
    if dataset.chunks is not None:
        return False
    return int(dataset.id.get_storage_size()) >= int(dataset.size) * dataset.dtype.itemsize


@contextlib.contextmanager
def open_file(path: str | Path, mode: str = "r", *, what: str = "lossvista file") -> Iterator[Any]:
    """Open an existing HDF5 file; every failure (also inside the block) is a :class:`StoreError`."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise StoreError(f"{what} {str(path)!r} does not exist")
    try:
        handle = h5py().File(path, mode)
    except (OSError, ValueError, RuntimeError) as exc:
        raise StoreError(
            f"cannot open {what} {str(path)!r}: {describe_os_error(exc, path)}"
        ) from exc
    verb = "read" if mode == "r" else "write"
    try:
        with handle:
            yield handle
    except LossvistaError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        # h5py reports a damaged file as any of these ("bad heap free list", "bad symbol
        # table", a missing object, an attribute of an unexpected type).
        raise StoreError(
            f"cannot {verb} {what} {str(path)!r}: {describe_os_error(exc, path)}"
        ) from exc


def create_file(
    path: str | Path, fill: Callable[[Any], None], *, what: str = "lossvista file"
) -> Path:
    """Write a new HDF5 file at ``path`` with ``fill(handle)``, atomically (replacing any file)."""

    def write(handle: BinaryIO) -> None:
        with h5py().File(handle, "w") as f:
            fill(f)

    return atomic_write(path, write, what=what)


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], None], *, what: str = "lossvista file"
) -> Path:
    """Write a file through ``write(handle)`` so that ``path`` is either untouched or complete.

    The bytes go to an unpredictable temporary name in the target's folder (``mkstemp``: created
    exclusively, never through a planted symlink), which replaces ``path`` only once complete.
    Every failure is a :class:`StoreError` naming the file (disk full: with the remedy).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StoreError(
            f"cannot write {what} {str(path)!r}: folder {str(folder)!r} does not exist"
        )
    if path.is_dir():
        raise StoreError(f"cannot write {what} {str(path)!r}: it is a directory; give a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise StoreError(
            f"cannot write {what} {str(path)!r}: {describe_os_error(exc, path)}"
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "r+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, ValueError, RuntimeError)) and not isinstance(
            exc, LossvistaError
        ):
            raise StoreError(
                f"cannot write {what} {str(path)!r}: {describe_os_error(exc, path)}"
            ) from exc
        raise
    return path


def usual_permissions(path: Path) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode a plain ``open`` would have given."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_json_attr(node: Any, name: str, value: Any) -> None:
    text = _json.dumps(value)
    if len(text) <= _ATTR_LIMIT:
        node.attrs[name] = text
    else:
        node.create_dataset(name, data=np.bytes_(text.encode("utf-8"))).attrs[_JSON_ATTR] = 1


def read_json_attr(node: Any, name: str) -> Any:
    if name in node.attrs:
        return _json.loads(_text(node.attrs[name]))
    return _json.loads(_text(node[name][()]))


def write_tree(group: Any, state: Mapping[str, Any]) -> None:
    """Store a result's state (a mapping) in ``group``."""
    for key, value in state.items():
        _write_node(group, str(key), value)


def read_tree(group: Any) -> dict[str, Any]:
    """The mapping :func:`write_tree` stored in ``group``."""
    out: dict[str, Any] = {}
    for name in group.attrs:
        if not name.startswith("__"):
            out[name] = _json.loads(_text(group.attrs[name]))
    for name, node in group.items():
        out[name] = _read_node(node)
    return out


def _write_node(group: Any, key: str, value: Any) -> None:
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        write_json_attr(group, key, value)  # text arrays: HDF5 has no portable unicode arrays
    elif _is_tensor(value) or isinstance(value, np.ndarray):
        _write_array(group, key, value)
    elif (
        isinstance(value, Mapping)
        and _holds_array(value)
        and all(isinstance(k, str) for k in value)
    ):
        sub = group.create_group(key, track_order=True)
        write_tree(sub, value)
    elif isinstance(value, (list, tuple)) and _holds_array(value):
        sub = group.create_group(key, track_order=True)
        sub.attrs[_SEQUENCE_ATTR] = "tuple" if isinstance(value, tuple) else "list"
        for i, item in enumerate(value):
            _write_node(sub, str(i), item)
    else:
        write_json_attr(group, key, value)


def _write_array(group: Any, key: str, value: Any) -> None:
    tensor_dtype = None
    if _is_tensor(value):
        tensor_dtype = str(value.dtype).removeprefix("torch.")
        value = value.detach().cpu()
        value = (
            value.double() if value.is_floating_point() and value.element_size() < 4 else value
        ).numpy()
    dataset = group.create_dataset(key, data=value)
    if tensor_dtype is not None:
        dataset.attrs[_TENSOR_ATTR] = tensor_dtype


def _read_node(node: Any) -> Any:
    if hasattr(node, "shape"):  # a dataset
        if _JSON_ATTR in node.attrs:
            return _json.loads(_text(node[()]))
        array = np.asarray(node[()])
        if _TENSOR_ATTR in node.attrs:
            import torch

            dtype = getattr(torch, _text(node.attrs[_TENSOR_ATTR]))
            # ascontiguousarray makes a 0-d array 1-d: keep the stored shape
            return torch.from_numpy(np.ascontiguousarray(array)).reshape(array.shape).to(dtype)
        return array
    if _SEQUENCE_ATTR in node.attrs:
        items = read_tree(node)
        ordered = [items[str(i)] for i in range(len(items))]
        return tuple(ordered) if _text(node.attrs[_SEQUENCE_ATTR]) == "tuple" else ordered
    return read_tree(node)


def _holds_array(value: Any) -> bool:
    if _is_tensor(value) or isinstance(value, np.ndarray):
        return True
    if isinstance(value, Mapping):
        return any(_holds_array(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_array(v) for v in value)
    return False


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def write_tensor(group: Any, name: str, tensor: Any) -> None:
    """A direction's tensor; dtypes numpy lacks (bfloat16) are stored as float32, which holds
    them exactly, with the torch dtype in the attribute ``torch_dtype`` to restore on reading."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        dataset = group.create_dataset(name, data=tensor.float().numpy(), track_times=False)
        dataset.attrs["torch_dtype"] = "bfloat16"
    else:
        group.create_dataset(name, data=tensor.numpy(), track_times=False)


def check_writable(path: Path) -> None:
    """Fail early, with the reason, when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise StoreError(f"store path {str(path)!r} is a directory; name a file such as surf.h5")
    if not parent.exists():
        raise StoreError(
            f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"cannot write {str(path)!r}: permission denied; choose a writable path")
