"""``lossvista trajectory``: checkpoints of a training run -> the PCA plane with the path on it."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..landscape import Landscape
from ..slices import plane as plane_slice
from ..store import SurfaceStore
from ..trajectory import (
    PCADirections,
    Projection,
    Trajectory,
    checkpoint_files,
    pca_directions,
    project,
    span_covering,
)
from . import _common
from ._common import SpanType, StepsType, friendly_errors
from .slices import _DATA, _ENGINE, _EVALUATION, _IGNORE, _MODEL, _OUT, _bn, _options, _Run


@click.command()
@_options(
    _MODEL,
    _DATA,
    click.option(
        "--checkpoints",
        "patterns",
        required=True,
        multiple=True,
        metavar="GLOB",
        help="Checkpoint files of the run, as a glob such as 'run/ckpt_*.pt' (quote it) or file "
        "names; repeatable. The matches are sorted naturally (ckpt_2 before ckpt_10); the last "
        "one is the centre of the plane. At least 3.",
    ),
    _OUT,
    click.option(
        "--span",
        type=SpanType(2),
        default=None,
        help="MIN:MAX for both axes or one per axis (-1:1,-0.5:0.5), in the units of the PCA "
        "directions (unit vectors: Euclidean distance). Default: the path and the centre with "
        "--margin on every side.",
    ),
    click.option(
        "--margin",
        type=click.FloatRange(min=0.0),
        default=0.2,
        show_default=True,
        help="Padding around the path when --span is not given, as a fraction of its extent.",
    ),
    click.option(
        "--steps",
        type=StepsType(2),
        default="21",
        show_default=True,
        help="Points per axis, both ends included: 21 (both axes) or 21,31 (one per axis).",
    ),
    click.option(
        "--center",
        type=click.Choice(["final", "mean"]),
        default="final",
        show_default=True,
        help="PCA of the checkpoints relative to the final one (Li et al. 2018; the plane is "
        "centred on the final model) or to their mean (classical PCA; the plane is centred on "
        "the mean parameters, with the buffers of the final checkpoint).",
    ),
    _IGNORE,
    *_EVALUATION,
    _bn("eval"),
    *_ENGINE,
)
@friendly_errors
def trajectory(**options: Any) -> None:
    """The loss on the plane of the two principal directions of a run's checkpoints, with the
    optimizer's path projected on it (Li et al. 2018).

    Writes --out (the surface), STEM_path.csv (step, coordinates and distance from the plane of
    every checkpoint) and, unless --no-png, STEM_contour.png with the path drawn on it. The seed
    only matters for --subset and an unseeded model factory: PCA directions are not random.
    """
    run = _Run(options)
    with run._guard():
        _trajectory(run, options)


def _trajectory(run: _Run, options: dict[str, Any]) -> None:
    files = _files(options["patterns"])
    model = run.model(files[-1], "'--checkpoints'")
    objective = run.objective(model)
    try:
        path = Trajectory.from_checkpoints(
            files,
            weights_only=not options["unsafe_load"],
            model=model,
            params=objective.param_names,
        )
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint="'--checkpoints'") from exc
    ignore = _common.parse_ignore(options["ignore"], objective.param_names)
    directions = pca_directions(path, 2, center=options["center"], ignore=ignore)
    if options["center"] == "mean":
        _move_to(model, directions.origin)
    projection = project(path, directions, origin=objective.parameters())
    span = options["span"] or span_covering(projection, options["margin"])
    before, started = run._before(), time.perf_counter()
    result = plane_slice(objective, directions, span=span, steps=options["steps"], **run.common())
    result.axis_labels = directions.axis_labels
    SurfaceStore(run.out).write_header(axis_labels=list(directions.axis_labels))
    table = _write_path(run.out.with_name(f"{run.out.stem}_path.csv"), projection)
    written = [table]
    if options["png"]:
        stem = run.out.with_suffix("")
        written.append(_picture(result, projection, stem.with_name(f"{stem.name}_contour.png")))
    if not run.quiet:
        _report(path, directions, projection)
    run._finish(result, before, time.perf_counter() - started, {})
    if not run.quiet:
        for file in written:  # continues the list of files _finish printed
            click.echo(f"  {file}")


def _files(patterns: tuple[str, ...]) -> list[Path]:
    try:
        files = checkpoint_files(patterns)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--checkpoints'") from exc
    if len(files) < 3:
        raise click.BadParameter(
            f"{len(files)} checkpoint(s) found ({', '.join(map(str, files))}); a plane of two "
            "principal directions needs at least 3",
            param_hint="'--checkpoints'",
        )
    return files


def _move_to(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Write ``values`` into the CLI's own model (it was built here, so it may change)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in values:
                parameter.copy_(values[name])


def _picture(result: Landscape, projection: Projection, out: Path) -> Path:
    """The contour plot with the path drawn on it (``_common.save_plot`` names its file
    argument ``path``, which is also the plot's overlay argument)."""
    plt = _common.headless_pyplot()
    figure = result.plot(kind="contour", path=projection)
    try:
        figure.savefig(out, dpi=150, bbox_inches="tight")
    finally:
        plt.close(figure)
    return out


def _write_path(path: Path, projection: Projection) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "x", "y", "distance_from_plane"])
        for step, (x, y), residual in zip(
            projection.steps, projection.coordinates, projection.residual_norm
        ):
            writer.writerow([int(step), repr(float(x)), repr(float(y)), repr(float(residual))])
    return path


def _report(path: Trajectory, directions: PCADirections, projection: Projection) -> None:
    share = float(np.sum(directions.explained_variance_ratio_))
    click.echo(
        f"{len(path)} checkpoints (steps {int(path.steps[0])}..{int(path.steps[-1])}); "
        f"{', '.join(directions.axis_labels)}: {100 * share:.1f}% of the path's spread"
    )
    click.echo(
        f"largest distance of a checkpoint from the plane: {projection.residual_norm.max():.4g}"
    )
