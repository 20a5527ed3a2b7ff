"""Two gloo processes on CPU under torchrun give exactly the single-process results.

Each test starts ``torchrun --standalone --nproc_per_node=2`` (a free localhost port) on the worker
script ``_worker.py`` or on ``python -m lossvista``, and compares what the ranks return and write
with the same computation in this process (:mod:`_problem` builds both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lossvista as lv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _problem import (
    AVERAGE_SAMPLES,
    BATCH,
    SAMPLES,
    STEPS,
    build,
    curvature,
    data_parallel_plane,
    worst_sharpness,
)

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
MODELS = HERE.parent / "cli_models.py"
#: torchrun's and SLURM's variables: a test run itself under a launcher must not leak them.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
)  # fmt: skip


def _unavailable() -> str | None:
    if not torch.distributed.is_available():
        return "this torch has no torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "this torch has no gloo backend"
    if not TORCHRUN.exists():
        return f"no torchrun next to the interpreter ({TORCHRUN})"
    return None


pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable())),
]


def torchrun(*args: object, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (2 gloo ranks on a free port)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", LOSSVISTA_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *map(str, args)]
    done = subprocess.run(
        command, env=env, cwd=HERE.parent.parent, capture_output=True, text=True, timeout=240
    )
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def ranks(folder: Path, scenario: str) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(folder / f"{scenario}_rank{r}.npz")) for r in (0, 1)]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> Path:
    """The ``main`` scenario of the worker, once for the module."""
    folder = tmp_path_factory.mktemp("main")
    torchrun(HERE / "_worker.py", "main", folder, cache=folder / "cache")
    return folder


def test_plane_points_mode_is_the_single_process_plane_bit_for_bit(main_run):
    obj, directions = build()
    single = lv.plane(obj, directions, steps=STEPS, strategy="loop", progress=False)
    for rank in ranks(main_run, "main"):  # every rank returns the whole plane
        np.testing.assert_array_equal(rank["points"], single.values["loss"])
    stored = lv.load(main_run / "points.h5")  # written by rank 0 alone
    assert stored == single
    assert stored._computed_mask().all()
    np.testing.assert_array_equal(stored.values["loss"], single.values["loss"])


def test_data_mode_shares_the_batches_and_equals_the_single_process_plane(main_run):
    forwards = [0]
    obj, directions = build(lambda: forwards.__setitem__(0, forwards[0] + 1))
    lv.plane(obj, directions, steps=STEPS, strategy="loop", progress=False)  # first-batch check
    forwards[0] = 0
    single = data_parallel_plane(obj, directions, "points")  # no process group: one process
    for rank in ranks(main_run, "main"):
        np.testing.assert_allclose(rank["data"], single.values["loss"], rtol=1e-13, atol=0)
        # 35 points x 6 batches in one process; each rank ran 3 of the 6 batches of every point
        # (plus the same 2 x 6 of the centre check).
        assert forwards[0] == 12 + 35 * 6
        assert int(rank["data_forwards"]) == 12 + 35 * 3


def test_data_mode_chunks_close_where_rank_0_says_whatever_the_other_clocks_say(main_run):
    obj, directions = build()
    single = data_parallel_plane(obj, directions, "points")
    for rank in ranks(main_run, "main"):
        # rank 0's clock found every chunk due at once: one chunk per point on both ranks, and
        # the one chunk of the centre check (the origin through the engine, not shared)
        assert int(rank["clocked_chunks"]) == 1 + STEPS[0] * STEPS[1]
        np.testing.assert_allclose(rank["clocked"], single.values["loss"], rtol=1e-13, atol=0)


def test_curvature_with_shared_data_equals_the_single_process_curvature(main_run):
    forwards = [0]
    obj, _ = build(lambda: forwards.__setitem__(0, forwards[0] + 1))
    obj.evaluate()  # the objective's one-time checks, done in the workers by their planes
    forwards[0] = 0
    lv.sharpness(obj, kind="average", rho=0.05, samples=AVERAGE_SAMPLES, seed=2)
    alone = forwards[0]
    forwards[0] = 0
    worst_sharpness(obj)
    worst_alone = forwards[0]
    single = curvature(obj)
    shares = []
    for rank in ranks(main_run, "main"):
        assert int(rank["operator_batches"]) == 3  # of 6: the data were shared
        shares.append(int(rank["average_forwards"]))
        # the gradient ascent's losses, gradients and Hessian products ran over 3 of 6 batches
        assert 2 * int(rank["worst_forwards"]) == worst_alone
        for name, expected in single.items():
            np.testing.assert_allclose(rank[name], expected, rtol=1e-10, atol=1e-12, err_msg=name)
    # The noise draws of the average sharpness were shared too: rank 0 evaluated theta and the
    # +-eps pairs of draws 0-3, rank 1 those of draws 4-7 (one forward per batch and point),
    # together exactly the points of one process.
    batches = -(-SAMPLES // BATCH)
    assert alone == (1 + 2 * AVERAGE_SAMPLES) * batches
    assert shares == [(1 + AVERAGE_SAMPLES) * batches, AVERAGE_SAMPLES * batches]


def test_a_killed_rank_then_a_restarted_job_completes_the_file_recomputing_nothing(tmp_path):
    obj, directions = build()
    single = lv.plane(obj, directions, steps=STEPS, strategy="loop", progress=False)
    store, cache = tmp_path / "resume.h5", tmp_path / "cache"
    # Rank 1 dies (os._exit) in its fourth round of 2 points; each point costs 6 forward passes
    # after 13 for the checks: 3 rounds of 2 x 2 points are stored.
    died = torchrun(
        HERE / "_worker.py", "plane", tmp_path, 13 + 3 * 12 + 5, cache=cache, check=False
    )
    assert died.returncode != 0
    partial = lv.load(store)
    done = int(partial._computed_mask().sum())
    assert done == 12
    finished = partial._computed_mask()
    np.testing.assert_array_equal(partial.values["loss"][finished], single.values["loss"][finished])

    torchrun(HERE / "_worker.py", "plane", tmp_path, 0, cache=cache)  # the restarted job
    restart = sum(int(r["forwards"]) for r in ranks(tmp_path, "plane"))
    for rank in ranks(tmp_path, "plane"):
        np.testing.assert_array_equal(rank["loss"], single.values["loss"])
    complete = lv.load(store)
    assert complete == single and complete._computed_mask().all()

    torchrun(HERE / "_worker.py", "plane", tmp_path, 0, cache=cache)  # nothing left to compute
    overhead = sum(int(r["forwards"]) for r in ranks(tmp_path, "plane"))
    # The restart evaluated exactly the missing points, each once (6 batches each).
    assert restart - overhead == (STEPS[0] * STEPS[1] - done) * 6


def test_cli_plane_under_torchrun_writes_the_single_process_file(tmp_path):
    args = [
        "plane", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
        "--device", "cpu", "--steps", "9,7", "--no-png",
    ]  # fmt: skip
    cache = tmp_path / "cache"  # the tuning rank 0 chooses is remembered for the single run
    done = torchrun("-m", "lossvista", *args, "--out", tmp_path / "ranks.h5", cache=cache)
    assert done.stdout.count("wrote:") == 1  # rank 0 reports, rank 1 stays quiet
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["LOSSVISTA_CACHE_DIR"] = str(cache)
    subprocess.run(
        [sys.executable, "-m", "lossvista", *args, "--out", tmp_path / "one.h5", "--quiet"],
        env=env, check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    distributed, single = lv.load(tmp_path / "ranks.h5"), lv.load(tmp_path / "one.h5")
    assert distributed == single
    np.testing.assert_array_equal(distributed.values["loss"], single.values["loss"])
    assert distributed._computed_mask().all()


def test_ranks_describing_different_grids_are_refused_on_every_rank(tmp_path):
    torchrun(HERE / "_worker.py", "mismatch", tmp_path, cache=tmp_path / "cache")
    for rank in ranks(tmp_path, "mismatch"):
        assert "ranks [1] of this job describe another grid" in str(rank["error"])
    assert not (tmp_path / "never.h5").exists()  # refused before the store was created


def test_cli_hessian_under_torchrun_reports_once_the_single_process_numbers(tmp_path):
    args = [
        "hessian", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
        "--device", "cpu", "--batch-size", "10", "--top-k", "2", "--trace", "--probes", "6",
        "--no-critical",
    ]  # fmt: skip
    done = torchrun("-m", "lossvista", *args, "--out", tmp_path / "ranks", cache=tmp_path / "c")
    assert done.stdout.count("wrote:") == 1  # rank 0 reports and writes, rank 1 stays quiet
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    subprocess.run(
        [sys.executable, "-m", "lossvista", *args, "--out", tmp_path / "one", "--quiet"],
        env=env, check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    shared = json.loads((tmp_path / "ranks" / "hessian.json").read_text())
    single = json.loads((tmp_path / "one" / "hessian.json").read_text())
    # float32 products summed over 2 ranks instead of 6 batches in one process: rounding only
    np.testing.assert_allclose(shared["eigenvalues"], single["eigenvalues"], rtol=1e-4)
    assert shared["trace"]["estimate"] == pytest.approx(single["trace"]["estimate"], rel=1e-4)
    assert shared["n_hvp"] == single["n_hvp"]
