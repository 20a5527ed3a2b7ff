"""One writer per surface file: ``<store>.lock``, created exclusively and held for the whole run.

The lock file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (it never follows or replaces a
planted symlink) and holds the owner's pid, host and start time as JSON. A second writer is
refused with a :class:`~lossvista.errors.StoreError` naming the file and the owner. A lock left
by a process that no longer exists on this host (a run killed with SIGKILL, a machine that
crashed) is stale: it is taken over with a warning. A lock from another host cannot be checked
and is respected; the message says how to remove it.

The lock is re-entrant within a process (a grid run that saves its result takes it once).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._checks import caller_stacklevel
from .errors import LossvistaWarning, StoreError

_HELD: dict[str, int] = {}  # lock path -> depth, for the locks this process holds
_OWNED: dict[str, tuple[int, int]] = {}  # lock path -> (device, inode) of the file we created
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def lock_path(store: Path) -> Path:
    """``<store>.lock`` next to the store."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


@contextlib.contextmanager
def store_lock(store: str | Path) -> Iterator[Path]:
    """Hold ``<store>.lock`` while the block runs (removed on exit, also after Ctrl-C)."""
    path = lock_path(Path(store))
    key = os.path.abspath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    _acquire(path, Path(store))
    _HELD[key] = 1
    try:
        yield path
    finally:
        del _HELD[key]
        _release(path)


def _owner_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "started": _start_time(os.getpid()),
        "host": socket.gethostname(),
        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def _acquire(path: Path, store: Path) -> None:
    record = _owner_record()
    for _ in range(3):
        created = _create(path, record, store)
        if created is not None:
            _OWNED[os.path.abspath(path)] = created
            return
        owner = _read_settled(path, store)
        if owner is None:
            continue  # removed between our attempt and the read: try again
        if not _is_stale(owner):
            raise StoreError(_held_message(store, path, owner))
        if _take_over(path, owner):
            warnings.warn(
                f"{str(path)!r} was left by process {owner.get('pid')} on this host, which no "
                "longer runs (killed?); taking the store over",
                LossvistaWarning,
                stacklevel=caller_stacklevel(),
            )
    raise StoreError(
        f"cannot lock {str(store)!r}: other processes keep creating {str(path)!r}; "
        "make sure only one run writes this store"
    )


def _create(path: Path, record: dict[str, Any], store: Path) -> tuple[int, int] | None:
    """Create the lock exclusively; ``(device, inode)`` of the new file, or None if it exists."""
    try:
        fd = os.open(path, _FLAGS, 0o644)
    except FileExistsError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a symlink: _read refuses it with a message
        raise StoreError(
            f"cannot create the lock file {str(path)!r} for {str(store)!r}: {exc.strerror}; "
            "choose a folder you can write to"
        ) from exc
    try:
        info = os.fstat(fd)
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                os.unlink(path)
                raise StoreError(
                    f"cannot write the lock file {str(path)!r} for {str(store)!r}: {exc.strerror}"
                ) from exc
            # A full disk: the empty lock still keeps other writers out (they are told it is
            # empty), and a resume on a full disk writes only into space the file already has.
    finally:
        os.close(fd)
    return info.st_dev, info.st_ino


def _read(path: Path, store: Path) -> dict[str, Any] | None:
    """The owner record of an existing lock; refuses a symlink or a file that is not a lock."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"the lock file of {str(store)!r}, {str(path)!r}, is a symbolic link; lossvista "
                "never writes through links there. Remove the link and run again"
            ) from exc
        raise StoreError(f"cannot read the lock file {str(path)!r}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(4096)
    except OSError as exc:
        raise StoreError(f"cannot read the lock file {str(path)!r}: {exc.strerror}") from exc
    try:
        owner = json.loads(text)
        int(owner["pid"])
    except (ValueError, KeyError, TypeError):
        # Empty or partial: a writer between create and write, or a crash in that instant.
        return {"pid": None, "host": None, "unreadable": True}
    return dict(owner)


def _read_settled(path: Path, store: Path, wait: float = 1.0) -> dict[str, Any] | None:
    """:func:`_read`, waiting up to ``wait`` seconds for a lock that is still empty: its owner
    creates the file and then writes its record, and a reader may come in between."""
    deadline = time.monotonic() + wait
    owner = _read(path, store)
    while owner is not None and owner.get("unreadable") and time.monotonic() < deadline:
        time.sleep(0.02)
        owner = _read(path, store)
    return owner


def _is_stale(owner: dict[str, Any]) -> bool:
    """True when the owner ran on this host and is gone (or its pid now names another
    process: the start time differs)."""
    if owner.get("unreadable") or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return True  # not held by this process (_HELD): left by an earlier one with our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    started = owner.get("started")
    return started is not None and _start_time(pid) not in (None, started)


def _start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _take_over(path: Path, owner: dict[str, Any]) -> bool:
    """Move a stale lock aside (atomically), check it is still the stale one, then delete it."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another process took it over first
    try:
        moved = _read(aside, path)
    except StoreError:
        moved = None
    if moved is not None and moved.get("token") != owner.get("token"):
        # Someone replaced the stale lock with a live one in between: put it back.
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _release(path: Path) -> None:
    """Remove the lock this process created (never one that replaced it)."""
    owned = _OWNED.pop(os.path.abspath(path), None)
    try:
        info = os.lstat(path)
    except OSError:
        return
    if owned == (info.st_dev, info.st_ino):
        path.unlink(missing_ok=True)


def _held_message(store: Path, path: Path, owner: dict[str, Any]) -> str:
    if owner.get("unreadable"):
        who = "another process (its lock file is empty or damaged)"
    else:
        who = f"process {owner.get('pid')} on {owner.get('host')!s} since {owner.get('since')}"
    return (
        f"{str(store)!r} is being written by {who}; lock file {str(path)!r}. Wait for that run "
        "to finish (it keeps every finished point; run the same call again afterwards to "
        "resume), or write to another store. If no such run exists any more, delete the lock "
        "file"
    )
