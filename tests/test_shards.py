"""Communication-free shards: ``shard=(i, N)`` runs and ``lv.merge`` equal a single run."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from torch.nn import functional as F

import lossvista as lv
from conftest import make_mlp
from lossvista.cli import main
from lossvista.shards import parse_shard

MODELS = Path(__file__).parent / "cli_models.py"


class CountingLoss:
    def __init__(self) -> None:
        self.calls = 0
        self.__name__ = "cross_entropy"

    def __call__(self, output, target):
        self.calls += 1
        return F.cross_entropy(output, target)


def _problem(loss=None):
    from conftest import classification_data

    model = make_mlp()  # float64
    obj = lv.Objective(model, loss or F.cross_entropy, classification_data(), metrics=["accuracy"])
    dirs = lv.random_directions(model, 2, seed=0)
    return obj, dirs


OPTIONS = dict(span=((-1, 1), (-0.5, 0.5)), steps=(5, 4), progress=False, strategy="loop")


def _shards(tmp_path, obj, dirs, count=3, **kwargs):
    paths = []
    for i in range(count):
        path = tmp_path / f"shard{i}.h5"
        lv.plane(obj, dirs, **{**OPTIONS, **kwargs}, store=path, shard=(i, count))
        paths.append(path)
    return paths


def test_merged_shards_equal_the_single_run_bit_for_bit(tmp_path):
    obj, dirs = _problem()
    whole = lv.plane(obj, dirs, **OPTIONS, store=tmp_path / "whole.h5")
    paths = _shards(tmp_path, obj, dirs)
    part = lv.load(paths[1])
    assert part.settings["shard"] == {"index": 1, "count": 3}
    expected = (np.arange(20) % 3 == 1).reshape(5, 4)
    assert np.array_equal(part.computed, expected)
    assert np.isnan(part.values["loss"][~expected]).all()

    merged = lv.merge(paths, tmp_path / "merged.h5")
    assert merged.computed.all()
    for name in whole.values:
        assert np.array_equal(merged.values[name], whole.values[name])  # bit for bit
    assert merged.center == whole.center
    assert "shard" not in merged.settings
    assert merged == lv.load(tmp_path / "whole.h5")
    assert lv.load(tmp_path / "merged.h5") == merged
    assert merged.path == tmp_path / "merged.h5"
    # any order of the arguments
    assert lv.merge(paths[::-1], tmp_path / "merged2.h5") == merged


def test_a_shard_resumes_without_recomputing(tmp_path):
    loss = CountingLoss()
    obj, dirs = _problem(loss)
    path = tmp_path / "s.h5"
    first = lv.plane(obj, dirs, **OPTIONS, store=path, shard="0/2")
    calls = loss.calls
    again = lv.plane(obj, dirs, **OPTIONS, store=path, shard=(0, 2))
    # the second run evaluates only its centre (objective and engine), never a grid point
    assert loss.calls - calls <= 2
    assert again == first
    with pytest.raises(lv.StoreMismatchError, match="shard"):
        lv.plane(obj, dirs, **OPTIONS, store=path, shard=(1, 2))
    with pytest.raises(lv.StoreMismatchError, match="shard"):
        lv.plane(obj, dirs, **OPTIONS, store=path)


def test_line_and_grid_take_shards(tmp_path):
    obj, dirs = _problem()
    whole = lv.line(obj, dirs[0], steps=7, progress=False, strategy="loop")
    lines = []
    for i in range(2):
        lines.append(tmp_path / f"l{i}.h5")
        lv.line(
            obj, dirs[0], steps=7, progress=False, strategy="loop", store=lines[-1], shard=(i, 2)
        )
    assert np.array_equal(lv.merge(lines, tmp_path / "l.h5").values["loss"], whole.values["loss"])
    cube = lv.grid(obj, dirs, span=(-1, 1), steps=3, progress=False, strategy="loop",
                   store=tmp_path / "g.h5", shard=(1, 4))  # fmt: skip
    assert cube.computed.sum() == 2  # flat indices 1 and 5 of 9


def test_merge_refuses_shards_of_other_settings(tmp_path):
    obj, dirs = _problem()
    paths = _shards(tmp_path, obj, dirs)
    other = tmp_path / "other"
    other.mkdir()
    wide = _shards(other, obj, dirs, span=((-2, 2), (-0.5, 0.5)))
    with pytest.raises(lv.StoreMismatchError, match="span"):
        lv.merge([paths[0], paths[1], wide[2]], tmp_path / "m.h5")
    seeded = tmp_path / "seeded.h5"
    lv.plane(obj, lv.random_directions(obj.model, 2, seed=1), **OPTIONS, store=seeded, shard=(2, 3))
    with pytest.raises(lv.StoreMismatchError, match="direction_fingerprints"):
        lv.merge([paths[0], paths[1], seeded], tmp_path / "m.h5")
    four = tmp_path / "four.h5"
    lv.plane(obj, dirs, **OPTIONS, store=four, shard=(2, 4))
    with pytest.raises(lv.StoreMismatchError, match="shard count"):
        lv.merge([paths[0], paths[1], four], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_merge_names_missing_duplicated_and_incomplete_shards(tmp_path):
    obj, dirs = _problem()
    paths = _shards(tmp_path, obj, dirs)
    with pytest.raises(lv.StoreError, match=r"missing: index 1 \(of 0..2\)"):
        lv.merge([paths[0], paths[2]], tmp_path / "m.h5")
    with pytest.raises(lv.StoreError, match="shard 2/3 is given twice"):
        lv.merge([paths[0], paths[1], paths[2], paths[2]], tmp_path / "m.h5")
    with h5py.File(paths[1], "r+") as f:  # as if the shard had been killed after 2 points
        computed = f["computed"][()]
        computed.reshape(-1)[[4, 7, 10]] = 0
        f["computed"][()] = computed
    with pytest.raises(lv.StoreError, match=r"shard 1/3 \('.*shard1.h5'\) is incomplete: 3 of"):
        lv.merge(paths, tmp_path / "m.h5")
    plain = tmp_path / "plain.h5"
    lv.plane(obj, dirs, **OPTIONS, store=plain)
    with pytest.raises(lv.StoreError, match="not a shard file"):
        lv.merge([plain], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize(
    "shard, message",
    [
        ((3, 3), "out of range"),
        ((-1, 2), "out of range"),
        ((0, 0), "out of range"),
        ("1-2", "i/N"),
        ((0.5, 2), "two integers"),
        ((True, 2), "two integers"),
        ((0, 1, 2), "pair"),
        (2, "pair"),
    ],
)
def test_bad_shards_are_refused_before_any_work(tmp_path, shard, message):
    loss = CountingLoss()
    obj, dirs = _problem(loss)
    with pytest.raises(lv.InputError, match=message):
        lv.plane(obj, dirs, **OPTIONS, store=tmp_path / "s.h5", shard=shard)
    assert loss.calls == 0 and not (tmp_path / "s.h5").exists()


def test_shard_needs_a_store():
    obj, dirs = _problem()
    with pytest.raises(lv.InputError, match="needs store="):
        lv.plane(obj, dirs, **OPTIONS, shard=(0, 2))
    assert parse_shard(" 1 / 4 ", store="x") == (1, 4)
    assert parse_shard(None) is None


def test_cli_shards_and_merge_end_to_end(tmp_path):
    def run(*args, code=0):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code, result.output + repr(result.exception)
        assert "Traceback" not in result.output
        return result.output

    def plane(out, *extra, code=0):
        return run("plane", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
                   "--out", out, "--device", "cpu", "--steps", "5,4", "--strategy", "loop",
                   *extra, code=code)  # fmt: skip

    plane(tmp_path / "s0.h5", "--shard", "0/2", "--quiet")
    output = plane(tmp_path / "s1.h5", "--shard", "1/2")
    assert "shard 1/2" in output and "lossvista merge" in output
    assert not list(tmp_path.glob("*.png"))
    assert lv.load(tmp_path / "s1.h5").computed.sum() == 10
    plane(tmp_path / "whole.h5", "--no-png", "--quiet")

    output = run("merge", tmp_path / "s0.h5", tmp_path / "s1.h5", "--out", tmp_path / "m.h5")
    assert "plane: 5 x 4 points merged from 2 shards" in output and "m.h5" in output
    merged, whole = lv.load(tmp_path / "m.h5"), lv.load(tmp_path / "whole.h5")
    assert np.array_equal(merged.values["loss"], whole.values["loss"])
    assert merged.computed.all() and merged.center == whole.center

    output = run("merge", tmp_path / "s0.h5", "--out", tmp_path / "bad.h5", code=1)
    assert "missing: index 1" in output and "--no-resume" not in output
    output = plane(tmp_path / "x.h5", "--shard", "2/2", code=2)
    assert "out of range" in output
