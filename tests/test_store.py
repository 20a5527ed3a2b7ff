"""Surface files: round trip, resume, refusal of mismatched settings, xarray, 2018 import."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lossvista as lv
from conftest import quadratic_problem


class CountingLoss:
    """Wraps a loss and counts forward evaluations (one per point and batch)."""

    def __init__(self, loss):
        self.loss, self.calls = loss, 0
        self.__name__ = getattr(loss, "__name__", type(loss).__name__)

    def __call__(self, output, target):
        self.calls += 1
        return self.loss(output, target)


def _plane(tmp_path, loss=None, **kwargs):
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, loss or quad, data)
    dirs = lv.random_directions(model, 2, norm=None, ignore=(), seed=0)
    options = dict(span=((-1, 1), (-2, 2)), steps=(6, 5), progress=False, strategy="loop")
    options.update(kwargs)
    return obj, dirs, lv.plane(obj, dirs, **options)


def test_save_and_load_round_trip(tmp_path):
    _, _, surf = _plane(tmp_path, store=tmp_path / "s.h5")
    same = lv.load(tmp_path / "s.h5")
    assert same.kind == "plane" and same.shape == (6, 5)
    for a, b in zip(same.coords, surf.coords):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(same.values["loss"], surf.values["loss"])
    assert same.center == surf.center and same.center_check == surf.center_check
    assert same.settings == surf.settings and same.seed == surf.seed == 0
    assert [d.fingerprint() for d in same.directions] == [d.fingerprint() for d in surf.directions]
    assert same.directions[0].meta == surf.directions[0].meta
    assert same.axis_labels == surf.axis_labels and same.markers == surf.markers
    # .save of an in-memory result gives the same file content.
    _, _, memory = _plane(tmp_path)
    memory.save(tmp_path / "m.h5")
    again = lv.load(tmp_path / "m.h5")
    np.testing.assert_array_equal(again.values["loss"], surf.values["loss"])
    assert again.settings["direction_fingerprints"] == surf.settings["direction_fingerprints"]


def test_interpolation_round_trip_keeps_barrier(tmp_path):
    model, quad, data = quadratic_problem(indefinite=True)
    obj = lv.Objective(model, quad, data)
    b = {"theta": model.theta.detach() + 1.0}
    path = lv.interpolate(obj, model, b, steps=11, store=tmp_path / "i.h5", progress=False)
    loaded = lv.load(tmp_path / "i.h5")
    assert isinstance(loaded, lv.Interpolation)
    assert loaded.barrier == path.barrier and loaded.endpoints == path.endpoints


def test_resume_computes_only_missing_points(tmp_path):
    store = tmp_path / "s.h5"
    # The same loss (a counting wrapper of the same quadratic) fills and resumes the file: a
    # loss that is only named alike is refused (tests/test_reliability_store.py).
    _, _, full = _plane(tmp_path, loss=CountingLoss(quadratic_problem()[1]), store=store)
    with h5py.File(store, "r+") as f:  # forget 7 points, as if the run had been stopped
        flat = f["computed"][()].reshape(-1)
        flat[[3, 4, 10, 11, 12, 20, 29]] = 0
        f["computed"][...] = flat.reshape(6, 5)
        f["loss"][0, 3] = np.nan
    model, quad, data = quadratic_problem()
    counter = CountingLoss(quad)
    obj = lv.Objective(model, counter, data)
    dirs = lv.random_directions(model, 2, norm=None, ignore=(), seed=0)
    resumed = lv.plane(
        obj,
        dirs,
        span=((-1, 1), (-2, 2)),
        steps=(6, 5),
        store=store,
        progress=False,
        strategy="loop",
    )
    # Resuming the finished file again evaluates only the centre (and the objective's own
    # checks): the first resume cost that plus exactly the 7 missing points.
    again = CountingLoss(quad)
    lv.plane(
        lv.Objective(model, again, data),
        dirs,
        span=((-1, 1), (-2, 2)),
        steps=(6, 5),
        store=store,
        progress=False,
        strategy="loop",
    )
    assert counter.calls - again.calls == 7
    np.testing.assert_allclose(resumed.values["loss"], full.values["loss"], rtol=1e-13)
    assert resumed.complete


def test_resume_refuses_other_settings(tmp_path):
    store = tmp_path / "s.h5"
    obj, dirs, _ = _plane(tmp_path, store=store)
    with pytest.raises(lv.StoreMismatchError, match="steps"):
        lv.plane(obj, dirs, span=((-1, 1), (-2, 2)), steps=(7, 5), store=store)
    with pytest.raises(lv.StoreMismatchError, match="span"):
        lv.plane(obj, dirs, span=((-1, 1), (-1, 1)), steps=(6, 5), store=store)
    other_dirs = lv.random_directions(obj.model, 2, norm=None, ignore=(), seed=1)
    with pytest.raises(lv.StoreMismatchError, match="direction_fingerprints"):
        lv.plane(obj, other_dirs, span=((-1, 1), (-2, 2)), steps=(6, 5), store=store)
    with torch.no_grad():
        obj.model.theta += 0.1  # another model
    with pytest.raises(lv.StoreMismatchError, match="origin_fingerprint"):
        lv.plane(obj, dirs, span=((-1, 1), (-2, 2)), steps=(6, 5), store=store)
    fresh = lv.plane(
        obj, dirs, span=((-1, 1), (-2, 2)), steps=(6, 5), store=store, resume=False, progress=False
    )
    assert lv.load(store).settings["origin_fingerprint"] == fresh.settings["origin_fingerprint"]


def test_unwritable_store_fails_before_any_evaluation(tmp_path):
    model, quad, data = quadratic_problem()
    counter = CountingLoss(quad)
    obj = lv.Objective(model, counter, data)
    dirs = lv.random_directions(model, 2, norm=None, ignore=())
    with pytest.raises(lv.StoreError, match="does not exist"):
        lv.plane(obj, dirs, store=tmp_path / "missing" / "s.h5")
    with pytest.raises(lv.StoreError, match="is a directory"):
        lv.plane(obj, dirs, store=tmp_path)
    assert counter.calls == 0


def test_file_schema_reads_with_xarray_and_h5py(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    _, _, surf = _plane(tmp_path, store=tmp_path / "s.h5")
    ds = xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf")
    try:
        np.testing.assert_array_equal(ds["x"].values, surf.coords[0])
        np.testing.assert_array_equal(ds["y"].values, surf.coords[1])
        np.testing.assert_array_equal(ds["loss"].values, surf.values["loss"])
        assert ds["loss"].dims == ("x", "y")
    finally:
        ds.close()
    converted = surf.to_xarray()
    np.testing.assert_array_equal(
        converted["loss"].sel(x=surf.coords[0][2]).values, surf.values["loss"][2]
    )
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format"] == "lossvista-surface"
        assert np.isnan(f["loss"].fillvalue)
        assert f["directions/0/theta"].shape == (6,)


def _write_legacy(path, x, y, train_loss_fn, missing=()):
    """A file laid out as the 2018 loss-landscape scripts write it (meshgrid ravel order)."""
    losses = -np.ones((len(x), len(y)))
    xm, ym = np.meshgrid(x, y)  # shapes (len(y), len(x))
    s1, s2 = xm.ravel(), ym.ravel()
    flat = losses.ravel()
    for ind in range(len(s1)):
        if ind not in missing:
            flat[ind] = train_loss_fn(s1[ind], s2[ind])
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = flat.reshape(len(x), len(y))
        f["train_acc"] = np.full((len(x), len(y)), 50.0)
        f.attrs["dir_file"] = "model.h5_weights.h5"


def test_legacy_2018_files_load_with_correct_orientation(tmp_path):
    x, y = np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)  # non-square on purpose
    _write_legacy(tmp_path / "old.h5", x, y, lambda a, b: 10 * a + b, missing=(4,))
    surf = lv.load(tmp_path / "old.h5")
    assert surf.kind == "legacy" and surf.shape == (5, 3)
    expected = 10 * x[:, None] + y[None, :]
    expected[4, 0] = np.nan  # flat index 4 in (y, x) order = (y[0], x[4])
    np.testing.assert_array_equal(surf.values["loss"], expected)
    assert surf.values["accuracy"][0, 0] == 50.0
    assert not surf.computed[4, 0] and surf.computed.sum() == 14
    fig = surf.plot()
    assert fig.axes


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(lv.InputError, match="does not exist"):
        lv.load(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(lv.StoreError, match="not a readable HDF5"):
        lv.load(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(lv.StoreError, match="neither"):
        lv.load(tmp_path / "other.h5")


def test_legacy_1d_file_loads(tmp_path):
    x = np.linspace(-1, 1, 7)
    with h5py.File(tmp_path / "old1d.h5", "w") as f:
        f["xcoordinates"] = x
        losses = x**2
        losses[3] = -1  # not computed yet in the 2018 convention
        f["train_loss"] = losses
        f["test_loss"] = 2 * x**2
    surf = lv.load(tmp_path / "old1d.h5")
    assert surf.shape == (7,) and surf.kind == "legacy"
    expected = x**2
    expected[3] = np.nan
    np.testing.assert_array_equal(surf.values["loss"], expected)
    np.testing.assert_array_equal(surf.values["test_loss"], 2 * x**2)
    assert surf.markers == {"origin": (0.0,)}


def test_files_written_before_count_and_param_selection_still_resume(tmp_path):
    from lossvista._json import dumps, loads

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
    X = torch.randn(20, 4, dtype=torch.float64)
    obj = lv.Objective(model, torch.nn.functional.cross_entropy, (X, X.argmax(1) % 3))
    d1, d2 = lv.random_directions(obj, 2, seed=0)
    path = tmp_path / "old.h5"
    first = lv.plane(obj, (d1, d2), steps=3, store=path, progress=False)
    with h5py.File(path, "r+") as f:  # as an earlier version wrote it
        settings = loads(f.attrs["settings"])
        del settings["objective"]["count"], settings["objective"]["param_selection"]
        f.attrs["settings"] = dumps(settings)
    again = lv.plane(obj, (d1, d2), steps=3, store=path, progress=False)
    np.testing.assert_array_equal(again.values["loss"], first.values["loss"])
