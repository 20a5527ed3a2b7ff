"""The centred snapshot matrix of a trajectory, seen through its Gram matrix.

``A`` is the ``P x D`` float64 matrix of the snapshots restricted to the parameters that are not
ignored, taken relative to the last snapshot (``center="final"``) or to their mean
(``center="mean"``). :class:`Spectrum` holds the eigen-decomposition of the ``P x P`` Gram matrix
``A A^T``, accumulated one parameter at a time, so memory grows with ``P^2`` and one parameter,
never with ``P x D``. Both :func:`~lossvista.trajectory.pca_directions` and
:func:`~lossvista.trajectory.reduce_trajectory` start from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from .._checks import check_int
from ..errors import DirectionError, InputError
from ..params import ignored_names
from .container import Trajectory, TrajectoryLike, as_trajectory

Center = Literal["final", "mean"]
Ignore = str | Iterable[str] | None

_CENTERS = ("final", "mean")
#: Eigenvalues of the Gram matrix below this fraction of the largest one count as zero.
_RANK_RTOL = 1e-12


def prepare(trajectory: TrajectoryLike, n: int, ignore: Ignore) -> tuple[Trajectory, list[str]]:
    """The trajectory, checked to have more than ``n`` snapshots, and its parameters not ignored."""
    traj = as_trajectory(trajectory)
    n = check_int(n, "n", minimum=1)
    if len(traj) < n + 1:
        raise DirectionError(
            f"the trajectory has {len(traj)} snapshot(s); {n} directions need at least {n + 1}"
        )
    shells = {name: torch.empty(shape, device="meta") for name, shape in traj.shapes.items()}
    norm_names = None if traj.norm_names is None else set(traj.norm_names)
    skipped = ignored_names(shells, ignore, norm_names)
    names = [name for name in traj.names if name not in skipped]
    if not names:
        raise DirectionError(
            f"ignore={ignore!r} leaves no parameter; pass ignore=() to keep them all"
        )
    return traj, names


def check_center(center: Any) -> Center:
    if center not in _CENTERS:
        raise InputError(f"center must be 'final' or 'mean', got {center!r}")
    return center


@dataclasses.dataclass
class Spectrum:
    """Eigen-decomposition of the Gram matrix ``K = A A^T`` of the centred snapshot matrix."""

    gram: np.ndarray  # (P, P)
    values: np.ndarray  # eigenvalues, descending, >= 0: the squared singular values of A
    vectors: np.ndarray  # (P, P), column k belongs to values[k]
    total: float  # ||A||_F^2 = trace(K)

    @classmethod
    def of(cls, traj: Trajectory, names: Sequence[str], center: Center) -> Spectrum:
        count = len(traj)
        gram = np.zeros((count, count))
        for _, block in _centred_blocks(traj, names, center):
            gram += block @ block.T
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        return cls(gram, values, vectors[:, order], float(np.trace(gram)))

    @property
    def rank(self) -> int:
        if not self.values.size or self.values[0] <= 0.0:
            return 0
        return int(np.sum(self.values > _RANK_RTOL * self.values[0]))

    def require_rank(self, n: int) -> None:
        if self.rank < n:
            raise DirectionError(
                f"the {len(self.values)} snapshots span only {self.rank} dimension(s) of parameter "
                f"space, fewer than the {n} needed; record more (distinct) snapshots or ask for "
                "fewer dimensions"
            )

    def coordinates(self) -> np.ndarray:
        """``U_r S_r``: the snapshots in the orthonormal basis of their span, ``(P, rank)``."""
        r = self.rank
        return self.vectors[:, :r] * np.sqrt(self.values[:r])


def _centred_blocks(
    traj: Trajectory, names: Iterable[str], center: Center
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, A_block)``: each parameter's ``(P, numel)`` columns of the centred matrix."""
    for name in names:
        block = traj.block(name)
        yield name, block - (block[-1] if center == "final" else block.mean(axis=0))


def principal_axes(
    traj: Trajectory, names: Sequence[str], center: Center, spectrum: Spectrum, n: int
) -> tuple[dict[str, np.ndarray], float, np.ndarray]:
    """The top ``n`` right singular vectors per parameter ``(n, numel)``, sign-fixed; the squared
    norm of the part of ``A`` they leave out (``||A - U_n U_n^T A||_F^2``); and the signs applied
    (the scores ``U_n S_n`` take the same ones)."""
    scale = np.sqrt(spectrum.values[:n])
    vectors = spectrum.vectors[:, :n]
    axes, left_out = {}, 0.0
    for name, block in _centred_blocks(traj, names, center):
        inner = vectors.T @ block  # (n, numel) = S_n V_n^T on this block
        axes[name] = inner / scale[:, None]
        left_out += float(np.sum((block - vectors @ inner) ** 2))
    signs = _signs(axes.values(), n)
    return {name: value * signs[:, None] for name, value in axes.items()}, left_out, signs


def _signs(blocks: Iterable[np.ndarray], n: int) -> np.ndarray:
    """+1/-1 per row so that the largest-magnitude entry of each row becomes positive."""
    largest, signs = np.zeros(n), np.ones(n)
    for block in blocks:
        if not block.size:
            continue
        where = np.abs(block).argmax(axis=1)
        value = block[np.arange(n), where]
        bigger = np.abs(value) > largest
        largest = np.where(bigger, np.abs(value), largest)
        signs = np.where(bigger, np.where(value < 0, -1.0, 1.0), signs)
    return signs
