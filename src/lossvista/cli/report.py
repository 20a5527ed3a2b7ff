"""``lossvista report``: one self-contained interactive HTML page of result files."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import friendly_errors
from ._options import EXISTING_FILE, out_file


@click.command()
@click.argument("files", nargs=-1, required=True, type=EXISTING_FILE)
@out_file("HTML report", "report.html", default="report.html")
@click.option("--title", default=None, help="The page's heading (default: lossvista report).")
@click.option("--notes", default=None, help="Free text shown under the title.")
@friendly_errors
def report(files: tuple[Path, ...], out: Path, title: str | None, notes: str | None) -> None:
    """Write one HTML page showing FILE... (surfaces, interpolations, Hessian and sharpness
    results, trajectories, training runs, toy races: any file lossvista wrote).

    The page is self-contained (plotly.js, about 5 MB, is embedded) and requests nothing when
    opened, so it works offline and can be mailed or archived as one file.
    """
    from ..report import report as write_report  # lazily: the CLI starts fast

    path = write_report(out, *files, title=title, notes=notes)
    click.echo(f"{len(files)} result(s) in one page")
    click.echo(f"wrote:\n  {path}")
