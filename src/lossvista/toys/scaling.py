"""Feature scaling and conditioning: a linear-regression loss surface before and after
standardisation.

The model is ``y ~ X w`` with two weights and the loss the mean squared error
``MSE(w) = (1/N) ||X w - y||^2``, a quadratic with Hessian ``H = 2 X^T X / N``. Its condition
number ``kappa = lambda_max / lambda_min`` of ``X^T X`` sets how fast gradient descent converges:
with the largest stable constant step ``lr = 1 / L``, ``L = 2 lambda_max(X^T X) / N``, the gap
``MSE(w_k) - MSE(w*)`` shrinks at least by ``(1 - 1/kappa)^2`` per step, so about
``kappa / 2 * ln(1 / tol)`` steps reach a relative gap ``tol``. Standardising the features
(zero mean, unit variance) turns ``X^T X / N`` into the correlation matrix, whose condition number
is ``(1 + |r|) / (1 - |r|)`` for two features with correlation ``r``.

The intercept is handled by centring: both problems use ``y - mean(y)`` and centred features
(``X_raw = X - mean``; ``X_scaled = X_raw / std``), so the loss depends on the two weights alone
and the only difference between the two problems is the features' scale.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._checks import check_int
from .._result import Result
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The default data: feature 2 is this many times larger than feature 1 (and correlated).
DEFAULT_SCALE = 100.0
DEFAULT_CORRELATION = 0.5


@dataclasses.dataclass(eq=False, repr=False)
class LossSurface(Result):
    """MSE on a grid of weights: ``values[i, j] = MSE((w1[i], w2[j]))`` (a result of kind
    ``"toy_loss_surface"``, saved as HDF5)."""

    w1: np.ndarray
    w2: np.ndarray
    values: np.ndarray

    result_kind = "toy_loss_surface"
    file_format = "hdf5"

    def plot(self, ax: Axes | None = None) -> Figure:
        """The contours (log-spaced above the minimum, equal axis scales); returns the figure.
        Drawn by :func:`lossvista.plot.toys.plot_loss_surface`."""
        from ..plot.toys import plot_loss_surface

        return plot_loss_surface(self, ax)

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("points", f"{len(self.w1)} x {len(self.w2)}"),
            ("w1", f"[{self.w1[0]:.6g}, {self.w1[-1]:.6g}]"),
            ("w2", f"[{self.w2[0]:.6g}, {self.w2[-1]:.6g}]"),
            ("lowest_value", float(np.nanmin(self.values))),
        ]


@dataclasses.dataclass(eq=False, repr=False)
class RegressionProblem(Result):
    """One least-squares problem (raw or standardised) and gradient descent on it (a result of
    kind ``"toy_regression_problem"``, saved as HDF5).

    Attributes:
        X: ``(N, 2)`` the (centred) features.
        y: ``(N,)`` the centred targets.
        weights: ``(2,)`` the least-squares solution ``w*``.
        eigenvalues: ``(2,)`` of ``X^T X``, ascending.
        condition_number: ``eigenvalues[1] / eigenvalues[0]``.
        lr: the gradient-descent step used.
        path: ``(k + 1, 2)`` the gradient-descent iterates from the start.
        iterations: steps until the relative gap reached ``tol`` (None: not within ``max_iter``).
        iteration_bound: ``ceil(ln(tol) / (2 ln(1 - 1/kappa)))``, the most steps ``lr = 1/L``
            can need (see the module docstring).
        surface: the MSE around ``w*``.
    """

    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    eigenvalues: np.ndarray
    condition_number: float
    lr: float
    path: np.ndarray
    iterations: int | None
    iteration_bound: int
    surface: LossSurface

    result_kind = "toy_regression_problem"
    file_format = "hdf5"

    def plot(self, ax: Axes | None = None) -> Figure:
        """The loss surface with the gradient-descent path and ``w*``; returns the figure.
        Drawn by :func:`lossvista.plot.toys.plot_regression_problem`."""
        from ..plot.toys import plot_regression_problem

        return plot_regression_problem(self, ax)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["surface"] = self.surface._state()
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> RegressionProblem:
        return cls(**{**state, "surface": LossSurface._from_state(state["surface"])})

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("samples", len(self.X)),
            ("condition_number", self.condition_number),
            ("lr", self.lr),
            ("iterations", self.iterations),
            ("iteration_bound", self.iteration_bound),
            ("weights", f"({self.weights[0]:.6g}, {self.weights[1]:.6g})"),
        ]


@dataclasses.dataclass(eq=False, repr=False)
class ScalingStudy(Result):
    """The raw and the standardised regression problem side by side.

    A result (kind ``"toy_scaling_study"``): ``save`` writes an HDF5 file with both problems
    (data, paths and surfaces) that ``lossvista.load`` reads back.

    Attributes:
        raw: the :class:`RegressionProblem` on centred, unscaled features.
        scaled: the :class:`RegressionProblem` on standardised features.
        feature_mean: ``(2,)`` the means subtracted.
        feature_scale: ``(2,)`` the standard deviations divided by (``ddof=0``).
        tol: the relative gap ``(MSE(w_k) - MSE*) / (MSE(w_0) - MSE*)`` counted as converged.
        start: ``(2,)`` where gradient descent starts (in each problem's own weights).
        seed: the seed of the synthetic data (None for data given).
    """

    raw: RegressionProblem
    scaled: RegressionProblem
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    tol: float
    start: np.ndarray
    seed: int | None

    result_kind = "toy_scaling_study"
    file_format = "hdf5"

    # The flat names the rest of the lab (and the docs) use.
    @property
    def X_raw(self) -> np.ndarray:
        """The centred, unscaled features ``(N, 2)``."""
        return self.raw.X

    @property
    def X_scaled(self) -> np.ndarray:
        """The standardised features ``(N, 2)``."""
        return self.scaled.X

    @property
    def y(self) -> np.ndarray:
        """The centred targets ``(N,)``."""
        return self.raw.y

    @property
    def condition_number_raw(self) -> float:
        """``kappa(X_raw^T X_raw)``."""
        return self.raw.condition_number

    @property
    def condition_number_scaled(self) -> float:
        """``kappa(X_scaled^T X_scaled)``."""
        return self.scaled.condition_number

    @property
    def iterations_raw(self) -> int | None:
        """Gradient-descent steps to ``tol`` on the raw problem (None: not reached)."""
        return self.raw.iterations

    @property
    def iterations_scaled(self) -> int | None:
        """Gradient-descent steps to ``tol`` on the standardised problem."""
        return self.scaled.iterations

    @property
    def surface_raw(self) -> LossSurface:
        """The raw problem's MSE surface."""
        return self.raw.surface

    @property
    def surface_scaled(self) -> LossSurface:
        """The standardised problem's MSE surface."""
        return self.scaled.surface

    def plot(self, ax: Sequence[Axes] | None = None) -> Figure:
        """Both loss surfaces as contours (log-spaced above the minimum, equal axis scales) with
        the gradient-descent paths; returns the figure. Drawn by
        :func:`lossvista.plot.toys.plot_scaling_study`.

        Args:
            ax: a pair of axes (raw, scaled); a new 1 x 2 figure by default.
        """
        from ..plot.toys import plot_scaling_study

        return plot_scaling_study(self, ax)

    def to_dict(self) -> dict[str, Any]:
        """Deprecated: use :meth:`as_dict` (the same strict-JSON dict)."""
        warnings.warn(
            "ScalingStudy.to_dict() is deprecated; use as_dict() (the same dict)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.as_dict()

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["raw"], state["scaled"] = self.raw._state(), self.scaled._state()
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> ScalingStudy:
        problems = {name: RegressionProblem._from_state(state[name]) for name in ("raw", "scaled")}
        return cls(**{**state, **problems})

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("samples", len(self.y)),
            ("condition_number_raw", self.condition_number_raw),
            ("condition_number_scaled", self.condition_number_scaled),
            ("tol", self.tol),
            ("iterations_raw", self.iterations_raw),
            ("iterations_scaled", self.iterations_scaled),
            ("iteration_bound_raw", self.raw.iteration_bound),
            ("iteration_bound_scaled", self.scaled.iteration_bound),
        ]


def scaling_study(
    X: Any = None,
    y: Any = None,
    *,
    seed: int = 0,
    n_samples: int = 200,
    lr: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 1_000_000,
    start: tuple[float, float] = (0.0, 0.0),
    grid_points: int = 101,
) -> ScalingStudy:
    """Compare gradient descent on a linear regression before and after standardisation.

    Args:
        X: ``(N, 2)`` features (array-like); by default a seeded synthetic set of
            ``n_samples`` rows where feature 2 is 100 times larger than feature 1 and
            correlated with it (r = 0.5), and ``y = x1 + x2 / 100 + noise`` (std 0.1).
        y: ``(N,)`` targets; required with ``X``.
        seed: seed of the synthetic data.
        n_samples: rows of the synthetic data.
        lr: gradient-descent step for both problems; by default each its own ``1 / L`` with
            ``L = 2 lambda_max(X^T X) / N`` (the largest step that decreases every
            eigen-component monotonically).
        tol: stop when ``(MSE(w_k) - MSE*) / (MSE(w_0) - MSE*) <= tol``.
        max_iter: the most gradient-descent steps per problem.
        start: the first weights of both problems.
        grid_points: points per axis of the loss surfaces.

    Returns:
        A :class:`ScalingStudy`.

    Raises:
        InputError: data of the wrong shape, a constant feature, a singular ``X^T X``, or bad
            settings.
    """
    if (X is None) != (y is None):
        raise InputError("give both X and y, or neither (for the synthetic data)")
    data_seed: int | None = seed  # recorded with the synthetic data only
    if X is None:
        X, y = synthetic_data(seed, n_samples)
    else:
        data_seed = None
    X, y = _check_data(X, y)
    if not (0 < tol < 1):
        raise InputError(f"tol must be between 0 and 1 (a relative gap), got {tol!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr!r}")
    check_int(grid_points, "grid_points", 2)
    check_int(max_iter, "max_iter", 1)
    first = np.asarray(start, dtype=np.float64)
    if first.shape != (2,) or not np.all(np.isfinite(first)):
        raise InputError(f"start must be two finite numbers, got {start!r}")
    mean, scale = X.mean(axis=0), X.std(axis=0)
    if np.any(scale == 0):
        raise InputError(f"a feature is constant (standard deviations {scale.tolist()})")
    centred, targets = X - mean, y - y.mean()
    raw, scaled = (
        _problem(features, targets, lr, tol, max_iter, first, grid_points)
        for features in (centred, centred / scale)
    )
    return ScalingStudy(raw, scaled, mean, scale, tol, first, data_seed)


def synthetic_data(
    seed: int = 0,
    n_samples: int = 200,
    *,
    scale: float = DEFAULT_SCALE,
    correlation: float = DEFAULT_CORRELATION,
    noise: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: two standard-normal-based features with correlation ``correlation``, the second
    multiplied by ``scale``; ``y = x1 + x2 / scale + noise * N(0, 1)``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_samples, 2))
    x1 = z[:, 0]
    x2 = scale * (correlation * z[:, 0] + math.sqrt(1 - correlation**2) * z[:, 1])
    X = np.column_stack([x1, x2])
    y = X @ np.array([1.0, 1.0 / scale]) + noise * rng.standard_normal(n_samples)
    return X, y


def _check_data(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[1] != 2:
        raise InputError(f"X must have shape (N, 2) (two features, one weight each), got {X.shape}")
    if len(y) != len(X) or len(X) < 3:
        raise InputError(f"X and y need the same number of rows (at least 3): {X.shape}, {y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise InputError("X and y must be finite (no NaN or inf)")
    return X, y


def _problem(
    X: np.ndarray,
    y: np.ndarray,
    lr: float | None,
    tol: float,
    max_iter: int,
    start: np.ndarray,
    grid_points: int,
) -> RegressionProblem:
    n = len(X)
    gram, moment = X.T @ X / n, X.T @ y / n  # MSE(w) = w'Gw - 2w'm + const
    eigenvalues = np.linalg.eigvalsh(X.T @ X)
    if eigenvalues[0] <= eigenvalues[1] * 1e-15:
        raise InputError("X^T X is singular: the two features are (nearly) collinear")
    weights = np.linalg.solve(gram, moment)
    condition = float(eigenvalues[1] / eigenvalues[0])
    step = float(n / (2 * eigenvalues[1])) if lr is None else float(lr)
    path, iterations = _gradient_descent(gram, moment, weights, start, step, tol, max_iter)
    return RegressionProblem(
        X=X,
        y=y,
        weights=weights,
        eigenvalues=eigenvalues,
        condition_number=condition,
        lr=step,
        path=path,
        iterations=iterations,
        iteration_bound=_iteration_bound(condition, tol),
        surface=_surface(X, y, weights, start, grid_points),
    )


def _iteration_bound(condition: float, tol: float) -> int:
    if condition == 1:
        return 1  # lr = 1/L solves a perfectly conditioned problem in one step
    return math.ceil(math.log(tol) / (2 * math.log1p(-1 / condition)))


def _gradient_descent(
    gram: np.ndarray,
    moment: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    lr: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int | None]:
    """``w <- w - lr * 2 (G w - m)`` from ``start`` until the relative gap is ``<= tol``.

    The gap ``MSE(w) - MSE* = (w - w*)' G (w - w*)`` is computed from the error itself, not as a
    difference of two nearly equal losses.
    """

    def gap(w: np.ndarray) -> float:
        error = w - weights
        return float(error @ gram @ error)

    w = start.copy()
    first_gap = gap(w)
    points = [w]
    if first_gap == 0:
        return np.array(points), 0
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, max_iter + 1):
            w = w - lr * 2 * (gram @ w - moment)
            current = gap(w)
            if not math.isfinite(current):
                break  # diverged (lr above 2 / L); the path keeps its finite part
            points.append(w)
            if current <= tol * first_gap:
                return np.array(points), step
    return np.array(points), None


def _surface(
    X: np.ndarray, y: np.ndarray, weights: np.ndarray, start: np.ndarray, points: int
) -> LossSurface:
    """The MSE on a square grid centred at ``weights`` that contains ``start`` with a margin.

    Evaluated by :func:`lossvista.geometry.coordinates.coordinate_plane` on a float64
    ``nn.Linear(2, 1, bias=False)`` at ``weights``: the grid's coordinates are the two weights'
    values, so ``values[i, j]`` is ``mean((X @ (w1[i], w2[j]) - y)^2)`` straight from the data.
    """
    import torch
    from torch import nn

    from ..geometry.coordinates import coordinate_plane
    from ..objective import Objective

    half = 1.5 * float(np.max(np.abs(start - weights)))
    half = half if half > 0 else 1.0
    w1 = np.linspace(weights[0] - half, weights[0] + half, points)
    w2 = np.linspace(weights[1] - half, weights[1] + half, points)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weights, dtype=torch.float64)[None])
    data = (
        torch.as_tensor(X, dtype=torch.float64),
        torch.as_tensor(y, dtype=torch.float64)[:, None],
    )
    objective = Objective(model, nn.MSELoss(), data, batch_size=len(X))
    landscape = coordinate_plane(
        objective,
        "weight[0, 0]",
        "weight[0, 1]",
        span=((w1[0], w1[-1]), (w2[0], w2[-1])),
        steps=(points, points),
        strategy="loop",  # the same configuration every time, so the same bits
        progress=False,
    )
    return LossSurface(w1, w2, landscape.values["loss"])
