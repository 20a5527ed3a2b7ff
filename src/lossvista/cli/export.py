"""``lossvista export``: a surface file as a mesh for ParaView or other tools, or as CSV."""

from __future__ import annotations

from pathlib import Path

import click

from .._result import load
from ..export import FORMATS
from ..landscape import Landscape
from ._common import friendly_errors
from ._options import EXISTING_FILE, make_folder


@click.command()
@click.argument("file", type=EXISTING_FILE)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The file to write; its extension picks the format: .vtp (ParaView), .obj or .stl "
    "(meshes of 2-D surfaces) or .csv (any landscape). Missing folders are created; an "
    "existing file is replaced atomically.",
)
@click.option(
    "--metric",
    default="loss",
    show_default=True,
    help="The value that gives a mesh its height (every metric is written regardless).",
)
@click.option("--log", is_flag=True, help="Meshes: the height is log10 of the value.")
@click.option(
    "--clip",
    type=float,
    default=None,
    help="Meshes: values above this are drawn at it (applied before --log), so a spike does "
    "not flatten the rest of the surface.",
)
@friendly_errors
def export(file: Path, out: Path, metric: str, log: bool, clip: float | None) -> None:
    """Export the surface file FILE (lossvista's own, or a 2018 loss-landscape .h5) to --out:
    the 2-D surface as .vtp (ParaView), .obj or .stl, or any landscape as .csv."""
    landscape = load(file)
    if not isinstance(landscape, Landscape):
        raise click.ClickException(
            f"{str(file)!r} holds a {type(landscape).__name__}, not a landscape; export reads "
            "surface files (lossvista line | plane | interpolate, lv.grid, Landscape.save)"
        )
    if out.suffix.lower() not in FORMATS:
        raise click.BadParameter(
            f"unsupported extension {out.suffix!r}; use one of {', '.join(FORMATS)}",
            param_hint="'--out'",
        )
    make_folder(out.parent)
    written = landscape.export(out, metric=metric, log=log, clip=clip)
    click.echo(f"wrote {written}")
