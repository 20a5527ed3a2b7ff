"""The engine's tuning choices remembered per :func:`~lossvista._identity.tuning_signature`: in
memory for the process and in a small JSON cache file (``$LOSSVISTA_CACHE_DIR``, else
``$XDG_CACHE_HOME/lossvista``, else ``~/.cache/lossvista``), with the compile measurement that
decides, per grid, whether ``torch.compile`` repays itself. A cache that cannot be read or
written never fails a run (see :mod:`lossvista._tuning`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # pragma: no cover
    from .engine import EngineConfig

#: The options a configuration may add to a plain batching (see :mod:`lossvista._tuning`).
_REFINED = ("fold_batchnorm", "channels_last", "precompute_input", "onednn_linear", "compile")
#: The cache file keeps at most this many choices (the oldest are dropped).
CACHE_ENTRIES = 256
CACHE_FILE = "engine-tuning.json"
_CACHE_FORMAT = "lossvista-tuning-cache"
_MEMORY: dict[str, dict[str, Any]] = {}


def cache_dir() -> Path:
    """``$LOSSVISTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lossvista``, else ``~/.cache/lossvista``."""
    explicit = os.environ.get("LOSSVISTA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lossvista"


def clear_memory() -> None:
    """Forget the choices remembered in this process (the cache file stays)."""
    _MEMORY.clear()


def recall(
    signature: str, candidates: list[EngineConfig], refinements: frozenset[str] = frozenset()
) -> tuple[EngineConfig, float | None] | None:
    """The remembered choice for ``signature`` when it is one of this run's candidates, refined
    only by options in ``refinements`` (see :func:`possible_refinements`)."""
    from .engine import EngineConfig

    entry = _MEMORY.get(signature) or _read_cache().get(signature)
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return None
    try:
        config = EngineConfig.from_dict(entry["config"])
    except (TypeError, ValueError):
        return None
    options = {name for name in _REFINED if getattr(config, name)}
    off: dict[str, Any] = dict.fromkeys(_REFINED, False)
    base = dataclasses.replace(config, **off)
    if base not in candidates or not options <= refinements:  # stale or edited: tune again
        return None
    per_point = entry.get("seconds_per_point")
    _MEMORY[signature] = entry
    return config, float(per_point) if isinstance(per_point, (int, float)) else None


def recall_compile(signature: str) -> dict[str, float] | None:
    """The compile measurement remembered for ``signature`` (see :func:`compile_measured`);
    ``None`` when compiling was never measured, and a measurement of 0 s saved per point (so
    never repaid) when it failed."""
    entry = _MEMORY.get(signature) or _read_cache().get(signature)
    measured = entry.get("compile") if isinstance(entry, dict) else None
    if not isinstance(measured, dict):
        return None
    if "error" in measured:
        return {"seconds": float("inf"), "per_point": 0.0, "eager_per_point": 0.0}
    try:
        return {k: float(measured[k]) for k in ("seconds", "per_point", "eager_per_point")}
    except (KeyError, TypeError, ValueError):
        return None


def remember(
    signature: str,
    config: EngineConfig,
    per_point: float,
    compiled: dict[str, Any] | None = None,
) -> None:
    """Remember ``config`` (and the compile measurement, when there was one) for
    ``signature``, in memory and in the cache file."""
    entry: dict[str, Any] = {
        "config": config.as_dict(),
        "seconds_per_point": float(per_point),
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if compiled is not None:
        entry["compile"] = compiled
    _MEMORY[signature] = entry
    entries = _read_cache()
    entries[signature] = entry
    if len(entries) > CACHE_ENTRIES:
        newest = sorted(entries.items(), key=lambda kv: str(kv[1].get("saved", "")))
        entries = dict(newest[-CACHE_ENTRIES:])
    _write_cache(entries)


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        with open(cache_dir() / CACHE_FILE, "rb") as handle:
            data = json.loads(handle.read(4 * 1024 * 1024))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {str(k): v for k, v in entries.items() if isinstance(v, dict)}


def _write_cache(entries: dict[str, dict[str, Any]]) -> None:
    from . import _hdf5
    from .errors import StoreError

    text = json.dumps({"format": _CACHE_FORMAT, "version": 1, "entries": entries}, indent=1)

    def write(handle: BinaryIO) -> None:
        handle.write(text.encode())

    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        _hdf5.atomic_write(folder / CACHE_FILE, write, what="tuning cache")
    except (OSError, StoreError):
        pass  # the cache only saves time and keeps bits equal: never fail a run for it
