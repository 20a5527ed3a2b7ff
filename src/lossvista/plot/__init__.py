"""Figures of landscapes. matplotlib is imported only when a function here draws something."""

from .landscape import plot_landscape

__all__ = ["plot_landscape"]
