"""A run killed with SIGKILL mid-grid resumes to the uninterrupted surface, losing <= one chunk."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import lossvista as lv
from conftest import quadratic_problem

TESTS = Path(__file__).parent
CHUNK = 5
KILL_AT_CALL = 23  # calls 1-2 are the centre check; the 21st grid point dies mid-evaluation

CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import lossvista as lv
from conftest import quadratic_problem

model, quad, data = quadratic_problem()
calls = 0

def dying_loss(output, target):
    global calls
    calls += 1
    if calls == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return quad(output, target)

dying_loss.__name__ = "Quadratic"
obj = lv.Objective(model, dying_loss, data)
dirs = lv.random_directions(model, 2, norm=None, ignore=(), seed=0)
lv.plane(obj, dirs, span=(-1, 1), steps=(7, 6), store={store!r}, chunk_size={chunk},
         strategy="loop", progress=False)
print("finished without being killed")
"""


def _plane(store, counter=None):
    model, quad, data = quadratic_problem()
    loss = quad
    if counter is not None:

        def loss(output, target):
            counter.append(1)
            return quad(output, target)

        loss.__name__ = "Quadratic"
    obj = lv.Objective(model, loss, data)
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
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(CHILD).format(
            tests=str(TESTS), kill_at=KILL_AT_CALL, store=str(store), chunk=CHUNK
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -9, result.stdout + result.stderr

    evaluated_before_kill = KILL_AT_CALL - 2 - 1  # grid points that finished before the kill
    with h5py.File(store, "r") as f:
        saved = int(f["computed"][()].sum())
    assert evaluated_before_kill - CHUNK < saved <= evaluated_before_kill
    assert saved % CHUNK == 0  # whole chunks only

    calls: list[int] = []
    resumed = _plane(store, calls)
    total = 7 * 6
    assert len(calls) == (total - saved) + 2  # only the missing points, plus the centre check
    assert len(calls) - 2 <= total - evaluated_before_kill + CHUNK  # lost at most one chunk

    reference = _plane(tmp_path / "uninterrupted.h5")
    np.testing.assert_array_equal(resumed.values["loss"], reference.values["loss"])
    assert lv.load(store).complete
