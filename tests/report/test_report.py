"""The report's content: one section per input, exact numbers, escaped strings, no request."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lossvista as lv
from lossvista.errors import InputError
from lossvista.report._landscape import CLIP_PERCENTILE, on_surface

from ._page import read

HOSTILE = "<script>alert(1)</script>"


def exact(value) -> float:
    """A cell's ``data-value`` back as a float (NaN for missing)."""
    return math.nan if value is None else float(value)


@pytest.fixture(scope="module")
def page(results, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    lv.report(path, *results.values(), title="My run", notes="line one\\nline two & more")
    return read(path)


def test_one_section_per_result_in_order(page, results):
    parsed, _ = page
    kinds = [s.kind for s in parsed.sections]
    assert kinds == [
        "landscape-2d",
        "landscape-1d",
        "interpolation",
        "landscape-3d",
        "eigen_result",
        "spectral_density",
        "trace_estimate",
        "critical_point",
        "sharpness",
        "surface_metrics",
        "training_monitor",
        "toy_race",
        "persistence",
        "trajectory",
    ]
    assert len(kinds) == len(results)
    assert all(s.title.endswith(f"result {i}") for i, s in enumerate(parsed.sections, 1))
    assert parsed.title == parsed.heading == "My run"
    assert parsed.notes == "line one\\nline two & more"


def test_summary_tables_hold_the_results_numbers(page, results):
    parsed, _ = page
    for section, result in zip(parsed.sections, results.values(), strict=True):
        summary = [t for t in section.tables if t.role == "summary"]
        if isinstance(result, lv.CriticalPoint):  # its own summary comes second
            assert len(summary) == 1
        table = summary[0].as_dict()
        for label, value in result._summary():
            text, data = table[str(label)]
            if isinstance(value, float):
                assert exact(data) == value or (math.isnan(value) and data == "nan"), label
            elif isinstance(value, bool):
                assert data == str(value).lower()
            elif isinstance(value, int):
                assert int(data) == value
            elif isinstance(value, str):
                assert text == value


def test_plane_surface_contours_path_and_critical_points(page, results):
    plane = results["plane"]
    section = page[0].sections[0]
    surface, *contours = section.figures
    xs, ys = plane.coords
    loss = plane.values["loss"]
    assert surface["data"][0]["type"] == "surface"
    assert surface["data"][0]["z"] == loss.T.tolist()
    path = surface["data"][1]
    assert path["type"] == "scatter3d"
    np.testing.assert_array_equal(path["x"], plane.trajectory[:, 0])
    np.testing.assert_array_equal(path["z"], on_surface(xs, ys, loss, plane.trajectory))
    # The buttons: as is, clipped at the percentile, log10, log10 clipped (the loss is positive).
    buttons = surface["layout"]["updatemenus"][0]["buttons"]
    clip = np.percentile(loss, CLIP_PERCENTILE)
    by_label = {b["label"]: b["args"][0]["z"][0] for b in buttons}
    assert by_label["linear"] == loss.T.tolist()
    np.testing.assert_array_equal(
        by_label[f"clipped at p{CLIP_PERCENTILE:g}"], np.minimum(loss, clip).T
    )
    np.testing.assert_array_equal(by_label["log10"], np.log10(loss).T)
    assert [c["data"][0]["name"] for c in contours] == ["loss", "accuracy"]
    for contour, metric in zip(contours, ("loss", "accuracy"), strict=True):
        assert contour["data"][0]["z"] == plane.values[metric].T.tolist()
        assert contour["data"][0]["x"] == xs.tolist()
    names = {trace["name"]: trace for trace in contours[0]["data"]}
    assert names["training path"]["y"] == plane.trajectory[:, 1].tolist()
    lowest = plane.argmin()
    assert (names["grid minimum"]["x"], names["grid minimum"]["y"]) == ([lowest[0]], [lowest[1]])
    table = section.table("critical")
    assert table.rows[0][0][0] == "grid minimum"
    assert exact(table.rows[0][3][1]) == np.nanmin(loss)
    persistence = lv.persistence(plane)
    minima = [r for r in table.rows if r[0][0] == "local minimum"]
    assert len(minima) == len(persistence.pairs)
    for row, index in zip(minima, persistence.minima, strict=True):
        assert exact(row[1][1]) == xs[index[0]] and exact(row[2][1]) == ys[index[1]]
        assert exact(row[3][1]) == loss[tuple(index)]


def test_on_surface_is_bilinear():
    xs, ys = np.array([0.0, 1.0, 3.0]), np.array([-1.0, 1.0])
    z = 2.0 * xs[:, None] - 3.0 * ys[None, :] + 0.5  # bilinear interpolation is exact on planes
    points = np.array([[0.5, 0.0], [2.0, -0.5], [3.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(
        on_surface(xs, ys, z, points), 2 * points[:, 0] - 3 * points[:, 1] + 0.5
    )
    # Outside the grid: the value at the nearest edge.
    assert on_surface(xs, ys, z, np.array([[5.0, 1.0]]))[0] == z[2, 1]


def test_line_and_interpolation_every_metric_and_the_barrier(page, results):
    line_section, path_section = page[0].sections[1:3]
    line = results["line"]
    assert [f["data"][0]["name"] for f in line_section.figures] == line.metrics
    assert line_section.figures[1]["data"][0]["y"] == line.values["accuracy"].tolist()
    path = results["interpolation"]
    assert [f["data"][0]["name"] for f in path_section.figures] == path.metrics
    chord = path_section.figures[0]["data"][1]
    t = np.array(chord["x"])
    a, b = path.endpoints["a"]["loss"], path.endpoints["b"]["loss"]
    np.testing.assert_allclose(chord["y"], (1 - t) * a + t * b, rtol=0, atol=0)
    barrier = path_section.table("barrier")
    assert (
        barrier.column("metric") == [None, None] or [r[0][0] for r in barrier.rows] == path.metrics
    )
    assert exact(barrier.rows[0][3][1]) == path.barrier
    assert exact(barrier.rows[1][3][1]) == path.barrier_of("accuracy")
    assert exact(barrier.rows[0][1][1]) == a


def test_nd_grid_is_a_plane_with_sliders(page, results):
    grid = results["grid"]
    _, text = page
    figure = page[0].sections[3].figures[0]
    middle = int(np.argmin(np.abs(grid.coords[2])))
    assert figure["data"][0]["z"] == grid.values["loss"][:, :, middle].T.tolist()
    assert figure["volume"]["shape"] == list(grid.shape)
    assert figure["volume"]["values"] == grid.values["loss"].ravel().tolist()
    sliders = re.findall(r'<input type="range" min="0" max="(\d+)" step="1" value="(\d+)"', text)
    assert (str(grid.shape[2] - 1), str(middle)) in sliders


def test_hessian_tables_equal_the_results(page, results):
    eig_section, density_section, trace_section, critical_section = page[0].sections[4:8]
    eigs = results["eigs"]
    table = eig_section.table("eigenvalues")
    assert [exact(v) for v in table.column("eigenvalue")] == eigs.values.tolist()
    assert [exact(v) for v in table.column("residual")] == eigs.residuals.tolist()
    assert table.column("converged") == [str(bool(c)).lower() for c in eigs.converged]
    density = results["density"]
    figure = density_section.figures[0]
    assert figure["layout"]["yaxis"]["type"] == "log"
    assert figure["data"][0]["x"] == density.grid.tolist()
    trace = results["trace"]
    row = trace_section.table("trace").rows[0]
    assert (exact(row[1][1]), exact(row[2][1])) == (trace.estimate, trace.stderr)
    critical = results["critical"]
    verdict = critical_section.table("verdict").rows[0]
    assert verdict[0][0] == critical.kind
    assert (
        exact(verdict[1][1]) == critical.lambda_max and exact(verdict[2][1]) == critical.lambda_min
    )


def test_sharpness_metrics_monitor_and_race(page, results):
    sharp_section, metrics_section, monitor_section, race_section = page[0].sections[8:12]
    sharp = results["sharpness"]
    row = sharp_section.table("sharpness").rows[0]
    assert row[0][0] == sharp.kind and exact(row[1][1]) == sharp.value
    assert exact(row[3][1]) == sharp.rho
    settings = sharp_section.table("metadata").as_dict()
    assert settings["settings.samples"][1] == str(sharp.settings["samples"])
    metrics = results["metrics"]
    summary = metrics_section.table("summary").as_dict()
    assert exact(summary["roughness"][1]) == metrics.roughness
    monitor = results["monitor"]
    epochs = monitor_section.table("epochs")
    assert [exact(v) for v in epochs.column("loss")] == monitor.history["loss"]
    titles = [f["layout"]["title"]["text"] for f in monitor_section.figures]
    assert titles[:3] == ["learning curves", "loss per step", "gradient norms"]
    grads = {t["name"]: t["y"] for t in monitor_section.figures[2]["data"]}
    assert grads["grad_norm"] == monitor.history["grad_norm"]
    race = results["race"]
    paths = {t["name"]: t for t in race_section.figures[0]["data"]}
    for name, path in race.paths.items():
        assert paths[name]["x"] == path.points[:, 0].tolist()
    assert paths["f"]["type"] == "contour"
    table = race_section.table("race")
    assert [r[0][0] for r in table.rows] == [row["name"] for row in race.table.rows]
    assert [exact(v) for v in table.column("final_value")] == [
        row["final_value"] for row in race.table.rows
    ]


def test_every_other_kind_renders(other_results, tmp_path):
    path = lv.report(tmp_path / "other.html", *other_results.values())
    parsed, _ = read(path)
    assert [s.kind for s in parsed.sections] == [r.result_kind for r in other_results.values()]
    for section in parsed.sections:
        assert section.tables, section.kind
    plotted = {s.kind for s in parsed.sections if s.figures}
    assert plotted >= {
        "comparison",
        "projection",
        "pca_directions",
        "trajectory_embedding",
        "layer_sensitivity",
        "curve",
        "toy_optimizer_path",
        "toy_search",
        "toy_scaling_study",
    }
    comparison = other_results["comparison"]
    runs = parsed.sections[0].table("comparison")
    assert [r[0][0] for r in runs.rows] == comparison.names
    assert [exact(v) for v in runs.column("final_loss")] == [
        row["final_loss"] for row in comparison.table
    ]
    sensitivity = other_results["sensitivity"]
    bars = next(s for s in parsed.sections if s.kind == "layer_sensitivity").figures[0]
    assert bars["data"][0]["y"] == [row[sensitivity.value_name] for row in sensitivity.rows]
    curve = other_results["curve"]
    lines = next(s for s in parsed.sections if s.kind == "curve").figures[0]["data"]
    assert lines[0]["y"] == curve.path.values["loss"].tolist()
    assert lines[1]["y"] == curve.line.values["loss"].tolist()


def test_a_projection_is_drawn_on_a_plane_without_a_path(results, other_results, tmp_path):
    plane = results["plane"]
    bare = lv.Landscape(plane.coords, dict(plane.values), kind="plane")
    projection = other_results["projection"]
    parsed, _ = read(lv.report(tmp_path / "p.html", bare, projection))
    surface = parsed.sections[0].figures[0]["data"]
    assert surface[1]["x"] == projection.coordinates[:, 0].tolist()


def test_hostile_strings_are_escaped(tmp_path):
    values = {"loss": np.array([[1.0, 2.0], [3.0, 0.5]]), HOSTILE: np.ones((2, 2))}
    hostile = lv.Landscape(
        (np.array([-1.0, 1.0]), np.array([0.0, 1.0])),
        values,
        kind="plane",
        axis_labels=(HOSTILE, "</script><b>y</b>"),
        settings={"model": HOSTILE},
    )
    path = lv.report(tmp_path / "h.html", hostile, title=HOSTILE, notes=f"{HOSTILE} & <b>")
    parsed, text = read(path)
    assert HOSTILE not in text and "<b>" not in text and "</script><b>" not in text
    assert parsed.title == parsed.heading == HOSTILE
    assert parsed.notes == f"{HOSTILE} & <b>"
    section = parsed.sections[0]
    assert section.table("metadata").as_dict()["settings.model"][0] == HOSTILE
    assert HOSTILE in [f["data"][0]["name"] for f in section.figures]  # the JSON round-trips
    # Only three kinds of script: plotly.js, the figures' JSON, the drawing code; none loads.
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", text)
    plain_scripts = [s for s in parsed.scripts if not s["attrs"]]
    assert len(plain_scripts) == 2
    assert all(s["attrs"].get("type") == "application/json" for s in parsed.scripts if s["attrs"])


def test_self_contained_plotly_once_no_urls_outside_it(page):
    parsed, text = page
    plotly_js = parsed.scripts[0]["text"]
    assert len(plotly_js) > 3_000_000 and "Plotly" in plotly_js
    assert text.count(plotly_js[:200]) == 1
    rest = text.replace(plotly_js, "")
    assert "http://" not in rest and "https://" not in rest
    assert "mathjax" not in rest.lower()


def test_paths_are_read_with_load(results, tmp_path):
    files = [
        results["line"].save(tmp_path / "line.h5"),
        results["sharpness"].save(tmp_path / "s.json"),
        results["race"].save(tmp_path / "race.h5"),
    ]
    parsed, _ = read(lv.report(tmp_path / "r.html", *files))
    assert [s.kind for s in parsed.sections] == ["landscape-1d", "sharpness", "toy_race"]
    assert parsed.sections[0].title.endswith("line.h5")


@pytest.mark.parametrize(
    ("bad", "kwargs", "message"),
    [
        ([object()], {}, r"result 2 of type builtins\.object.*Landscape"),
        ([{"loss": 1.0}], {}, r"builtins\.dict.*EigenResult"),
        (["no/such/file.h5"], {}, "does not exist"),
        ([], {"title": 3}, "title must be a str"),
        ([], {"notes": b"x"}, "notes must be a str"),
    ],
)
def test_bad_input_is_refused_before_writing(results, tmp_path, bad, kwargs, message):
    target = tmp_path / "r.html"
    with pytest.raises(InputError, match=message):
        lv.report(target, results["line"], *bad, **kwargs)
    with pytest.raises(InputError, match="at least one result"):
        lv.report(target)
    assert not target.exists()


def test_the_target_must_be_a_file(results, tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        lv.report(tmp_path, results["line"])
    with pytest.raises(InputError, match="path of the HTML file"):
        lv.report(results["line"], results["line"])
