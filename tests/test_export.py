"""Exports of landscapes (.vtp, .obj, .stl, .csv): every file is read back with an independent
parser and compared with the landscape bit for bit (floats are written as repr, so exactly)."""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import lossvista as lv
from lossvista.cli import main
from lossvista.errors import InputError, LossvistaWarning, StoreError
from lossvista.export import export, surface_mesh

# A non-square grid with irrational-looking values, so that a transposition or a rounding
# cannot go unnoticed.
X = np.linspace(-1.0, 1.0, 5) / 3.0
Y = np.linspace(0.5, 2.0, 4) * math.pi
LOSS = np.exp(X[:, None]) + np.sqrt(Y[None, :]) / 7.0  # positive everywhere, distinct
ACC = np.cos(X[:, None] * Y[None, :])


def plane(loss: np.ndarray = LOSS, **values: np.ndarray) -> lv.Landscape:
    return lv.Landscape(coords=(X, Y), values={"loss": loss.copy(), "accuracy": ACC, **values})


def grid_points(loss: np.ndarray = LOSS) -> np.ndarray:
    xs, ys = np.meshgrid(X, Y, indexing="ij")
    return np.column_stack([xs.ravel(), ys.ravel(), loss.ravel()])


def floats(text: str | None) -> np.ndarray:
    return np.array([float(v) for v in (text or "").split()])


def read_vtp(path: Path) -> dict:
    root = ET.parse(path).getroot()
    assert root.tag == "VTKFile" and root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")
    points = floats(piece.find("Points/DataArray").text).reshape(-1, 3)
    data = {a.get("Name"): floats(a.text) for a in piece.find("PointData")}
    polys = {a.get("Name"): floats(a.text).astype(np.int64) for a in piece.find("Polys")}
    return {
        "piece": piece,
        "points": points,
        "data": data,
        "scalars": piece.find("PointData").get("Scalars"),
        "triangles": polys["connectivity"].reshape(-1, 3),
        "offsets": polys["offsets"],
    }


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = [], []
    for line in path.read_text().splitlines():
        kind, *rest = line.split() or [""]
        if kind == "v":
            vertices.append([float(v) for v in rest])
        elif kind == "f":
            faces.append([int(v) - 1 for v in rest])
    return np.array(vertices), np.array(faces, dtype=np.int64)


def read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(normals (T, 3), corners (T, 3, 3)) of an ASCII STL file, checking its grammar."""
    lines = [line.split() for line in path.read_text().splitlines()]
    assert lines[0][0] == "solid" and lines[-1] == ["endsolid", lines[0][1]]
    body = lines[1:-1]
    assert len(body) % 7 == 0
    normals, corners = [], []
    for k in range(0, len(body), 7):
        facet = body[k : k + 7]
        assert facet[0][:2] == ["facet", "normal"] and facet[1] == ["outer", "loop"]
        assert [f[0] for f in facet[2:5]] == ["vertex"] * 3
        assert facet[5] == ["endloop"] and facet[6] == ["endfacet"]
        normals.append([float(v) for v in facet[0][2:]])
        corners.append([[float(v) for v in f[1:]] for f in facet[2:5]])
    return np.array(normals), np.array(corners)


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    a, b, c = (points[triangles[:, k], :2] for k in range(3))
    return 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])


# -- .vtp ---------------------------------------------------------------------------------------
def test_vtp_round_trip_is_exact(tmp_path):
    written = plane().export(tmp_path / "surf.vtp")
    assert written == tmp_path / "surf.vtp"
    vtp = read_vtp(written)
    nx, ny = len(X), len(Y)
    np.testing.assert_array_equal(vtp["points"], grid_points())  # bit for bit
    np.testing.assert_array_equal(vtp["data"]["loss"], LOSS.ravel())
    np.testing.assert_array_equal(vtp["data"]["accuracy"], ACC.ravel())
    assert set(vtp["data"]) == {"loss", "accuracy"} and vtp["scalars"] == "loss"
    count = 2 * (nx - 1) * (ny - 1)
    assert vtp["piece"].get("NumberOfPoints") == str(nx * ny)
    assert vtp["piece"].get("NumberOfPolys") == str(count)
    assert vtp["triangles"].shape == (count, 3)
    np.testing.assert_array_equal(vtp["offsets"], 3 * np.arange(1, count + 1))
    assert vtp["triangles"].min() == 0 and vtp["triangles"].max() == nx * ny - 1
    # The triangles tile the rectangle exactly once, each counter-clockwise seen from above.
    areas = signed_areas(vtp["points"], vtp["triangles"])
    assert np.all(areas > 0)
    assert areas.sum() == pytest.approx((X[-1] - X[0]) * (Y[-1] - Y[0]), rel=1e-12)
    # Each triangle joins grid neighbours: index steps of at most one along each axis.
    i, j = np.divmod(vtp["triangles"], ny)
    assert np.ptp(i, axis=1).max() == 1 and np.ptp(j, axis=1).max() == 1


def test_vtp_log_and_clip_shape_the_height_only(tmp_path):
    clip = float(np.median(LOSS))
    vtp = read_vtp(plane().export(tmp_path / "s.vtp", log=True, clip=clip))
    expected = np.log10(np.minimum(LOSS, clip)).ravel()
    np.testing.assert_array_equal(vtp["points"][:, 2], expected)
    np.testing.assert_array_equal(vtp["data"]["height"], expected)
    np.testing.assert_array_equal(vtp["data"]["loss"], LOSS.ravel())  # the values as computed
    assert vtp["scalars"] == "height"
    clipped = read_vtp(plane().export(tmp_path / "c.vtp", clip=clip))
    np.testing.assert_array_equal(clipped["points"][:, 2], np.minimum(LOSS, clip).ravel())
    assert clipped["points"][:, 2].max() == clip
    logged = read_vtp(plane().export(tmp_path / "l.vtp", log=True))
    np.testing.assert_array_equal(logged["points"][:, 2], np.log10(LOSS).ravel())


def test_another_metric_gives_the_height(tmp_path):
    vtp = read_vtp(plane().export(tmp_path / "acc.vtp", metric="accuracy"))
    np.testing.assert_array_equal(vtp["points"][:, 2], ACC.ravel())
    assert vtp["scalars"] == "accuracy"


def test_metric_names_are_escaped_in_the_xml(tmp_path):
    name = 'a<b & "c"'
    vtp = read_vtp(plane(**{name: 2 * ACC}).export(tmp_path / "odd.vtp"))
    np.testing.assert_array_equal(vtp["data"][name], 2 * ACC.ravel())


@pytest.mark.parametrize(
    ("where", "removed"),
    [((0, 0), 2), ((len(X) - 1, 0), 1), ((2, 1), 6)],  # a corner in 2 / 1 triangles, interior 6
)
def test_points_without_a_finite_loss_are_left_out(tmp_path, where, removed):
    loss = LOSS.copy()
    loss[where] = np.nan
    vtp = read_vtp(plane(loss).export(tmp_path / "hole.vtp"))
    keep = np.isfinite(loss.ravel())
    np.testing.assert_array_equal(vtp["points"], grid_points(loss)[keep])
    assert len(vtp["triangles"]) == 2 * (len(X) - 1) * (len(Y) - 1) - removed
    assert vtp["triangles"].max() < keep.sum()
    assert np.all(np.isfinite(vtp["points"]))


def test_log_leaves_out_non_positive_values_with_a_warning(tmp_path):
    loss = LOSS - LOSS[0, 0]  # exactly 0 at the corner (0, 0)
    with pytest.warns(LossvistaWarning, match="1 non-positive 'loss'"):
        mesh = surface_mesh(plane(loss), log=True)
    assert len(mesh.points) == loss.size - 1 and 0 not in mesh.grid_index
    np.testing.assert_array_equal(mesh.points[:, 2], np.log10(loss.ravel()[1:]))


# -- .obj and .stl --------------------------------------------------------------------------------
def test_obj_holds_the_same_mesh_as_the_vtp(tmp_path):
    landscape = plane()
    vtp = read_vtp(landscape.export(tmp_path / "s.vtp", clip=1.5))
    vertices, faces = read_obj(landscape.export(tmp_path / "s.obj", clip=1.5))
    np.testing.assert_array_equal(vertices, vtp["points"])
    np.testing.assert_array_equal(faces, vtp["triangles"])
    assert len(faces) == 2 * (len(X) - 1) * (len(Y) - 1) and faces.min() == 0


def test_stl_facets_are_the_triangles_with_unit_upward_normals(tmp_path):
    landscape = plane()
    mesh = surface_mesh(landscape)
    normals, corners = read_stl(landscape.export(tmp_path / "s.stl"))
    assert len(corners) == 2 * (len(X) - 1) * (len(Y) - 1)
    np.testing.assert_array_equal(corners, mesh.points[mesh.triangles])
    np.testing.assert_array_equal(
        np.unique(corners.reshape(-1, 3), axis=0), np.unique(grid_points(), axis=0)
    )
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, rtol=1e-15)
    assert np.all(normals[:, 2] > 0)  # counter-clockwise seen from above
    edges = corners[:, 1:] - corners[:, :1]  # the normal is orthogonal to both edges
    np.testing.assert_allclose(np.einsum("tk,tek->te", normals, edges), 0.0, atol=1e-14)


def test_upper_case_extensions_and_atomic_replacement(tmp_path):
    target = tmp_path / "S.OBJ"
    target.write_text("old")
    plane().export(target)
    assert read_obj(target)[0].shape == (LOSS.size, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.OBJ"]  # no temporary left


# -- .csv ---------------------------------------------------------------------------------------
def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array([[float(v) for v in row] for row in rows[1:]])


def test_csv_of_a_plane_is_long_format_and_exact(tmp_path):
    loss = LOSS.copy()
    loss[1, 2] = np.nan
    header, table = read_csv(plane(loss).export(tmp_path / "p.csv"))
    assert header == ["x", "y", "loss", "accuracy"]
    np.testing.assert_array_equal(table[:, :3], grid_points(loss))  # NaN reads back as NaN
    np.testing.assert_array_equal(table[:, 3], ACC.ravel())


def test_csv_of_lines_and_interpolations(tmp_path):
    t = np.linspace(-0.5, 1.5, 9)
    line = lv.Landscape(coords=(t,), values={"loss": np.sin(t) + 2}, kind="line")
    header, table = read_csv(line.export(tmp_path / "line.csv"))
    assert header == ["x", "loss"]
    np.testing.assert_array_equal(table, np.column_stack([t, np.sin(t) + 2]))
    path = lv.Interpolation(coords=(t,), values={"loss": t**2 / 3}, kind="interpolation")
    header, table = read_csv(path.export(tmp_path / "path.csv"))
    assert header == ["t", "loss"]
    np.testing.assert_array_equal(table, np.column_stack([t, t**2 / 3]))


def test_csv_of_an_nd_grid_has_one_column_per_axis(tmp_path):
    coords = (np.array([0.1, 0.2]), np.array([1.0, 2.0, 3.0]), np.array([-1.0, 1.0 / 3]))
    values = np.arange(12, dtype=np.float64).reshape(2, 3, 2) / 7
    grid = lv.Landscape(coords=coords, values={"loss": values}, kind="grid")
    header, table = read_csv(grid.export(tmp_path / "g.csv"))
    assert header == ["x", "y", "z", "loss"]
    expected = [[a, b, c, values[i, j, k]] for i, a in enumerate(coords[0])
                for j, b in enumerate(coords[1]) for k, c in enumerate(coords[2])]  # fmt: skip
    np.testing.assert_array_equal(table, np.array(expected))


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("s.png", {}, r"unsupported extension '\.png'.*\.vtp.*\.obj.*\.stl.*\.csv"),
        ("s", {}, "unsupported extension ''"),
        ("s.csv", {"log": True}, "keeps the values as computed"),
        ("s.csv", {"clip": 1.0}, "keeps the values as computed"),
        ("s.vtp", {"metric": "acc"}, r"unknown metric 'acc'.*\['loss', 'accuracy'\]"),
        ("s.vtp", {"clip": float("nan")}, "clip must be finite"),
        ("s.vtp", {"clip": True}, "clip must be a number"),
        ("s.vtp", {"clip": "1"}, "clip must be a number"),
        ("s.stl", {"clip": 0.0, "log": True}, "give clip > 0"),
        ("s.obj", {"log": "yes"}, "log must be True or False"),
    ],
)
def test_bad_requests_are_refused_before_writing(tmp_path, name, kwargs, match):
    with pytest.raises(InputError, match=match):
        export(plane(), tmp_path / name, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_mesh_formats_need_a_plane(tmp_path):
    line = lv.Landscape(coords=(X,), values={"loss": X**2}, kind="line")
    with pytest.raises(InputError, match=r"2-D landscape; this one is 1-D.*export it as \.csv"):
        line.export(tmp_path / "line.vtp")
    cube = lv.Landscape(coords=(X, Y, Y), values={"loss": np.ones((5, 4, 4))}, kind="grid")
    with pytest.raises(InputError, match=r"3-D.*section\(z=0\.0\)"):
        cube.export(tmp_path / "cube.stl")
    nothing = plane(np.full_like(LOSS, np.nan))
    with pytest.raises(InputError, match="no finite value"):
        nothing.export(tmp_path / "nan.obj")
    with pytest.raises(InputError, match=r"no finite value above 0 \(log=True\)"):
        plane(-LOSS).export(tmp_path / "neg.vtp", log=True)
    with pytest.raises(StoreError, match="does not exist"):
        plane().export(tmp_path / "missing" / "s.vtp")
    assert list(tmp_path.iterdir()) == []


# -- the command line ----------------------------------------------------------------------------
def test_cli_export_reads_a_surface_file(tmp_path):
    surface = plane().save(tmp_path / "surf.h5")
    out = tmp_path / "meshes" / "surf.vtp"
    result = CliRunner().invoke(
        main, ["export", str(surface), "--out", str(out), "--log", "--clip", "1.5"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    vtp = read_vtp(out)
    np.testing.assert_array_equal(vtp["points"][:, 2], np.log10(np.minimum(LOSS, 1.5)).ravel())
    bad = CliRunner().invoke(
        main, ["export", str(surface), "--out", str(tmp_path / "no" / "s.png")]
    )
    assert bad.exit_code == 2 and "unsupported extension '.png'" in bad.output
    assert not (tmp_path / "no").exists()
    line = lv.Landscape(coords=(X,), values={"loss": X**2}, kind="line").save(tmp_path / "l.h5")
    refused = CliRunner().invoke(main, ["export", str(line), "--out", str(tmp_path / "l.vtp")])
    assert refused.exit_code == 1 and "export it as .csv" in refused.output
    csv_out = CliRunner().invoke(main, ["export", str(line), "--out", str(tmp_path / "l.csv")])
    assert csv_out.exit_code == 0, csv_out.output
    np.testing.assert_array_equal(read_csv(tmp_path / "l.csv")[1], np.column_stack([X, X**2]))
