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
from ..slices import plane as plane_slice
from ..trajectory import (
    PCADirections,
    Projection,
    Trajectory,
    checkpoint_files,
    pca_directions,
    project,
)
from . import _common
from ._common import SurfaceRun, friendly_errors
from ._options import (
    DATA,
    ENGINE,
    EVALUATION,
    IGNORE,
    MODEL,
    PLANE_STEPS,
    bn,
    options,
    out_file,
    span,
)


@click.command()
@options(
    MODEL,
    DATA,
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
    out_file("HDF5 surface file", "traj.h5", default="trajectory.h5"),
    span(
        2,
        None,
        "MIN:MAX for both axes or one per axis (-1:1,-0.5:0.5), in the units of the PCA "
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
    PLANE_STEPS,
    click.option(
        "--center",
        type=click.Choice(["final", "mean"]),
        default="final",
        show_default=True,
        help="PCA of the checkpoints relative to the final one (Li et al. 2018; the plane is "
        "centred on the final model) or to their mean (classical PCA; the plane is centred on "
        "the mean parameters, with the buffers of the final checkpoint).",
    ),
    IGNORE,
    *EVALUATION,
    bn("eval"),
    *ENGINE,
)
@friendly_errors
def trajectory(**options: Any) -> None:
    """The loss on the plane of the two principal directions of a run's checkpoints, with the
    optimizer's path projected on it (Li et al. 2018).

    Writes --out (the surface), STEM_path.csv (step, coordinates and distance from the plane of
    every checkpoint) and, unless --no-png, STEM_contour.png with the path drawn on it. The seed
    only matters for --subset and an unseeded model factory: PCA directions are not random.
    """
    run = SurfaceRun(options)
    with run.guard():
        _trajectory(run, options)


def _trajectory(run: SurfaceRun, options: dict[str, Any]) -> None:
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
    before, started = run.computed_before(), time.perf_counter()
    # The plane keeps the path (file and pictures) and covers it when no span is given.
    result = plane_slice(
        objective,
        directions,
        span=options["span"],
        margin=options["margin"],
        trajectory=projection.coordinates,
        steps=options["steps"],
        **run.engine_options(),
    )
    table = _write_path(run.out.with_name(f"{run.out.stem}_path.csv"), projection)
    written = [table]
    if options["png"]:
        stem = run.out.with_suffix("")
        contour = stem.with_name(f"{stem.name}_contour.png")
        written.append(_common.save_plot(result, contour, kind="contour"))
    if not run.quiet:
        _report(path, directions, projection)
    run.finish(result, before, time.perf_counter() - started, {})
    if not run.quiet:
        for file in written:  # continues the list of files finish printed
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
