"""Figures of curvature results. matplotlib is imported only when something is drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .lanczos import SpectralDensity

_NEGATIVE_COLOR = "crimson"


def plot_density(density: SpectralDensity, ax: Any = None, *, log: bool = False) -> Figure:
    """The smoothed spectral density; the negative part shaded, with its share in the legend."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6.4, 4.0))
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
    return ax.figure
