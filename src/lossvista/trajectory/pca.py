"""PCA directions of a trajectory: the plane its training path spreads along.

**PCA directions** (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets", §7). Let
``M`` be the ``P x D`` float64 matrix whose rows are the snapshots restricted to the parameters
that are not ignored (columns: the flattened parameters in name order). With
``center="final"`` the rows are taken relative to the last snapshot, ``A = M - 1 m_P^T``; with
``center="mean"`` relative to their mean, ``A = M - 1 mean(M)^T`` (classical PCA). For the thin
SVD ``A = U S V^T`` (``s_1 >= s_2 >= ...``):

- direction ``k`` is the right singular vector ``v_k`` (unit norm; its largest-magnitude entry is
  made positive, scikit-learn's sign convention), zero on ignored parameters;
- ``explained_variance_[k] = s_k^2 / (P - 1)`` and
  ``explained_variance_ratio_[k] = s_k^2 / sum_j s_j^2 = s_k^2 / ||A||_F^2``.

For ``center="mean"`` these are exactly ``sklearn.decomposition.PCA`` on ``M``. For
``center="final"`` they are the principal axes of the second moment about the final point (the
PCA of the zero-mean matrix ``[A; -A]``), so the final model sits at the origin of the plane, as
in the 2018 paper. They are computed from the ``P x P`` Gram matrix ``A A^T``, accumulated one
parameter at a time, so memory grows with ``P^2`` and one parameter, never with ``P x D``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._json import json_ready
from .._result import Result
from ..directions import Direction
from ..params import TensorDict
from ._gram import Center, Ignore, Spectrum, check_center, prepare, principal_axes
from .container import Trajectory, TrajectoryLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PCADirections", "pca_directions"]


class PCADirections(Result, tuple[Direction, ...]):
    """Principal directions of a trajectory: a tuple of :class:`~lossvista.Direction`.

    Usable wherever directions are (``lv.plane(obj, pca_dirs)``), when the objective's model sits
    at ``origin``. Attributes follow scikit-learn's names (module docstring for the definitions).
    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"pca_directions"``) that
    ``lossvista.load`` reads back; two are equal when their directions, numbers and origin are.

    Attributes:
        explained_variance_: ``s_k^2 / (P - 1)`` for each direction.
        explained_variance_ratio_: ``s_k^2 / ||A||_F^2``: the share of the trajectory's spread
            (about the centre) along each direction.
        singular_values_: ``s_k``.
        origin: the centre, name -> tensor over every parameter of the trajectory (the final
            snapshot for ``center="final"``, the mean snapshot for ``"mean"``).
        center: ``"final"`` or ``"mean"``.
        steps: the steps of the snapshots the directions were computed from.
    """

    result_kind = "pca_directions"
    file_format = "hdf5"

    # Set by __new__ (a tuple takes no fields of its own).
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    singular_values_: np.ndarray
    origin: dict[str, torch.Tensor]
    center: Center
    steps: np.ndarray

    # Equal by value like every Result, so not hashable as a tuple is (Result comes first).
    __hash__ = None  # type: ignore[assignment]

    def __new__(
        cls,
        directions: Iterable[Direction] = (),
        *,
        explained_variance_: Any = (),
        explained_variance_ratio_: Any = (),
        singular_values_: Any = (),
        origin: Mapping[str, torch.Tensor] | None = None,
        center: Center = "final",
        steps: Any = (),
    ) -> PCADirections:
        self = super().__new__(cls, tuple(directions))
        self.explained_variance_ = np.asarray(explained_variance_, dtype=np.float64)
        self.explained_variance_ratio_ = np.asarray(explained_variance_ratio_, dtype=np.float64)
        self.singular_values_ = np.asarray(singular_values_, dtype=np.float64)
        self.origin = dict(origin or {})
        self.center = center
        self.steps = np.asarray(steps, dtype=np.int64)
        return self

    @property
    def axis_labels(self) -> tuple[str, ...]:
        """``("PC1 (83.2%)", "PC2 (9.1%)", ...)``."""
        return tuple(
            f"PC{i + 1} ({100 * r:.1f}%)" for i, r in enumerate(self.explained_variance_ratio_)
        )

    def __repr__(self) -> str:
        return f"PCADirections({len(self)} directions, center={self.center!r}: {', '.join(self.axis_labels)})"

    def plot(self, ax: Axes | None = None) -> Figure:
        """The explained variance of every direction and the running total; returns the figure.
        Drawn by :func:`lossvista.plot.trajectory.plot_explained_variance`."""
        from ..plot.trajectory import plot_explained_variance

        return plot_explained_variance(self, ax)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "directions": [{"tensors": dict(d), "meta": d.meta} for d in self],
            "explained_variance_": self.explained_variance_,
            "explained_variance_ratio_": self.explained_variance_ratio_,
            "singular_values_": self.singular_values_,
            "origin": self.origin,
            "center": self.center,
            "steps": self.steps,
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> PCADirections:
        values = dict(state)
        directions = [Direction(d["tensors"], d["meta"]) for d in values.pop("directions")]
        return cls(directions, **values)

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("directions", len(self)),
            ("center", self.center),
            ("snapshots", len(self.steps)),
        ]
        rows += [
            (f"PC{i + 1}_explained_variance_ratio", float(r))
            for i, r in enumerate(self.explained_variance_ratio_)
        ]
        return rows


def pca_directions(
    trajectory: TrajectoryLike,
    n: int = 2,
    *,
    center: Center = "final",
    ignore: Ignore = ("bias", "bn"),
) -> PCADirections:
    """The ``n`` principal directions of a trajectory (definitions in the module docstring).

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        n: how many directions.
        center: ``"final"`` (relative to the last snapshot, Li et al. 2018) or ``"mean"``
            (classical PCA, equal to scikit-learn's).
        ignore: parameters left out of the PCA, whose directions are zero: ``"bias"``, ``"bn"``,
            globs, or ``()``.

    Returns:
        :class:`PCADirections`: unit-norm, mutually orthogonal directions over every parameter of
        the trajectory, in the snapshots' dtypes, with the explained variance and the origin.

    Raises:
        DirectionError: fewer than ``n + 1`` snapshots, or snapshots that span fewer than ``n``
            dimensions; ``ignore`` leaving nothing.
    """
    traj, names = prepare(trajectory, n, ignore)
    center = check_center(center)
    spectrum = Spectrum.of(traj, names, center)
    spectrum.require_rank(n)
    axes, _, _ = principal_axes(traj, names, center, spectrum, n)
    ratio = spectrum.values[:n] / spectrum.total
    meta = {"kind": "pca", "norm": None, "center": center, "ignore": json_ready(ignore)}
    directions = []
    for k in range(n):
        tensors = {}
        for name in traj.names:
            shape, dtype = traj._layout[name]
            if name in axes:
                tensors[name] = torch.from_numpy(axes[name][k].copy()).reshape(shape).to(dtype)
            else:
                tensors[name] = torch.zeros(shape, dtype=dtype)
        info = {**meta, "index": k, "explained_variance_ratio": float(ratio[k])}
        directions.append(Direction(tensors, info))
    return PCADirections(
        directions,
        explained_variance_=spectrum.values[:n] / (len(traj) - 1),
        explained_variance_ratio_=ratio,
        singular_values_=np.sqrt(spectrum.values[:n]),
        origin=_reference_snapshot(traj, center),
        center=center,
        steps=traj.steps,
    )


def _reference_snapshot(traj: Trajectory, center: Center) -> TensorDict:
    if center == "final":
        return traj[-1]
    return {
        n: torch.from_numpy(traj.block(n).mean(axis=0)).reshape(shape).to(dtype)
        for n, (shape, dtype) in traj._layout.items()
    }
