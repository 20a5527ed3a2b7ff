"""``lossvista merge``: join the shard files of one grid (``--shard i/N``) into one surface file."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StoreMismatchError
from ..shards import merge as merge_shards
from ._common import format_values, friendly_errors
from ._options import EXISTING_FILE


@click.command()
@click.argument("shards", nargs=-1, required=True, type=EXISTING_FILE)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The merged HDF5 surface file (replaced atomically if it exists).",
)
@friendly_errors
def merge(shards: tuple[Path, ...], out: Path) -> None:
    """Join the shard files SHARD... of one grid (written with --shard i/N) into --out.

    Checks that the shards belong together (same kind, span, steps, model, data, directions,
    centre, shard count) and that every shard 0..N-1 is present once and complete; the result
    equals what one run without --shard would have written.
    """
    try:
        result = merge_shards(shards, out)
    except StoreMismatchError as exc:  # not the resume advice friendly_errors gives
        raise click.ClickException(str(exc)) from exc
    size = " x ".join(str(s) for s in result.shape)
    click.echo(f"{result.kind}: {size} points merged from {len(shards)} shards")
    click.echo(f"centre: {format_values(result.center)}")
    click.echo(f"wrote:\n  {out}")
