"""Communication-free sharding of a grid: ``shard=(i, N)`` and :func:`merge`.

A shard run (``lv.plane(..., shard=(i, N), store=...)`` or ``lossvista plane --shard i/N``)
evaluates only the grid points whose flat C-order index ``k`` has ``k % N == i`` into its own
surface file, whose settings record ``shard: {"index": i, "count": N}`` (part of the resume
identity). Shards need no communication: each is an ordinary resumable run, so a job array or a
pre-emptible cluster can run, kill and restart them independently. :func:`merge` checks that
the shard files belong together and are complete, and writes the file a single run would have
written (``docs/FORMAT.md``, "Shards").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _surface_read as _read
from ._json import json_ready
from ._lock import store_lock
from .errors import InputError, StoreError, StoreMismatchError
from .landscape import Interpolation, Landscape
from .store import SurfaceStore, read_fields

__all__ = ["merge", "parse_shard", "shard_mask"]

#: Settings that may differ between shards (the shard itself; what each run recorded about
#: its engine and its lossvista version).
_PER_SHARD = frozenset({"shard", "engine", "lossvista_version"})


def parse_shard(shard: Any, store: Any = None) -> tuple[int, int] | None:
    """``shard=`` as ``(index, count)``: ``None``, a pair of ints or the text ``"i/N"``.

    Refuses anything else, an index outside ``0 <= i < N``, and a shard without ``store``
    (a shard's points only make sense in its own file, to be merged).
    """
    if shard is None:
        return None
    pair: Sequence[Any]
    if isinstance(shard, str):
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if found is None:
            raise InputError(f"shard must look like 'i/N' (e.g. '0/4'), got {shard!r}")
        pair = (int(found[1]), int(found[2]))
    elif isinstance(shard, (tuple, list)) and len(shard) == 2:
        pair = shard
    else:
        raise InputError(f"shard must be a pair (i, N) or the text 'i/N', got {shard!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise InputError(f"shard must hold two integers (i, N), got {shard!r}")
    index, count = int(pair[0]), int(pair[1])
    if count < 1 or not 0 <= index < count:
        raise InputError(
            f"shard {index}/{count} is out of range: the count N must be >= 1 and the index "
            f"0 <= i < N (shards are numbered 0 to N-1)"
        )
    if store is None:
        raise InputError(
            "shard= needs store=: each shard writes its own surface file, and lv.merge (or "
            "`lossvista merge`) joins the files"
        )
    return index, count


def shard_mask(shape: tuple[int, ...], index: int, count: int) -> np.ndarray:
    """The points of shard ``index`` of ``count``: flat C-order index ``k % count == index``."""
    size = int(np.prod(shape))
    return (np.arange(size) % count == index).reshape(shape)


def merge(shards: Sequence[str | Path], out: str | Path) -> Landscape:
    """Join the shard files of one grid into the surface file a single run would have written.

    Checks that the files belong together (kind, coordinates, span, steps, objective, data
    identity, directions, origin, metrics, the shard count N, and stored centres equal within
    the centre check's tolerance; :class:`~lossvista.errors.StoreMismatchError` names what
    differs) and that together they are complete (every shard index ``0..N-1`` exactly once,
    every point of every shard computed; :class:`~lossvista.errors.StoreError` names the missing
    indices, or the file and how many of its points are missing). Then writes ``out``
    atomically as an ordinary, unsharded surface file (values, ``computed``, settings without
    the shard entry, directions, centre, end points) and returns its landscape.
    """
    paths = [Path(p) for p in shards]
    out = Path(out)
    if not paths:
        raise InputError("merge needs at least one shard file")
    if any(p.resolve() == out.resolve() for p in paths if p.exists()):
        raise InputError(f"the output {str(out)!r} is one of the shard files; pick another path")
    for p in paths:
        if not p.exists():
            raise InputError(f"shard file {str(p)!r} does not exist")
    contents = [_read.read_contents(p) for p in paths]
    places = [_shard_of(c, p) for c, p in zip(contents, paths, strict=True)]
    _check_together(contents, paths, places)
    count = places[0][1]
    first = contents[0]
    shape = tuple(len(c) for c in first["coords"])
    values = {n: np.full(shape, np.nan) for n in first["values"]}
    computed = np.zeros(shape, dtype=bool)
    for c, (index, _), path in zip(contents, places, paths, strict=True):
        mine = shard_mask(shape, index, count)
        lacking = int(np.count_nonzero(mine & ~np.asarray(c["computed"], dtype=bool)))
        if lacking:
            raise StoreError(
                f"shard {index}/{count} ({str(path)!r}) is incomplete: {lacking} of its "
                f"{int(mine.sum())} points are not computed. Run that shard again (it resumes) "
                "and merge once it has finished"
            )
        for name in values:
            values[name][mine] = np.asarray(c["values"][name], dtype=np.float64)[mine]
        computed |= mine
    settings = {k: v for k, v in first["settings"].items() if k != "shard"}
    engines = [json_ready(c["engine"]) for c in contents]
    engine = first["engine"] if all(e == engines[0] for e in engines) else None
    with store_lock(out):
        SurfaceStore.create(
            out,
            **{
                **first,
                "created": None,
                "settings": settings,
                "engine": engine,
                "values": values,
                "computed": computed,
            },
        )
        fields = read_fields(out)
    fields["path"] = out
    if fields["kind"] == "interpolation":
        return Interpolation(**fields)
    return Landscape(**fields)


def _shard_of(contents: Mapping[str, Any], path: Path) -> tuple[int, int]:
    shard = contents["settings"].get("shard")
    try:
        return int(shard["index"]), int(shard["count"])
    except (TypeError, KeyError, ValueError):
        raise StoreError(
            f"{str(path)!r} is not a shard file (its settings have no shard entry; it was not "
            "written with shard= or --shard)"
        ) from None


def _check_together(
    contents: Sequence[Mapping[str, Any]], paths: Sequence[Path], places: Sequence[tuple[int, int]]
) -> None:
    first, first_path = contents[0], paths[0]
    count = places[0][1]
    for c, path, (_, n) in zip(contents[1:], paths[1:], places[1:], strict=True):
        differences = []
        if n != count:
            differences.append(f"shard count: {str(first_path)!r} has {count}, this file {n}")
        differences += _setting_differences(first["settings"], c["settings"])
        if c["kind"] != first["kind"]:
            differences.append(f"kind: {first['kind']!r} vs {c['kind']!r}")
        same_axes = len(c["coords"]) == len(first["coords"]) and all(
            np.array_equal(a, b) for a, b in zip(c["coords"], first["coords"])
        )
        if not same_axes:
            differences.append("coordinates of the grid differ")
        if sorted(c["values"]) != sorted(first["values"]):
            differences.append(f"metrics: {sorted(first['values'])} vs {sorted(c['values'])}")
        differences += _center_differences(first, c)
        if differences:
            raise StoreMismatchError(
                f"{str(path)!r} does not belong with {str(first_path)!r} (shards of one grid "
                "must share every setting but the shard index):\n  " + "\n  ".join(differences)
            )
    seen: dict[int, Path] = {}
    for path, (index, _) in zip(paths, places, strict=True):
        if index in seen:
            raise StoreError(
                f"shard {index}/{count} is given twice: {str(seen[index])!r} and {str(path)!r}"
            )
        seen[index] = path
    absent = [i for i in range(count) if i not in seen]
    if absent:
        listed = ", ".join(str(i) for i in absent[:20]) + (", ..." if len(absent) > 20 else "")
        raise StoreError(
            f"{len(absent)} of the {count} shards are missing: index {listed} (of 0..{count - 1}); "
            "run them and pass every shard file to merge"
        )


def _setting_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    a, b = json_ready(dict(a)), json_ready(dict(b))
    out = []
    for key in sorted((set(a) | set(b)) - _PER_SHARD):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {_short(a.get(key))} vs {_short(b.get(key))}")
    return out


def _center_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    rtol = float((a.get("center_check") or {}).get("rtol", 1e-9))
    out = []
    for name in sorted(set(a["center"]) | set(b["center"])):
        x, y = a["center"].get(name), b["center"].get(name)
        try:
            fx, fy = float(x), float(y)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(f"centre {name}: {x!r} vs {y!r}")
            continue
        if (math.isnan(fx) and math.isnan(fy)) or math.isclose(
            fx, fy, rel_tol=rtol, abs_tol=rtol * 1e-3
        ):
            continue
        out.append(f"centre {name}: {fx:.10g} vs {fy:.10g} (rtol {rtol:g})")
    return out


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
