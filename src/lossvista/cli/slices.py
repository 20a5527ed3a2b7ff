"""``lossvista line | plane | interpolate``: a model, a checkpoint and data -> a surface file."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from torch import nn

from ..directions import random_directions
from ..landscape import Interpolation, Landscape
from ..objective import Objective
from ..slices import interpolate as interpolate_slice
from ..slices import line as line_slice
from ..slices import plane as plane_slice
from . import _common
from ._common import SpanType, StepsType, friendly_errors
from ._spec import SPEC_FORMS

_SPEC = SPEC_FORMS
_BATCHNORM = nn.modules.batchnorm._BatchNorm
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply option decorators so that ``--help`` lists them in the order given."""

    def apply(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


_MODEL = click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="SPEC",
    help=f"Factory of the model, called without arguments: {_SPEC}. It must return an "
    "nn.Module; it is called after torch.manual_seed(--seed), so an unseeded initialisation "
    "repeats.",
)
_DATA = click.option(
    "--data",
    "data_spec",
    required=True,
    metavar="SPEC",
    help=f"Factory of the evaluation data, called without arguments: {_SPEC}. It may return a "
    "tuple (X, y) of tensors, a DataLoader, a Dataset (batched in order) or an iterable of "
    "(X, y) batches. The loss is the sample-weighted mean over all of it.",
)
_OUT = click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HDF5 surface file to write (e.g. surf.h5); its folder must exist.",
)
_NORM = click.option(
    "--norm",
    type=click.Choice(["filter", "layer", "model", "none"]),
    default="filter",
    show_default=True,
    help="Normalisation of the random directions: filter (Li et al. 2018: every filter gets the "
    "norm of the matching filter of the weights), layer, model, or none (raw Gaussian).",
)
_IGNORE = click.option(
    "--ignore",
    default="biasbn",
    show_default=True,
    help="Parameters the directions leave at zero: biasbn (biases and normalisation layers, as "
    "in Li et al. 2018), bias, bn, none, or a comma list of those and name globs ('fc.*').",
)
_LOSS = click.option(
    "--loss",
    default="cross_entropy",
    show_default=True,
    metavar="NAME|SPEC",
    help="cross_entropy, mse, or a SPEC naming loss_fn(output, target) that returns the batch "
    "mean (an nn.Module class such as torch.nn:SmoothL1Loss is instantiated).",
)
_METRIC = click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="NAME|SPEC",
    help="Extra quantity averaged like the loss; repeatable: accuracy, none, or a SPEC naming "
    "f(output, target) -> scalar. Default: accuracy with cross_entropy, none otherwise.",
)
_BATCH_SIZE = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluation batch size for tensor data (default: the engine picks the fastest; the "
    "values do not depend on it, except BatchNorm statistics under --bn recompute). "
    "DataLoaders keep their own batches.",
)
_SUBSET = click.option(
    "--subset",
    type=click.IntRange(min=2),
    default=None,
    metavar="N",
    help="Evaluate on a fixed random subset of N samples (seeded by --seed); values then carry "
    "a standard error.",
)
_PARAMS = click.option(
    "--params",
    multiple=True,
    metavar="GLOB",
    help="Only move these parameters (names or globs such as 'fc.*'); repeatable. Default: all.",
)
_DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where to evaluate: auto (cuda when available, else cpu), cpu, cuda or cuda:N.",
)
_STRATEGY = click.option(
    "--strategy",
    type=click.Choice(["auto", "loop", "vmap"]),
    default="auto",
    show_default=True,
    help="Engine strategy: auto measures and picks; loop evaluates one point per forward pass; "
    "vmap many points per pass (not with --bn recompute).",
)
_RESUME = click.option(
    "--resume/--no-resume",
    default=None,
    help="With an existing --out: --resume computes only its missing points (refusing a file "
    "made with other settings), --no-resume overwrites it. Default: resume when --out exists.",
)
_PNG = click.option(
    "--png/--no-png",
    default=True,
    show_default=True,
    help="Also draw the result next to --out, with the same stem.",
)
_UNSAFE = click.option(
    "--unsafe-load",
    is_flag=True,
    help="Read checkpoints with torch.load(weights_only=False). That unpickles arbitrary "
    "objects and can run code: only for trusted files.",
)
_SEED = click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random directions (line, plane), of --subset, and of the "
    "torch.manual_seed called before each factory.",
)
_QUIET = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bars and no summary (errors and warnings still go to stderr).",
)
_EVALUATION = (_LOSS, _METRIC)
_ENGINE = (_BATCH_SIZE, _SUBSET, _PARAMS, _DEVICE, _STRATEGY, _RESUME, _PNG, _UNSAFE, _SEED, _QUIET)


def _bn(default: str, note: str = "") -> Callable[[Any], Any]:
    return click.option(
        "--bn",
        type=click.Choice(["eval", "recompute"]),
        default=default,
        show_default=True,
        help="BatchNorm policy: eval uses the running statistics of the checkpoint; recompute "
        f"re-estimates them from the data at every point.{' ' + note if note else ''}",
    )


def _checkpoint(what: str) -> Callable[[Any], Any]:
    return click.option(
        "--checkpoint",
        type=_EXISTING_FILE,
        default=None,
        help=f"State dict to load into the model: the centre of the {what}. Default: the model "
        "as the factory builds it.",
    )


_LINE_SPAN = click.option(
    "--span",
    type=SpanType(1),
    default="-1:1",
    show_default=True,
    help="Range MIN:MAX of the step along the direction.",
)
_LINE_STEPS = click.option(
    "--steps",
    type=StepsType(1),
    default="51",
    show_default=True,
    help="Number of points, both ends included (at least 2).",
)


@click.command()
@_options(
    _MODEL, _DATA, _checkpoint("line"), _OUT, _LINE_SPAN, _LINE_STEPS, _NORM, _IGNORE,
    *_EVALUATION, _bn("eval"), *_ENGINE,
)  # fmt: skip
@friendly_errors
def line(**options: Any) -> None:
    """The loss along one random direction through a checkpoint: theta + alpha * d.

    Writes a picture next to --out (STEM.png) unless --no-png.
    """
    _Run(options).slice("line")


@click.command()
@_options(
    _MODEL,
    _DATA,
    _checkpoint("plane"),
    _OUT,
    click.option(
        "--span",
        type=SpanType(2),
        default="-1:1",
        show_default=True,
        help="MIN:MAX for both axes (-1:1) or one per axis (-1:1,-0.5:0.5).",
    ),
    click.option(
        "--steps",
        type=StepsType(2),
        default="21",
        show_default=True,
        help="Points per axis, both ends included: 21 (both axes) or 21,31 (one per axis).",
    ),
    _NORM,
    _IGNORE,
    click.option(
        "--orthogonalize",
        is_flag=True,
        help="Make the second direction exactly orthogonal to the first (after normalisation).",
    ),
    *_EVALUATION,
    _bn("eval"),
    *_ENGINE,
)
@friendly_errors
def plane(**options: Any) -> None:
    """The loss on a plane through a checkpoint spanned by two random directions.

    Writes a contour and a 3-D surface picture next to --out (STEM_contour.png,
    STEM_surface3d.png) unless --no-png.
    """
    _Run(options).slice("plane")


@click.command()
@_options(
    _MODEL,
    _DATA,
    click.option(
        "--checkpoint",
        type=_EXISTING_FILE,
        required=True,
        help="State dict of the end point theta_b (t = 1).",
    ),
    click.option(
        "--start",
        type=_EXISTING_FILE,
        default=None,
        help="State dict of the start point theta_a (t = 0). Default: the model exactly as the "
        "factory builds it under --seed, i.e. its initialisation.",
    ),
    _OUT,
    click.option(
        "--span",
        type=SpanType(1),
        default="0:1",
        show_default=True,
        help="Range MIN:MAX of t; values outside 0:1 extrapolate (e.g. -0.5:1.5).",
    ),
    _LINE_STEPS,
    *_EVALUATION,
    _bn(
        "recompute",
        "The default recompute suits a path between two models, since neither end's "
        "statistics describe the points in between (it changes nothing without BatchNorm); "
        "with eval every point uses the statistics of --checkpoint.",
    ),
    *_ENGINE,
)
@friendly_errors
def interpolate(**options: Any) -> None:
    """The loss on the straight path theta(t) = (1 - t) * theta_a + t * theta_b.

    Prints the loss barrier: the largest excess of the loss over the straight chord between the
    two ends, for t in [0, 1]. Writes a picture next to --out (STEM.png) unless --no-png.
    """
    _Run(options).interpolation()


class _Run:
    """One slice command: build the pieces from the options, evaluate, report."""

    def __init__(self, options: dict[str, Any]):
        self.o = options
        self.quiet: bool = options["quiet"]
        self.out: Path = options["out"]
        self.seed: int = options["seed"]
        self.device = _common.pick_device(options["device"])
        self.loss_fn = _common.resolve_loss(options["loss"])
        self.metrics = _common.resolve_metrics(options["metrics"], options["loss"])

    def model(self, checkpoint: Path | None, option: str = "'--checkpoint'") -> nn.Module:
        model = _common.build_model(self.o["model_spec"], self.seed)
        if checkpoint is not None:
            _common.load_into(model, checkpoint, option, self.o["unsafe_load"])
        try:
            return model.to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise click.BadParameter(
                f"cannot move the model to {self.device}: {exc}", param_hint="'--device'"
            ) from exc

    def objective(self, model: nn.Module) -> Objective:
        data = _common.build_data(self.o["data_spec"], self.seed, self.o["batch_size"])
        bn = self.o["bn"]
        if bn == "recompute" and not any(isinstance(m, _BATCHNORM) for m in model.modules()):
            bn = "eval"  # the same values, and the engine may then evaluate many points at once
        return _common.build_objective(
            model,
            self.loss_fn,
            data,
            data_spec=self.o["data_spec"],
            metrics=self.metrics,
            params=self.o["params"],
            device=self.device,
            batch_size=self.o["batch_size"],
            subset=self.o["subset"],
            seed=self.seed,
            bn=bn,
        )

    def common(self) -> dict[str, Any]:
        return dict(
            store=self.out,
            resume=self.o["resume"],
            strategy=self.o["strategy"],
            progress=not self.quiet,
        )

    # -- the verbs ------------------------------------------------------------------------------
    def slice(self, kind: str) -> None:
        with self._guard():
            self._slice(kind)

    def interpolation(self) -> None:
        with self._guard():
            self._interpolation()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Data errors name --data; an interrupted run says how to go on."""
        with _common.data_errors(self.o["data_spec"]):
            try:
                yield
            except KeyboardInterrupt:
                done = _common.computed_in(self.out)
                raise click.ClickException(
                    f"interrupted; {done} points are stored in {self.out}. Run the same command "
                    "again to compute only the rest."
                ) from None

    def _slice(self, kind: str) -> None:
        objective = self.objective(self.model(self.o["checkpoint"]))
        ignore = _common.parse_ignore(self.o["ignore"], objective.param_names)
        norm = None if self.o["norm"] == "none" else self.o["norm"]
        n = 1 if kind == "line" else 2
        directions = random_directions(
            objective,
            n,
            norm=norm,
            ignore=ignore,
            orthogonalize=self.o.get("orthogonalize", False),
            seed=self.seed,
        )
        before, started = self._before(), time.perf_counter()
        if kind == "line":
            result = line_slice(
                objective, directions[0], span=self.o["span"][0], steps=self.o["steps"][0],
                **self.common(),
            )  # fmt: skip
            pictures = {self.out.with_suffix(".png"): {"kind": "line"}}
        else:
            result = plane_slice(
                objective, directions, span=self.o["span"], steps=self.o["steps"],
                **self.common(),
            )  # fmt: skip
            stem = self.out.with_suffix("")
            pictures = {
                stem.with_name(f"{stem.name}_contour.png"): {"kind": "contour"},
                stem.with_name(f"{stem.name}_surface3d.png"): {"kind": "surface3d"},
            }
        self._finish(result, before, time.perf_counter() - started, pictures)

    def _interpolation(self) -> None:
        end = self.model(self.o["checkpoint"])
        start = self.model(self.o["start"], "'--start'")
        objective = self.objective(end)
        before, started = self._before(), time.perf_counter()
        result = interpolate_slice(
            objective, start, end, span=self.o["span"][0], steps=self.o["steps"][0],
            **self.common(),
        )  # fmt: skip
        pictures = {self.out.with_suffix(".png"): {"kind": "line"}}
        self._finish(result, before, time.perf_counter() - started, pictures)

    # -- reporting ------------------------------------------------------------------------------
    def _before(self) -> int:
        return 0 if self.o["resume"] is False else _common.computed_in(self.out)

    def _finish(
        self,
        result: Landscape,
        before: int,
        seconds: float,
        pictures: dict[Path, dict[str, Any]],
    ) -> None:
        written = [self.out]
        if self.o["png"]:
            for path, kwargs in pictures.items():
                written.append(_common.save_plot(result, path, **kwargs))
        if self.quiet:
            return
        total = int(result.computed.sum())
        size = " x ".join(str(s) for s in result.shape)
        click.echo(
            f"{result.kind}: {size} points, {total - before} computed now"
            + (f", {before} taken from the existing file" if before else "")
            + f" ({seconds:.1f} s)"
        )
        where = "start θ_a (t = 0)" if isinstance(result, Interpolation) else "centre"
        click.echo(f"{where}: {_common.format_values(result.center)}")
        check = result.center_check or {}
        if check:
            click.echo(
                f"centre check: {'ok' if check.get('ok') else 'MISMATCH'} (engine "
                f"{check['engine']:.8g} vs objective {check['expected']:.8g}, relative error "
                f"{check['relative_error']:.1e})"
            )
        if isinstance(result, Interpolation):
            end = result.endpoints.get("b", {})
            click.echo(f"end θ_b (t = 1): {_common.format_values(end)}")
            click.echo(f"barrier: {result.barrier:.6g} (at t = {result.barrier_t:.4g})")
        if result.nonfinite:
            click.echo(f"non-finite points: {result.nonfinite} (stored as NaN)")
        click.echo("wrote:")
        for path in written:
            click.echo(f"  {path}")
