"""Figures of curvature results: the spectral density, eigenvalues with their residual bounds, the
running trace estimate and a critical-point verdict. matplotlib is imported inside the functions
so that ``import lossvista`` stays light; nothing here computes, it draws what the results hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._figures import figure_of, new_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..curvature import CriticalPoint, EigenResult, SpectralDensity, TraceEstimate

__all__ = ["plot_critical_point", "plot_density", "plot_eigenvalues", "plot_trace"]

_NEGATIVE_COLOR = "crimson"
_FLAT_COLOR = "gold"


def plot_density(density: SpectralDensity, ax: Axes | None = None, *, log: bool = False) -> Figure:
    """The smoothed spectral density over the eigenvalue; the negative part shaded, with its
    share in the legend; ``log`` draws the density on a logarithmic axis. Returns the figure."""
    ax = new_axes(ax, figsize=(6.4, 4.0))
    x, y = density.grid, density.density
    if log:
        # Far from every node the Gaussian tails underflow to 0; keep the curve drawable.
        y = np.maximum(y, float(np.max(y)) * 1e-12)
        ax.set_yscale("log")
    ax.plot(x, y, color="C0", lw=1.4, label="density (smoothed)")
    cutoff = float(density.settings.get("negative_cutoff", 0.0))
    negative = x < -cutoff  # nearer zero is flat at the density's resolution
    if negative.any():
        ax.fill_between(
            x[negative],
            y[negative],
            y.min() if log else 0.0,
            color=_NEGATIVE_COLOR,
            alpha=0.35,
            label=f"negative curvature (< {-cutoff:.2g}): {density.negative_mass:.2%} of the spectrum",
        )
    if x.min() < 0 < x.max():
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.set_title(f"Hessian spectral density (SLQ, {density.n_runs} runs x {density.n_steps} steps)")
    ax.legend(loc="upper right", fontsize="small")
    return figure_of(ax)


def plot_eigenvalues(
    result: EigenResult, ax: Axes | None = None, *, flat_band: float | None = None
) -> Figure:
    """The eigenvalues as stems from zero, each with an error bar of its residual
    ``|H v - lambda v|`` (some true eigenvalue lies within it); hollow markers for pairs that
    did not converge. ``flat_band`` shades ``-+ flat_band``, the curvature treated as zero.
    Returns the figure."""
    ax = new_axes(ax, figsize=(6.4, 4.0))
    values = np.asarray(result.values, dtype=np.float64)
    residuals = np.asarray(result.residuals, dtype=np.float64)
    converged = np.asarray(result.converged, dtype=bool)
    x = np.arange(len(values))
    n_largest = len(result.largest)
    labels = [f"max {i + 1}" for i in range(n_largest)]
    labels += [f"min {i + 1}" for i in range(len(values) - n_largest)]
    if flat_band is not None and flat_band > 0:
        ax.axhspan(
            -flat_band,
            flat_band,
            color=_FLAT_COLOR,
            alpha=0.3,
            label=f"flat: |λ| ≤ {flat_band:.2g}",
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.vlines(x, 0.0, values, color="C0", lw=1.2)
    for mask, label, face in (
        (converged, "converged", "C0"),
        (~converged, "not converged", "none"),
    ):
        if mask.any():
            ax.errorbar(
                x[mask],
                values[mask],
                yerr=residuals[mask],
                fmt="o",
                color="C0",
                mfc=face,
                capsize=4,
                label=f"{label} (bar: residual)",
            )
    ax.set_xticks(x, labels)
    ax.set_xlabel("eigenpair")
    ax.set_ylabel("eigenvalue")
    ax.set_title(
        f"Hessian eigenvalues ({result.which}; {int(converged.sum())}/{len(values)} converged "
        f"at tol {result.tol:g})"
    )
    ax.legend(loc="best", fontsize="small")
    return figure_of(ax)


def plot_trace(estimate: TraceEstimate, ax: Axes | None = None) -> Figure:
    """The running trace estimate after each probe with its ``-+ 2 stderr`` band, and the final
    estimate as a dashed line. Returns the figure."""
    ax = new_axes(ax, figsize=(6.4, 4.0))
    final = f"estimate {estimate.estimate:.6g} ± {estimate.stderr:.2g}"
    ax.axhline(estimate.estimate, color="black", lw=0.9, ls="--", label=final)
    running, stderr = estimate.running()
    if len(running):
        probes = np.arange(1, len(running) + 1)
        ax.plot(probes, running, color="C0", lw=1.4, label="running estimate")
        ax.fill_between(
            probes,
            running - 2 * stderr,
            running + 2 * stderr,
            color="C0",
            alpha=0.2,
            label="± 2 stderr",
        )
    else:
        ax.text(0.5, 0.6, "exact: the sketch spans the space", ha="center", transform=ax.transAxes)
    remainder = estimate.method == "hutch++"
    ax.set_xlabel("probe of the deflated remainder" if remainder else "probe")
    ax.set_ylabel("trace estimate")
    ax.set_title(f"Hessian trace ({estimate.method}, {estimate.n_hvp} products)")
    ax.legend(loc="best", fontsize="small")
    return figure_of(ax)


def plot_critical_point(point: CriticalPoint, ax: Axes | None = None) -> Figure:
    """The eigenvalues behind a verdict (:func:`plot_eigenvalues` of ``point.eigs``) against
    the band of curvature treated as zero, titled with the verdict. Returns the figure."""
    figure = plot_eigenvalues(point.eigs, ax, flat_band=point.threshold)
    axes = figure.axes[0] if ax is None else ax
    axes.set_title(
        f"{point.kind}: λ in [{point.lambda_min:.4g}, {point.lambda_max:.4g}], "
        f"|grad| {point.grad_norm:.2g}"
    )
    return figure
