"""Animations: a path moving over a landscape's contours (:func:`animate`) and the one writer
behind every animation of lossvista (the optimizer lab's race GIFs use it too).

A movie is a ``.gif`` (matplotlib's ``PillowWriter``; Pillow is a matplotlib dependency) or an
``.mp4`` (matplotlib's ``FFMpegWriter``, when the ``ffmpeg`` program is installed). Frames are
drawn by ``FuncAnimation`` into a scratch file, which then replaces the target atomically, so a
failure never leaves half a movie. matplotlib is imported inside the functions.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from .. import _hdf5
from ..errors import InputError, LossvistaWarning

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..landscape import Landscape

__all__ = ["MOVIE_FORMATS", "animate", "check_movie_path", "frame_indices", "write_movie"]

#: Movie extensions and the matplotlib writer of each.
MOVIE_FORMATS = {".gif": "pillow", ".mp4": "ffmpeg"}
#: What :func:`animate` can draw under the path.
ANIMATED_KINDS = ("contour", "filled", "heatmap")
_PATH_COLOR = "crimson"  # as in lossvista.plot.landscape
_NO_FFMPEG = (
    "writing an .mp4 needs the ffmpeg program, which matplotlib did not find: install it "
    "(apt install ffmpeg, conda install -c conda-forge ffmpeg or brew install ffmpeg) so that "
    "it is on PATH, or set matplotlib.rcParams['animation.ffmpeg_path']; or write a .gif, which "
    "needs nothing more"
)


# -- the shared writer ----------------------------------------------------------------------------
def check_movie_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it names a movie lossvista can write.

    Raises:
        InputError: an extension other than ``.gif`` and ``.mp4``, or ``.mp4`` without ffmpeg.
        StoreError: the folder is missing, the path is a folder, or it cannot be written.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in MOVIE_FORMATS:
        raise InputError(
            f"cannot animate into {str(target)!r}: unsupported extension {target.suffix!r}; "
            "write a .gif (always available) or an .mp4 (needs ffmpeg)"
        )
    if suffix == ".mp4":
        from matplotlib import animation

        if not animation.writers.is_available("ffmpeg"):
            raise InputError(_NO_FFMPEG)
    _hdf5.check_writable(target)
    return target


def check_rate(fps: int, frames: int | None) -> None:
    """``fps`` and ``frames`` must be whole numbers, at least 1 and 2 (``frames`` may be None
    where the caller has a default)."""
    whole = (int, np.integer)
    fine_fps = isinstance(fps, whole) and not isinstance(fps, bool) and fps >= 1
    fine_frames = frames is None or (
        isinstance(frames, whole) and not isinstance(frames, bool) and frames >= 2
    )
    if not (fine_fps and fine_frames):
        raise InputError(f"frames must be >= 2 and fps >= 1 (whole numbers): {frames}, {fps}")


def frame_indices(length: int, frames: int | None) -> list[int]:
    """Which of ``length`` positions the frames show: ``min(frames, length)`` indices spread
    evenly from the first to the last (every position when ``frames`` is None)."""
    count = length if frames is None else min(frames, length)
    if count <= 1:
        return [0]
    return [f * (length - 1) // (count - 1) for f in range(count)]


def write_movie(
    figure: Figure,
    draw: Callable[[int], Sequence[Any]],
    count: int,
    path: str | Path,
    *,
    fps: int,
    dpi: int,
) -> Path:
    """Write ``count`` frames, frame ``f`` drawn by ``draw(f)`` on ``figure``, to ``path``.

    The writer follows the extension (:data:`MOVIE_FORMATS`; check it first with
    :func:`check_movie_path`). The figure is closed afterwards, whatever happens. Each frame
    should differ from the one before (a title with the step does it): GIF encoders merge equal
    neighbours.

    Returns:
        The path written (replaced atomically when it existed).
    """
    from matplotlib import animation
    from matplotlib import pyplot as plt

    target = Path(path)
    suffix = target.suffix.lower()
    try:
        if MOVIE_FORMATS.get(suffix) == "ffmpeg":
            writer: Any = animation.FFMpegWriter(fps=fps)
        else:
            writer = animation.PillowWriter(fps=fps)
        movie = animation.FuncAnimation(figure, draw, frames=count, blit=False, repeat=False)
        with tempfile.TemporaryDirectory(prefix="lossvista-movie-") as folder:
            scratch = Path(folder) / f"movie{suffix}"
            movie.save(scratch, writer=writer, dpi=dpi)
            data = scratch.read_bytes()
    finally:
        plt.close(figure)

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return _hdf5.atomic_write(target, write, what=f"{suffix[1:].upper()} animation")


# -- a path over a landscape ----------------------------------------------------------------------
def animate(
    landscape: Landscape,
    trajectory: Any,
    path: str | Path,
    *,
    fps: int = 10,
    frames: int | None = None,
    metric: str = "loss",
    kind: str = "contour",
    log: bool = False,
    vmax: float | None = None,
    dpi: int = 80,
    title: str | None = None,
) -> Path:
    """Write a movie of ``trajectory`` moving over the contours of a 2-D ``landscape``.

    Frame ``f`` shows the path up to point ``k_f`` (a crimson line and a dot at its head) over
    the whole path drawn faintly; the title adds the step (a :class:`~lossvista.Projection`'s
    ``steps``) or the point's number. The figure is 6.4 x 4.8 inches.

    Args:
        landscape: a 2-D :class:`~lossvista.Landscape`.
        trajectory: the path's coordinates on the landscape's plane: a
            :class:`~lossvista.Projection` onto the landscape's two directions
            (``lv.project(trajectory, landscape.directions, origin=...)``), an ``(P, 2)``
            array, or None for the path the landscape holds (``lv.plane(..., trajectory=...)``).
        path: the ``.gif`` or ``.mp4`` (needs ffmpeg) to write.
        fps: frames per second.
        frames: number of frames (at least 2), spread evenly over the path; None: one per point.
        metric, kind, log, vmax: what is drawn under the path, as in
            :func:`lossvista.plot.plot_landscape` (``kind``: ``"contour"``, ``"filled"`` or
            ``"heatmap"``).
        dpi: resolution.
        title: the title before the step; by default the landscape plot's.

    Returns:
        The path written.

    Raises:
        InputError: a landscape that is not 2-D, an unknown metric or kind, no trajectory or
            one that is not ``(P >= 2, 2)`` and finite, fewer than 2 frames, ``fps < 1``, an
            extension other than ``.gif``/``.mp4``, or ``.mp4`` without ffmpeg; all before
            anything is drawn. A :class:`~lossvista.LossvistaWarning` says when the path leaves
            the landscape's span (the axes grow to show it).
    """
    if landscape.ndim != 2:
        raise InputError(
            f"animate() draws a path over a 2-D landscape; this one is {landscape.ndim}-D"
            + ("" if landscape.ndim < 3 else ": take a section first, e.g. section(z=0.0)")
        )
    if kind not in ANIMATED_KINDS:
        raise InputError(f"kind={kind!r} cannot be animated; choose one of {list(ANIMATED_KINDS)}")
    if metric not in landscape.values:
        raise InputError(f"unknown metric {metric!r}; this landscape has {landscape.metrics}")
    check_rate(fps, frames)
    points, labels = _path_of(landscape, trajectory)
    target = check_movie_path(path)
    indices = frame_indices(len(points), frames)
    options = {"metric": metric, "kind": kind, "log": log, "vmax": vmax, "title": title}
    figure, draw = _movie(landscape, points, labels, indices, **options)
    return write_movie(figure, draw, len(indices), target, fps=fps, dpi=dpi)


def _path_of(landscape: Landscape, trajectory: Any) -> tuple[np.ndarray, list[str]]:
    """The ``(P, 2)`` points of the path and a frame label per point."""
    source = landscape.trajectory if trajectory is None else trajectory
    if source is None:
        raise InputError(
            "no trajectory to animate: pass a Projection onto the landscape's directions or a "
            "(P, 2) array of coordinates (this landscape holds none of its own)"
        )
    try:
        points = np.asarray(getattr(source, "coordinates", source), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"trajectory must be a (P, 2) array of coordinates: {exc}") from exc
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise InputError(
            f"trajectory must hold P >= 2 points with 2 coordinates each (a Projection onto the "
            f"landscape's two directions, or a (P, 2) array), got shape {points.shape}"
        )
    if not np.all(np.isfinite(points)):
        raise InputError("trajectory holds NaN or infinite coordinates")
    steps = getattr(source, "steps", None)
    if steps is not None and len(steps) == len(points):
        labels = [f"step {int(s)}" for s in np.asarray(steps).tolist()]
    else:
        labels = [f"point {k + 1}/{len(points)}" for k in range(len(points))]
    lo = np.array([c[0] for c in landscape.coords])
    hi = np.array([c[-1] for c in landscape.coords])
    outside = int(np.sum(np.any((points < np.minimum(lo, hi)) | (points > np.maximum(lo, hi)), 1)))
    if outside:
        warnings.warn(
            f"{outside} of {len(points)} path points lie outside the landscape's span; the "
            "axes grow to show them, over no contours",
            LossvistaWarning,
            stacklevel=3,
        )
    return points, labels


def _movie(
    landscape: Landscape,
    points: np.ndarray,
    labels: Sequence[str],
    indices: Sequence[int],
    **options: Any,
) -> tuple[Figure, Callable[[int], list[Any]]]:
    """The figure and the frame function of :func:`animate` (frame ``f`` shows the path up to
    point ``indices[f]``)."""
    import matplotlib.pyplot as plt

    from .landscape import plot_landscape

    figure, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        plot_landscape(landscape, ax, **options)
        ax.plot(points[:, 0], points[:, 1], color=_PATH_COLOR, alpha=0.25, linewidth=1.0)
        (line,) = ax.plot([], [], color=_PATH_COLOR, linewidth=1.8, label="path")
        (head,) = ax.plot([], [], "o", color=_PATH_COLOR, markeredgecolor="black", zorder=6)
    except BaseException:
        plt.close(figure)
        raise
    heading = ax.get_title()  # already escaped for matplotlib; the labels hold no "$"

    def draw(frame: int) -> list[Any]:
        k = indices[frame]
        line.set_data(points[: k + 1, 0], points[: k + 1, 1])
        head.set_data(points[k : k + 1, 0], points[k : k + 1, 1])
        ax.set_title(f"{heading} — {labels[k]}")
        return [line, head]

    return figure, draw
