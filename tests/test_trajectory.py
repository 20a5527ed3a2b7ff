"""Trajectories against oracles: scikit-learn's PCA and trustworthiness, exact plane geometry,
recordings equal to the parameters they saw, files that read back identically."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness
from torch import nn
from torch.nn import functional as F

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_cnn, make_mlp, snapshot
from lossvista.checkpoint import load_checkpoint
from lossvista.cli.trajectory import trajectory as trajectory_command
from lossvista.errors import DirectionError, InputError
from lossvista.trajectory import (
    PCADirections,
    Trajectory,
    TrajectoryRecorder,
    checkpoint_files,
    pca_directions,
    project,
    reduce_trajectory,
    span_covering,
)

sys.path.insert(0, str(Path(__file__).parent))
import cli_models

SHAPES = {"layer.weight": (4, 5), "layer.bias": (4,), "scale": (6,)}  # 30 entries
MODELS = Path(__file__).parent / "cli_models.py"


# -- helpers ------------------------------------------------------------------------------------
def spread_matrix(count: int = 14, seed: int = 0) -> np.ndarray:
    """Snapshots with a clear spectrum: columns scaled from 3 down to 0.1."""
    rng = np.random.default_rng(seed)
    width = sum(int(np.prod(s)) for s in SHAPES.values())
    return rng.normal(size=(count, width)) * np.linspace(3.0, 0.1, width) + rng.normal(size=width)


def as_trajectory(matrix: np.ndarray, **kwargs) -> Trajectory:
    snapshots = []
    for row in matrix:
        offset, snap = 0, {}
        for name, shape in SHAPES.items():
            size = int(np.prod(shape))
            snap[name] = torch.from_numpy(row[offset : offset + size].copy()).reshape(shape)
            offset += size
        snapshots.append(snap)
    return Trajectory(snapshots, **kwargs)


def flat(direction) -> np.ndarray:
    return np.concatenate([direction[n].double().reshape(-1).numpy() for n in SHAPES])


def assert_equal_up_to_sign(ours: np.ndarray, theirs: np.ndarray, atol: float) -> None:
    for a, b in zip(ours, theirs):
        sign = 1.0 if a @ b >= 0 else -1.0
        np.testing.assert_allclose(a, sign * b, atol=atol, rtol=0)


def random_direction(seed: int) -> lv.Direction:
    g = torch.Generator().manual_seed(seed)
    return lv.Direction(
        {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}
    )


def train_steps(model: nn.Module, steps: int, hook=None, lr: float = 0.1) -> list[dict]:
    """SGD on the shared classification data; returns copies of the parameters after each step."""
    X, y = classification_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if hook is not None:
        hook(optimizer)
    seen = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return seen


def assert_snapshots_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- PCA directions -------------------------------------------------------------------------------
def test_pca_with_mean_centre_equals_sklearn():
    M = spread_matrix()
    dirs = pca_directions(as_trajectory(M), 3, center="mean", ignore=())
    reference = PCA(3, svd_solver="full").fit(M)
    ours = np.stack([flat(d) for d in dirs])
    assert_equal_up_to_sign(ours, reference.components_, atol=1e-12)
    np.testing.assert_allclose(
        dirs.explained_variance_ratio_, reference.explained_variance_ratio_, atol=1e-12, rtol=0
    )
    np.testing.assert_allclose(dirs.explained_variance_, reference.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(dirs.singular_values_, reference.singular_values_, rtol=1e-10)
    # sign convention: the largest-magnitude entry of every direction is positive
    assert all(row[np.abs(row).argmax()] > 0 for row in ours)
    np.testing.assert_allclose(flat(dirs.origin), M.mean(axis=0), rtol=0, atol=1e-12)


def test_pca_with_final_centre_is_the_pca_of_the_symmetrised_matrix():
    """Relative to the last snapshot: the principal axes of [A; -A] (zero mean), A = M - m_P."""
    M = spread_matrix()
    A = M - M[-1]
    dirs = pca_directions(as_trajectory(M), 2, center="final", ignore=())
    reference = PCA(2, svd_solver="full").fit(np.vstack([A, -A]))
    assert_equal_up_to_sign(np.stack([flat(d) for d in dirs]), reference.components_, atol=1e-12)
    np.testing.assert_allclose(
        dirs.explained_variance_ratio_, reference.explained_variance_ratio_, atol=1e-12, rtol=0
    )
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(dirs.singular_values_, s[:2], rtol=1e-10)
    np.testing.assert_allclose(dirs.explained_variance_, s[:2] ** 2 / (len(M) - 1), rtol=1e-10)
    np.testing.assert_allclose(
        dirs.explained_variance_ratio_, s[:2] ** 2 / np.sum(s**2), rtol=1e-10
    )
    np.testing.assert_array_equal(flat(dirs.origin), M[-1])


def test_pca_ignores_biases_and_norm_parameters():
    M = spread_matrix()
    dirs = pca_directions(as_trajectory(M), 2, center="mean")  # default ignore: bias, bn
    # A bare mapping has no layer types: "bn" means 1-D tensors that are not biases ("scale").
    for d in dirs:
        assert not d["layer.bias"].any() and not d["scale"].any()
    reference = PCA(2, svd_solver="full").fit(M[:, :20])
    assert_equal_up_to_sign(
        np.stack([flat(d)[:20] for d in dirs]), reference.components_, atol=1e-12
    )
    np.testing.assert_allclose(
        dirs.explained_variance_ratio_, reference.explained_variance_ratio_, atol=1e-12, rtol=0
    )
    # with known normalisation layers, "bn" means exactly those
    known = pca_directions(as_trajectory(M, norm_names={"layer.weight"}), 2, ignore=("bn",))
    assert all(not d["layer.weight"].any() and d["scale"].any() for d in known)


def test_pca_directions_are_orthonormal_and_described():
    dirs = pca_directions(as_trajectory(spread_matrix()), 2, ignore=())
    assert isinstance(dirs, PCADirections) and isinstance(dirs, tuple) and len(dirs) == 2
    gram = np.array([[a.dot(b) for b in dirs] for a in dirs])
    np.testing.assert_allclose(gram, np.eye(2), atol=1e-12)
    ratio = dirs.explained_variance_ratio_
    assert dirs.axis_labels == (f"PC1 ({100 * ratio[0]:.1f}%)", f"PC2 ({100 * ratio[1]:.1f}%)")
    assert dirs[0].meta["kind"] == "pca" and dirs[0].meta["center"] == "final"
    assert dirs[1].meta["explained_variance_ratio"] == pytest.approx(ratio[1])
    assert "PC1" in repr(dirs)


def test_pca_refuses_too_few_or_degenerate_snapshots():
    M = spread_matrix(count=2)
    with pytest.raises(DirectionError, match="at least 3"):
        pca_directions(as_trajectory(M), 2)
    line = np.outer(np.arange(5.0), spread_matrix(count=1)[0])  # collinear snapshots
    with pytest.raises(DirectionError, match="span only 1 dimension"):
        pca_directions(as_trajectory(line), 2, ignore=())
    with pytest.raises(DirectionError, match="leaves no parameter"):
        pca_directions(as_trajectory(spread_matrix()), 2, ignore=("*",))
    with pytest.raises(InputError, match="center"):
        pca_directions(as_trajectory(spread_matrix()), 2, center="first")


# -- projection -----------------------------------------------------------------------------------
def test_projection_recovers_in_plane_coordinates_with_oblique_directions():
    origin = random_direction(0)
    d1 = random_direction(1)
    d2 = d1 * 0.8 + random_direction(2) * 0.3  # far from orthogonal
    rng = np.random.default_rng(3)
    coefficients = rng.normal(size=(9, 2)) * 2.0
    snapshots = [{n: origin[n] + a * d1[n] + b * d2[n] for n in SHAPES} for a, b in coefficients]
    result = project(Trajectory(snapshots, range(0, 90, 10)), (d1, d2), origin=origin)
    np.testing.assert_allclose(result.coordinates, coefficients, rtol=0, atol=1e-10)
    assert np.all(result.residual_norm < 1e-10)
    np.testing.assert_array_equal(result.steps, np.arange(0, 90, 10))
    assert result.axis_labels == ("direction 1", "direction 2")

    # Off the plane: the coordinates stay, the residual is the offset's length.
    basis = np.stack([flat(d1), flat(d2)])
    offset = rng.normal(size=basis.shape[1])
    offset -= basis.T @ np.linalg.solve(basis @ basis.T, basis @ offset)  # orthogonal to the plane
    away = as_trajectory(np.stack([flat(s) for s in snapshots]) + offset)
    moved = project(away, (d1, d2), origin=origin)
    np.testing.assert_allclose(moved.coordinates, coefficients, rtol=0, atol=1e-10)
    np.testing.assert_allclose(moved.residual_norm, np.linalg.norm(offset), rtol=1e-10)


def test_pca_plane_of_a_planar_trajectory_is_exact_and_isometric():
    origin, d1, d2 = random_direction(4), random_direction(5), random_direction(6)
    coefficients = np.random.default_rng(7).normal(size=(8, 2))
    snapshots = [{n: origin[n] + a * d1[n] + b * d2[n] for n in SHAPES} for a, b in coefficients]
    traj = Trajectory(snapshots)
    dirs = pca_directions(traj, 2, ignore=())
    result = project(traj, dirs)  # default origin: the final snapshot
    assert np.all(result.residual_norm < 1e-10)
    np.testing.assert_allclose(result.coordinates[-1], 0.0, atol=1e-12)
    assert dirs.explained_variance_ratio_.sum() == pytest.approx(1.0, abs=1e-12)
    M = traj.matrix(SHAPES)
    true = np.linalg.norm(M[:, None] - M[None], axis=-1)
    seen = np.linalg.norm(result.coordinates[:, None] - result.coordinates[None], axis=-1)
    np.testing.assert_allclose(seen, true, rtol=0, atol=1e-10)
    assert result.axis_labels == dirs.axis_labels


def test_projection_refuses_dependent_or_foreign_directions():
    traj = as_trajectory(spread_matrix())
    d = random_direction(1)
    with pytest.raises(DirectionError, match="linearly dependent"):
        project(traj, (d, d * 2.0))
    with pytest.raises(DirectionError, match="lacks"):
        project(traj, (lv.Direction({**d, "other": torch.ones(3)}),))
    # zero entries on parameters the trajectory lacks (left out of a recording) are fine
    padded = [lv.Direction({**x, "other": torch.zeros(3)}) for x in (d, random_direction(2))]
    result = project(traj, padded)
    np.testing.assert_array_equal(
        result.coordinates, project(traj, (d, random_direction(2))).coordinates
    )


def test_span_covering_holds_the_path_and_the_origin_with_a_margin():
    points = np.array([[1.0, -0.5], [3.0, 0.5], [2.0, 0.25]])
    (x_lo, x_hi), (y_lo, y_hi) = span_covering(points, margin=0.1)
    assert (x_lo, x_hi) == pytest.approx((-0.3, 3.3))  # extent [0, 3] (the origin counts)
    assert (y_lo, y_hi) == pytest.approx((-0.6, 0.6))
    flat_axis = span_covering(np.array([[1.0, 0.0], [2.0, 0.0]]), margin=0.0)
    assert flat_axis[1][0] < 0.0 < flat_axis[1][1]  # an axis with no extent still gets one
    with pytest.raises(InputError):
        span_covering(np.zeros((0, 2)))


# -- reductions -----------------------------------------------------------------------------------
def test_pca_reduction_equals_sklearn_embedding_reconstruction_and_trustworthiness():
    M = spread_matrix(count=16)
    result = reduce_trajectory(as_trajectory(M), "pca", 2, ignore=())
    reference = PCA(2, svd_solver="full").fit(M)
    scores = reference.transform(M)
    assert_equal_up_to_sign(result.embedding.T, scores.T, atol=1e-10)
    rebuilt = reference.inverse_transform(scores)
    assert result.reconstruction_error == pytest.approx(np.mean((M - rebuilt) ** 2), rel=1e-10)
    assert result.trustworthiness == pytest.approx(
        trustworthiness(M, result.embedding, n_neighbors=5), abs=1e-12
    )
    np.testing.assert_allclose(
        result.explained_variance_ratio_, reference.explained_variance_ratio_, atol=1e-12
    )
    # the same numbers as projecting on the mean-centred PCA directions
    dirs = pca_directions(as_trajectory(M), 2, center="mean", ignore=())
    np.testing.assert_allclose(
        project(as_trajectory(M), dirs).coordinates, result.embedding, atol=1e-10
    )


@pytest.mark.parametrize("count", [3, 7, 12])
def test_trustworthiness_equals_sklearn_with_capped_neighbourhood(count):
    M = spread_matrix(count=count, seed=count)
    result = reduce_trajectory(as_trajectory(M), "pca", 2, ignore=())
    k = min(5, (count - 1) // 2)  # sklearn needs n_neighbors < P / 2
    assert result.n_neighbors == k
    assert result.trustworthiness == pytest.approx(
        trustworthiness(M, result.embedding, n_neighbors=k), abs=1e-12
    )


def test_autoencoder_is_seeded_and_reconstructs_a_planar_trajectory():
    origin, d1, d2 = random_direction(8), random_direction(9), random_direction(10)
    t = np.linspace(0.0, 1.0, 12)
    coefficients = np.stack([np.cos(3 * t), np.sin(3 * t) * t], axis=1)
    traj = Trajectory(
        [{n: origin[n] + a * d1[n] + b * d2[n] for n in SHAPES} for a, b in coefficients]
    )
    options = {"epochs": 600}
    first = reduce_trajectory(traj, "autoencoder", 2, seed=1, ignore=(), options=options)
    again = reduce_trajectory(traj, "autoencoder", 2, seed=1, ignore=(), options=options)
    other = reduce_trajectory(traj, "autoencoder", 2, seed=2, ignore=(), options={"epochs": 10})
    np.testing.assert_array_equal(first.embedding, again.embedding)
    assert not np.allclose(first.embedding, other.embedding)
    M = traj.matrix()
    spread = np.mean((M - M.mean(axis=0)) ** 2)
    assert first.reconstruction_error < 1e-3 * spread
    assert first.method == "autoencoder" and first.seed == 1
    assert first.settings["options"] == {"hidden": 64, "epochs": 600, "lr": 1e-2}


def test_umap_is_optional_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # "not installed"
    with pytest.raises(ImportError, match="pip install umap-learn"):
        reduce_trajectory(as_trajectory(spread_matrix()), "umap")


def test_umap_receives_the_span_coordinates_and_the_seed(monkeypatch):
    calls = {}

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.update(kwargs)

        def fit_transform(self, X):
            calls["X"] = X
            return X[:, :2] * 3.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    M = spread_matrix(count=10)
    result = reduce_trajectory(
        as_trajectory(M), "umap", seed=4, ignore=(), options={"min_dist": 0.5}
    )
    assert calls["n_components"] == 2 and calls["random_state"] == 4 and calls["n_neighbors"] == 9
    assert calls["min_dist"] == 0.5
    # the span coordinates are an isometry of the snapshots: same pairwise distances
    X = calls["X"]
    np.testing.assert_allclose(
        np.linalg.norm(X[:, None] - X[None], axis=-1),
        np.linalg.norm(M[:, None] - M[None], axis=-1),
        atol=1e-10,
    )
    assert result.reconstruction_error is None
    assert result.trustworthiness == pytest.approx(
        trustworthiness(M, result.embedding, n_neighbors=4), abs=1e-12
    )


def test_reduce_validates_its_arguments():
    traj = as_trajectory(spread_matrix())
    with pytest.raises(InputError, match="method"):
        reduce_trajectory(traj, "tsne")
    with pytest.raises(InputError, match="unknown autoencoder options"):
        reduce_trajectory(traj, "autoencoder", options={"width": 3})
    same = as_trajectory(np.repeat(spread_matrix(count=1), 4, axis=0))
    with pytest.raises(DirectionError, match="span only 0"):
        reduce_trajectory(same, "autoencoder")


def test_embedding_plot_shows_the_path_coloured_by_step():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = reduce_trajectory(as_trajectory(spread_matrix()), "pca", ignore=())
    figure = result.plot()
    ax = figure.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_xydata(), result.embedding)
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    np.testing.assert_array_equal(ax.collections[0].get_array(), result.steps)
    plt.close(figure)


# -- recording ------------------------------------------------------------------------------------
def test_recorder_hook_takes_every_kth_step_and_the_final_one():
    model = make_mlp()
    with TrajectoryRecorder(model, every=2) as recorder:
        seen = train_steps(model, 5, hook=recorder.hook)
    traj = recorder.trajectory
    np.testing.assert_array_equal(traj.steps, [0, 2, 4, 5])  # 5: added on leaving the block
    for snap, step in zip(traj, traj.steps):
        assert_snapshots_equal(snap, seen[step])
    # leaving the block removed the hook
    train_steps(model, 1)
    assert len(recorder.trajectory) == 4


def test_recorder_never_changes_the_model_and_keeps_copies():
    model = make_cnn()
    before = snapshot(model)
    recorder = TrajectoryRecorder(model, params="0.*")
    assert recorder.record(step=7) and recorder.trajectory.names == ("0.weight", "0.bias")
    assert_unchanged(model, before)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(recorder.trajectory[0]["0.weight"], before["params"]["0.weight"])
    assert recorder.finish(step=8)  # the model moved: a new snapshot
    assert recorder.finish() is False  # nothing moved since
    np.testing.assert_array_equal(recorder.trajectory.steps, [7, 8])
    # normalisation layers are known by type
    assert TrajectoryRecorder(model).trajectory.norm_names == {
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
    }


def test_recording_to_a_file_reads_back_as_recorded(tmp_path):
    model = make_mlp()
    store = tmp_path / "run.h5"
    with TrajectoryRecorder(model, store=store) as on_disk:
        in_memory = TrajectoryRecorder(model)
        for _ in range(4):
            on_disk.record()
            in_memory.record()
            train_steps(model, 1)
    assert on_disk.trajectory.path == store and in_memory.trajectory.path is None
    loaded = Trajectory.load(store)
    assert len(loaded) == 5 and len(in_memory.trajectory) == 4  # the file got the final state
    for a, b in zip(in_memory.trajectory, loaded):
        assert_snapshots_equal(a, b)
    np.testing.assert_array_equal(loaded.matrix(), on_disk.trajectory.matrix())
    assert loaded.meta["source"] == "recorder"
    with h5py.File(store) as f:  # the documented layout
        assert f.attrs["format"] == "lossvista-trajectory" and f.attrs["format_version"] == 1
        assert f["steps"][()].tolist() == [0, 1, 2, 3, 4]
        assert f["params/0.weight"].shape == (5, 16, 8)
        assert f["params/0.weight"].attrs["dtype"] == "torch.float64"


def test_save_and_load_round_trip_keeps_everything(tmp_path):
    traj = as_trajectory(spread_matrix(count=5), norm_names={"scale"}, meta={"note": "x"})
    traj = Trajectory([*traj], [3, 5, 8, 13, 21], norm_names=traj.norm_names, meta=traj.meta)
    loaded = Trajectory.load(traj.save(tmp_path / "t.h5"))
    np.testing.assert_array_equal(loaded.steps, [3, 5, 8, 13, 21])
    np.testing.assert_array_equal(loaded.matrix(), traj.matrix())
    assert (
        loaded.names == traj.names
        and loaded.norm_names == {"scale"}
        and loaded.meta == {"note": "x"}
    )
    assert len(loaded[1:3]) == 2 and loaded[1:3].path is None
    assert_snapshots_equal(loaded[-1], traj[4])
    with pytest.raises(IndexError):
        loaded[5]


def test_bfloat16_snapshots_survive_a_file(tmp_path):
    traj = Trajectory([{"w": torch.arange(4.0).to(torch.bfloat16)}])
    loaded = Trajectory.load(traj.save(tmp_path / "b.h5"))
    assert loaded[0]["w"].dtype == torch.bfloat16 and torch.equal(loaded[0]["w"], traj[0]["w"])


def test_snapshots_must_share_names_and_shapes():
    traj = Trajectory([{"a": torch.zeros(2)}])
    with pytest.raises(InputError, match="names differ"):
        traj.append({"b": torch.zeros(2)})
    two = Trajectory([{"a": torch.zeros(2), "b": torch.ones(1)}])
    two.append({"b": torch.ones(1) * 2, "a": torch.ones(2)})  # another key order is fine
    assert list(two[1]) == ["a", "b"] and two[1]["b"].item() == 2.0
    with pytest.raises(InputError, match="shapes differ"):
        traj.append({"a": torch.zeros(3)})
    with pytest.raises(InputError, match="steps"):
        Trajectory([{"a": torch.zeros(2)}], steps=[1, 2])


# -- checkpoints ----------------------------------------------------------------------------------
def test_from_checkpoints_sorts_naturally_and_follows_the_model(tmp_path):
    model = cli_models.make_model()
    states = []
    for step in (10, 2, 1):  # written out of order
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        states.append((step, {n: t.clone() for n, t in model.state_dict().items()}))
        # a DataParallel-style prefix: only a model can tell it apart
        torch.save(
            {f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / f"ckpt_{step}.pt"
        )
    assert [p.name for p in checkpoint_files(tmp_path / "ckpt_*.pt")] == [
        "ckpt_1.pt",
        "ckpt_2.pt",
        "ckpt_10.pt",
    ]
    target = cli_models.make_model()
    before = snapshot(target)
    traj = Trajectory.from_checkpoints(str(tmp_path / "ckpt_*.pt"), model=target)
    assert_unchanged(target, before)
    np.testing.assert_array_equal(traj.steps, [1, 2, 10])
    expected = dict(states)
    for snap, step in zip(traj, traj.steps):
        assert_snapshots_equal(
            snap, {n: expected[int(step)][n] for n, _ in target.named_parameters()}
        )
    bare = Trajectory.from_checkpoints(tmp_path / "ckpt_*.pt")
    assert bare.names[0].startswith("module.") and bare.norm_names is None
    assert bare.meta["files"][0].endswith("ckpt_1.pt")
    with pytest.raises(InputError, match="matches no file"):
        Trajectory.from_checkpoints(tmp_path / "none_*.pt")


# -- with the rest of lossvista -------------------------------------------------------------------
def test_pca_plane_around_the_final_model_holds_the_path():
    model = make_mlp()
    X, y = classification_data()
    recorder = TrajectoryRecorder(model)
    train_steps(model, 12, hook=recorder.hook, lr=0.3)
    dirs = pca_directions(recorder.trajectory, 2)
    objective = lv.Objective(model, F.cross_entropy, (X, y))
    path = project(recorder.trajectory, dirs, origin=objective.parameters())
    np.testing.assert_allclose(path.coordinates[-1], 0.0, atol=1e-12)  # the model is the origin
    span = span_covering(path)
    surface = lv.plane(objective, dirs, span=span, steps=(5, 4), progress=False)
    assert surface.center_check["ok"]
    for axis, (lo, hi) in zip(range(2), span):
        assert lo <= path.coordinates[:, axis].min() and path.coordinates[:, axis].max() <= hi

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = surface.plot(path=path)
    drawn = [line for line in figure.axes[0].get_lines() if line.get_label() == "path"]
    np.testing.assert_allclose(drawn[0].get_xydata(), path.coordinates)
    plt.close(figure)


# -- command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    model = cli_models.make_model()
    X, y = cli_models.make_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 13):  # ckpt_1 .. ckpt_12: a plain sort would put 10 before 2
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        torch.save(model.state_dict(), folder / f"ckpt_{step}.pt")
    return folder


def invoke(folder: Path, *extra: object):
    args = [
        "--checkpoints", str(folder / "ckpt_*.pt"),
        "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
        "--device", "cpu", "--steps", "5", *map(str, extra),
    ]  # fmt: skip
    return CliRunner().invoke(trajectory_command, args)


def test_cli_draws_the_pca_plane_with_the_path(checkpoint_run, tmp_path):
    out = tmp_path / "traj.h5"
    result = invoke(checkpoint_run, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = [checkpoint_run / f"ckpt_{i}.pt" for i in range(1, 13)]
    final = load_checkpoint(cli_models.make_model(), files[-1])
    expected = Trajectory.from_checkpoints(files, model=final)
    dirs = pca_directions(expected, 2)
    path = project(expected, dirs, origin=dict(final.named_parameters()))

    with (tmp_path / "traj_path.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    np.testing.assert_allclose(got, path.coordinates, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        [float(r["distance_from_plane"]) for r in rows], path.residual_norm, rtol=1e-12
    )

    surface = lv.load(out)
    assert surface.axis_labels == dirs.axis_labels
    objective = lv.Objective(final, F.cross_entropy, cli_models.make_data())
    assert surface.center["loss"] == pytest.approx(objective.loss(), rel=1e-6)
    for stored, direction in zip(surface.directions, dirs):
        for name in direction:
            torch.testing.assert_close(stored[name], direction[name], rtol=0, atol=0)
    covering = span_covering(path)
    np.testing.assert_allclose([[c[0], c[-1]] for c in surface.coords], covering, rtol=1e-12)
    assert (tmp_path / "traj_contour.png").is_file()
    assert "PC1 (" in result.output and str(tmp_path / "traj_path.csv") in result.output


def test_cli_refuses_missing_or_too_few_checkpoints(checkpoint_run, tmp_path):
    result = invoke(checkpoint_run.parent / "nowhere", "--out", tmp_path / "a.h5")
    assert result.exit_code == 2 and "matches no file" in result.output
    args = [
        "--checkpoints",
        str(checkpoint_run / "ckpt_1.pt"),
        "--checkpoints",
        str(checkpoint_run / "ckpt_2.pt"),
    ]
    result = CliRunner().invoke(
        trajectory_command,
        [
            *args,
            "--model",
            f"{MODELS}:make_model",
            "--data",
            f"{MODELS}:make_data",
            "--out",
            str(tmp_path / "b.h5"),
        ],
    )
    assert result.exit_code == 2 and "at least 3" in result.output
    assert "Traceback" not in result.output


def test_plane_with_a_trajectory_overlays_its_exact_projection(tmp_path):
    """lv.plane(trajectory=...) projects the path, covers it, labels the axes and stores it."""
    import lossvista as lv

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (30,))
    recorder = lv.TrajectoryRecorder(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(12):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        optimizer.step()
        recorder.record(step=step)
    trajectory = recorder.trajectory
    obj = lv.Objective(model, nn.functional.cross_entropy, (X, y))
    dirs = lv.pca_directions(trajectory, 2)
    surf = lv.plane(
        obj, dirs, steps=(7, 6), trajectory=trajectory, store=tmp_path / "p.h5", progress=False
    )
    expected = lv.project(trajectory, dirs, origin=obj.parameters()).coordinates
    np.testing.assert_allclose(surf.trajectory, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(surf.trajectory[-1], 0.0, atol=1e-12)  # centred on the end
    for axis in range(2):
        lo, hi = surf.coords[axis][0], surf.coords[axis][-1]
        assert lo < expected[:, axis].min() and hi > expected[:, axis].max()
    assert surf.axis_labels == dirs.axis_labels and surf.axis_labels[0].startswith("PC1")
    loaded = lv.load(tmp_path / "p.h5")
    np.testing.assert_array_equal(loaded.trajectory, surf.trajectory)
    figure = surf.plot()
    drawn = [line for line in figure.axes[0].lines if len(line.get_xdata()) == len(expected)]
    assert drawn and np.allclose(drawn[0].get_xdata(), expected[:, 0])


def test_cli_writes_trajectory_h5_when_no_out_is_given(checkpoint_run, tmp_path, monkeypatch):
    """The issue's spelling `lossvista trajectory --checkpoints ... --model ... --data ...`."""
    monkeypatch.chdir(tmp_path)
    result = invoke(checkpoint_run, "--no-png")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert lv.load(tmp_path / "trajectory.h5").trajectory.shape == (12, 2)
    assert (tmp_path / "trajectory_path.csv").is_file()
