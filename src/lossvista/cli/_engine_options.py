"""Options of the engine's refinements for the surface commands (``line``, ``plane``,
``interpolate``): vectorised points per pass and autocast precision."""

from __future__ import annotations

import click

POINTS_PER_PASS = click.option(
    "--points-per-pass",
    type=click.IntRange(min=1),
    default=None,
    help="Grid points per vectorised (vmap) forward pass [default: bounded by free memory].",
)
PRECISION = click.option(
    "--precision",
    type=click.Choice(["bfloat16", "float16"]),
    default=None,
    help="Evaluate the grid's forward passes under autocast (for GPUs; losses in float32, sums "
    "in float64). Part of the file's identity; needs a float32 model [default: the model's "
    "dtype].",
)
