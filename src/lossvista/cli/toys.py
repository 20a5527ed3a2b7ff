"""``lossvista toys race | scaling``: the optimizer lab (:mod:`lossvista.toys`) from the shell."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._result import write_json_file
from ..toys import functions, optimizers
from ..toys.race import SEARCHES
from . import _options
from ._common import friendly_errors, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from ..toys import ScalingStudy

_RUNNABLE = (*optimizers.optimizer_names(), *SEARCHES)
_OUT = _options.out_folder("Folder for the files written (created if needed).", dest="out_dir")
_SEED = _options.seed(
    "the random parts (gradient noise, annealing, synthetic data)", factories=False
)


@click.group()
def toys() -> None:
    """The optimizer lab: races on analytic 2-D functions and the feature-scaling demo.

    \b
      lossvista toys race --function rosenbrock --optimizers gd,momentum,adam --out race/
      lossvista toys scaling --out scaling/
    """


class PointType(click.ParamType):
    """``x,y``: two finite numbers."""

    name = "x,y"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            x, y = (float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not two numbers x,y such as -1.2,1", param, ctx)
        if not (math.isfinite(x) and math.isfinite(y)):
            self.fail(f"{value!r}: both numbers must be finite", param, ctx)
        return x, y


def parse_optimizers(text: str) -> list[str]:
    """``gd,momentum,adam`` -> the list, each name checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name at least one optimizer", param_hint="'--optimizers'")
    for name in names:
        if name not in _RUNNABLE:
            raise click.BadParameter(
                f"unknown optimizer {name!r}; choose from {', '.join(_RUNNABLE)}",
                param_hint="'--optimizers'",
            )
    return names


def parse_learning_rates(text: str | None, names: list[str]) -> dict[str, float]:
    """``0.01`` (every optimizer), ``gd=0.001,adam=0.05`` (per optimizer) or both mixed."""
    if text is None:
        return {}
    rates: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, number = part.rpartition("=")
        try:
            rate = float(number)
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise click.BadParameter(
                f"{part!r}: a learning rate is a positive number, as in 0.01 or adam=0.05",
                param_hint="'--lr'",
            )
        if name and name not in names:
            raise click.BadParameter(
                f"{part!r}: {name!r} is not among --optimizers ({', '.join(names)})",
                param_hint="'--lr'",
            )
        if name in SEARCHES:
            raise click.BadParameter(f"{part!r}: {name} has no learning rate", param_hint="'--lr'")
        targets = [name] if name else [n for n in names if n not in SEARCHES]
        rates.update(dict.fromkeys(targets, rate))
    return rates


@toys.command()
@click.option(
    "--function",
    "function_name",
    type=click.Choice(functions.names()),
    default="rosenbrock",
    show_default=True,
    help="The test function.",
)
@click.option(
    "--optimizers",
    "optimizer_list",
    default="gd,momentum,adam",
    show_default=True,
    help=f"Comma-separated runs: {', '.join(_RUNNABLE)} (annealing: simulated annealing; "
    "grid: grid search with about as many evaluations as --steps).",
)
@click.option(
    "--start",
    type=PointType(),
    default=None,
    help="Start point x,y of every run (use --start=-1.2,1 for a negative x). Default: the "
    "function's own start.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Optimizer steps (annealing proposals; grid search evaluations, about).",
)
@click.option(
    "--lr",
    default=None,
    help="Learning rate: one number for every optimizer (0.01), or per optimizer "
    "(gd=0.001,adam=0.05). Default: a stable step for the function (see "
    "lossvista.toys.default_hyperparameters).",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-6,
    show_default=True,
    help="Gap to the global minimum value that counts as converged (the steps_to_tol column).",
)
@click.option(
    "--implementation",
    type=click.Choice(optimizers.IMPLEMENTATIONS),
    default="torch",
    show_default=True,
    help="torch.optim or the textbook update rules written out (the paths are the same).",
)
@_SEED
@click.option("--gif/--no-gif", default=True, show_default=True, help="Write race.gif.")
@click.option(
    "--frames",
    type=click.IntRange(min=2),
    default=60,
    show_default=True,
    help="Frames of the GIF.",
)
@click.option(
    "--fps", type=click.IntRange(min=1), default=15, show_default=True, help="GIF frames/second."
)
@_OUT
@friendly_errors
def race(
    function_name: str,
    optimizer_list: str,
    start: tuple[float, float] | None,
    steps: int,
    lr: str | None,
    tol: float,
    implementation: str,
    seed: int,
    gif: bool,
    frames: int,
    fps: int,
    out_dir: Path,
) -> None:
    """Race optimizers on a test function: race.png (contours and paths), race.gif, the table
    (final value, steps to tol, minimum reached) as race.json and race.csv, and the whole race
    (every path) as race.h5, which lossvista.load reads back."""
    from ..toys import race as run_race

    names = parse_optimizers(optimizer_list)
    rates = parse_learning_rates(lr, names)
    specs = [(name, {"lr": rates[name]}) if name in rates else name for name in names]
    result = run_race(
        function_name, specs, start=start, steps=steps, tol=tol, seed=seed,
        implementation=implementation,
    )  # fmt: skip
    _options.make_folder(out_dir)
    written = [out_dir / name for name in ("race.json", "race.csv", "race.png", "race.h5")]
    settings = {
        "function": function_name,
        "formula": result.function.formula,
        "start": list(start) if start else list(result.function.start),
        "steps": steps,
        "tol": tol,
        "seed": seed,
        "implementation": implementation,
        "hyperparameters": {
            label: {k: v for k, v in path.hyperparameters.items() if _json_safe(v)}
            for label, path in result.paths.items()
        },
    }
    table = result.table.as_dict()["rows"]
    write_json_file(written[0], {**settings, "table": table}, what="race table")
    result.table.to_csv(written[1])
    save_figure(result.plot, written[2])
    result.save(written[3])
    if gif:
        written.append(result.animate(out_dir / "race.gif", fps=fps, frames=frames))
    click.echo(result.table.to_markdown())
    click.echo("wrote:")
    for path in written:
        click.echo(f"  {path}")


@toys.command()
@_SEED
@click.option(
    "--samples",
    type=click.IntRange(min=3),
    default=200,
    show_default=True,
    help="Rows of the synthetic regression data (feature 2 is 100x larger than feature 1).",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=1e-6,
    show_default=True,
    help="Relative gap (MSE - MSE*) / (MSE(start) - MSE*) at which gradient descent stops.",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="The most gradient-descent steps per problem.",
)
@_OUT
@friendly_errors
def scaling(seed: int, samples: int, tol: float, max_iter: int, out_dir: Path) -> None:
    """Feature scaling: the linear-regression loss surface before and after standardisation,
    condition numbers and gradient-descent steps (scaling.png, scaling.json), and the whole study
    as scaling.h5, which lossvista.load reads back."""
    from ..toys import scaling_study

    study = scaling_study(seed=seed, n_samples=samples, tol=tol, max_iter=max_iter)
    _options.make_folder(out_dir)
    numbers, picture, whole = (out_dir / f"scaling.{ext}" for ext in ("json", "png", "h5"))
    write_json_file(numbers, _scaling_numbers(study), what="scaling numbers")
    save_figure(study.plot, picture)
    study.save(whole)
    for name, problem in (("raw", study.raw), ("standardised", study.scaled)):
        steps = "not within --max-iter" if problem.iterations is None else problem.iterations
        click.echo(
            f"{name:<13} condition number {problem.condition_number:.4g}, "
            f"gradient-descent steps to tol: {steps} (bound {problem.iteration_bound})"
        )
    click.echo(f"wrote:\n  {numbers}\n  {picture}\n  {whole}")


def _scaling_numbers(study: ScalingStudy) -> dict[str, Any]:
    """The study's numbers, without the arrays of data, paths and surfaces (scaling.h5 has them)."""
    problems = {
        name: {
            "condition_number": problem.condition_number,
            "eigenvalues_XtX": problem.eigenvalues,
            "weights": problem.weights,
            "lr": problem.lr,
            "iterations": problem.iterations,
            "iteration_bound": problem.iteration_bound,
        }
        for name, problem in (("raw", study.raw), ("scaled", study.scaled))
    }
    return {
        "samples": len(study.y),
        "tol": study.tol,
        "seed": study.seed,
        "start": study.start,
        "feature_mean": study.feature_mean,
        "feature_scale": study.feature_scale,
        **problems,
    }


def _json_safe(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None), list, tuple))
