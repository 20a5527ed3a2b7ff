"""The Hessian's spectral density by stochastic Lanczos quadrature (SLQ): :func:`hessian_density`
(the method and its references in its docstring) and its result, :class:`SpectralDensity`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._result import Result
from ..errors import InputError
from ..objective import Objective
from ._common import check_objective, check_positive_int, renamed
from ._krylov import LanczosProcess, announce_long_run, basis_bytes, basis_dtype, check_basis_fits
from ._vectors import Layout, unit_probe
from .hvp import GRAPH_BYTES, Backend, HessianOperator

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Ritz values below ``-NEGATIVE_CUTOFF * max|node|`` count as negative curvature. Trained
#: networks have a large bulk of eigenvalues near zero that SLQ resolves as one or two nodes;
#: rounding and the bulk's own slightly negative members put such a node at, say, -1e-5 |H|,
#: which would count the whole flat bulk (often most of the spectrum) as negative. Curvature
#: within 1e-3 |H| of zero is flat at the resolution of a density, so it does not count.
NEGATIVE_CUTOFF = 1e-3


@dataclasses.dataclass(eq=False, repr=False)
class SpectralDensity(Result):
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

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"spectral_density"``) that
    ``lossvista.load`` reads back.
    """

    result_kind = "spectral_density"
    file_format = "hdf5"

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

    def plot(self, ax: Axes | None = None, *, log: bool = False) -> Figure:
        """Draw the smoothed density (negative eigenvalues shaded); returns the figure.

        Args:
            ax: matplotlib axes to draw into; a new figure when None.
            log: logarithmic density axis (the bulk near zero and the outliers both show).
        """
        from ..plot.curvature import plot_density

        return plot_density(self, ax, log=log)

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("support", f"[{self.nodes.min():.6g}, {self.nodes.max():.6g}]"),
            ("negative_mass", self.negative_mass),
            ("trace", self.size * self.moment(1)),  # the SLQ estimate of tr(H)
            ("width", self.width),
            ("runs", self.n_runs),
            ("steps", self.n_steps),
            ("n_hvp", self.n_hvp),
            ("seed", self.seed),
        ]


@renamed(hvp_method="hvp_backend")
def hessian_density(
    obj: Objective,
    *,
    n_runs: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    width: float | None = None,
    grid_points: int = 1000,
    hvp_backend: Backend = "auto",
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
        n_steps: Lanczos steps (quadrature nodes) per run; memory ``(n_steps + 1) * P`` entries
            in the parameters' dtype, float32 at least (refused before any product when that
            does not fit the free memory).
        seed: seed of the start vectors.
        width: standard deviation of the Gaussian smoothing kernel, in eigenvalue units (default
            1% of the node range).
        grid_points: points of the smoothing grid (range of the nodes +- 5 widths).
        hvp_backend, max_graph_bytes: as in :func:`~lossvista.curvature.hessian_eigs`
            (``hvp_method=`` is the deprecated old name of ``hvp_backend``).

    Returns:
        A :class:`SpectralDensity` (``.plot(log=True)`` draws it). A run estimated (after its
        first two products) to take longer than 30 s is announced with a
        :class:`~lossvista.errors.LossvistaWarning`.
    """
    check_objective(obj)
    _check_fits(Layout(obj.parameters()), check_positive_int(n_steps, "n_steps"))
    with HessianOperator(obj, backend=hvp_backend, max_graph_bytes=max_graph_bytes) as op:
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
    if width is not None:
        width = _positive(width, "width")
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
        settings={
            **op.settings(),
            "grid_points": grid_points,
            "negative_cutoff": cutoff,
            "basis_bytes": basis_bytes(op.layout, min(n_steps, op.size)),
            "basis_dtype": str(basis_dtype(op.layout)).removeprefix("torch."),
        },
    )


def slq_of(
    op: HessianOperator, *, n_runs: int, n_steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, weights (summing to 1) and run indices of SLQ on an open operator."""
    nodes, weights, runs = [], [], []
    steps = min(n_steps, op.size)
    _check_fits(op.layout, steps)
    timings: list[float] = []  # of the first two products, for the time estimate
    announced = False
    for run in range(n_runs):
        process = LanczosProcess(
            op.matvec, op.layout, steps, seed=seed, inject=False, timings=timings
        )
        process.add(unit_probe(op.layout, seed, "slq", run))
        while process.size < steps and not process.stopped:
            process.step()
            if not announced and len(timings) == 2:
                announced = True
                announce_long_run(
                    "hessian_density",
                    process,
                    n_runs * steps,
                    f"the run makes n_runs x n_steps = {n_runs} x {steps} = {n_runs * steps} "
                    "products; fewer runs or steps bound it",
                )
        theta, s, _ = process.ritz()
        del process  # the next run's basis takes its place
        nodes.append(theta)
        weights.append(s[0, :] ** 2 / n_runs)
        runs.append(np.full(len(theta), run))
    return np.concatenate(nodes), np.concatenate(weights), np.concatenate(runs)


def _check_fits(layout: Layout, n_steps: int) -> None:
    check_basis_fits(
        layout, min(n_steps, layout.size), f"n_steps={n_steps}", "pass a smaller n_steps"
    )


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{name} must be a positive number or None, got {value!r}")
    return number
