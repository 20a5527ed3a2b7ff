"""Projection of a trajectory onto directions: the path drawn on a plane, and a span that covers it.

The coordinates of a snapshot ``theta`` on directions ``d_1..d_n`` around an
origin ``o`` are the least-squares solution ``c = G^{-1} b`` with the Gram matrix
``G_ij = <d_i, d_j>`` and ``b_i = <d_i, theta - o>``; they are exact for points of the plane even
when the directions are not orthogonal, and ``residual_norm = ||theta - o - sum_i c_i d_i||`` says
how far a snapshot is from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._result import Result
from ..directions import Direction, as_direction
from ..errors import DirectionError, InputError
from ..params import parameters_of
from .container import Trajectory, TrajectoryLike, as_trajectory

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Projection", "project", "span_covering"]


@dataclasses.dataclass(eq=False, repr=False)
class Projection(Result):
    """Coordinates of every snapshot of a trajectory on a set of directions.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"projection"``) that
    ``lossvista.load`` reads back.

    Attributes:
        coordinates: ``(P, n)`` float64, the least-squares coordinates of each snapshot.
        steps: ``(P,)`` the snapshots' steps.
        residual_norm: ``(P,)`` distance of each snapshot from the plane ``origin + span(d)``
            (0 up to rounding for snapshots that lie in it), over the directions' parameters.
        axis_labels: one name per direction (``"PC1 (83.2%)"`` for PCA directions).
    """

    coordinates: np.ndarray
    steps: np.ndarray
    residual_norm: np.ndarray
    axis_labels: tuple[str, ...] = ()

    result_kind = "projection"
    file_format = "hdf5"

    def plot(self, ax: Axes | None = None) -> Figure:
        """The path on the first two axes, coloured by step, with the origin marked; returns the
        figure. Drawn by :func:`lossvista.plot.trajectory.plot_projection`."""
        from ..plot.trajectory import plot_projection

        return plot_projection(self, ax)

    def _summary(self) -> list[tuple[str, Any]]:
        residual = self.residual_norm
        return [
            ("snapshots", len(self.coordinates)),
            ("directions", self.coordinates.shape[1] if self.coordinates.ndim == 2 else 0),
            ("axes", ", ".join(self.axis_labels)),
            ("max_residual_norm", float(residual.max()) if residual.size else None),
        ]


def project(
    trajectory: TrajectoryLike,
    directions: Sequence[Mapping[str, torch.Tensor]],
    *,
    origin: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> Projection:
    """The coordinates of every snapshot on ``directions`` around ``origin``.

    The coordinates solve ``min_c ||theta - origin - sum_i c_i d_i||`` through the Gram matrix of
    the directions, so they are exact for snapshots in the plane even when the directions are not
    orthogonal. The trajectory and the model are never changed.

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        directions: directions over (some of) the trajectory's parameters, all with the same
            names; a :class:`PCADirections` gives the axis labels and the default origin.
        origin: the point the coordinates are relative to: a model or mapping name -> tensor
            (``objective.parameters()`` for a plane around the objective's model). Default: the
            origin of :class:`PCADirections`, else the final snapshot.

    Returns:
        A :class:`Projection`.
    """
    traj = as_trajectory(trajectory)
    if len(traj) == 0:
        raise InputError("the trajectory is empty")
    dirs = _as_directions(directions)
    names = _direction_names(traj, dirs)
    if origin is None:
        origin = getattr(directions, "origin", None) or traj[-1]
    reference = _origin_tensors(origin, traj, names)
    blocks = {n: np.stack([d[n].double().cpu().reshape(-1).numpy() for d in dirs]) for n in names}
    gram = sum(b @ b.T for b in blocks.values())
    if np.linalg.matrix_rank(gram) < len(dirs):
        raise DirectionError("the directions are linearly dependent (or zero); they span no plane")
    # Two passes over the parameters, so that memory holds one parameter's block at a time.
    inner = sum((traj.block(n) - reference[n]) @ blocks[n].T for n in names)  # (P, n)
    coordinates = np.linalg.solve(gram, inner.T).T
    squared = sum(
        np.sum((traj.block(n) - reference[n] - coordinates @ blocks[n]) ** 2, axis=1) for n in names
    )
    labels = getattr(directions, "axis_labels", None) or tuple(
        f"direction {i + 1}" for i in range(len(dirs))
    )
    return Projection(coordinates, traj.steps, np.sqrt(squared), tuple(labels))


def span_covering(coordinates: Any, margin: float = 0.2) -> tuple[tuple[float, float], ...]:
    """A span per axis that covers the points and the origin, with ``margin`` on every side.

    Args:
        coordinates: a ``(P, n)`` array, or an object with such a ``coordinates`` attribute
            (a :class:`Projection`).
        margin: padding on each side, as a fraction of the axis' extent (an axis with no extent
            borrows the largest extent of the others, or 1).

    Returns:
        ``((lo, hi), ...)``, one pair per axis, ready for ``lv.plane(..., span=...)``.
    """
    points = np.asarray(getattr(coordinates, "coordinates", coordinates), dtype=np.float64)
    if points.ndim != 2 or len(points) == 0 or not np.all(np.isfinite(points)):
        raise InputError(
            f"coordinates must be a non-empty finite (P, n) array, got shape {points.shape}"
        )
    number = isinstance(margin, (int, float, np.integer, np.floating)) and not isinstance(
        margin, (bool, np.bool_)
    )
    if not (number and math.isfinite(margin) and margin >= 0):
        raise InputError(f"margin must be a finite number >= 0, got {margin!r}")
    lo = np.minimum(points.min(axis=0), 0.0)
    hi = np.maximum(points.max(axis=0), 0.0)
    extent = hi - lo
    fallback = float(extent.max()) if extent.max() > 0 else 1.0
    pad = margin * np.where(extent > 0, extent, fallback)
    pad = np.where(extent + 2 * pad > 0, pad, 0.5 * fallback)  # a span needs lo < hi
    return tuple((float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad))


def _as_directions(directions: Any) -> list[Direction]:
    if isinstance(directions, Mapping) or not isinstance(directions, Sequence) or not directions:
        raise InputError("directions must be a non-empty sequence of directions (d1, d2, ...)")
    return [as_direction(d) for d in directions]


def _direction_names(traj: Trajectory, dirs: Sequence[Direction]) -> list[str]:
    """The names the projection uses: the directions' names the trajectory has (elsewhere the
    directions must be zero, as they are on parameters left out of a recording)."""
    names = list(dirs[0])
    for i, d in enumerate(dirs):
        if set(d) != set(names):
            raise DirectionError("all directions must cover the same parameter names")
        wrong = [n for n in names if n in traj.shapes and tuple(d[n].shape) != traj.shapes[n]]
        if wrong:
            raise DirectionError(
                f"direction {i + 1} has shapes unlike the trajectory's for {wrong[:10]}"
            )
    missing = [n for n in names if n not in traj.shapes and any(bool(d[n].any()) for d in dirs)]
    if missing:
        raise DirectionError(
            f"the directions move parameters the trajectory lacks: {missing[:10]}; record those "
            "parameters or build the directions on the same model"
        )
    present = [n for n in names if n in traj.shapes]
    if not present:
        raise DirectionError("the directions share no parameter name with the trajectory")
    return present


def _origin_tensors(
    origin: nn.Module | Mapping[str, torch.Tensor], traj: Trajectory, names: Sequence[str]
) -> dict[str, np.ndarray]:
    try:
        tensors = parameters_of(origin)
    except InputError as exc:
        raise InputError(f"origin: {exc}") from exc
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DirectionError(f"origin lacks parameters of the directions: {missing[:10]}")
    out = {}
    for name in names:
        value = tensors[name].detach()
        if tuple(value.shape) != traj.shapes[name]:
            raise DirectionError(
                f"origin {name!r} has shape {tuple(value.shape)}, the trajectory {traj.shapes[name]}"
            )
        out[name] = value.double().cpu().reshape(-1).numpy()
    return out
