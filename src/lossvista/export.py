"""Exports of a landscape for other tools, the format chosen by the file's extension.

- ``.vtp``: VTK XML PolyData (ASCII) for ParaView, the successor of the 2018 scripts'
  ``h52vtp``: the surface of a 2-D landscape as points ``(x, y, height)`` and triangles, with
  every metric as a point data array. Written as plain XML, so no ``vtk`` package is needed.
- ``.obj`` (Wavefront) and ``.stl`` (ASCII STL) triangle meshes of a 2-D landscape, with the same
  vertices as the ``.vtp`` file (an STL file repeats them per facet, as the format wants).
- ``.csv``: any landscape in long format, one row per grid point: one column per axis (named
  like the file's dimensions: ``x``, ``y``, ``z``, ``d3``, ..., ``t`` for interpolations), then
  one column per metric.

Floats are written with Python's ``repr`` (the shortest text that reads back to the same
float64), so every coordinate and value reads back exactly. The height of a mesh is the chosen
metric, optionally clipped (``clip``) and then logged (``log``, base 10); the mesh holds the
points whose height is finite and the triangles whose three corners are. Files are written
atomically (:func:`lossvista._hdf5.atomic_write`): a failure leaves the target untouched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import numbers
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from xml.sax.saxutils import quoteattr

import numpy as np

from . import _hdf5
from .errors import InputError, LossvistaWarning

if TYPE_CHECKING:  # pragma: no cover
    from .landscape import Landscape

__all__ = ["FORMATS", "MESH_FORMATS", "SurfaceMesh", "export", "surface_mesh"]

#: Extensions :func:`export` writes and what they hold.
FORMATS = {
    ".vtp": "VTK XML PolyData for ParaView (2-D landscapes)",
    ".obj": "Wavefront OBJ triangle mesh (2-D landscapes)",
    ".stl": "ASCII STL triangle mesh (2-D landscapes)",
    ".csv": "CSV in long format, one row per grid point (any landscape)",
}
#: The formats that hold a surface mesh (2-D landscapes only).
MESH_FORMATS = (".vtp", ".obj", ".stl")


@dataclasses.dataclass(frozen=True, eq=False)
class SurfaceMesh:
    """The triangle mesh of a 2-D landscape.

    Attributes:
        points: ``(V, 3)`` float64 vertices ``(x, y, height)``, in the grid's C order
            (``x`` outer, ``y`` inner), points without a finite height left out.
        triangles: ``(T, 3)`` int64 indices into ``points``, counter-clockwise seen from above
            (normals point to larger heights when the coordinates increase); every grid cell
            with four finite corners gives two, so a complete ``nx x ny`` grid gives
            ``2 (nx - 1)(ny - 1)``.
        point_data: name -> ``(V,)`` float64: every metric as computed, and ``height_name``.
        grid_index: ``(V,)`` the flat (C-order) grid index of each vertex.
        height_name: the name of the height array in ``point_data`` (``"height"``, when the
            height differs from the metric, i.e. with ``log`` or ``clip``), else the metric.
    """

    points: np.ndarray
    triangles: np.ndarray
    point_data: dict[str, np.ndarray]
    grid_index: np.ndarray
    height_name: str


def export(
    landscape: Landscape,
    path: str | Path,
    *,
    metric: str = "loss",
    log: bool = False,
    clip: float | None = None,
) -> Path:
    """Write ``landscape`` to ``path`` in the format its extension names (see :data:`FORMATS`).

    Args:
        landscape: a :class:`~lossvista.Landscape` (or :class:`~lossvista.Interpolation`).
        path: the file; its extension (``.vtp``, ``.obj``, ``.stl``, ``.csv``, any case) picks
            the format. An existing file is replaced atomically.
        metric: the value that gives a mesh its height (every metric is written regardless).
        log: meshes only: the height is ``log10`` of the (clipped) metric; points whose value
            is not positive are left out, with a :class:`~lossvista.LossvistaWarning`.
        clip: meshes only: values above ``clip`` are drawn at ``clip``, so a loss spike does
            not flatten the rest of the surface.

    Returns:
        The path written.

    Raises:
        InputError: an unsupported extension, a mesh format for a landscape that is not 2-D,
            ``log``/``clip`` for a CSV file, an unknown ``metric``, a ``clip`` that is not a
            finite number (or not positive with ``log``), or no finite height at all; all
            before anything is written.
        StoreError: the file cannot be written (missing folder, permissions, full disk).
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        supported = ", ".join(f"{ext} ({what})" for ext, what in FORMATS.items())
        raise InputError(
            f"cannot export to {str(target)!r}: unsupported extension {target.suffix!r}; "
            f"supported: {supported}. For a picture use landscape.plot(), for the surface file "
            "landscape.save(path.h5)"
        )
    _check_options(landscape, metric, log, clip)
    if suffix == ".csv":
        if log or clip is not None:
            raise InputError(
                "log= and clip= shape the height of a mesh (.vtp, .obj, .stl); a .csv file "
                "keeps the values as computed: export without them"
            )
        _hdf5.check_writable(target)
        return _write(target, _csv_text(landscape), "CSV export")
    if landscape.ndim != 2:
        hint = (
            "export it as .csv"
            if landscape.ndim == 1
            else f"take a 2-D section first, e.g. landscape.section("
            f"{', '.join(f'{d}=0.0' for d in landscape.dims[2:])}).export(...), or export it "
            "as .csv"
        )
        raise InputError(
            f"a {suffix} file holds the surface of a 2-D landscape; this one is "
            f"{landscape.ndim}-D (shape {landscape.shape}): {hint}"
        )
    _hdf5.check_writable(target)
    mesh = surface_mesh(landscape, metric=metric, log=log, clip=clip)
    text = {".vtp": _vtp_text, ".obj": _obj_text, ".stl": _stl_text}[suffix](mesh, metric)
    return _write(target, text, f"{suffix[1:].upper()} export")


def surface_mesh(
    landscape: Landscape, *, metric: str = "loss", log: bool = False, clip: float | None = None
) -> SurfaceMesh:
    """The triangle mesh of a 2-D landscape (what the ``.vtp``, ``.obj`` and ``.stl`` exports
    write); ``metric``, ``log`` and ``clip`` as in :func:`export`."""
    if landscape.ndim != 2:
        raise InputError(f"a surface mesh needs a 2-D landscape, got {landscape.ndim}-D")
    _check_options(landscape, metric, log, clip)
    height = landscape.values[metric].reshape(-1)
    if clip is not None:
        height = np.minimum(height, float(clip))  # NaN stays NaN
    dropped = 0
    if log:
        positive = height > 0
        dropped = int(np.sum(np.isfinite(height) & ~positive))
        with np.errstate(divide="ignore", invalid="ignore"):
            height = np.where(positive, np.log10(np.where(positive, height, 1.0)), np.nan)
    valid = np.isfinite(height)
    if not valid.any():
        raise InputError(
            f"nothing to export: {metric!r} has no finite value"
            + (" above 0 (log=True)" if log else "")
            + " (not computed yet, or every evaluation gave NaN/inf)"
        )
    if dropped:
        warnings.warn(
            f"log=True: {dropped} non-positive {metric!r} value(s) cannot be logged; those "
            "points are left out of the mesh",
            LossvistaWarning,
            stacklevel=3,
        )
    nx, ny = landscape.shape
    xs, ys = np.meshgrid(*landscape.coords, indexing="ij")
    grid_index = np.flatnonzero(valid)
    points = np.column_stack([xs.reshape(-1), ys.reshape(-1), height])[grid_index]
    renumber = np.cumsum(valid) - 1  # grid index -> vertex index (for valid points)
    flat = np.arange(nx * ny, dtype=np.int64).reshape(nx, ny)
    a, b, c, d = flat[:-1, :-1], flat[1:, :-1], flat[1:, 1:], flat[:-1, 1:]
    corners = np.stack([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], axis=2).reshape(-1, 3)
    corners = corners[valid[corners].all(axis=1)]
    point_data = {
        name: landscape.values[name].reshape(-1)[grid_index] for name in landscape.metrics
    }
    height_name = metric
    if log or clip is not None:
        height_name = next(
            n for n in ("height", "surface_height", "mesh_height") if n not in point_data
        )
        point_data[height_name] = points[:, 2]
    return SurfaceMesh(
        points, renumber[corners].astype(np.int64), point_data, grid_index, height_name
    )


# -- checks -----------------------------------------------------------------------------------------
def _check_options(landscape: Landscape, metric: str, log: bool, clip: float | None) -> None:
    if metric not in landscape.values:
        raise InputError(f"unknown metric {metric!r}; this landscape has {landscape.metrics}")
    if not isinstance(log, (bool, np.bool_)):
        raise InputError(f"log must be True or False, got {log!r}")
    if clip is None:
        return
    if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, numbers.Real):
        raise InputError(f"clip must be a number (the largest height drawn), got {clip!r}")
    if not math.isfinite(float(clip)):
        raise InputError(f"clip must be finite, got {clip!r}")
    if log and clip <= 0:
        raise InputError(
            f"clip={clip!r} with log=True would leave no positive value; give clip > 0"
        )


# -- writers ----------------------------------------------------------------------------------------
def _write(target: Path, text: str, what: str) -> Path:
    data = text.encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return _hdf5.atomic_write(target, write, what=what)


def _floats(values: Iterable[float]) -> str:
    """Floats separated by spaces, each as its shortest exact text (``repr``)."""
    return " ".join(map(repr, values))


def _csv_text(landscape: Landscape) -> str:
    columns = [*landscape.dims, *landscape.metrics]
    clash = sorted(set(landscape.dims) & set(landscape.metrics))
    if clash:
        raise InputError(
            f"metric name(s) {clash} equal an axis column of the CSV file {list(landscape.dims)}; "
            "rename the metric (e.g. lv.Landscape(..., values={'my_x': ...}))"
        )
    grids = np.meshgrid(*landscape.coords, indexing="ij")
    table = [g.reshape(-1).tolist() for g in grids]
    table += [landscape.values[m].reshape(-1).tolist() for m in landscape.metrics]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([repr(v) for v in row] for row in zip(*table))
    return buffer.getvalue()


def _vtp_text(mesh: SurfaceMesh, metric: str) -> str:
    count = len(mesh.triangles)

    def array(name: str | None, kind: str, body: str, components: int = 1) -> str:
        named = "" if name is None else f" Name={quoteattr(name)}"
        extra = f' NumberOfComponents="{components}"' if components > 1 else ""
        return (
            f'        <DataArray type="{kind}"{named}{extra} format="ascii">\n'
            f"          {body}\n        </DataArray>"
        )

    point_arrays = [array(n, "Float64", _floats(v.tolist())) for n, v in mesh.point_data.items()]
    offsets = " ".join(map(str, range(3, 3 * count + 1, 3)))
    return "\n".join(
        [
            '<?xml version="1.0"?>',
            '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">',
            "  <PolyData>",
            f'    <Piece NumberOfPoints="{len(mesh.points)}" NumberOfVerts="0" '
            f'NumberOfLines="0" NumberOfStrips="0" NumberOfPolys="{count}">',
            f"      <PointData Scalars={quoteattr(mesh.height_name)}>",
            *point_arrays,
            "      </PointData>",
            "      <Points>",
            array(None, "Float64", _floats(mesh.points.reshape(-1).tolist()), components=3),
            "      </Points>",
            "      <Polys>",
            array("connectivity", "Int64", " ".join(map(str, mesh.triangles.reshape(-1).tolist()))),
            array("offsets", "Int64", offsets),
            "      </Polys>",
            "    </Piece>",
            "  </PolyData>",
            "</VTKFile>",
            "",
        ]
    )


def _obj_text(mesh: SurfaceMesh, metric: str) -> str:
    lines = [
        "# lossvista landscape: vertices (x, y, height), height = "
        + (metric if mesh.height_name == metric else f"{metric} transformed (log/clip)"),
    ]
    lines += [f"v {_floats(p)}" for p in mesh.points.tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.triangles.tolist()]
    return "\n".join(lines) + "\n"


def _stl_text(mesh: SurfaceMesh, metric: str) -> str:
    corners = mesh.points[mesh.triangles]  # (T, 3 corners, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
    name = "lossvista_" + "".join(ch if ch.isalnum() else "_" for ch in metric)
    lines = [f"solid {name}"]
    for normal, triangle in zip(normals.tolist(), corners.tolist()):
        lines += [f"  facet normal {_floats(normal)}", "    outer loop"]
        lines += [f"      vertex {_floats(corner)}" for corner in triangle]
        lines += ["    endloop", "  endfacet"]
    lines.append(f"endsolid {name}")
    return "\n".join(lines) + "\n"
