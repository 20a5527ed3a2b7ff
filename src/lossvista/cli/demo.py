"""``lossvista demo``: train a small digits CNN and draw its landscape (:mod:`lossvista.demo`)."""

from __future__ import annotations

from pathlib import Path

import click

from . import _options
from ._common import friendly_errors, headless_pyplot


@click.command()
@_options.out_folder(
    "Folder for the checkpoints, surface files and pictures (created if needed).",
    dest="out_dir",
    default="lossvista-demo",
)
@_options.seed("the initialisation, data split, training order and directions", factories=False)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@friendly_errors
def demo(out_dir: Path, seed: int, quiet: bool) -> None:
    """Train a small CNN on scikit-learn's 8x8 digits, then write a 1-D line, a 2-D plane and the
    interpolation from initialisation to the trained model, with pictures.

    Runs offline on a CPU in well under a minute. The model and data factories are
    lossvista.demo:digits_cnn and lossvista.demo:digits_data, usable with the other commands.
    """
    from ..demo import run_demo  # lazily: it pulls in scikit-learn

    headless_pyplot()
    run_demo(out_dir, seed=seed, progress=not quiet, echo=None if quiet else click.echo)
