"""Figures of landscapes and training runs. matplotlib is imported only when a function here draws
something."""

from .landscape import plot_landscape
from .training import plot_comparison, plot_history

__all__ = ["plot_comparison", "plot_history", "plot_landscape"]
