"""Animations of a path over a landscape (lv.animate) and the shared movie writer that the toy
lab's race GIFs use too: frames, their content, sizes, refusals and atomic writes."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib import animation
from PIL import Image

import lossvista as lv
from lossvista.errors import InputError, LossvistaWarning, StoreError
from lossvista.plot import animate as animate_module
from lossvista.plot.animate import _movie, _path_of, frame_indices

X = np.linspace(-1.0, 1.0, 9)
Y = np.linspace(-0.5, 1.5, 7)
LOSS = (X[:, None] - 0.3) ** 2 + 2.0 * (Y[None, :] - 0.2) ** 2 + 0.1
# A spiral into the minimum at (0.3, 0.2), inside the span.
T = np.linspace(0.0, 1.0, 12)
PATH = np.column_stack([0.3 + 0.6 * (1 - T) * np.cos(6 * T), 0.2 + 0.6 * (1 - T) * np.sin(6 * T)])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def plane(**kwargs) -> lv.Landscape:
    return lv.Landscape(coords=(X, Y), values={"loss": LOSS.copy(), "acc": -LOSS}, **kwargs)


def frames_of(path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), dtype=int))
    return frames


def test_frame_indices_spread_evenly_from_first_to_last():
    assert frame_indices(20, 5) == [0, 4, 9, 14, 19]
    assert frame_indices(4, 50) == [0, 1, 2, 3]
    assert frame_indices(7, None) == list(range(7))
    assert frame_indices(1, 10) == [0]
    for length, frames in [(100, 7), (13, 13), (61, 60)]:
        picked = frame_indices(length, frames)
        assert len(picked) == min(length, frames) and picked[0] == 0 and picked[-1] == length - 1
        assert all(b > a for a, b in itertools.pairwise(picked))


def test_gif_has_one_frame_per_point_of_the_figure_size(tmp_path):
    before = plt.get_fignums()
    target = lv.animate(plane(), PATH, tmp_path / "path.gif", fps=5, dpi=40)
    assert target == tmp_path / "path.gif"
    frames = frames_of(target)
    assert len(frames) == len(PATH)
    assert frames[0].shape == (round(4.8 * 40), round(6.4 * 40), 3)  # 6.4 x 4.8 inches
    assert all(np.abs(a - b).sum() > 0 for a, b in itertools.pairwise(frames))  # none merged
    assert plt.get_fignums() == before  # the figure is closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["path.gif"]  # no scratch file left


def test_frames_subsample_the_path(tmp_path):
    assert len(frames_of(lv.animate(plane(), PATH, tmp_path / "a.gif", frames=4, dpi=20))) == 4
    many = lv.animate(plane(), PATH, tmp_path / "b.gif", frames=100, dpi=20)
    assert len(frames_of(many)) == len(PATH)


def test_each_frame_draws_the_path_up_to_its_point():
    indices = frame_indices(len(PATH), 5)
    points, labels = _path_of(plane(), PATH)
    figure, draw = _movie(plane(), points, labels, indices, metric="loss", kind="contour")
    ax = figure.axes[0]
    ghost = ax.lines[0]  # the whole path, faint, drawn once
    np.testing.assert_array_equal(np.column_stack(ghost.get_data()), PATH)
    for frame, k in enumerate(indices):
        line, head = draw(frame)
        np.testing.assert_array_equal(np.column_stack(line.get_data()), PATH[: k + 1])
        np.testing.assert_array_equal(np.column_stack(head.get_data()), PATH[k : k + 1])
        assert ax.get_title() == f"loss — plane — point {k + 1}/{len(PATH)}"
    assert ax.get_xlim()[0] <= X[0] and ax.get_xlim()[1] >= X[-1]  # the whole landscape shows
    assert len(ax.collections) > 0  # the contours are drawn under the path


def test_a_projection_titles_frames_with_its_steps(tmp_path):
    steps = np.arange(len(PATH)) * 50
    projection = lv.Projection(PATH, steps, np.zeros(len(PATH)), ("PC1", "PC2"))
    points, labels = _path_of(plane(), projection)
    np.testing.assert_array_equal(points, PATH)
    assert labels == [f"step {s}" for s in steps]
    gif = lv.animate(plane(), projection, tmp_path / "p.gif", frames=3, dpi=20, kind="filled")
    assert len(frames_of(gif)) == 3


def test_the_landscapes_own_trajectory_is_the_default(tmp_path):
    landscape = plane(trajectory=PATH)
    points, _ = _path_of(landscape, None)
    np.testing.assert_array_equal(points, PATH)
    assert len(frames_of(lv.animate(landscape, None, tmp_path / "own.gif", dpi=20))) == len(PATH)


def test_a_path_leaving_the_span_warns_and_widens_the_axes():
    far = np.vstack([PATH, [[3.0, 0.0]]])
    with pytest.warns(LossvistaWarning, match="1 of 13 path points lie outside"):
        points, labels = _path_of(plane(), far)
    figure, _ = _movie(plane(), points, labels, [0, 12], metric="loss", kind="heatmap")
    assert figure.axes[0].get_xlim()[1] >= 3.0


@pytest.mark.parametrize(
    ("landscape", "trajectory", "name", "kwargs", "match"),
    [
        (lv.Landscape(coords=(X,), values={"loss": X**2}), PATH, "a.gif", {}, "this one is 1-D"),
        (
            lv.Landscape(coords=(X, Y, Y), values={"loss": np.ones((9, 7, 7))}, kind="grid"),
            PATH, "a.gif", {}, r"3-D: take a section",
        ),
        (plane(), PATH, "a.gif", {"kind": "surface3d"}, "cannot be animated"),
        (plane(), PATH, "a.gif", {"metric": "accuracy"}, r"unknown metric 'accuracy'"),
        (plane(), None, "a.gif", {}, "no trajectory to animate"),
        (plane(), np.zeros((5, 3)), "a.gif", {}, r"got shape \(5, 3\)"),
        (plane(), PATH[:1], "a.gif", {}, r"P >= 2 points"),
        (plane(), np.full((4, 2), np.nan), "a.gif", {}, "NaN or infinite"),
        (plane(), PATH, "a.gif", {"frames": 1}, "frames must be >= 2"),
        (plane(), PATH, "a.gif", {"fps": 0}, "fps >= 1"),
        (plane(), PATH, "a.gif", {"fps": 2.5}, "whole numbers"),
        (plane(), PATH, "a.avi", {}, r"unsupported extension '\.avi'.*\.gif.*\.mp4"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_before_drawing(
    tmp_path, landscape, trajectory, name, kwargs, match
):
    before = plt.get_fignums()
    with pytest.raises(InputError, match=match):
        lv.animate(landscape, trajectory, tmp_path / name, **kwargs)
    assert plt.get_fignums() == before and list(tmp_path.iterdir()) == []


def test_mp4_without_ffmpeg_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(InputError, match=r"needs the ffmpeg program.*apt install ffmpeg"):
        lv.animate(plane(), PATH, tmp_path / "a.mp4")
    with pytest.raises(StoreError, match="does not exist"):
        lv.animate(plane(), PATH, tmp_path / "missing" / "a.gif")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not animation.writers.is_available("ffmpeg"), reason="ffmpeg is not installed")
def test_mp4_with_ffmpeg(tmp_path):
    target = lv.animate(plane(), PATH, tmp_path / "a.mp4", frames=4, dpi=40)
    assert target.read_bytes()[4:8] == b"ftyp"  # an ISO media file
    probe = shutil.which("ffprobe")
    if probe is not None:  # ffmpeg's own reader: 4 frames of the figure's size (6.4 x 4.8 in)
        shown = subprocess.run(
            [probe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_frames,width,height", "-of", "csv=p=0", str(target)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert shown == "256,192,4"


def test_a_failing_frame_leaves_the_old_file_and_no_figure(tmp_path, monkeypatch):
    target = tmp_path / "keep.gif"
    target.write_bytes(b"old movie")

    grab = animation.PillowWriter.grab_frame
    grabbed = []

    def broken(self, **kwargs):  # the third frame fails, after two were drawn
        grabbed.append(1)
        if len(grabbed) == 3:
            raise RuntimeError("disk on fire")
        grab(self, **kwargs)

    monkeypatch.setattr(animation.PillowWriter, "grab_frame", broken)
    before = plt.get_fignums()
    with pytest.raises(RuntimeError, match="disk on fire"):
        lv.animate(plane(), PATH, target, dpi=20)
    assert target.read_bytes() == b"old movie"
    assert plt.get_fignums() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.gif"
    ]


def test_race_gifs_go_through_the_shared_writer(tmp_path, monkeypatch):
    calls = []
    original = animate_module.write_movie

    def spy(figure, draw, count, path, **kwargs):
        calls.append((count, path, kwargs))
        return original(figure, draw, count, path, **kwargs)

    monkeypatch.setattr(animate_module, "write_movie", spy)
    race = lv.toys.race("quadratic", ["gd"], steps=3)
    target = race.animate(tmp_path / "race.gif", frames=10, fps=4, dpi=20)
    assert calls == [(4, target, {"fps": 4, "dpi": 20})]
    assert len(frames_of(target)) == 4
    with pytest.raises(InputError, match="unsupported extension"):
        race.animate(tmp_path / "race.png")


def test_a_recorded_trajectory_projected_onto_the_plane_animates(tmp_path):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with lv.TrajectoryRecorder(model) as recorder:
        for step in range(8):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            recorder.record(step=step)
    directions = lv.pca_directions(recorder.trajectory)
    objective = lv.Objective(model, F.cross_entropy, (x, y))
    landscape = lv.plane(
        objective, directions, steps=(5, 5), trajectory=recorder.trajectory, progress=False
    )
    projection = lv.project(recorder.trajectory, directions, origin=model)
    # The landscape's own path is the projection onto its plane: animate() draws either.
    np.testing.assert_allclose(projection.coordinates, landscape.trajectory, rtol=0, atol=1e-12)
    _, labels = _path_of(landscape, projection)
    assert labels == [f"step {s}" for s in projection.steps]
    assert len(frames_of(lv.animate(landscape, projection, tmp_path / "t.gif", dpi=20))) == 8
