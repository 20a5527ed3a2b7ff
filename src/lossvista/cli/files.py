"""``lossvista plot | info``: work with surface files already written."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np

from .._result import load
from .._version import __version__
from ..landscape import Interpolation, Landscape
from . import _common
from ._common import friendly_errors
from ._options import EXISTING_FILE, make_folder

_KINDS = ("contour", "filled", "heatmap", "surface3d", "line")


@click.command()
@click.argument("file", type=EXISTING_FILE)
@click.option(
    "--kind",
    type=click.Choice(_KINDS),
    default=None,
    help="Picture kind: line for 1-D surfaces; contour (default), filled, heatmap or surface3d "
    "for 2-D ones.",
)
@click.option(
    "--metric",
    default="loss",
    show_default=True,
    help="Which stored value to draw (see `lossvista info FILE` for the names).",
)
@click.option("--log", is_flag=True, help="Logarithmic value scale.")
@click.option(
    "--vmax",
    type=float,
    default=None,
    help="Clip values above this, so a spike does not flatten the rest of the picture.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=True),
    default=None,
    help="The PNG to write, or a folder for it (an existing one, or a name ending in /); "
    "missing folders are created. Default: FILE with the suffix .png.",
)
@friendly_errors
def plot(file: Path, kind: str | None, metric: str, log: bool, vmax: float | None, out: str | None):
    """Draw a surface file (lossvista's own, or a 2018 loss-landscape .h5) as a PNG."""
    landscape = load(file)
    picture = _picture_path(file, out)
    _common.save_plot(landscape, picture, kind=kind, metric=metric, log=log, vmax=vmax)
    click.echo(f"wrote {picture}")


def _picture_path(file: Path, out: str | None) -> Path:
    """Where ``plot`` writes: ``--out`` as a file, or inside it when it names a folder (one that
    exists, or one written with a trailing separator); the folders are created."""
    if out is None:
        return file.with_suffix(".png")
    folder_named = out.endswith(("/", os.sep)) or Path(out).is_dir()
    picture = Path(out) / file.with_suffix(".png").name if folder_named else Path(out)
    make_folder(picture.parent)
    return picture


@click.command()
@click.argument("file", type=EXISTING_FILE)
@friendly_errors
def info(file: Path) -> None:
    """Describe a surface file: shape, progress, value ranges, centre, settings, provenance.

    Reads lossvista files and 2018 loss-landscape .h5 files.
    """
    landscape = load(file)
    for label, text in describe(landscape, _file_attributes(file)):
        click.echo(f"{label:<13}{text}" if label else f"{'':<13}{text}")


def describe(landscape: Landscape, attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, text)`` rows of :func:`info`; continuation rows have an empty label."""
    rows: list[tuple[str, str]] = [("file", str(landscape.path))]
    legacy = landscape.kind == "legacy"
    kind = landscape.kind + (" (2018 loss-landscape file)" if legacy else "")
    rows.append(("kind", f"{kind}, {landscape.ndim}-D"))
    rows.append(("shape", " x ".join(str(s) for s in landscape.shape)))
    for dim, coords, label in zip(
        landscape.dims, landscape.coords, landscape.axis_labels, strict=False
    ):
        rows.append(("", f"{dim}: {coords[0]:g} .. {coords[-1]:g} ({len(coords)} points) {label}"))
    computed, total = int(np.sum(landscape._computed_mask())), int(np.prod(landscape.shape))
    rows.append(("computed", f"{computed} / {total} points"))
    rows.append(("NaN", f"{landscape.nonfinite} computed points with a non-finite loss"))
    for name in landscape.metrics:
        values = landscape.values[name]
        finite = values[np.isfinite(values)]
        if finite.size:
            text = f"min {finite.min():.6g}, max {finite.max():.6g}"
            if name == "loss":
                text += f" (min at {_point(landscape.argmin(name))})"
        else:
            text = "no finite value"
        rows.append((name, text))
    if landscape.center:
        rows.append(("centre", _common.format_values(landscape.center)))
    else:
        rows.append(("centre", "not stored"))
    check = landscape.center_check
    if check:
        rows.append(
            (
                "centre check",
                f"{'ok' if check.get('ok') else 'MISMATCH'}: engine {check['engine']:.8g} vs "
                f"objective {check['expected']:.8g} (relative error "
                f"{check['relative_error']:.1e}, tolerance {check['rtol']:g})",
            )
        )
    if isinstance(landscape, Interpolation) and landscape.endpoints:
        for key, where in (("a", "t = 0"), ("b", "t = 1")):
            if key in landscape.endpoints:
                described = _common.format_values(landscape.endpoints[key])
                rows.append((f"end {key}", f"{where}: {described}"))
        rows.append(("barrier", f"{landscape.barrier:.6g} (at t = {landscape.barrier_t:.4g})"))
    settings = landscape.settings
    objective = settings.get("objective")
    if objective:
        rows.append(
            (
                "objective",
                f"model {objective.get('model')}, loss {objective.get('loss_fn')}, metrics "
                f"{objective.get('metrics')}, bn {objective.get('bn')}, "
                f"{objective.get('n_samples')} samples"
                + (
                    f" (subset of {objective.get('population')}, seed {objective.get('seed')})"
                    if objective.get("subset")
                    else ""
                )
                + f", {len(objective.get('params') or [])} parameter tensors",
            )
        )
    engine = attrs.get("engine") or settings.get("engine")
    if engine:
        rows.append(("engine", ", ".join(f"{k} {v}" for k, v in sorted(engine.items()))))
    elif not legacy:
        rows.append(("engine", "not recorded (no point computed yet)"))
    for i, direction in enumerate(settings.get("directions") or [], start=1):
        rows.append((f"direction {i}", _direction(direction)))
    if legacy:
        rows.append(("source", str(settings.get("source"))))
        for key, value in (settings.get("attrs") or {}).items():
            rows.append(("", f"{key}: {value}"))
    else:
        version = attrs.get("lossvista_version") or settings.get("lossvista_version", "?")
        created = attrs.get("created", "unknown time")
        rows.append(("created", f"{created} with lossvista {version}"))
    rows.append(("read with", f"lossvista {__version__}"))
    return rows


def _direction(meta: dict[str, Any]) -> str:
    kind = meta.get("kind", "user")
    if kind != "random":
        return str(kind)
    norm = meta.get("norm") or "none"
    ignore = meta.get("ignore")
    ignore_text = ", ".join(ignore) if isinstance(ignore, list) else str(ignore)
    return (
        f"random, {norm} normalisation, ignore {ignore_text or 'nothing'}, seed {meta.get('seed')}"
        + (", orthogonalised" if meta.get("orthogonalize") else "")
    )


def _point(coords: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{c:g}" for c in coords) + ")"


def _file_attributes(path: Path) -> dict[str, Any]:
    """Provenance the Landscape object does not carry: creation time, engine, writing version."""
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key in ("created", "lossvista_version"):
            if key in f.attrs:
                value = f.attrs[key]
                out[key] = value.decode() if isinstance(value, bytes) else str(value)
        if "engine" in f.attrs:
            with contextlib.suppress(TypeError, ValueError):
                out["engine"] = json.loads(f.attrs["engine"])
    return out
