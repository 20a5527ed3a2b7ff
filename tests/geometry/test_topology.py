"""Persistence of basins: closed-form wells and a brute-force oracle on random grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

import lossvista as lv
from lossvista.errors import InputError
from lossvista.geometry.topology import Persistence, persistence
from protocol import check_protocol


class Grid:
    """The smallest thing persistence reads: a ``values`` mapping."""

    def __init__(self, z: np.ndarray):
        self.values = {"loss": np.asarray(z, dtype=np.float64)}


def brute_force_pairs(z: np.ndarray) -> list[tuple[float, float]]:
    """For every strict local minimum (axis neighbours), the lowest level at which its
    component of ``{z <= t}`` holds a lower point; inf when none ever does."""
    finite = np.isfinite(z)
    structure = ndimage.generate_binary_structure(z.ndim, 1)
    padded = np.pad(np.where(finite, z, np.inf), 1, constant_values=np.inf)
    levels = np.unique(z[finite])
    out = []
    for index in np.argwhere(finite):
        value = z[tuple(index)]
        neighbours = []
        for axis in range(z.ndim):
            for step in (-1, 1):
                at = index + 1
                at[axis] += step
                neighbours.append(padded[tuple(at)])
        if not all(value < n for n in neighbours):
            continue
        death = math.inf
        for t in levels[levels >= value]:
            labels, _ = ndimage.label(finite & (z <= t), structure)
            component = labels == labels[tuple(index)]
            if (z[component] < value).any():
                death = float(t)
                break
        out.append((float(value), death))
    return sorted(out)


def test_double_well_1d():
    x = np.linspace(-2.0, 2.0, 401)
    z = (x**2 - 1.0) ** 2 + 0.3 * x  # the minimum near x = +1 is higher than the one near -1
    topo = persistence(Grid(z))
    assert topo.pairs.shape == (2, 2)
    essential = topo.pairs[np.isinf(topo.pairs[:, 1])]
    finite = topo.pairs[np.isfinite(topo.pairs[:, 1])]
    assert len(essential) == 1 and len(finite) == 1
    lower, higher = np.argmin(z[:200]), 200 + np.argmin(z[200:])
    saddle = 150 + np.argmax(z[150:250])  # the local maximum between the wells
    assert essential[0, 0] == z[lower]
    np.testing.assert_array_equal(finite[0], [z[higher], z[saddle]])
    assert tuple(topo.minima[np.isfinite(topo.pairs[:, 1])][0]) == (higher,)
    assert tuple(topo.saddles[np.isfinite(topo.pairs[:, 1])][0]) == (saddle,)
    assert topo.n_basins() == 2 and topo.n_basins(threshold=10.0) == 1


def test_three_gaussian_wells_2d():
    x = np.linspace(-3, 3, 61)
    X, Y = np.meshgrid(x, x, indexing="ij")
    wells = [((-1.5, -1.0), 1.0), ((1.5, -1.0), 0.8), ((0.0, 1.5), 0.6)]
    z = -sum(d * np.exp(-((X - a) ** 2 + (Y - b) ** 2) / 0.5) for (a, b), d in wells)
    topo = persistence(Grid(z))
    assert len(topo.pairs) == 3 and np.isinf(topo.pairs[:, 1]).sum() == 1
    assert list(map(tuple, topo.pairs.tolist())) == brute_force_pairs(z)
    for (birth, _death), index in zip(topo.pairs, topo.minima, strict=True):
        assert z[tuple(index)] == birth  # births are the grid's minima
    finite = np.isfinite(topo.pairs[:, 1])
    for death, index in zip(topo.pairs[finite, 1], topo.saddles[finite], strict=True):
        assert z[tuple(index)] == death  # deaths are the grid's saddle values
    np.testing.assert_allclose(np.sort(topo.pairs[:, 0]), np.sort([z.min(), -0.8, -0.6]), atol=2e-2)


@pytest.mark.parametrize("shape", [(30,), (7, 8), (4, 5, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_grids_match_brute_force(shape, seed):
    z = np.random.default_rng(seed).normal(size=shape)
    topo = persistence(Grid(z))
    assert sorted(map(tuple, topo.pairs.tolist())) == brute_force_pairs(z)
    assert np.isinf(topo.pairs[:, 1]).sum() == 1
    # parents: every finite pair merges into an older (lower) basin that is alive at its death
    for i, parent in enumerate(topo.parents):
        if parent >= 0:
            assert topo.pairs[parent, 0] < topo.pairs[i, 0]
            assert topo.pairs[parent, 1] > topo.pairs[i, 1]


def test_nan_points_are_holes():
    z = np.array([0.0, 1.0, np.nan, 0.5, 2.0, 0.2])
    topo = persistence(Grid(z))
    # two pieces: [0, 1] with one minimum, [0.5, 2, 0.2] with two
    assert sorted(map(tuple, topo.pairs.tolist())) == [(0.0, math.inf), (0.2, math.inf), (0.5, 2.0)]
    rng = np.random.default_rng(4)
    z = rng.normal(size=(6, 7))
    z[rng.random(z.shape) < 0.25] = np.nan
    assert sorted(map(tuple, persistence(Grid(z)).pairs.tolist())) == brute_force_pairs(z)
    with pytest.raises(InputError, match="no finite value"):
        persistence(Grid(np.full(4, np.nan)))
    with pytest.raises(InputError, match="metric"):
        persistence(Grid(z), metric="accuracy")


def test_plateau_ties_give_no_zero_pairs():
    topo = persistence(Grid(np.array([1.0, 1.0, 0.0, 1.0, 1.0])))
    assert topo.pairs.tolist() == [[0.0, math.inf]]


def test_landscape_result_protocol_and_plots(tmp_path):
    x = np.linspace(-2.0, 2.0, 41)
    z = (x**2 - 1.0) ** 2 + 0.3 * x
    landscape = lv.Landscape(kind="line", coords=(x,), values={"loss": z})
    topo = persistence(landscape)
    loaded = check_protocol(topo, tmp_path, numbers=["max_finite_persistence"], name="topo.h5")
    assert isinstance(loaded, Persistence) and loaded.shape == (41,)
    figure = topo.plot()
    diagram, barcode = figure.axes[:2]
    offsets = np.concatenate([c.get_offsets() for c in diagram.collections])
    finite = topo.pairs[np.isfinite(topo.pairs[:, 1])]
    assert any(np.allclose(row, finite[0]) for row in offsets)
    assert len(barcode.lines) == len(topo.pairs)
    tree = topo.merge_tree_plot().axes[0]
    spans = sorted((min(line.get_ydata()), max(line.get_ydata())) for line in tree.lines[:4])
    assert any(np.allclose(s, finite[0]) for s in spans)


def test_a_loaded_2018_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    x = np.linspace(-2.0, 2.0, 9)
    y = np.linspace(-1.0, 1.0, 5)
    z = ((x[:, None] ** 2 - 1.0) ** 2 + 0.3 * x[:, None]) + y[None, :] ** 2
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = z.T.copy()  # the 2018 files store (y, x)
        f["train_acc"] = np.full((5, 9), 50.0)
    landscape = lv.load(tmp_path / "old.h5")
    np.testing.assert_allclose(landscape.values["loss"], z)
    topo = persistence(landscape)
    assert sorted(map(tuple, topo.pairs.tolist())) == brute_force_pairs(z)
    assert len(topo.pairs) == 2 and topo.shape == (9, 5)
