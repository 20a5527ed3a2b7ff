"""Nothing lost, nothing mixed (issue 8): each fault injected as a user or a crash would, and
each test asserts the clear error, that every finished point is still in the file, and that the
caller's model is unchanged."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_mlp, snapshot
from lossvista import _estimate, _grid, _hdf5, _tuning
from lossvista._identity import callable_identity

F = nn.functional
TESTS = Path(__file__).parent
STEPS = (6, 5)
FORGET = [3, 4, 10, 11, 12, 20, 29]  # flat indices "not computed yet" in a half-done file


@pytest.fixture(autouse=True)
def private_tuning_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(tmp_path / "cache"))
    _tuning.clear_memory()


class Counting:
    """A loss or metric that counts its calls (calls are state, not identity)."""

    def __init__(self, fn=F.cross_entropy):
        self.fn, self.calls = fn, 0

    def __call__(self, output, target):
        self.calls += 1
        return self.fn(output, target)


def _named_loss(smoothing):
    def loss(output, target):
        return F.cross_entropy(output, target, label_smoothing=smoothing)

    return loss


def _objective(data=None, loss=F.cross_entropy, model=None, **kwargs):
    model = model if model is not None else make_mlp()
    return lv.Objective(model, loss, data if data is not None else classification_data(), **kwargs)


def _plane(obj, store, dirs=None, **kwargs):
    dirs = dirs or lv.random_directions(obj.model, 2, seed=0)
    options = dict(steps=STEPS, store=store, progress=False, strategy="loop", chunk_size=6)
    return lv.plane(obj, dirs, **{**options, **kwargs})


def _half_done(obj, store):
    """A file as an interrupted run leaves it: every point but FORGET finished."""
    _plane(obj, store)
    with h5py.File(store, "r+") as f:
        flags = f["computed"][()].reshape(-1)
        flags[FORGET] = 0
        f["computed"][...] = flags.reshape(STEPS)
    return _finished(store)


def _finished(store):
    surface = lv.load(store)
    return surface.computed.copy(), np.where(surface.computed, surface.values["loss"], 0.0)


def _assert_kept(store, finished):
    computed, loss = _finished(store)
    np.testing.assert_array_equal(computed, finished[0])
    np.testing.assert_array_equal(loss, finished[1])


# -- 1. the resume identity covers what was computed ------------------------------------------------
@pytest.mark.parametrize(
    "change, expected",
    [
        ("data", "identity.data"),
        ("loss", "identity.loss_fn"),
        ("loss_code", "identity.loss_fn"),
        ("metric", "identity.metrics.score"),
    ],
)
def test_resume_refuses_what_computes_other_values(tmp_path, change, expected):
    store = tmp_path / "s.h5"
    first = dict(loss=_named_loss(0.0), metrics={"score": lambda o, t: o.mean()})
    finished = _half_done(_objective(**first), store)
    before_bytes = store.read_bytes()
    second = dict(first)
    if change == "data":
        second["data"] = classification_data(seed=1)  # same shapes, other samples
    elif change == "loss":
        second["loss"] = _named_loss(0.1)  # same name "loss", another smoothing
    elif change == "loss_code":

        def loss(output, target):
            return F.nll_loss(F.log_softmax(output, -1), target) * 2

        second["loss"] = loss
    else:
        second["metrics"] = {"score": lambda o, t: o.abs().mean()}
    obj = _objective(**second)
    before = snapshot(obj.model)
    with pytest.raises(lv.StoreMismatchError, match=expected):
        _plane(obj, store)
    assert store.read_bytes() == before_bytes
    _assert_kept(store, finished)
    assert_unchanged(obj.model, before)


def test_resume_refuses_other_batchnorm_buffers(tmp_path, cnn_problem):
    model, loss, data = cnn_problem
    store = tmp_path / "s.h5"
    finished = _half_done(lv.Objective(model, loss, data), store)
    before_bytes = store.read_bytes()
    with torch.no_grad():
        model[1].running_mean += 0.5  # the same parameters, other statistics
    before = snapshot(model)
    with pytest.raises(lv.StoreMismatchError, match=r"identity\.buffers"):
        _plane(lv.Objective(model, loss, data), store)
    assert store.read_bytes() == before_bytes
    _assert_kept(store, finished)
    assert_unchanged(model, before)


def test_finished_file_rerun_with_other_data_keeps_its_centre(tmp_path):
    store = tmp_path / "s.h5"
    _plane(_objective(), store)
    centre, before_bytes = lv.load(store).center, store.read_bytes()
    with pytest.raises(lv.StoreMismatchError, match=r"identity\.data"):
        _plane(_objective(classification_data(seed=2)), store)
    assert store.read_bytes() == before_bytes and lv.load(store).center == centre


def test_loader_data_and_old_files_are_checked_by_the_recomputed_centre(tmp_path):
    """Batches are identified by their count only, and files of earlier versions carry no
    identity: other data of the same size are refused by the centre they give."""
    X, y = classification_data()
    X2, y2 = classification_data(seed=3)
    batches = [(X[:32], y[:32]), (X[32:], y[32:])]
    other = [(X2[:32], y2[:32]), (X2[32:], y2[32:])]
    store = tmp_path / "s.h5"
    finished = _half_done(_objective(batches), store)
    before_bytes = store.read_bytes()
    with pytest.raises(lv.StoreMismatchError, match="stored centre"):
        _plane(_objective(other), store)
    assert store.read_bytes() == before_bytes

    old = tmp_path / "old.h5"  # a file without the identity settings (an earlier lossvista)
    _half_done(_objective(), old)
    with h5py.File(old, "r+") as f:
        settings = lv._json.loads(f.attrs["settings"])
        del settings["identity"]
        f.attrs["settings"] = lv._json.dumps(settings)
    old_bytes = old.read_bytes()
    with pytest.raises(lv.StoreMismatchError, match="stored centre"):
        _plane(_objective((X2, y2)), old)
    assert old.read_bytes() == old_bytes
    assert _plane(_objective(), old).complete  # the same objective still resumes it
    _assert_kept(store, finished)


def test_a_counting_wrapper_keeps_its_identity(tmp_path):
    store = tmp_path / "s.h5"
    _half_done(_objective(loss=Counting()), store)
    counter = Counting()
    assert _plane(_objective(loss=counter), store).complete and counter.calls > 0


def _set_loss(output, target):
    reductions = {"mean", "sum"}  # a frozenset constant: its repr follows the hash seed
    return F.cross_entropy(output, target, reduction="mean" if "mean" in reductions else "sum")


def test_callable_identity_follows_what_is_computed():
    ident = callable_identity
    assert ident(F.cross_entropy) == "torch.nn.functional.cross_entropy"
    assert ident(nn.CrossEntropyLoss()) == ident(nn.CrossEntropyLoss())
    assert ident(nn.CrossEntropyLoss(reduction="sum")) != ident(nn.CrossEntropyLoss())
    weighted = [nn.CrossEntropyLoss(weight=torch.full((3,), w)) for w in (1.0, 2.0)]
    assert ident(weighted[0]) != ident(weighted[1])
    smoothed = [functools.partial(F.cross_entropy, label_smoothing=v) for v in (0.1, 0.2)]
    assert ident(smoothed[0]) != ident(smoothed[1])
    assert ident(_named_loss(0.0)) == ident(_named_loss(0.0)) != ident(_named_loss(0.1))
    counted, again = Counting(), Counting()
    again.calls = 7
    assert ident(counted) == ident(again) != ident(Counting(_slow))


@pytest.mark.slow
def test_identities_are_the_same_in_every_process():
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
        "from test_reliability_store import _set_loss, Counting, _named_loss; "
        "from lossvista._identity import callable_identity as i; "
        "print(i(_set_loss), i(Counting()), i(_named_loss(0.5)))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(seen) == 1


# -- 2. a full disk never makes finished points unreadable ------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a real disk that fills up (ENOSPC), as a full disk does."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that can fill up) needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Write a filler file until the disk has no byte left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_resume_on_a_full_disk_finishes(small_disk):
    store = small_disk / "s.h5"
    _half_done(_objective(), store)
    reference = _plane(_objective(), small_disk / "reference.h5")
    _fill(small_disk)
    obj = _objective()
    before = snapshot(obj.model)
    resumed = _plane(obj, store)  # writes only into space the file was created with
    assert resumed.complete and lv.load(store).complete
    np.testing.assert_array_equal(lv.load(store).values["loss"], reference.values["loss"])
    assert_unchanged(obj.model, before)


def test_a_disk_filling_up_during_the_run_loses_nothing(small_disk):
    store = small_disk / "s.h5"
    loss = Counting()
    original = loss.fn

    def filling(output, target):
        if loss.calls == 6:  # the file exists; the grid has started
            _fill(small_disk)
        return original(output, target)

    loss.fn = filling
    surface = _plane(_objective(loss=loss), store)
    assert surface.complete and lv.load(store).complete


def test_overwrite_on_a_full_disk_keeps_the_old_file(small_disk, monkeypatch):
    store = small_disk / "s.h5"
    _plane(_objective(), store)
    finished, before_bytes = _finished(store), store.read_bytes()
    _fill(small_disk)
    obj = _objective()
    before = snapshot(obj.model)
    with pytest.raises(lv.InputError, match=r"free\. Pass a store on a bigger disk"):
        _plane(obj, store, resume=False)  # refused before any work
    # The same when the disk fills between that check and the write.
    monkeypatch.setattr(_grid, "check_request", lambda *a, **k: None)
    with pytest.raises(lv.StoreError, match="disk is full") as error:
        _plane(obj, store, resume=False)
    message = str(error.value)
    assert str(store) in message and str(small_disk) in message and "resumes" in message
    assert store.read_bytes() == before_bytes
    _assert_kept(store, finished)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "s.h5"]  # no temp, no lock
    assert_unchanged(obj.model, before)


def test_layout_changes_on_a_full_disk_keep_the_file(small_disk):
    """A trajectory (a new copy of the file) and an older file's upgrade need space: refused
    with the disk-full error, the file as it was."""
    store = small_disk / "s.h5"
    _plane(_objective(), store)
    finished = _finished(store)
    old = small_disk / "old.h5"
    _write_old_layout(old)
    old_bytes = old.read_bytes()
    _fill(small_disk)
    with pytest.raises(lv.StoreError, match="disk is full"):
        _plane(_objective(), store, trajectory=np.array([[0.1, 0.2], [0.3, 0.1]]), span=(-1, 1))
    _assert_kept(store, finished)
    assert lv.load(store).trajectory is None
    with pytest.raises(lv.StoreError, match="disk is full"):
        _plane(_objective(), old)
    assert old.read_bytes() == old_bytes


def test_files_of_the_older_layout_are_upgraded_when_resumed(tmp_path):
    old = tmp_path / "old.h5"
    _write_old_layout(old)
    assert _plane(_objective(), old).complete
    with h5py.File(old, "r") as f:
        assert _hdf5.is_allocated(f["loss"]) and _hdf5.is_allocated(f["computed"])


def _write_old_layout(path: Path) -> None:
    """A file as lossvista 0.x created it (space allocated on first write, attributes of
    variable size), killed before its first chunk."""
    surface = _plane(_objective(), None)
    settings = {k: v for k, v in surface.settings.items() if k not in ("engine", "identity")}
    with h5py.File(path, "w") as f:
        for key, value in dict(
            format="lossvista-surface",
            format_version=1,
            kind="plane",
            settings=lv._json.dumps(settings),
            axis_labels=lv._json.dumps(list(surface.axis_labels)),
            markers=lv._json.dumps({k: list(v) for k, v in surface.markers.items()}),
            seed=0,
            center=lv._json.dumps({}),
            center_check=lv._json.dumps(None),
            engine=lv._json.dumps(None),
        ).items():
            f.attrs[key] = value
        for dim, axis in zip(("x", "y"), surface.coords):
            f.create_dataset(dim, data=axis)
        f.create_dataset("loss", shape=STEPS, dtype="f8", fillvalue=np.nan)
        f["loss"].attrs["lossvista_metric"] = 1
        f.create_dataset("computed", shape=STEPS, dtype="u1", fillvalue=0)
        for i, direction in enumerate(surface.directions):
            group = f.create_group(f"directions/{i}")
            group.attrs["meta"] = lv._json.dumps(direction.meta)
            for name, tensor in direction.items():
                group[name] = tensor.numpy()


# -- 3. temporary and lock files cannot be hijacked -------------------------------------------------
def test_planted_symlinks_never_redirect_a_write(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = tmp_path / "s.h5"
    (tmp_path / "s.h5.tmp").symlink_to(victim)  # the old, predictable temporary name
    assert _plane(_objective(), store).complete
    assert victim.read_text() == "precious"

    other = tmp_path / "t.h5"
    (tmp_path / "t.h5.lock").symlink_to(victim)
    (tmp_path / "u.h5.lock").symlink_to(tmp_path / "created-through-link")  # dangling
    loss = Counting()
    obj = _objective(loss=loss)
    before = snapshot(obj.model)
    for target in (other, tmp_path / "u.h5"):
        with pytest.raises(lv.StoreError, match="symbolic link"):
            _plane(obj, target)
    assert victim.read_text() == "precious" and loss.calls == 0
    assert not other.exists() and not (tmp_path / "created-through-link").exists()
    assert_unchanged(obj.model, before)


# -- 4. one writer per file ---------------------------------------------------------------------
WRITER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import lossvista as lv
from test_reliability_store import Counting, _objective, _plane, _slow

print("pid", os.getpid(), flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.005)
try:
    _plane(_objective(loss=Counting(_slow)), {store!r})
except lv.StoreError as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


def _slow(output, target):
    import time

    time.sleep(0.1)
    return F.cross_entropy(output, target)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["create", "resume"])
def test_two_writers_one_wins_the_other_is_told_who(tmp_path, start):
    store = tmp_path / "s.h5"
    if start == "resume":
        _half_done(_objective(loss=Counting(_slow)), store)
    script = tmp_path / "writer.py"
    go = tmp_path / "go"
    script.write_text(
        textwrap.dedent(WRITER).format(tests=str(TESTS), go=str(go), store=str(store))
    )
    env = {**os.environ, "LOSSVISTA_CACHE_DIR": str(tmp_path / "cache")}
    writers = [
        subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    pids = [int(w.stdout.readline().split()[1]) for w in writers]
    go.touch()
    outputs = [w.communicate(timeout=300) for w in writers]
    codes = [w.returncode for w in writers]
    assert sorted(codes) == [0, 3], outputs
    winner, loser = codes.index(0), codes.index(3)
    refusal = outputs[loser][0].decode()
    assert f"process {pids[winner]}" in refusal and str(store) in refusal
    surface = lv.load(store)
    assert surface.complete
    reference = _plane(_objective(), None)
    np.testing.assert_allclose(surface.values["loss"], reference.values["loss"], rtol=1e-12)
    assert not (tmp_path / "s.h5.lock").exists()


def test_stale_and_foreign_locks(tmp_path):
    store = tmp_path / "s.h5"
    lock = tmp_path / "s.h5.lock"
    _half_done(_objective(), store)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead = int(gone.stdout)
    lock.write_text(f'{{"pid": {dead}, "host": "{os.uname().nodename}"}}')
    with pytest.warns(lv.LossvistaWarning, match=f"process {dead} .* no longer runs") as w:
        assert _plane(_objective(), store).complete
    assert w[0].filename == __file__  # points at the caller's line
    assert not lock.exists()

    other = tmp_path / "o.h5"
    finished = _half_done(_objective(), other)
    other_bytes = other.read_bytes()
    (tmp_path / "o.h5.lock").write_text('{"pid": 1, "host": "elsewhere", "since": "today"}')
    with pytest.raises(lv.StoreError, match="process 1 on elsewhere"):
        _plane(_objective(), other)
    assert other.read_bytes() == other_bytes
    _assert_kept(other, finished)


class Interrupting(Counting):
    """Ctrl-C at the ``at``-th call (a plain number: not part of the loss's identity)."""

    at: int | None = 20

    def __call__(self, output, target):
        if self.calls + 1 == self.at:
            raise KeyboardInterrupt
        return super().__call__(output, target)


def test_the_lock_goes_away_after_an_error_or_ctrl_c(tmp_path):
    store = tmp_path / "s.h5"
    loss = Interrupting()
    obj = _objective(loss=loss)
    before = snapshot(obj.model)
    with pytest.raises(KeyboardInterrupt):
        _plane(obj, store)
    assert not (tmp_path / "s.h5.lock").exists()
    assert_unchanged(obj.model, before)
    saved = lv.load(store)
    assert 0 < saved.computed.sum() < saved.computed.size  # the finished chunks are there
    loss.at = None
    assert _plane(obj, store).complete


# -- 6. a non-finite centre is reported before the grid starts ---------------------------------------
def test_nan_data_stops_before_any_grid_point(tmp_path):
    X, y = classification_data()
    X[3, 2] = float("nan")
    loss = Counting()
    obj = _objective((X, y), loss=loss)
    before = snapshot(obj.model)
    with pytest.raises(lv.DataError, match=r"NaN.*data.*check_center=False") as error:
        _plane(obj, tmp_path / "s.h5")
    assert "the data's inputs hold NaN/inf" in str(error.value)
    probe = Counting()
    _objective((X, y), loss=probe).evaluate()
    assert loss.calls == probe.calls  # the objective's own forward only: no grid point
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.lock").exists()
    assert_unchanged(obj.model, before)
    with pytest.warns(lv.NonFiniteLossWarning):
        surface = _plane(obj, None, check_center=False)
    assert np.isnan(surface.values["loss"]).all()


def test_nan_checkpoint_is_named(tmp_path):
    model = make_mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # a diverged checkpoint
    dirs = lv.random_directions(make_mlp(), 2, seed=0)
    with pytest.raises(lv.DataError, match=r"parameters with NaN/inf: \['0.weight'\]"):
        _plane(_objective(model=model), tmp_path / "s.h5", dirs=dirs)
    assert not (tmp_path / "s.h5").exists()


# -- 7. huge requests --------------------------------------------------------------------------
def test_requests_that_cannot_fit_are_refused_before_any_work(tmp_path, monkeypatch):
    loss = Counting()
    obj = _objective(loss=loss)
    with monkeypatch.context() as patch:
        patch.setattr(_estimate, "available_memory", lambda: 100)
        with pytest.raises(lv.InputError, match=r"6 x 5 = 30 points .* needs about .* available"):
            _plane(obj, tmp_path / "s.h5")
    with monkeypatch.context() as patch:
        patch.setattr(_estimate.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000}))
        with pytest.raises(lv.InputError, match=r"would take about .* 1 kB free"):
            _plane(obj, tmp_path / "s.h5")
    assert loss.calls == 0 and not (tmp_path / "s.h5").exists()


def test_long_runs_are_announced_with_time_memory_and_file_size(tmp_path, monkeypatch):
    monkeypatch.setattr(_estimate, "LONG_RUN_SECONDS", 0.0)
    with pytest.warns(lv.LossvistaWarning, match=r"long run: .* ms per point.*memory.*file") as w:
        _plane(_objective(), tmp_path / "s.h5")
    assert w[0].filename == __file__  # points at the caller's line


# -- 8. damaged, foreign and legacy files -------------------------------------------------------
def test_damaged_files_give_a_store_error_naming_them(tmp_path):
    store = tmp_path / "s.h5"
    _plane(_objective(), store)
    raw = store.read_bytes()
    cases = {"truncated": raw[: len(raw) // 2]}
    rng = np.random.default_rng(0)
    for start in (0, 1024, 2048):
        scrambled = bytearray(raw)
        scrambled[start : start + 256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        cases[f"scrambled at {start}"] = bytes(scrambled)
    for name, content in cases.items():
        damaged = tmp_path / f"{name}.h5"
        damaged.write_bytes(content)
        with pytest.raises(lv.StoreError, match=str(damaged)):
            lv.load(damaged)
        with pytest.raises(lv.StoreError):
            _plane(_objective(), damaged)  # a resume is refused, the file left alone
        assert damaged.read_bytes() == content, name
    for what, remove in (("computed", "dataset"), ("settings", "attribute")):
        broken = tmp_path / f"no-{what}.h5"
        broken.write_bytes(raw)
        with h5py.File(broken, "r+") as f:
            del (f if remove == "dataset" else f.attrs)[what]
        with pytest.raises(lv.StoreError, match=rf"lacks the {remove}\(s\) \['{what}'\]"):
            lv.load(broken)


def test_legacy_files_with_text_datasets_load_and_empty_axes_are_refused(tmp_path):
    x, y = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"] = np.arange(12.0).reshape(4, 3)
        f["dir_file"] = "model_300.t7_weights_xignore=biasbn_xnorm=filter.h5"  # a text dataset
    surface = lv.load(tmp_path / "old.h5")
    assert surface.shape == (4, 3) and "dir_file" not in surface.values
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["xcoordinates"] = np.array([])
        f["train_loss"] = np.array([])
    with pytest.raises(lv.StoreError, match="axis 'xcoordinates' is empty"):
        lv.load(tmp_path / "empty.h5")
