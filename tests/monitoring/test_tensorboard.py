"""lv.log_to_tensorboard against the event file read back: every tag, step and value (as float32),
the figure as an image, refusals before anything is written, and the missing-extra message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import lossvista as lv
from conftest import quadratic_problem
from lossvista._tensorboard import scalars
from lossvista.errors import InputError

from ._events import as_stored, events, scalar_series

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


@pytest.fixture(scope="module")
def results():
    """A plane, eigenvalues, a trace, a sharpness, surface metrics and an interpolation of one
    quadratic (float64; lambda_max and lambda_min have closed forms: 4 and 0.5)."""
    model, quad, data = quadratic_problem(n=6, seed=0)
    obj = lv.Objective(model, quad, data)
    directions = lv.random_directions(obj, 2, norm=None, seed=1)
    plane = lv.plane(obj, directions, steps=7, strategy="loop", progress=False)
    eigen = lv.hessian_eigs(obj, k=1, which="both")
    trace = lv.hessian_trace(obj, n_probes=6)
    sharp = lv.sharpness(obj, kind="average", rho=0.05, samples=4)
    surface = lv.surface_metrics(plane)
    other = {"theta": model.theta.detach() + 1.0}
    path = lv.interpolate(obj, model, other, steps=9, strategy="loop", progress=False)
    return plane, eigen, trace, sharp, surface, path


def test_scalars_are_the_results_numbers(results):
    plane, eigen, trace, sharp, surface, path = results
    values = scalars(*results)
    assert values == {
        "lossvista/center_loss": plane.center["loss"],
        "lossvista/lambda_max": eigen.largest[0],
        "lossvista/lambda_min": eigen.smallest[0],
        "lossvista/trace": trace.estimate,
        "lossvista/trace_stderr": trace.stderr,
        "lossvista/sharpness": sharp.value,
        "lossvista/sharpness_stderr": sharp.stderr,
        "lossvista/surface/roughness": surface.roughness,
        "lossvista/surface/mean_abs_slope": surface.mean_abs_slope,
        "lossvista/surface/convexity_ratio": surface.convexity_ratio,
        "lossvista/surface/n_basins": float(surface.n_basins),
        "lossvista/barrier": path.barrier,
        "lossvista/barrier_t": path.barrier_t,
    }
    # the closed forms of the quadratic: the Hessian's extreme eigenvalues are 4 and 0.5
    assert values["lossvista/lambda_max"] == pytest.approx(4.0, rel=1e-9)
    assert values["lossvista/lambda_min"] == pytest.approx(0.5, rel=1e-9)


def test_event_file_holds_the_tags_values_and_figures(results, tmp_path):
    writer = SummaryWriter(str(tmp_path))
    written = lv.log_to_tensorboard(writer, 7, *results, None)
    written_again = lv.log_to_tensorboard(writer, 9, results[0], prefix="probe")
    writer.close()
    acc = events(tmp_path)
    tags = acc.Tags()
    assert set(tags["scalars"]) == set(written) | set(written_again)
    for tag, value in written.items():
        assert scalar_series(acc, tag) == [(7, as_stored(value))]
    assert scalar_series(acc, "probe/center_loss") == [(9, as_stored(results[0].center["loss"]))]
    assert set(tags["images"]) == {
        "lossvista/landscape",
        "lossvista/interpolation",
        "probe/landscape",
    }
    (image,) = acc.Images("lossvista/landscape")
    assert image.step == 7
    assert image.width == 500 and image.height == 400  # the 5 x 4 inch figure at 100 dpi
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_figures_can_be_left_out_and_a_folder_is_a_writer(results, tmp_path):
    lv.log_to_tensorboard(tmp_path / "run", 0, results[0], figures=False)
    acc = events(tmp_path / "run")
    assert acc.Tags()["images"] == []
    assert scalar_series(acc, "lossvista/center_loss") == [
        (0, as_stored(results[0].center["loss"]))
    ]


def test_a_landscape_without_finite_values_logs_nan_and_no_figure(results, tmp_path):
    plane = results[0]
    diverged = lv.Landscape(
        plane.coords,
        {"loss": np.full(plane.shape, np.nan)},
        center={"loss": float("nan")},
    )
    writer = SummaryWriter(str(tmp_path))
    lv.log_to_tensorboard(writer, 3, diverged)
    writer.close()
    acc = events(tmp_path)
    assert acc.Tags()["images"] == []
    ((step, value),) = scalar_series(acc, "lossvista/center_loss")
    assert step == 3 and np.isnan(value)


class _Recorder:
    """A writer that records its calls (what a SummaryWriter would be asked to write)."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, global_step=None):
        self.calls.append((tag, value, global_step))

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.calls.append((tag, type(figure).__name__, global_step))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((3, "not a result"), "cannot log a str"),
        ((-1,), "step must be an integer >= 0"),
        ((1.5,), "step must be an integer >= 0"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(results, arguments, message):
    writer = _Recorder()
    with pytest.raises(InputError, match=message):
        lv.log_to_tensorboard(writer, *arguments[:1], results[0], *arguments[1:])
    assert writer.calls == []


def test_two_results_with_one_tag_are_refused(results):
    writer = _Recorder()
    with pytest.raises(InputError, match="lossvista/center_loss"):
        lv.log_to_tensorboard(writer, 0, results[0], results[0])
    assert writer.calls == []
    with pytest.raises(InputError, match="SummaryWriter"):
        lv.log_to_tensorboard(object(), 0, results[0])


def test_missing_tensorboard_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(lv.MissingDependencyError, match=r"pip install 'lossvista\[tensorboard\]'"):
        lv.log_to_tensorboard(tmp_path, 0)
    with pytest.raises(ImportError, match=r"lossvista\[tensorboard\]"):
        lv.TrainingMonitor(torch.nn.Linear(2, 1), writer=tmp_path)
    with pytest.raises(ImportError, match=r"lossvista\[tensorboard\]"):
        lv.LandscapeProbe(lambda: None, every=1, sinks=[tmp_path / "probe"])
    assert not any(tmp_path.iterdir())


def test_a_curve_gives_both_barriers_and_its_figure(results, tmp_path):
    path = results[5]
    raised = lv.Interpolation(
        path.coords,
        {"loss": path.values["loss"] + 10.0 * np.sin(np.pi * path.coords[0])},
        kind="interpolation",
        endpoints=path.endpoints,
    )
    curve = lv.Curve([{}, {}, {}], "bezier", "eval", raised, path, np.zeros(3))
    writer = SummaryWriter(str(tmp_path))
    written = lv.log_to_tensorboard(writer, 2, curve)
    writer.close()
    assert written == {
        "lossvista/curve_barrier": raised.barrier,
        "lossvista/line_barrier": path.barrier,
    }
    assert raised.barrier > path.barrier  # the two tags are the two paths, not one twice
    acc = events(tmp_path)
    assert acc.Tags()["images"] == ["lossvista/curve"]
    for tag, value in written.items():
        assert scalar_series(acc, tag) == [(2, as_stored(value))]
