"""The options the command-line verbs share, their value types, and :func:`options` to list them.

Options whose text is the same everywhere are constants (``MODEL``); those whose default or help
depend on the command are functions (``checkpoint("the centre of the line")``).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._engine_options import POINTS_PER_PASS, PRECISION
from ._spec import SPEC_FORMS

Decorator = Callable[[Any], Any]

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def options(*decorators: Decorator) -> Decorator:
    """Apply option decorators so that ``--help`` lists them in the order given."""

    def apply(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


# -- value types ----------------------------------------------------------------------------------
class StepsType(click.ParamType):
    """``51`` (every axis) or ``51,41`` (one count per axis)."""

    def __init__(self, axes: int):
        self.axes = axes
        self.name = "n" if axes == 1 else "n[,n]"  # the metavar in --help, upper-cased

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) > self.axes:
            self.fail(f"{value!r}: give {self._expect()}", param, ctx)
        try:
            counts = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not {self._expect()}", param, ctx)
        for count in counts:
            if count < 2:
                self.fail(
                    f"{value!r}: every axis needs at least 2 points (both ends of the span), "
                    f"got {count}",
                    param,
                    ctx,
                )
        return counts * self.axes if len(counts) == 1 else counts

    def _expect(self) -> str:
        if self.axes == 1:
            return "one whole number of points such as 51"
        return "a number of points such as 21 (both axes) or 21,31 (one per axis)"


class SpanType(click.ParamType):
    """``-1:1`` (every axis) or ``-1:1,-0.5:0.5`` (one range per axis)."""

    def __init__(self, axes: int):
        self.axes = axes
        self.name = "min:max" if axes == 1 else "min:max[,min:max]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[tuple[float, float], ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) > self.axes:
            self.fail(f"{value!r}: give {self._expect()}", param, ctx)
        spans = []
        for part in parts:
            pieces = part.split(":")
            try:
                if len(pieces) != 2:
                    raise ValueError
                lo, hi = float(pieces[0]), float(pieces[1])
            except ValueError:
                self.fail(f"{part!r} is not MIN:MAX; give {self._expect()}", param, ctx)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                self.fail(f"{part!r}: both ends must be finite numbers", param, ctx)
            if not lo < hi:
                self.fail(
                    f"{part!r}: MIN must be below MAX (write {min(lo, hi):g}:{max(lo, hi):g})"
                    if lo != hi
                    else f"{part!r}: MIN and MAX are equal; the span must have a length",
                    param,
                    ctx,
                )
            spans.append((lo, hi))
        return tuple(spans) * self.axes if len(spans) == 1 else tuple(spans)

    def _expect(self) -> str:
        if self.axes == 1:
            return "one range MIN:MAX such as -1:1"
        return "MIN:MAX for both axes (-1:1) or one per axis (-1:1,-0.5:0.5)"


class KeywordsType(click.ParamType):
    """``num_classes=10,depth=2``: keyword arguments whose values are Python literals."""

    name = "name=value[,name=value]"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        text = str(value).strip()
        if not text:
            return {}
        example = "e.g. num_classes=10,depth=2,act=relu,sizes=(64,32)"
        try:
            call = ast.parse(f"f({text})", mode="eval").body
        except SyntaxError as exc:
            self.fail(f"{text!r} is not name=value pairs ({exc.msg}); {example}", param, ctx)
        if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
            self.fail(f"{text!r}: give only name=value pairs, {example}", param, ctx)
        out: dict[str, Any] = {}
        for keyword in call.keywords:
            try:
                out[str(keyword.arg)] = ast.literal_eval(keyword.value)
            except (ValueError, SyntaxError, TypeError):
                if not isinstance(keyword.value, ast.Name):  # a bare word is a string
                    self.fail(
                        f"{keyword.arg}={ast.unparse(keyword.value)} is not a Python literal "
                        "(a number, string, True/False/None, or a tuple, list or dict of them)",
                        param,
                        ctx,
                    )
                out[str(keyword.arg)] = keyword.value.id
        return out


# -- the objective: model, checkpoint, data, loss and how it is evaluated -------------------------
MODEL = options(
    click.option(
        "--model",
        "model_spec",
        required=True,
        metavar="SPEC",
        help=f"Factory of the model: {SPEC_FORMS}, called with the --model-kwargs (none by "
        "default). It must return an nn.Module; it is called after torch.manual_seed(--seed), so "
        "an unseeded initialisation repeats.",
    ),
    click.option(
        "--model-kwargs",
        "model_kwargs",
        type=KeywordsType(),
        default="",
        metavar="NAME=VALUE,...",
        help="Keyword arguments of the --model factory, as Python literals: "
        "--model-kwargs num_classes=10,depth=2 calls factory(num_classes=10, depth=2); a bare "
        "word is a string (act=relu). Default: none.",
    ),
)
DATA = click.option(
    "--data",
    "data_spec",
    required=True,
    metavar="SPEC",
    help=f"Factory of the evaluation data, called without arguments: {SPEC_FORMS}. It may "
    "return a tuple (X, y) of tensors, a DataLoader, a Dataset (batched in order) or an iterable "
    "of (X, y) batches. The loss is the sample-weighted mean over all of it.",
)
LOSS = click.option(
    "--loss",
    default="cross_entropy",
    show_default=True,
    metavar="NAME|SPEC",
    help="cross_entropy, mse, or a SPEC naming loss_fn(output, target) that returns the batch "
    "mean (an nn.Module class such as torch.nn:SmoothL1Loss is instantiated).",
)
COUNT = click.option(
    "--count",
    type=click.Choice(["samples", "tokens"]),
    default="samples",
    show_default=True,
    help="What the loss's batch mean averages over, which weights every batch: samples (the "
    "target's first dimension) or tokens (the target entries that are not -100, "
    "cross_entropy's ignore_index: a token-level language-model loss with padding). The batch "
    "size cannot change the value exactly when this is the number of items the loss averages "
    "over; then the value is the mean over every item of --data (e.g. the token mean over the "
    "whole set). A token-mean loss with samples weights every sequence alike within a batch, "
    "and its value depends on the batch size. --subset draws samples, not single tokens.",
)
METRIC = click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="NAME|SPEC",
    help="Extra quantity averaged like the loss; repeatable: accuracy, none, or a SPEC naming "
    "f(output, target) -> scalar. Default: accuracy with cross_entropy, none otherwise.",
)
BATCH_SIZE = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluation batch size for tensor data (default: the engine picks the fastest; the "
    "values do not depend on it, except BatchNorm statistics under --bn recompute). "
    "DataLoaders keep their own batches.",
)
SUBSET = click.option(
    "--subset",
    type=click.IntRange(min=2),
    default=None,
    metavar="N",
    help="Evaluate on a fixed random subset of N samples (seeded by --seed); values then carry "
    "a standard error.",
)
PARAMS = click.option(
    "--params",
    multiple=True,
    metavar="GLOB",
    help="Only move these parameters (names or globs such as 'fc.*'); repeatable. Default: the "
    "trainable ones (requires_grad=True); 'all' also moves frozen parameters.",
)
DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where to evaluate: auto (cuda when available, else cpu), cpu, cuda or cuda:N.",
)
UNSAFE_LOAD = click.option(
    "--unsafe-load",
    is_flag=True,
    help="Read checkpoints with torch.load(weights_only=False). That unpickles arbitrary "
    "objects and can run code: only for trusted files.",
)
QUIET = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bars and no summary (errors and warnings still go to stderr).",
)


def checkpoint(point: str) -> Decorator:
    """``--checkpoint`` (optional): ``point`` says what the loaded model is to the command."""
    return click.option(
        "--checkpoint",
        type=EXISTING_FILE,
        default=None,
        help=f"State dict to load into the model: {point}. Default: the model as the factory "
        "builds it.",
    )


def bn(default: str, note: str = "", *, perturb: bool = False) -> Decorator:
    """``--bn``, with ``note`` on what the command does with the statistics; ``perturb`` offers
    the policy that moves the running statistics along random directions (slices only)."""
    choices = ["eval", "recompute", *(["perturb"] if perturb else [])]
    moved = (
        "; perturb moves the running statistics along the random directions too (the 2018 "
        "scripts' dir_type=states)"
        if perturb
        else ""
    )
    return click.option(
        "--bn",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="BatchNorm policy: eval uses the running statistics of the checkpoint; recompute "
        f"re-estimates them from the data at every point{moved}.{' ' + note if note else ''}",
    )


def seed(uses: str, *, factories: bool = True) -> Decorator:
    """``--seed``: the seed of ``uses`` and, with ``factories``, of --subset and the factories."""
    also = ", of --subset, and of the torch.manual_seed called before each factory"
    return click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help=f"Seed of {uses}{also if factories else ''}.",
    )


def measurement(*, bn_note: str, seed_uses: str) -> tuple[Decorator, ...]:
    """The options after a measurement's own (hessian, sharpness): loss, evaluation, seed."""
    return (
        LOSS, COUNT, bn("eval", bn_note), BATCH_SIZE, SUBSET, PARAMS, DEVICE, UNSAFE_LOAD,
        seed(seed_uses), QUIET,
    )  # fmt: skip


# -- where the results go -------------------------------------------------------------------------
def out_file(
    what: str, example: str, *, default: str | None = None, optional: str | None = None
) -> Decorator:
    """``--out FILE``, its folder created if needed: required unless it has a ``default`` or is
    ``optional`` (the text says what happens without it)."""
    if optional is not None:
        extra: dict[str, Any] = {"default": None}
    elif default is None:
        extra = {"required": True}
    else:
        extra = {"default": default, "show_default": True}
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        callback=_with_folder,
        help=f"The {what} to write (e.g. {example}); its folder is created if needed."
        + (f" {optional}" if optional else ""),
        **extra,
    )


def _with_folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Create the folder of an --out file (and the folders above it) before any work is done."""
    if value is not None:
        make_folder(value.parent, param_hint="'--out'")
    return value


def make_folder(folder: Path, *, param_hint: str = "'--out'") -> Path:
    """``mkdir -p folder``; a folder that cannot be made is a bad option, with the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.BadParameter(
            f"cannot create the folder {str(folder)!r}: {reason}; choose a writable place",
            param_hint=param_hint,
        ) from exc
    return folder


def out_folder(help: str, *, dest: str = "out", default: str | None = None) -> Decorator:
    """``--out FOLDER``: required unless it has a ``default``."""
    return click.option(
        "--out",
        dest,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
        **({"required": True} if default is None else {"default": default, "show_default": True}),
    )


# -- surfaces: the commands that write a surface file (line, plane, interpolate, trajectory) ------
def span(axes: int, default: str | None, help: str) -> Decorator:
    """``--span``: one range MIN:MAX for every axis, or one per axis."""
    shown: dict[str, Any] = {} if default is None else {"show_default": True}
    return click.option("--span", type=SpanType(axes), default=default, help=help, **shown)


def steps(axes: int, default: str, help: str) -> Decorator:
    """``--steps``: one number of points for every axis, or one per axis."""
    return click.option(
        "--steps", type=StepsType(axes), default=default, show_default=True, help=help
    )


SURFACE_OUT = out_file("HDF5 surface file", "surf.h5")
PLANE_STEPS = steps(
    2, "21", "Points per axis, both ends included: 21 (both axes) or 21,31 (one per axis)."
)
NORM = click.option(
    "--norm",
    type=click.Choice(["filter", "layer", "model", "none"]),
    default="filter",
    show_default=True,
    help="Normalisation of the random directions: filter (Li et al. 2018: every filter gets the "
    "norm of the matching filter of the weights), layer, model, or none (raw Gaussian).",
)
IGNORE = click.option(
    "--ignore",
    default="biasbn",
    show_default=True,
    help="Parameters the directions leave at zero: biasbn (biases and every normalisation "
    "layer: BatchNorm, LayerNorm, RMSNorm, ...; as in Li et al. 2018; biasnorm is the same), "
    "bias, bn (= norm), none, or a comma list of those and name globs ('fc.*').",
)
STRATEGY = click.option(
    "--strategy",
    type=click.Choice(["auto", "loop", "vmap"]),
    default="auto",
    show_default=True,
    help="Engine strategy: auto measures and picks; loop evaluates one point per forward pass; "
    "vmap many points per pass (not with --bn recompute).",
)
RESUME = click.option(
    "--resume/--no-resume",
    default=None,
    help="With an existing --out: --resume computes only its missing points (refusing a file "
    "made with other settings), --no-resume overwrites it. Default: resume when --out exists.",
)


class ShardType(click.ParamType):
    """``i/N``: shard ``i`` of ``N`` (0 <= i < N)."""

    name = "i/N"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        from ..errors import InputError
        from ..shards import parse_shard

        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        try:
            parsed = parse_shard(str(value), store="--out")
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        if parsed is None:
            self.fail(f"{value!r} is not i/N", param, ctx)
        return parsed


SHARD = click.option(
    "--shard",
    type=ShardType(),
    default=None,
    help="Evaluate only shard i of N (the points whose flat index k has k % N == i) into --out, "
    "for job arrays; join the N files with `lossvista merge`. No pictures are drawn.",
)
PNG = click.option(
    "--png/--no-png",
    default=True,
    show_default=True,
    help="Also draw the result next to --out, with the same stem.",
)
#: The loss and the metrics of a surface.
EVALUATION = (LOSS, COUNT, METRIC)
#: How a surface is evaluated, stored and reported (after --bn).
ENGINE = (
    BATCH_SIZE, SUBSET, PARAMS, DEVICE, STRATEGY, POINTS_PER_PASS, PRECISION, RESUME, PNG,
    UNSAFE_LOAD,
    seed("the random directions (line, plane)"), QUIET,
)  # fmt: skip
