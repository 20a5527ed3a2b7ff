"""Optimizer races: several paths on one toy function, a results table, a plot and a GIF.

``race("rosenbrock", ["gd", "momentum", "adam"], steps=500)`` runs the optimizers from the same
start; ``race(fn, {"adam": path, ...})`` compares paths already run. Simulated annealing
(``"annealing"``) and grid search (``"grid"``) can join: their steps are function evaluations.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._result import Result
from ..errors import InputError
from ._toy_result import FunctionResult
from .functions import VALUE_TIES as TIES
from .functions import ToyFunction, function_from_state, function_state, get
from .optimizers import OptimizerPath, run
from .search import SearchResult, grid_search, simulated_annealing

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Spec = str | type[torch.optim.Optimizer] | tuple[Any, Mapping[str, Any]]
#: Names of the searches a race accepts besides the optimizers.
SEARCHES = ("annealing", "grid")
COLUMNS = (
    "name",
    "optimizer",
    "steps",
    "final_value",
    "best_value",
    "steps_to_tol",
    "minimum",
    "minimum_x",
    "minimum_y",
    "global",
    "wall_time_s",
)


class RaceTable(Result):
    """The results of a race, one row (a dict with :data:`COLUMNS`) per path.

    ``steps``: the path's steps (for a search: proposals, or grid evaluations minus one).
    ``steps_to_tol``: the first step within ``tol`` of the global minimum value (None: never).
    ``minimum``: index in ``fn.minima`` of the minimum the path ended at (within
    ``minimum_tol``), with its coordinates and whether it is a global one; None when the path
    ended elsewhere.

    A result (kind ``"toy_race_table"``, saved as JSON); ``str(table)`` is the Markdown table.
    """

    result_kind = "toy_race_table"
    file_format = "json"

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        self.rows = [dict(row) for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, name: str) -> dict[str, Any]:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no row named {name!r}; rows: {[row['name'] for row in self.rows]}")

    @property
    def winner(self) -> str | None:
        """The name of the row that came within ``tol`` of the global minimum value in the fewest
        steps (the first on ties); when none did, the one with the lowest final value; None when
        every final value is NaN."""
        converged = [row for row in self.rows if row["steps_to_tol"] is not None]
        if converged:
            return min(converged, key=lambda row: row["steps_to_tol"])["name"]
        finite = [row for row in self.rows if _finite(row["final_value"])]
        return min(finite, key=lambda row: row["final_value"])["name"] if finite else None

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as JSON-friendly dicts (non-finite numbers become None)."""
        return [{key: _json_value(value) for key, value in row.items()} for row in self.rows]

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV text (empty cells for None); also written to ``path`` when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self) -> str:
        """The table as a Markdown (GitHub) table, numbers to 6 significant digits."""
        cells = [[_format(row[column]) for column in COLUMNS] for row in self.rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> RaceTable:
        return cls(state["rows"])

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [("runs", len(self.rows)), ("winner", self.winner)]
        for row in self.rows:
            rows.append((f"{row['name']}: final_value", row["final_value"]))
            rows.append((f"{row['name']}: steps_to_tol", row["steps_to_tol"]))
        return rows


@dataclasses.dataclass(eq=False, repr=False)
class Race(FunctionResult):
    """Paths of several optimizers on one function.

    A result (kind ``"toy_race"``): ``save`` writes an HDF5 file with every path and the table
    that ``lossvista.load`` reads back (plot and animate work on it); the function is stored by
    its name and parameters, so ``save`` raises :class:`~lossvista.InputError` for a function
    made by hand. ``str(race)`` shows the table.

    Attributes:
        function: the toy function.
        paths: label -> :class:`OptimizerPath`, in race order.
        table: the :class:`RaceTable`.
        tol: the value gap to the global minimum that counts as converged.
        minimum_tol: the distance to a listed minimum that counts as having reached it.
    """

    function: ToyFunction
    paths: dict[str, OptimizerPath]
    table: RaceTable
    tol: float
    minimum_tol: float

    result_kind = "toy_race"
    file_format = "hdf5"

    @property
    def winner(self) -> str | None:
        """The label of the run that won (see :attr:`RaceTable.winner`)."""
        return self.table.winner

    def plot(self, ax: Axes | None = None, *, legend: bool = True) -> Figure:
        """Every path over the function's contours (log-spaced levels for narrow valleys);
        returns the figure. Drawn by :func:`lossvista.plot.toys.plot_race`.

        The axis limits are the function's bounds; paths that leave them are clipped. Each path
        is one line in ``ax.lines``, in race order.
        """
        from ..plot.toys import plot_race

        return plot_race(self, ax, legend=legend)

    def animate(self, path: str | Path, *, fps: int = 15, frames: int = 60, dpi: int = 80) -> Path:
        """Write a GIF of the race: frame ``f`` shows every path up to step ``k_f`` (see
        :func:`lossvista.plot.toys.animate_race`, which draws it with the movie writer that
        :func:`lossvista.animate` uses too).

        Args:
            path: the ``.gif`` file to write (``.mp4`` where ffmpeg is installed).
            fps: frames per second.
            frames: number of frames (at least 2).
            dpi: resolution; the figure is 6.4 x 5.2 inches.

        Returns:
            The path written.
        """
        from ..plot.toys import animate_race

        return animate_race(self, path, fps=fps, frames=frames, dpi=dpi)

    def __str__(self) -> str:
        return f"Race on {self.function.name} (tol={self.tol:g}):\n{self.table.to_markdown()}"

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # Labels go in a list, not as keys: a label may hold characters (such as "/") that an
        # HDF5 group name cannot.
        return {
            "function": function_state(self.function),
            "labels": list(self.paths),
            "paths": [path._state() for path in self.paths.values()],
            "table": self.table.rows,
            "tol": self.tol,
            "minimum_tol": self.minimum_tol,
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Race:
        paths = [OptimizerPath._from_state(path) for path in state["paths"]]
        return cls(
            function_from_state(state["function"]),
            dict(zip(state["labels"], paths, strict=True)),
            RaceTable(state["table"]),
            state["tol"],
            state["minimum_tol"],
        )

    def _summary(self) -> list[tuple[str, Any]]:
        return [("function", self.function.name), ("tol", self.tol), *self.table._summary()]


def race(
    fn: ToyFunction | str,
    runs: Mapping[str, OptimizerPath | SearchResult] | Sequence[Spec],
    *,
    start: tuple[float, float] | None = None,
    steps: int = 200,
    tol: float = 1e-6,
    minimum_tol: float = 1e-2,
    seed: int = 0,
    implementation: str = "torch",
) -> Race:
    """Race optimizers (and searches) on one function.

    Args:
        fn: a :class:`ToyFunction` or its name.
        runs: either finished runs, ``{label: OptimizerPath or SearchResult}``, or what to run:
            a list whose entries are an optimizer name (see
            :func:`~lossvista.toys.optimizers.run`), ``"annealing"``, ``"grid"``, a
            ``torch.optim`` class, or a pair ``(one of those, {hyper-parameters})``. Labels are
            the names, with the hyper-parameters added where a name repeats.
        start: start of every run; ``fn.start`` by default (grid search ignores it).
        steps: optimizer steps, annealing proposals; grid search uses a
            ``ceil(sqrt(steps + 1))``-point grid per axis (about as many evaluations) unless
            its hyper-parameters give ``n``.
        tol: the value gap to the global minimum that counts as converged (``steps_to_tol``).
        minimum_tol: the distance to a listed minimum that counts as having reached it.
        seed: seed of gradient noise and of annealing.
        implementation: ``"torch"`` or ``"textbook"`` for the named optimizers.

    Returns:
        A :class:`Race` with its table.
    """
    fn = get(fn)
    if isinstance(runs, Mapping):
        paths = {label: _as_path(label, item) for label, item in runs.items()}
    elif isinstance(runs, Sequence) and not isinstance(runs, str):
        specs = [_parse_spec(spec) for spec in runs]
        labels = _labels(specs)
        common = {"start": start, "steps": steps, "seed": seed}
        paths = {
            label: _run_spec(fn, what, settings, label, common, implementation)
            for label, (what, settings) in zip(labels, specs)
        }
    else:
        raise InputError(
            f"runs must be a dict label -> OptimizerPath/SearchResult or a list of optimizer "
            f"specs, got {type(runs).__name__}"
        )
    if not paths:
        raise InputError("a race needs at least one run")
    for label, path in paths.items():
        if path.function.name != fn.name or path.function.parameters != fn.parameters:
            raise InputError(f"{label!r} ran on {path.function!r}, not on {fn!r}")
    rows = [_row(label, path, tol, minimum_tol) for label, path in paths.items()]
    return Race(fn, paths, RaceTable(rows), tol, minimum_tol)


# -- building the runs ---------------------------------------------------------------------------
def _as_path(label: str, item: Any) -> OptimizerPath:
    if isinstance(item, SearchResult):
        return item.as_path(label)
    if isinstance(item, OptimizerPath):
        return item if item.name == label else dataclasses.replace(item, name=label)
    raise InputError(f"{label!r}: expected an OptimizerPath or a SearchResult, got {item!r}")


def _parse_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        return spec[0], dict(spec[1])
    return spec, {}


def _labels(specs: list[tuple[Any, dict[str, Any]]]) -> list[str]:
    """The optimizer's name; with its settings where a name repeats; numbered if still equal."""
    names = [w if isinstance(w, str) else getattr(w, "__name__", str(w)).lower() for w, _ in specs]
    labels = [
        f"{name} ({', '.join(f'{k}={v}' for k, v in settings.items())})"
        if names.count(name) > 1 and settings
        else name
        for name, (_, settings) in zip(names, specs)
    ]
    return [
        label if labels.count(label) == 1 else f"{label} #{labels[: i + 1].count(label)}"
        for i, label in enumerate(labels)
    ]


def _run_spec(
    fn: ToyFunction,
    what: Any,
    settings: dict[str, Any],
    label: str,
    common: dict[str, Any],
    implementation: str,
) -> OptimizerPath:
    """Run one entry; its own ``settings`` override the race's ``common`` start/steps/seed."""
    if isinstance(what, str) and what == "grid":
        n = math.ceil(math.sqrt(common["steps"] + 1))
        return grid_search(fn, **{"n": n, **settings}).as_path(label)
    settings = {**common, **settings}
    if isinstance(what, str) and what == "annealing":
        return simulated_annealing(fn, **settings).as_path(label)
    return run(fn, what, implementation=implementation, name=label, **settings)


def _row(label: str, path: OptimizerPath, tol: float, minimum_tol: float) -> dict[str, Any]:
    fn, index = path.function, path.reached_minimum(tol=minimum_tol)
    point = (None, None) if index is None else fn.minima[index].tolist()
    lowest = fn.global_minimum_value  # None only without minima, and then index is None
    is_global = (
        index is not None and lowest is not None and bool(fn.minimum_values[index] <= lowest + TIES)
    )
    return {
        "name": label,
        "optimizer": path.optimizer,
        "steps": path.steps,
        "final_value": path.final_value,
        "best_value": path.best_value,
        "steps_to_tol": path.converged_step(tol),
        "minimum": index,
        "minimum_x": point[0],
        "minimum_y": point[1],
        "global": is_global,
        "wall_time_s": path.wall_time,
    }


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
