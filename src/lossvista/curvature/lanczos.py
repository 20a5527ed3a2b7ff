"""Extreme Hessian eigenpairs by thick-restart Lanczos, and Hessian eigenvectors as directions.

:func:`hessian_eigs` runs the Lanczos process of :mod:`lossvista.curvature._krylov` (full
re-orthogonalisation, thick restart) on the Hessian of an objective's loss. A pair is reported
converged only after its residual was *computed*: one extra Hessian-vector product per pair gives
``r = |H v - lambda v|`` (``|v| = 1``, ``lambda = v^T H v``), and the pair counts when
``r <= tol * |H|``, with ``|H|`` estimated by the largest ``|Ritz value|`` seen. For a symmetric
``H`` some eigenvalue lies within ``r`` of ``lambda``, so ``tol`` bounds the eigenvalue error
relative to the spectral norm; for an eigenvalue separated from the rest by a gap ``g`` the error
is about ``r^2 / g``, usually far smaller. Accepted eigenvectors are also checked to be mutually
orthogonal, so no eigenvector is reported twice.

Like every single-vector Krylov method (ARPACK, ``scipy.sparse.linalg.eigsh``), Lanczos sees an
eigenvalue of exact multiplicity ``m > 1`` as one: its eigenspace meets the Krylov space in one
direction. Each returned pair is a verified eigenpair, but further copies of an exactly repeated
eigenvalue can be missing from a top-k list (repeated eigenvalues are not generic for trained
networks; a parameter symmetry such as softmax's redundant class can cause them).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Literal

import numpy as np
import torch

from ..directions import Direction
from ..errors import InputError
from ..objective import Objective
from ._common import ConvergenceWarning, check_objective, check_positive_int, plain
from ._krylov import LanczosProcess
from ._vectors import norm, unit_probe
from .hvp import GRAPH_BYTES, HessianOperator, Method

Which = Literal["largest", "smallest", "both"]
_WHICH = ("largest", "smallest", "both")


@dataclasses.dataclass(eq=False, repr=False)
class EigenResult:
    """Extreme eigenpairs of the Hessian, each with its computed residual.

    Attributes:
        values: eigenvalues (float64), most extreme first: for ``"largest"`` descending, for
            ``"smallest"`` ascending (most negative first), for ``"both"`` the ``k`` largest
            (descending) followed by the ``k`` smallest (ascending).
        vectors: unit eigenvectors as :class:`~lossvista.Direction` objects over the selected
            parameters (``meta``: kind ``"hessian_eigenvector"``, eigenvalue, index, residual,
            converged), usable by ``lv.plane``. The sign is fixed so that the entry of largest
            magnitude is positive.
        residuals: ``|H v - lambda v|`` computed with one extra product per pair.
        converged: whether ``residuals <= tol * spectral_norm`` (and the vector is orthogonal
            to the other accepted ones).
        n_hvp: Hessian-vector products used in all (Lanczos steps and residual checks).
        spectral_norm: the largest ``|Ritz value|`` seen, the scale of ``tol``.
        iterations: Lanczos steps; restarts: thick restarts.
        which, k, tol, seed: the request; settings: everything else (backend, basis size...).
    """

    values: np.ndarray
    vectors: tuple[Direction, ...]
    residuals: np.ndarray
    converged: np.ndarray
    n_hvp: int
    spectral_norm: float
    iterations: int
    restarts: int
    which: str
    k: int
    tol: float
    seed: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def largest(self) -> np.ndarray:
        """The largest eigenvalues (descending); empty for ``which="smallest"``."""
        return self.values[: self._n_largest]

    @property
    def smallest(self) -> np.ndarray:
        """The smallest eigenvalues (ascending); empty for ``which="largest"``."""
        return self.values[self._n_largest :]

    @property
    def _n_largest(self) -> int:
        return 0 if self.which == "smallest" else self.k

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the vectors)."""
        return plain(
            {
                "values": self.values,
                "residuals": self.residuals,
                "converged": self.converged,
                "n_hvp": self.n_hvp,
                "spectral_norm": self.spectral_norm,
                "iterations": self.iterations,
                "restarts": self.restarts,
                "which": self.which,
                "k": self.k,
                "tol": self.tol,
                "seed": self.seed,
                "settings": self.settings,
            }
        )

    def __repr__(self) -> str:
        values = ", ".join(f"{v:.6g}" for v in self.values)
        return (
            f"EigenResult({self.which}, values=[{values}], converged "
            f"{int(np.sum(self.converged))}/{len(self.values)}, max residual "
            f"{float(np.max(self.residuals)) if len(self.residuals) else 0.0:.2e}, "
            f"n_hvp={self.n_hvp}, tol={self.tol:g})"
        )


def hessian_eigs(
    obj: Objective,
    k: int = 1,
    *,
    which: Which = "largest",
    tol: float = 1e-6,
    max_iter: int | None = None,
    max_basis: int | None = None,
    seed: int = 0,
    hvp_method: Method = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> EigenResult:
    """The ``k`` algebraically largest and/or smallest Hessian eigenpairs, with residuals.

    Thick-restart Lanczos with full re-orthogonalisation (Wu & Simon 2000); see the module
    docstring for the convergence test and its meaning.

    Args:
        obj: the :class:`~lossvista.Objective` (Hessian of its exact sample-weighted mean loss
            over all data, with respect to its selected parameters, at the model's parameters).
        k: pairs wanted at each requested end.
        which: ``"largest"`` (algebraically largest), ``"smallest"`` (most negative first) or
            ``"both"`` (``k`` of each, from one Krylov space).
        tol: relative residual tolerance: a pair converges when ``|H v - lambda v| <= tol * |H|``.
        max_iter: the most Lanczos steps, at least the number of pairs (default
            ``max(300, 30 * pairs)``); each residual check adds one product per pair.
        max_basis: basis vectors kept between restarts (default ``max(40, 2 * pairs + 20)``,
            at most ``P``). Memory: ``(max_basis + 1) * P`` float64 entries on the device.
        seed: seed of the Rademacher start vector.
        hvp_method: Hessian-vector backend (:func:`~lossvista.curvature.hvp`).
        max_graph_bytes: memory budget for gradient graphs kept for re-use.

    Returns:
        An :class:`EigenResult`. Pairs that did not converge within ``max_iter`` are returned
        with ``converged=False`` and a :class:`ConvergenceWarning`.
    """
    check_objective(obj)
    with HessianOperator(obj, method=hvp_method, max_graph_bytes=max_graph_bytes) as op:
        return eigs_of(
            op, k, which=which, tol=tol, max_iter=max_iter, max_basis=max_basis, seed=seed
        )


def hessian_directions(
    obj: Objective, k: int = 2, *, tol: float = 1e-6, seed: int = 0, **kwargs: Any
) -> tuple[Direction, ...]:
    """The top ``k`` Hessian eigenvectors as unit directions for ``lv.plane`` / ``lv.line``.

    ``lv.plane(obj, lv.hessian_directions(obj))`` draws the loss along the two directions of
    largest curvature. Keyword arguments go to :func:`hessian_eigs`.
    """
    result = hessian_eigs(obj, k, which="largest", tol=tol, seed=seed, **kwargs)
    return result.vectors


def eigs_of(
    op: HessianOperator,
    k: int,
    *,
    which: Which = "largest",
    tol: float = 1e-6,
    max_iter: int | None = None,
    max_basis: int | None = None,
    seed: int = 0,
    warn: bool = True,
) -> EigenResult:
    """:func:`hessian_eigs` on an open :class:`HessianOperator` (shares its kept graphs).

    ``warn=False`` leaves unconverged pairs to the caller (no :class:`ConvergenceWarning`).
    """
    k = check_positive_int(k, "k")
    if which not in _WHICH:
        raise InputError(f"which must be one of {list(_WHICH)}, got {which!r}")
    tol = float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    n = op.size
    n_large = k if which in ("largest", "both") else 0
    n_small = k if which in ("smallest", "both") else 0
    wanted = n_large + n_small
    if wanted > n:
        raise InputError(f"asked for {wanted} eigenpairs but the Hessian is {n} x {n}; lower k")
    if max_iter is None:
        max_iter = max(300, 30 * wanted)
    max_iter = check_positive_int(max_iter, "max_iter", wanted)
    basis = max(40, 2 * wanted + 20) if max_basis is None else max_basis
    basis = min(check_positive_int(basis, "max_basis"), n)
    if basis < min(n, wanted + 2):
        raise InputError(
            f"max_basis={basis} is too small for {wanted} pairs: give at least {wanted + 2}"
        )

    solver = _Solver(op, n_large, n_small, tol, basis, seed)
    pairs = solver.run(max_iter)
    values, vectors, residuals, converged = pairs
    result = EigenResult(
        values=values,
        vectors=tuple(
            op.layout.direction(
                vectors[i],
                {
                    "kind": "hessian_eigenvector",
                    "eigenvalue": float(values[i]),
                    "index": i,
                    "which": "largest" if i < n_large else "smallest",
                    "residual": float(residuals[i]),
                    "converged": bool(converged[i]),
                },
            )
            for i in range(len(values))
        ),
        residuals=residuals,
        converged=converged,
        n_hvp=solver.n_hvp,
        spectral_norm=solver.scale,
        iterations=solver.process.n_matvec,
        restarts=solver.process.n_restarts,
        which=which,
        k=k,
        tol=tol,
        seed=int(seed),
        settings={
            **op.settings(),
            "max_iter": max_iter,
            "max_basis": basis,
            "residual_floor": solver.floor if solver.stalls >= 2 else None,
        },
    )
    if warn and not result.all_converged:
        worst = float(np.max(residuals / max(solver.scale, 1e-300)))
        if solver.stalls >= 2:
            reason = (
                f"the computed residuals stopped decreasing at {worst:.1e} x |H| although the "
                f"Lanczos estimates were below tol: the rounding floor of {op.layout.dtype} "
                f"Hessian-vector products. Pass tol >= {2 * worst:.0e}, or use a float64 model"
            )
        else:
            reason = (
                f"in {result.iterations} Lanczos steps (largest residual {worst:.2e} x |H|); "
                "raise max_iter or tol"
            )
        warnings.warn(
            f"hessian_eigs: {int(np.sum(~converged))} of {len(values)} eigenpairs did not reach "
            f"tol={tol:g}: {reason}. Their values are still the best available; see "
            "result.converged and result.residuals",
            ConvergenceWarning,
            stacklevel=3,
        )
    return result


class _Solver:
    """The restart and convergence logic around a :class:`LanczosProcess`."""

    def __init__(
        self, op: HessianOperator, n_large: int, n_small: int, tol: float, basis: int, seed: int
    ):
        self.op = op
        self.n_large, self.n_small = n_large, n_small
        self.wanted = n_large + n_small
        self.tol = tol
        self.basis = basis
        self.start_hvp = op.n_hvp
        self.process = LanczosProcess(op.matvec, op.layout, basis, seed=seed, inject=True)
        self.process.add(unit_probe(op.layout, seed, "lanczos", 0))
        self.scale = 0.0
        self.last_residuals: np.ndarray | None = None
        self.stalls = 0
        self.floor: float | None = None  # relative residual where the checks stalled

    @property
    def n_hvp(self) -> int:
        return self.op.n_hvp - self.start_hvp

    def run(self, max_iter: int):
        process = self.process
        next_check = 0
        while True:
            process.step()
            theta, s, estimates = process.ritz()
            self.scale = max(self.scale, float(np.max(np.abs(theta))))
            index = self._wanted(theta)
            exhausted = process.exhausted
            if len(index) == self.wanted:
                small_enough = np.all(estimates[index] <= self.tol * self.scale)
                if (small_enough and process.n_matvec >= next_check) or exhausted:
                    pairs = self._verify(theta, s, index)
                    if np.all(pairs[3]) or exhausted or self._stalled(pairs[2]):
                        return pairs
                    # The Lanczos estimates are below tol but a computed residual is not
                    # (rounding in the products): go on, and check again a little later.
                    next_check = process.n_matvec + max(5, self.basis // 4)
            if process.n_matvec >= max_iter or process.stopped:
                break
            if process.size >= self.basis:
                process.restart(theta, s, self._keep(theta))
        return self._verify(theta, s, index)

    def _stalled(self, residuals: np.ndarray) -> bool:
        """True after three checks in a row where the computed residuals did not halve although
        the Lanczos estimates were below tol: the rounding floor of the products is reached."""
        relative = residuals / max(self.scale, 1e-300)
        if self.last_residuals is not None and np.all(relative >= 0.5 * self.last_residuals):
            self.stalls += 1
        else:
            self.stalls = 0
        self.last_residuals = relative
        self.floor = float(np.max(relative))
        return self.stalls >= 2

    def _wanted(self, theta: np.ndarray) -> np.ndarray:
        """Indices (into ascending ``theta``) of the wanted Ritz values, most extreme first."""
        size = len(theta)
        if size < self.wanted:
            return np.array([], dtype=int)
        large = np.arange(size - 1, size - 1 - self.n_large, -1)
        small = np.arange(self.n_small)
        return np.concatenate([large, small]).astype(int)

    def _keep(self, theta: np.ndarray) -> np.ndarray:
        """Ritz vectors kept at a restart: the wanted ones and about half the basis more,
        nearest the wanted end(s)."""
        size = len(theta)
        extra = max(1, (self.basis - self.wanted) // 2)
        if self.n_large and self.n_small:
            n_large = self.n_large + extra // 2
            n_small = self.n_small + extra - extra // 2
        else:
            n_large = self.n_large + extra if self.n_large else 0
            n_small = self.n_small + extra if self.n_small else 0
        n_large = min(n_large, size)
        n_small = min(n_small, size - n_large)
        keep = np.concatenate([np.arange(n_small), np.arange(size - n_large, size)])
        return np.unique(keep)

    def _verify(self, theta: np.ndarray, s: np.ndarray, index: np.ndarray):
        """Explicit residuals of the wanted Ritz pairs (one product each)."""
        vectors = self.process.vectors(s[:, index])
        values = np.empty(len(index))
        residuals = np.empty(len(index))
        for i in range(len(index)):
            v = vectors[i] / norm(vectors[i])
            hv = self.op.matvec(v)
            hv = hv.to(v.dtype)
            values[i] = float(torch.dot(v, hv))
            residuals[i] = norm(hv - values[i] * v)
            vectors[i] = v
        self.scale = max(self.scale, float(np.max(np.abs(values))))
        converged = residuals <= self.tol * self.scale
        converged &= _orthogonal_to_previous(vectors)
        for i in range(len(index)):
            vectors[i] = _fix_sign(vectors[i])
        return values, vectors, residuals, converged


def _orthogonal_to_previous(vectors: torch.Tensor) -> np.ndarray:
    """False for a vector not orthogonal to an earlier one (a duplicate can never pass)."""
    gram = (vectors @ vectors.T).abs().cpu().numpy()
    limit = math.sqrt(torch.finfo(vectors.dtype).eps)  # Ritz vectors: ~eps; a copy: ~1
    return np.array([not np.any(gram[i, :i] > limit) for i in range(len(vectors))], dtype=bool)


def _fix_sign(v: torch.Tensor) -> torch.Tensor:
    index = int(torch.argmax(v.abs()))
    return -v if float(v[index]) < 0 else v


# -- spectral density by stochastic Lanczos quadrature ---------------------------------------------
#: Ritz values below ``-NEGATIVE_CUTOFF * max|node|`` count as negative curvature. Trained
#: networks have a large bulk of eigenvalues near zero that SLQ resolves as one or two nodes;
#: rounding and the bulk's own slightly negative members put such a node at, say, -1e-5 |H|,
#: which would count the whole flat bulk (often most of the spectrum) as negative. Curvature
#: within 1e-3 |H| of zero is flat at the resolution of a density, so it does not count.
NEGATIVE_CUTOFF = 1e-3


@dataclasses.dataclass(eq=False, repr=False)
class SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature.

    The measure ``(1/P) sum_i delta(x - lambda_i)`` over the ``P`` eigenvalues is approximated by
    ``sum_j weights[j] delta(x - nodes[j])``: per run, Gauss quadrature nodes (Ritz values) and
    weights (squared first components of the eigenvectors of ``T``), averaged over runs.

    Attributes:
        nodes: Ritz values of all runs, shape ``(M,)``; ``runs`` says which run each came from.
        weights: their weights, shape ``(M,)``, summing to 1 (each run's sum to ``1 / n_runs``).
        runs: run index of every node.
        grid, density: the measure smoothed with a Gaussian kernel of standard deviation
            ``width`` (eigenvalue units), on an even grid; ``density`` integrates to about 1.
        width: the kernel's standard deviation.
        negative_mass: share of the spectrum (weight) at nodes below
            ``-NEGATIVE_CUTOFF * max|node|``: the fraction of negative-curvature directions.
        size: ``P``, the number of parameters (``P * moment(j)`` estimates ``trace(H^j)``).
        n_runs, n_steps, seed, n_hvp, settings: how it was computed.
    """

    nodes: np.ndarray
    weights: np.ndarray
    runs: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    width: float
    negative_mass: float
    size: int
    n_runs: int
    n_steps: int
    seed: int
    n_hvp: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def moment(self, j: int) -> float:
        """``sum_i weights_i * nodes_i**j``: the SLQ estimate of ``trace(H^j) / P``."""
        return float(np.sum(self.weights * self.nodes**j))

    def plot(self, ax: Any = None, *, log: bool = False) -> Any:
        """Draw the smoothed density (negative eigenvalues shaded); returns the figure.

        Args:
            ax: matplotlib axes to draw into; a new figure when None.
            log: logarithmic density axis (the bulk near zero and the outliers both show).
        """
        from ._plot import plot_density

        return plot_density(self, ax=ax, log=log)

    def as_dict(self) -> dict[str, Any]:
        return plain(
            {
                "nodes": self.nodes,
                "weights": self.weights,
                "runs": self.runs,
                "width": self.width,
                "negative_mass": self.negative_mass,
                "size": self.size,
                "n_runs": self.n_runs,
                "n_steps": self.n_steps,
                "seed": self.seed,
                "n_hvp": self.n_hvp,
                "settings": self.settings,
            }
        )

    def __repr__(self) -> str:
        return (
            f"SpectralDensity(support [{self.nodes.min():.4g}, {self.nodes.max():.4g}], "
            f"negative mass {self.negative_mass:.3g}, {self.n_runs} runs x {self.n_steps} steps, "
            f"n_hvp={self.n_hvp}, seed={self.seed})"
        )


def hessian_density(
    obj: Objective,
    *,
    n_runs: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    width: float | None = None,
    grid_points: int = 1000,
    hvp_method: Method = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature (SLQ).

    Ubaru, Chen & Saad (2017), "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature";
    Ghorbani, Krishnan & Xiao (2019), "An investigation into neural net optimization via Hessian
    eigenvalue density". Each run starts Lanczos (full re-orthogonalisation) from a seeded unit
    Rademacher vector ``v``; its ``n_steps`` Ritz values and weights are the Gauss quadrature of
    the measure ``sum_i (v^T u_i)^2 delta(x - lambda_i)``, exact for polynomials of degree up to
    ``2 n_steps - 1`` (so ``sum w theta^j = v^T H^j v`` for small ``j``). A run whose Krylov space
    is exhausted early (an invariant subspace) stops with fewer, exact, nodes.

    Args:
        obj: the :class:`~lossvista.Objective`.
        n_runs: independent runs (random start vectors) averaged.
        n_steps: Lanczos steps (quadrature nodes) per run; memory ``(n_steps + 1) * P`` float64.
        seed: seed of the start vectors.
        width: standard deviation of the Gaussian smoothing kernel, in eigenvalue units (default
            1% of the node range).
        grid_points: points of the smoothing grid (range of the nodes +- 5 widths).
        hvp_method, max_graph_bytes: as in :func:`hessian_eigs`.

    Returns:
        A :class:`SpectralDensity` (``.plot(log=True)`` draws it).
    """
    check_objective(obj)
    with HessianOperator(obj, method=hvp_method, max_graph_bytes=max_graph_bytes) as op:
        return density_of(
            op, n_runs=n_runs, n_steps=n_steps, seed=seed, width=width, grid_points=grid_points
        )


def density_of(
    op: HessianOperator,
    *,
    n_runs: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    width: float | None = None,
    grid_points: int = 1000,
) -> SpectralDensity:
    """:func:`hessian_density` on an open :class:`HessianOperator`."""
    n_runs = check_positive_int(n_runs, "n_runs")
    n_steps = check_positive_int(n_steps, "n_steps")
    grid_points = check_positive_int(grid_points, "grid_points", 2)
    if width is not None and not (math.isfinite(float(width)) and float(width) > 0):
        raise InputError(f"width must be a positive number or None, got {width!r}")
    start = op.n_hvp
    nodes, weights, runs = slq_of(op, n_runs=n_runs, n_steps=n_steps, seed=seed)
    span = float(nodes.max() - nodes.min())
    if width is None:
        width = 0.01 * span if span > 0 else max(abs(float(nodes.max())), 1.0) * 1e-3
    width = float(width)
    grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, grid_points)
    density = np.zeros(grid_points)
    for lo in range(0, len(nodes), 256):  # bounded memory for many nodes
        chunk = slice(lo, lo + 256)
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, chunk]) / width) ** 2)
        density += kernel @ weights[chunk]
    density /= width * math.sqrt(2 * math.pi)
    cutoff = NEGATIVE_CUTOFF * float(np.max(np.abs(nodes)))
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        runs=runs,
        grid=grid,
        density=density,
        width=width,
        negative_mass=float(np.sum(weights[nodes < -cutoff])),
        size=op.size,
        n_runs=n_runs,
        n_steps=n_steps,
        seed=int(seed),
        n_hvp=op.n_hvp - start,
        settings={**op.settings(), "grid_points": grid_points, "negative_cutoff": cutoff},
    )


def slq_of(
    op: HessianOperator, *, n_runs: int, n_steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, weights (summing to 1) and run indices of SLQ on an open operator."""
    nodes, weights, runs = [], [], []
    steps = min(n_steps, op.size)
    for run in range(n_runs):
        process = LanczosProcess(op.matvec, op.layout, steps, seed=seed, inject=False)
        process.add(unit_probe(op.layout, seed, "slq", run))
        while process.size < steps and not process.stopped:
            process.step()
        theta, s, _ = process.ritz()
        nodes.append(theta)
        weights.append(s[0, :] ** 2 / n_runs)
        runs.append(np.full(len(theta), run))
    return np.concatenate(nodes), np.concatenate(weights), np.concatenate(runs)
