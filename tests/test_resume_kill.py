"""A run killed with SIGKILL mid-grid resumes to the uninterrupted surface bit for bit, losing at
most one chunk, also when the engine tuned its configuration (float32)."""

from __future__ import annotations

import json
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
from conftest import classification_data, make_mlp, quadratic_problem
from lossvista import _tuning

TESTS = Path(__file__).parent
CHUNK = 5
KILL_AT_WRITE = 5  # the process dies when the 5th chunk is about to be written


class CountingQuadratic:
    """The test's loss in every process (the same identity): the quadratic, counting calls."""

    def __init__(self, quad):
        self.quad, self.calls = quad, 0

    def __call__(self, output, target):
        self.calls += 1
        return self.quad(output, target)


# The child dies with SIGKILL just before its KILL_AT_WRITE-th chunk reaches the file, so
# KILL_AT_WRITE - 1 chunks are stored and one computed chunk is lost.
CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
import lossvista as lv
from lossvista import store
from conftest import classification_data, make_mlp, quadratic_problem
from test_resume_kill import CountingQuadratic

writes = 0
original = store.SurfaceStore.write

def dying_write(self, flat, values):
    global writes
    writes += 1
    if writes == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, flat, values)

store.SurfaceStore.write = dying_write
{body}
print("finished without being killed")
"""

QUADRATIC = """
model, quad, data = quadratic_problem()
obj = lv.Objective(model, CountingQuadratic(quad), data)
dirs = lv.random_directions(model, 2, norm=None, ignore=(), seed=0)
lv.plane(obj, dirs, span=(-1, 1), steps=(7, 6), store={store!r}, chunk_size={chunk},
         strategy="loop", progress=False)
"""

MLP = """
model = make_mlp(dtype=torch.float32, width=32)
obj = lv.Objective(model, torch.nn.functional.cross_entropy,
                   classification_data(n=600, dtype=torch.float32), metrics=["accuracy"])
dirs = lv.random_directions(model, 2, seed=7)
lv.plane(obj, dirs, steps=(10, 10), store={store!r}, chunk_size={chunk}, progress=False)
"""


def _kill_child(tmp_path: Path, body: str, store: Path, cache: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(CHILD).format(
            tests=str(TESTS),
            kill_at=KILL_AT_WRITE,
            body=textwrap.dedent(body).format(store=str(store), chunk=CHUNK),
        )
    )
    env = {**os.environ, "LOSSVISTA_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == -9, result.stdout + result.stderr
    with h5py.File(store, "r") as f:
        saved = int(f["computed"][()].sum())
    assert saved == (KILL_AT_WRITE - 1) * CHUNK  # whole chunks only; the one in flight is lost
    assert (store.parent / (store.name + ".lock")).exists()  # left behind by the killed run


def _quadratic_plane(store, loss=None):
    model, quad, data = quadratic_problem()
    obj = lv.Objective(model, loss or CountingQuadratic(quad), data)
    dirs = lv.random_directions(model, 2, norm=None, ignore=(), seed=0)
    return lv.plane(
        obj,
        dirs,
        span=(-1, 1),
        steps=(7, 6),
        store=store,
        chunk_size=CHUNK,
        strategy="loop",
        progress=False,
    )


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    store = tmp_path / "killed.h5"
    _kill_child(tmp_path, QUADRATIC, store, tmp_path / "cache")
    saved = (KILL_AT_WRITE - 1) * CHUNK

    counter = CountingQuadratic(quadratic_problem()[1])
    with pytest.warns(lv.LossvistaWarning, match="no longer runs"):  # the stale lock
        resumed = _quadratic_plane(store, counter)
    again = CountingQuadratic(counter.quad)
    _quadratic_plane(store, again)  # a finished file: only the centre is evaluated
    total = 7 * 6
    assert counter.calls - again.calls == total - saved  # only the missing points

    reference = _quadratic_plane(tmp_path / "uninterrupted.h5")
    np.testing.assert_array_equal(resumed.values["loss"], reference.values["loss"])
    assert lv.load(store).complete
    assert not (tmp_path / "killed.h5.lock").exists()


@pytest.mark.slow
def test_killed_tuned_float32_run_resumes_to_the_same_bits(tmp_path, monkeypatch):
    """The child tunes (100 points, strategy="auto"), records its choice in the file and the
    cache, and dies; the resumed file equals an uninterrupted run bit for bit."""
    cache = tmp_path / "cache"
    store = tmp_path / "killed.h5"
    _kill_child(tmp_path, MLP, store, cache)
    monkeypatch.setenv("LOSSVISTA_CACHE_DIR", str(cache))
    _tuning.clear_memory()
    model = make_mlp(dtype=torch.float32, width=32)
    obj = lv.Objective(
        model,
        nn.functional.cross_entropy,
        classification_data(n=600, dtype=torch.float32),
        metrics=["accuracy"],
    )
    dirs = lv.random_directions(model, 2, seed=7)
    options = dict(steps=(10, 10), chunk_size=CHUNK, progress=False)
    with pytest.warns(lv.LossvistaWarning, match="no longer runs"):
        resumed = lv.plane(obj, dirs, store=store, **options)
    reference = lv.plane(obj, dirs, store=tmp_path / "uninterrupted.h5", **options)
    assert resumed.settings["engine"] == reference.settings["engine"]
    # The uninterrupted run did not tune again: it used the child's remembered choice.
    entries = json.loads((cache / _tuning.CACHE_FILE).read_text())["entries"]
    assert [e["config"] for e in entries.values()] == [reference.settings["engine"]]
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(resumed.values[name], reference.values[name])
    np.testing.assert_array_equal(lv.load(store).values["loss"], reference.values["loss"])
