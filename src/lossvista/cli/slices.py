"""``lossvista line | plane | interpolate``: a model, a checkpoint and data -> a surface file."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import _dist
from ..directions import random_directions
from ..slices import interpolate as interpolate_slice
from ..slices import line as line_slice
from ..slices import plane as plane_slice
from . import _common
from ._common import SurfaceRun, friendly_errors
from ._options import (
    DATA,
    ENGINE,
    EVALUATION,
    EXISTING_FILE,
    IGNORE,
    MODEL,
    NORM,
    PLANE_STEPS,
    SHARD,
    SURFACE_OUT,
    bn,
    checkpoint,
    options,
    span,
    steps,
)

_LINE_STEPS = steps(1, "51", "Number of points, both ends included (at least 2).")


@click.command()
@options(
    MODEL, DATA, checkpoint("the centre of the line"), SURFACE_OUT,
    span(1, "-1:1", "Range MIN:MAX of the step along the direction."), _LINE_STEPS, NORM, IGNORE,
    *EVALUATION, bn("eval", perturb=True), *ENGINE, SHARD,
)  # fmt: skip
@friendly_errors
def line(**options: Any) -> None:
    """The loss along one random direction through a checkpoint: theta + alpha * d.

    Writes a picture next to --out (STEM.png) unless --no-png.
    """
    _slice(SurfaceRun(options), "line")


@click.command()
@options(
    MODEL,
    DATA,
    checkpoint("the centre of the plane"),
    SURFACE_OUT,
    span(2, "-1:1", "MIN:MAX for both axes (-1:1) or one per axis (-1:1,-0.5:0.5)."),
    PLANE_STEPS,
    NORM,
    IGNORE,
    click.option(
        "--orthogonalize",
        is_flag=True,
        help="Make the second direction exactly orthogonal to the first (after normalisation).",
    ),
    *EVALUATION,
    bn("eval", perturb=True),
    *ENGINE,
    SHARD,
)
@friendly_errors
def plane(**options: Any) -> None:
    """The loss on a plane through a checkpoint spanned by two random directions.

    Writes a contour and a 3-D surface picture next to --out (STEM_contour.png,
    STEM_surface3d.png) unless --no-png.
    """
    _slice(SurfaceRun(options), "plane")


@click.command()
@options(
    MODEL,
    DATA,
    click.option(
        "--checkpoint",
        type=EXISTING_FILE,
        required=True,
        help="State dict of the end point theta_b (t = 1).",
    ),
    click.option(
        "--start",
        type=EXISTING_FILE,
        default=None,
        help="State dict of the start point theta_a (t = 0). Default: the model exactly as the "
        "factory builds it under --seed, i.e. its initialisation.",
    ),
    SURFACE_OUT,
    span(1, "0:1", "Range MIN:MAX of t; values outside 0:1 extrapolate (e.g. -0.5:1.5)."),
    _LINE_STEPS,
    *EVALUATION,
    bn(
        "recompute",
        "The default recompute suits a path between two models, since neither end's "
        "statistics describe the points in between (it changes nothing without BatchNorm); "
        "with eval every point uses the statistics of --checkpoint.",
    ),
    *ENGINE,
)
@friendly_errors
def interpolate(**options: Any) -> None:
    """The loss on the straight path theta(t) = (1 - t) * theta_a + t * theta_b.

    Prints the loss barrier: the largest excess of the loss over the straight chord between the
    two ends, for t in [0, 1]. Writes a picture next to --out (STEM.png) unless --no-png.
    """
    _interpolation(SurfaceRun(options))


def _slice(run: SurfaceRun, kind: str) -> None:
    options = run.options
    _dist.use_local_device()  # under torchrun/srun: --device cuda is this rank's GPU
    with run.guard():
        objective = run.objective(run.model(options["checkpoint"]))
        ignore = _common.parse_ignore(options["ignore"], objective.param_names)
        norm = None if options["norm"] == "none" else options["norm"]
        n = 1 if kind == "line" else 2
        directions = random_directions(
            objective,
            n,
            norm=norm,
            ignore=ignore,
            orthogonalize=options.get("orthogonalize", False),
            seed=run.seed,
        )
        before, started = run.computed_before(), time.perf_counter()
        shard = options["shard"]
        if kind == "line":
            result = line_slice(
                objective, directions[0], span=options["span"][0], steps=options["steps"][0],
                shard=shard, **run.engine_options(),
            )  # fmt: skip
            pictures = {run.out.with_suffix(".png"): {"kind": "line"}}
        else:
            result = plane_slice(
                objective, directions, span=options["span"], steps=options["steps"],
                shard=shard, **run.engine_options(),
            )  # fmt: skip
            stem = run.out.with_suffix("")
            pictures = {
                stem.with_name(f"{stem.name}_contour.png"): {"kind": "contour"},
                stem.with_name(f"{stem.name}_surface3d.png"): {"kind": "surface3d"},
            }
        if _dist.secondary_rank():  # under torchrun/srun rank 0 reports and draws
            run.quiet, pictures = True, {}
        if shard is not None:  # a share of the points: its picture would mislead
            pictures = {}
            if not run.quiet:
                click.echo(f"shard {shard[0]}/{shard[1]}; join every shard with `lossvista merge`")
        run.finish(result, before, time.perf_counter() - started, pictures)


def _interpolation(run: SurfaceRun) -> None:
    options = run.options
    _dist.use_local_device()
    with run.guard():
        end = run.model(options["checkpoint"])
        start = run.model(options["start"], "'--start'")
        objective = run.objective(end)
        before, started = run.computed_before(), time.perf_counter()
        result = interpolate_slice(
            objective, start, end, span=options["span"][0], steps=options["steps"][0],
            **run.engine_options(),
        )  # fmt: skip
        pictures = {run.out.with_suffix(".png"): {"kind": "line"}}
        if _dist.secondary_rank():  # under torchrun/srun rank 0 reports and draws
            run.quiet, pictures = True, {}
        run.finish(result, before, time.perf_counter() - started, pictures)
