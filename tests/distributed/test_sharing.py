"""The pieces of distributed evaluation that need no second process: the launcher's variables,
the option checks, how points and batches are shared, and the sums over the shares."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lossvista import _dist
from lossvista._averaging import TOTALS_REDUCE, Totals
from lossvista._data import BATCH_SHARE
from lossvista._dist.grid import ROUND_POINTS_MAX, ROUND_SECONDS, RoundSize, _rounds
from lossvista._grid import Grid, RunOptions, run_grid
from lossvista.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _problem import BATCH, SAMPLES, build, data_parallel_plane

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in (*LAUNCHER_VARIABLES, "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LOSSVISTA_DISTRIBUTED", raising=False)
    return monkeypatch


def test_environment_reads_torchrun_first_then_slurm(no_launcher):
    assert _dist.environment() is None
    no_launcher.setenv("SLURM_PROCID", "3")
    no_launcher.setenv("SLURM_NTASKS", "8")
    no_launcher.setenv("SLURM_LOCALID", "1")
    assert _dist.environment() == (3, 8, 1)
    no_launcher.setenv("RANK", "2")
    no_launcher.setenv("WORLD_SIZE", "4")
    no_launcher.setenv("LOCAL_RANK", "0")
    assert _dist.environment() == (2, 4, 0)
    no_launcher.setenv("WORLD_SIZE", "four")
    with pytest.raises(InputError, match="not integers"):
        _dist.environment()


def test_one_process_without_a_launcher_and_refusals(no_launcher):
    cpu = torch.device("cpu")
    assert _dist.team_for("auto", cpu) is None
    assert _dist.team_for(False, cpu) is None
    with pytest.raises(InputError, match="torchrun --nproc_per_node"):
        _dist.team_for(True, cpu)
    no_launcher.setenv("SLURM_PROCID", "0")
    no_launcher.setenv("SLURM_NTASKS", "2")
    with pytest.raises(InputError, match="MASTER_ADDR"):  # before any attempt to connect
        _dist.team_for("auto", cpu)
    no_launcher.setenv("LOSSVISTA_DISTRIBUTED", "0")  # this process keeps to itself
    assert _dist.team_for("auto", cpu) is None
    assert _dist.secondary_rank() is False
    no_launcher.setenv("SLURM_PROCID", "1")
    assert _dist.secondary_rank() is True


@pytest.mark.parametrize(
    ("distributed", "mode", "match"),
    [("yes", "auto", "distributed must be"), ("auto", "batches", "distributed_mode must be")],
)
def test_bad_options_are_refused_before_any_evaluation(no_launcher, distributed, mode, match):
    calls = [0]
    obj, directions = build(lambda: calls.__setitem__(0, calls[0] + 1))
    options = RunOptions(distributed=distributed, distributed_mode=mode, progress=False)
    grid = Grid("plane", (np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)), tuple(directions))
    with pytest.raises(InputError, match=match):
        run_grid(obj, grid, options)
    assert calls[0] == 0


def test_data_mode_without_a_process_group_is_one_process(no_launcher):
    obj, directions = build()
    points = data_parallel_plane(obj, directions, "points")
    data = data_parallel_plane(obj, directions, "data")
    np.testing.assert_array_equal(points.values["loss"], data.values["loss"])


@pytest.mark.parametrize("step", [1, 3])
def test_rounds_share_whole_blocks_and_cover_every_missing_point_once(step):
    missing = np.array([0, 1, 2, 4, 5, 9, 10, 11, 12, 13, 20, 30, 31, 32, 33])
    rounds = list(_rounds(missing, step, per_rank=lambda: 4, world=3))
    assert all(len(r) == 3 for r in rounds)
    flat = np.concatenate([part for r in rounds for part in r])
    np.testing.assert_array_equal(np.sort(flat), missing)  # each once
    for r in rounds:
        blocks = [set((part // step).tolist()) for part in r]
        for a in range(3):  # no block is split between ranks
            for b in range(a + 1, 3):
                assert not blocks[a] & blocks[b]


def test_batch_shares_are_the_single_process_batches_dealt_round_robin():
    obj, _ = build()
    whole = [t for _, t in obj._data.batches(BATCH)]
    assert len(whole) == SAMPLES // BATCH == obj._data.count_batches(BATCH)
    for rank in (0, 1):
        token = BATCH_SHARE.set((rank, 2))
        try:
            share = [t for _, t in obj._data.batches(BATCH)]
        finally:
            BATCH_SHARE.reset(token)
        assert len(share) == 3
        for got, expected in zip(share, whole[rank::2], strict=True):
            assert torch.equal(got, expected)


def test_summed_shares_give_the_means_over_all_the_data():
    """Two shares evaluated in one process and added up by the reducer: the means are those of
    the whole data, up to the rounding of the summation order."""
    obj, _ = build()
    with torch.no_grad():
        whole = obj._point_vector(BATCH).numpy()
        shares = []
        for rank in (0, 1):
            token = BATCH_SHARE.set((rank, 2))
            try:
                shares.append(obj._point_vector(BATCH).numpy())
            finally:
                BATCH_SHARE.reset(token)
    assert shares[0][0] == shares[1][0] == SAMPLES / 2  # the item counts of the shares
    token = TOTALS_REDUCE.set(lambda rows: rows + shares[1])  # rank 0's view of the all-reduce
    try:
        summed = Totals.from_vectors(shares[0], 1)
    finally:
        TOTALS_REDUCE.reset(token)
    expected = Totals.from_vectors(whole, 1)
    np.testing.assert_array_equal(summed.count, expected.count)
    np.testing.assert_allclose(summed.sums, expected.sums, rtol=1e-14)
    means = obj._means(summed)["loss"]
    np.testing.assert_allclose(means, obj.evaluate()["loss"], rtol=1e-14)


def test_single_process_keeps_a_rank_to_itself(no_launcher):
    import lossvista as lv

    no_launcher.setenv("SLURM_PROCID", "0")
    no_launcher.setenv("SLURM_NTASKS", "2")
    with pytest.raises(InputError, match="MASTER_ADDR"):  # it would join the job
        _dist.team_for("auto", torch.device("cpu"))
    with lv.single_process():
        assert _dist.team_for("auto", torch.device("cpu")) is None
        obj, directions = build()
        assert _dist.hessian_team(obj) is None
        surface = lv.line(obj, directions[0], steps=4, progress=False)  # no waiting for rank 1
    assert surface._computed_mask().all()
    assert surface.values["loss"][0] == obj.evaluate(at=_moved(obj, directions[0], -1.0))["loss"]


def _moved(obj, direction, alpha: float) -> dict[str, torch.Tensor]:
    return {n: t + alpha * direction[n] for n, t in obj.parameters().items()}


def test_a_last_short_round_is_dealt_evenly():
    rounds = list(_rounds(np.arange(35), 1, per_rank=lambda: 64, world=2))
    assert [len(part) for part in rounds[0]] == [18, 17]  # not 35 and 0
    rounds = list(_rounds(np.arange(130), 1, per_rank=lambda: 64, world=2))
    assert [[len(p) for p in r] for r in rounds] == [[64, 64], [1, 1]]


def test_rounds_follow_the_size_asked_before_each_round():
    sizes = iter([1, 4, 2, 100])
    rounds = list(_rounds(np.arange(20), 1, per_rank=lambda: next(sizes), world=2))
    assert [[len(p) for p in r] for r in rounds] == [[1, 1], [4, 4], [2, 2], [3, 3]]
    sizes = iter([3, 9])  # blocks of 3 points (vmap): a size is rounded down to whole blocks
    rounds = list(_rounds(np.arange(24), 3, per_rank=lambda: next(sizes), world=2))
    assert [[len(p) for p in r] for r in rounds] == [[3, 3], [9, 9]]


def test_round_size_is_one_block_then_the_work_of_round_seconds_at_the_slowest_rank():
    size = RoundSize(step=1)
    assert size() == 1  # nothing measured yet: one block per rank
    size.measured([(0.5, 1), (1.0, 1)])  # rank 1 took 1 s per point: it sets the pace
    assert size() == int(ROUND_SECONDS / 1.0)
    size.measured([(ROUND_SECONDS, 50), (ROUND_SECONDS, 10), (0.0, 0)])  # an idle rank: no rate
    assert size() == 10
    size.measured([(1e-3, 100), (1e-3, 100)])  # fast points: capped
    assert size() == ROUND_POINTS_MAX
    size.measured([(100.0, 1), (1.0, 1)])  # slower than a round: one block, never none
    assert size() == 1
    blocks = RoundSize(step=8)
    assert blocks() == 8
    blocks.measured([(1.0, 8), (1.0, 8)])  # 1/8 s per point: whole blocks of 8
    assert blocks() == int(ROUND_SECONDS * 8) // 8 * 8
    fixed = RoundSize(step=1, fixed=2)  # chunk_size=2: every round holds 2 points per rank
    fixed.measured([(10.0, 2), (10.0, 2)])
    assert fixed() == 2


class _LocalTeam(_dist.team.Team):
    def agree(self, action):  # one process plays rank 0
        return action()


@pytest.mark.parametrize(
    "missing, world, mode",
    [(1, 2, "data"), (3, 2, "data"), (5, 4, "data"), (35, 2, "points"), (130, 2, "points")],
)
def test_auto_mode_takes_the_data_mode_when_points_would_leave_ranks_idle(missing, world, mode):
    from lossvista._dist.grid import _mode

    obj, _ = build()
    team = _LocalTeam(0, world, torch.device("cpu"))
    assert obj._data.count_batches(BATCH) >= world
    config = _dist.grid.dataclasses.replace(_engine_config(), batch_size=BATCH)
    assert _mode(team, obj, missing, "auto", config) == mode
    assert _mode(team, obj, missing, "points", config) == "points"


def test_auto_mode_takes_the_data_mode_for_a_model_that_fills_its_device(monkeypatch):
    from lossvista._dist import grid

    obj, _ = build()
    team = _LocalTeam(0, 2, torch.device("cpu"))
    config = grid.dataclasses.replace(_engine_config(), batch_size=BATCH)
    assert not grid.fills_device(obj)  # a CPU model never does
    monkeypatch.setattr(grid, "fills_device", lambda objective: True)
    assert grid._mode(team, obj, 130, "auto", config) == "data"


def _engine_config():
    from lossvista.engine import EngineConfig

    return EngineConfig("loop", None, 1)


@pytest.mark.parametrize("memory, fills", [(10**12, False), (1000, True)])
def test_fills_device_compares_the_model_with_the_device_memory(monkeypatch, memory, fills):
    from types import SimpleNamespace

    from lossvista._dist import grid

    model = torch.nn.Linear(100, 100)  # 40,400 bytes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=memory)
    )
    assert grid.fills_device(SimpleNamespace(device="cuda:0", model=model)) is fills
