"""Every curvature result follows the result protocol; its plot draws its data; the renamed
Hessian-vector backend keywords keep their old names; ``tol=None`` is the documented dtype value."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import classification_data, quadratic_problem
from lossvista import curvature as cv
from lossvista._functional import functional
from lossvista._result import Result
from lossvista.curvature import (
    CriticalPoint,
    EigenResult,
    HessianSummary,
    HvpChoice,
    SpectralDensity,
    TraceEstimate,
)
from lossvista.errors import InputError
from protocol import check_protocol

from .test_dense import tanh_mlp

F = nn.functional
FD = "finite_difference"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def saddle():
    """An indefinite quadratic (eigenvalues -+ linspace(0.5, 4, 8)) at its stationary point."""
    model, quad, data = quadratic_problem(n=8, indefinite=True)
    with torch.no_grad():
        model.theta.copy_(quad.theta_star)
    return lv.Objective(model, quad, data), np.linalg.eigvalsh(quad.A.numpy())


@pytest.fixture
def mlp():
    return lv.Objective(tanh_mlp(), F.cross_entropy, classification_data(n=30))


def g6(value: float) -> str:
    """How the notebook table writes a float."""
    return f"{value:.6g}"


# -- the protocol, kind by kind -------------------------------------------------------------------
def test_eigen_result_saves_its_vectors_and_shows_its_eigenvalues(saddle, tmp_path):
    obj, eig = saddle
    result = cv.hessian_eigs(obj, 2, which="both", tol=1e-10)
    np.testing.assert_allclose(result.values, [eig[-1], eig[-2], eig[0], eig[1]], rtol=1e-9)
    numbers = [g6(v) for v in result.values] + ["4/4", g6(result.tol)]
    loaded = check_protocol(result, tmp_path, numbers=numbers, name="eigs.h5")
    for mine, theirs in zip(result.vectors, loaded.vectors, strict=True):
        assert theirs.meta == mine.meta and list(theirs) == list(mine)
        torch.testing.assert_close(theirs["theta"], mine["theta"], rtol=0, atol=0)
    assert loaded.converged.dtype == bool and loaded.all_converged
    np.testing.assert_array_equal(loaded.smallest, result.smallest)
    summary = result.as_dict()
    assert "vectors" not in summary  # the summary stays small; save keeps the vectors
    assert set(summary) == {
        "values", "residuals", "converged", "n_hvp", "spectral_norm", "iterations", "restarts",
        "which", "k", "tol", "seed", "settings",
    }  # fmt: skip
    assert summary["settings"]["hvp_backend"] in ("double_backward", "forward_over_reverse")
    assert repr(result).startswith("EigenResult(largest='[")


def test_a_float32_eigen_result_comes_back_in_float32(tmp_path):
    data = classification_data(n=30, dtype=torch.float32)
    obj = lv.Objective(tanh_mlp().float(), F.cross_entropy, data)
    result = cv.hessian_eigs(obj, 1)
    loaded = check_protocol(result, tmp_path, numbers=[g6(result.values[0])])
    assert loaded.vectors[0]["0.weight"].dtype == torch.float32


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_estimate_shows_estimate_and_stderr(saddle, tmp_path, method):
    obj, eig = saddle
    result = cv.hessian_trace(obj, method=method, n_probes=12, seed=3)
    assert result.interval(4)[0] < eig.sum() < result.interval(4)[1]
    numbers = [method, g6(result.estimate), g6(result.stderr), str(result.n_hvp)]
    loaded = check_protocol(result, tmp_path, numbers=numbers, name="trace.json")
    assert loaded.samples.dtype == np.float64 and loaded.deflated == result.deflated
    assert result.as_dict()["method"] == method  # the keys the command line reads


def test_an_exact_hutch_plus_plus_estimate_has_no_samples_and_still_round_trips(tmp_path):
    model, quad, data = quadratic_problem(n=4)
    result = cv.hessian_trace(lv.Objective(model, quad, data), method="hutch++", n_probes=12)
    assert len(result.samples) == 0 and result.stderr == 0.0
    assert result.estimate == pytest.approx(float(torch.trace(quad.A)), rel=1e-12)
    check_protocol(result, tmp_path, numbers=[g6(result.estimate)])
    ax = result.plot().axes[0]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [result.estimate]  # no curve
    assert any("exact" in text.get_text() for text in ax.texts)


def test_spectral_density_shows_support_and_negative_mass(saddle, tmp_path):
    obj, eig = saddle
    result = cv.hessian_density(obj, n_runs=20, n_steps=8, seed=1)
    support = f"[{g6(result.nodes.min())}, {g6(result.nodes.max())}]"
    numbers = [support, g6(result.negative_mass), g6(result.size * result.moment(1))]
    loaded = check_protocol(result, tmp_path, numbers=numbers, name="density.h5")
    np.testing.assert_array_equal(loaded.density, result.density)
    # The "trace" row, P * mean node, is P v^T H v averaged over the unit start vectors: a
    # Hutchinson estimate, whose variance for Rademacher probes is 2 sum_{i != j} H_ij^2.
    H = cv.hessian_dense(obj).numpy()
    spread = np.sqrt(2 * (np.sum(H**2) - np.sum(np.diag(H) ** 2)) / result.n_runs)
    assert abs(result.size * result.moment(1) - eig.sum()) < 4 * spread
    assert set(result.as_dict()) >= {"nodes", "weights", "runs", "negative_mass", "n_runs"}


@pytest.mark.parametrize("with_density", [False, True])
def test_critical_point_round_trips_the_results_it_holds(saddle, tmp_path, with_density):
    obj, eig = saddle
    point = cv.critical_point(obj, density=with_density, n_runs=4, n_steps=8)
    assert point.kind == "saddle" and point.lambda_min == pytest.approx(eig[0], rel=1e-9)
    numbers = ["saddle", g6(point.lambda_max), g6(point.lambda_min), g6(point.threshold)]
    if with_density:
        numbers.append(g6(point.negative_mass))
    loaded = check_protocol(point, tmp_path, numbers=numbers, name="point.h5")
    assert loaded.kind == "saddle"
    assert isinstance(loaded.eigs, EigenResult) and loaded.eigs == point.eigs
    if with_density:
        assert isinstance(loaded.density, SpectralDensity) and loaded.density == point.density
    else:
        assert loaded.density is None
    with h5py.File(tmp_path / "point.h5", "r") as f:
        assert f.attrs["kind"] == "critical_point"  # the result's tag, not the verdict
    summary = point.as_dict()  # what `lossvista hessian` writes
    assert summary["kind"] == "saddle" and "vectors" not in summary["eigs"]
    assert (summary["density"] is None) != with_density
    assert repr(point).startswith("CriticalPoint(saddle: ")


def test_hvp_choice_shows_the_fastest_backend(mlp, tmp_path):
    choice = cv.hvp_choice(mlp)
    assert isinstance(choice, HvpChoice)
    ms = 1e3 * choice.seconds[choice.fastest]
    loaded = check_protocol(choice, tmp_path, numbers=[choice.fastest, g6(ms)])
    assert loaded.working == choice.working and isinstance(loaded.working, tuple)
    assert choice.as_dict()["fastest"] == choice.fastest


def test_every_curvature_result_kind_is_covered():
    covered = {
        EigenResult,
        TraceEstimate,
        SpectralDensity,
        CriticalPoint,
        HvpChoice,
        HessianSummary,
    }
    results = {c for c in vars(cv).values() if isinstance(c, type) and issubclass(c, Result)}
    assert results == covered


# -- plots: the data they draw ----------------------------------------------------------------------
def test_eigenvalue_plot_draws_each_value_with_its_residual_bar(mlp):
    with pytest.warns(lv.ConvergenceWarning):
        result = cv.hessian_eigs(mlp, 2, which="both", max_iter=6)  # some pairs unconverged
    figure, ax = plt.subplots()
    assert result.plot(ax=ax) is figure
    drawn = {}
    for container in ax.containers:  # one errorbar per group: converged, not converged
        line, _, (bars,) = container
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
            drawn[int(x)] = (y, line.get_markerfacecolor())
        for x, segment in zip(line.get_xdata(), bars.get_segments(), strict=True):
            half = abs(segment[1][1] - segment[0][1]) / 2
            assert half == pytest.approx(result.residuals[int(x)])
    assert sorted(drawn) == [0, 1, 2, 3]
    np.testing.assert_allclose([drawn[i][0] for i in range(4)], result.values)
    hollow = [drawn[i][1] == "none" for i in range(4)]
    assert hollow == list(~result.converged) and any(hollow)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["max 1", "max 2", "min 1", "min 2"]


def test_density_plot_draws_the_smoothed_density_on_the_given_axes(saddle):
    obj, _ = saddle
    density = cv.hessian_density(obj, n_runs=10, n_steps=8)
    figure, ax = plt.subplots()
    assert density.plot(ax=ax) is figure and ax.get_yscale() == "linear"
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), density.grid)
    np.testing.assert_allclose(line.get_ydata(), density.density)
    (shaded,) = ax.collections  # the negative eigenvalues
    assert shaded.get_paths()[0].vertices[:, 0].max() <= 0.0
    assert ax.get_xlabel() == "eigenvalue"


def test_trace_plot_draws_the_running_estimate_and_its_band(saddle):
    obj, _ = saddle
    result = cv.hessian_trace(obj, n_probes=20, seed=5)
    running, stderr = result.running()
    expected = [np.std(result.samples[:k], ddof=1) / np.sqrt(k) for k in range(2, 21)]
    np.testing.assert_allclose(stderr[1:], expected, rtol=1e-10)
    assert running[-1] == pytest.approx(result.estimate) and stderr[-1] == pytest.approx(
        result.stderr
    )
    ax = result.plot().axes[0]
    final, curve = ax.get_lines()
    assert set(final.get_ydata()) == {result.estimate}
    np.testing.assert_allclose(curve.get_xdata(), np.arange(1, 21))
    np.testing.assert_allclose(curve.get_ydata(), np.cumsum(result.samples) / np.arange(1, 21))
    (band,) = ax.collections
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(float(np.max(running + 2 * stderr)))


def test_hutch_plus_plus_running_estimate_starts_from_the_exact_part(saddle):
    obj, _ = saddle
    result = cv.hessian_trace(obj, method="hutch++", n_probes=9, seed=2)  # 3 sketch, 3 rest
    running, _ = result.running()
    np.testing.assert_allclose(running, result.deflated + np.cumsum(result.samples) / [1, 2, 3])


def test_critical_point_plot_shades_the_flat_band(saddle):
    obj, _ = saddle
    point = cv.critical_point(obj)
    ax = point.plot().axes[0]
    (band,) = [p for p in ax.patches if p.get_label().startswith("flat")]
    ys = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]  # data units
    assert ys.min() == pytest.approx(-point.threshold) and ys.max() == pytest.approx(
        point.threshold
    )
    assert ax.get_title().startswith("saddle: ")
    (container,) = ax.containers
    np.testing.assert_allclose(container[0].get_ydata(), point.eigs.values)


# -- renamed keywords ---------------------------------------------------------------------------------
def _quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


def _old(call, old):
    with pytest.warns(DeprecationWarning, match=rf"{old}= is deprecated; use \w+= instead"):
        return call()


def test_old_backend_keywords_warn_and_give_the_same_results(saddle):
    obj, _ = saddle
    v = {"theta": torch.linspace(-1, 1, 8, dtype=torch.float64)}
    new = _quiet(lambda: cv.hvp(obj, v, backend="forward_over_reverse"))
    old = _old(lambda: cv.hvp(obj, v, method="forward_over_reverse"), "method")
    torch.testing.assert_close(old["theta"], new["theta"], rtol=0, atol=0)
    assert old.meta == new.meta == {"kind": "hvp", "backend": "forward_over_reverse"}

    fd = FD  # not the "auto" default, so a lost keyword would show
    pairs = {
        "hessian_eigs": lambda **kw: cv.hessian_eigs(obj, 2, which="both", tol=1e-8, **kw),
        "hessian_trace": lambda **kw: cv.hessian_trace(obj, n_probes=6, **kw),
        "hessian_density": lambda **kw: cv.hessian_density(obj, n_runs=2, n_steps=4, **kw),
        "critical_point": lambda **kw: cv.critical_point(obj, **kw),
        "hessian_dense": lambda **kw: cv.hessian_dense(obj, **kw),
    }
    for name, call in pairs.items():
        new = _quiet(lambda call=call: call(hvp_backend=fd))
        old = _old(lambda call=call: call(hvp_method=fd), "hvp_method")
        if isinstance(new, torch.Tensor):
            torch.testing.assert_close(old, new, rtol=0, atol=0)
        else:
            assert old == new, name
            assert new.settings["hvp_backend"] == fd, name
        with pytest.raises(InputError, match="pass only hvp_backend="):
            call(hvp_backend=fd, hvp_method=fd)
    new = _quiet(lambda: cv.hessian_directions(obj, 1, hvp_backend=fd))
    old = _old(lambda: cv.hessian_directions(obj, 1, hvp_method=fd), "hvp_method")
    torch.testing.assert_close(old[0]["theta"], new[0]["theta"], rtol=0, atol=0)


def test_the_operator_takes_backend_and_still_understands_method(saddle):
    obj, _ = saddle
    with _old(lambda: cv.HessianOperator(obj, method="double_backward"), "method") as op:
        assert op.backend == "double_backward"
        with pytest.warns(DeprecationWarning, match="use HessianOperator.backend"):
            assert op.method == "double_backward"
    with pytest.raises(InputError, match="pass only backend="):
        cv.HessianOperator(obj, backend="auto", method="auto")
    with functional(obj) as view:  # how curvature_map builds one operator per grid point
        params = view.params()
        op = _old(lambda: cv.HessianOperator.at(obj, view, params, method=FD), "method")
        assert op.backend == FD
        op.release()
        op = _quiet(lambda: cv.HessianOperator.at(obj, view, params, backend=FD))
        assert op.settings()["hvp_backend"] == FD
        op.release()


# -- the dtype default of the eigensolver tolerance ----------------------------------------------------
@pytest.mark.parametrize(("dtype", "expected"), [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_tol_none_is_the_documented_value_for_the_dtype(dtype, expected):
    obj = lv.Objective(
        tanh_mlp().to(dtype), F.cross_entropy, classification_data(n=20, dtype=dtype)
    )
    result = cv.hessian_eigs(obj, 1)
    assert result.tol == expected and result.all_converged
    assert np.all(result.residuals <= expected * result.spectral_norm)
    point = cv.critical_point(obj, eigs=result)
    assert point.settings["eig_tol"] == expected
    explicit = cv.hessian_eigs(obj, 1, tol=1e-3)  # an explicit tol is used as given
    assert explicit.tol == 1e-3


def test_lower_precisions_share_the_float32_default():
    from lossvista.curvature._common import default_tol

    assert default_tol(torch.float16) == default_tol(torch.bfloat16) == 1e-5
    assert default_tol(torch.float64) == 1e-6


def test_tol_is_checked(saddle):
    obj, _ = saddle
    for bad in (0.0, -1.0, float("nan"), "small"):
        with pytest.raises(InputError, match="tol must be a positive number or None"):
            cv.hessian_eigs(obj, tol=bad)
    with pytest.raises(InputError, match="eig_tol"):
        cv.critical_point(obj, eig_tol=0.0)
