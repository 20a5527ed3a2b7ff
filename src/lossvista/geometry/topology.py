"""The topology of a gridded landscape: 0-dimensional sublevel-set persistence of its basins.

Let the sublevel set ``{x : z(x) <= t}`` of a landscape's values ``z`` grow with the level ``t``.
A new connected component (a *basin*) is born at every local minimum; when two basins meet (at a
saddle) the younger one -- the one whose minimum is higher -- dies there and joins the older one
(the *elder rule*). Each minimum gives one pair ``(birth, death)``: its value and the level at
which its basin merges into a lower one; the lowest minimum of every connected component of
the finite points never dies (death ``inf``, an *essential class*). ``death - birth`` is the
minimum's *persistence*: how deep its basin is before it spills over into a lower one (Edelsbrunner,
Letscher & Zomorodian 2002, "Topological persistence and simplification").

On the grid:

- **Connectivity**: two grid points are neighbours when their indices differ by one along one
  axis (2 neighbours in 1-D, 4 in 2-D, ``2 d`` in ``d`` dimensions; no diagonals).
- **Missing points**: NaN and infinite values are left out, as if the grid had a hole there; a
  landscape split by them into several pieces has one essential class per piece.
- **Ties**: points are ordered by value, equal values by their flat (C-order) index, which makes
  the order strict. A plateau is one basin; a pair whose death equals its birth (an artefact of
  that order on a plateau, of persistence 0) is left out.

The computation is a union-find over the points in that order, ``O(n log n)`` for ``n`` points.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from .._result import Result
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Persistence", "persistence", "persistence_pairs"]


@dataclasses.dataclass(eq=False, repr=False)
class Persistence(Result):
    """0-dimensional sublevel-set persistence of one metric of a gridded landscape.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"persistence"``) that
    ``lossvista.load`` reads back.

    Attributes:
        pairs: ``(n, 2)`` float64 ``(birth, death)``, one row per basin, sorted by birth (then
            by the grid order); ``death`` is ``inf`` for the essential class of every connected
            component of the finite points.
        minima: ``(n, ndim)`` int64, the grid index of each pair's minimum (its birth).
        saddles: ``(n, ndim)`` int64, the grid index where each basin died (the point whose
            value is its death); ``-1`` for the essential classes.
        parents: ``(n,)`` int64, the row of the pair each basin merged into (the older basin it
            joined at its death); ``-1`` for the essential classes.
        metric: the metric described; shape: the grid shape.
    """

    pairs: np.ndarray
    minima: np.ndarray
    saddles: np.ndarray
    parents: np.ndarray
    metric: str = "loss"
    shape: tuple[int, ...] = ()

    result_kind = "persistence"
    file_format = "hdf5"

    @classmethod
    def _from_state(cls, state: Any) -> Persistence:
        state = dict(state)
        state["shape"] = tuple(int(n) for n in state.get("shape", ()))
        return cls(**state)

    @property
    def persistence(self) -> np.ndarray:
        """``death - birth`` of every pair (``inf`` for the essential classes)."""
        return self.pairs[:, 1] - self.pairs[:, 0]

    def n_basins(self, threshold: float = 0.0) -> int:
        """Pairs whose persistence is above ``threshold`` (the essential classes always count)."""
        return int(np.sum(self.persistence > threshold))

    def plot(self, ax: Axes | None = None) -> Figure:
        """The persistence diagram (and, when ``ax`` is None, the barcode beside it); returns the
        figure. Drawn by :func:`lossvista.plot.geometry.plot_persistence`."""
        from ..plot.geometry import plot_persistence

        return plot_persistence(self, ax)

    def merge_tree_plot(self, ax: Axes | None = None) -> Figure:
        """The merge tree: one vertical bar per minimum from its birth to its death, joined to
        the basin it merges into; returns the figure. Drawn by
        :func:`lossvista.plot.geometry.plot_merge_tree`."""
        from ..plot.geometry import plot_merge_tree

        return plot_merge_tree(self, ax)

    def _summary(self) -> list[tuple[str, Any]]:
        finite = np.isfinite(self.pairs[:, 1]) if len(self.pairs) else np.zeros(0, bool)
        spans = self.persistence[finite]
        return [
            ("metric", self.metric),
            ("shape", " x ".join(map(str, self.shape))),
            ("pairs", len(self.pairs)),
            ("essential", int(np.sum(~finite))),
            ("lowest", float(self.pairs[:, 0].min()) if len(self.pairs) else None),
            ("max_finite_persistence", float(spans.max()) if spans.size else None),
        ]


def persistence(landscape: Any, metric: str = "loss") -> Persistence:
    """0-dimensional sublevel-set persistence of a landscape (see the module docstring).

    Args:
        landscape: a :class:`~lossvista.Landscape` of any number of axes (lines, planes, N-D
            grids, loaded 2018 files), or any object with a ``values`` mapping of arrays.
        metric: which value array to describe.

    Returns:
        A :class:`Persistence`.

    Raises:
        InputError: no such metric, or no finite value.

    Example::

        topo = lv.persistence(lv.plane(obj, lv.random_directions(obj, 2), steps=41))
        topo.pairs, topo.n_basins(threshold=0.05)
    """
    values: Any = getattr(landscape, "values", None)
    if not hasattr(values, "keys"):
        raise InputError(
            f"persistence needs a Landscape (from lv.line, lv.plane, lv.load...), got "
            f"{type(landscape).__name__}"
        )
    if metric not in values:
        raise InputError(f"metric {metric!r} is not in the landscape; it has {list(values)}")
    z = np.asarray(values[metric], dtype=np.float64)
    if not np.isfinite(z).any():
        raise InputError(
            f"{metric!r} has no finite value ({z.size} points, all NaN or infinite); compute the "
            "landscape first"
        )
    pairs, minima, saddles, parents = persistence_pairs(z)
    return Persistence(pairs, minima, saddles, parents, metric=metric, shape=tuple(z.shape))


def persistence_pairs(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, minima, saddles, parents)`` of an array of any shape (see :class:`Persistence`)."""
    z = np.asarray(z, dtype=np.float64)
    shape = z.shape if z.ndim else (1,)
    flat = z.reshape(-1)
    finite = np.isfinite(flat)
    order = np.flatnonzero(finite)
    order = order[np.argsort(flat[order], kind="stable")]  # by value, ties by flat index
    rank = np.full(flat.size, -1, dtype=np.int64)  # position in the order; -1: not yet added
    rank[order] = np.arange(order.size)
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]  # C-order stride of every axis
    parent = np.arange(flat.size)
    # A component is named by its root, which is always its minimum (the elder survives).

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    records: list[tuple[int, int, int]] = []  # (minimum, saddle, older minimum)
    for position, point in enumerate(order.tolist()):
        index = np.unravel_index(point, shape)
        roots = set()
        for axis, stride in enumerate(strides.tolist()):
            for step in (-1, 1):
                j = index[axis] + step
                if 0 <= j < shape[axis]:
                    other = point + step * stride
                    if 0 <= rank[other] < position:
                        roots.add(find(other))
        if not roots:
            continue  # a new basin, rooted at itself
        elder = min(roots, key=lambda r: rank[r])
        parent[point] = elder
        for root in roots - {elder}:
            parent[root] = elder
            if flat[root] < flat[point]:  # zero persistence (a plateau tie) is left out
                records.append((root, point, elder))
    survivors = [int(p) for p in order.tolist() if parent[p] == p]
    return _arrays(flat, shape, records, survivors)


def _arrays(
    flat: np.ndarray,
    shape: tuple[int, ...],
    records: list[tuple[int, int, int]],
    survivors: list[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (birth, grid order); parents point at the row of the older basin."""
    rows = [(m, s, e) for m, s, e in records] + [(m, -1, -1) for m in survivors]
    rows.sort(key=lambda r: (flat[r[0]], r[0]))
    row_of = {m: i for i, (m, _, _) in enumerate(rows)}
    n, ndim = len(rows), len(shape)
    pairs = np.empty((n, 2), dtype=np.float64)
    minima = np.empty((n, ndim), dtype=np.int64)
    saddles = np.full((n, ndim), -1, dtype=np.int64)
    parents = np.full(n, -1, dtype=np.int64)
    for i, (m, s, e) in enumerate(rows):
        minima[i] = np.unravel_index(m, shape)
        pairs[i, 0] = flat[m]
        if s < 0:
            pairs[i, 1] = np.inf
            continue
        pairs[i, 1] = flat[s]
        saddles[i] = np.unravel_index(s, shape)
        parents[i] = row_of.get(e, -1)
    return pairs, minima, saddles, parents
