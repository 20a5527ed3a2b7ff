"""What every drawing function shares: the axes it draws into, the figure it returns, and user
text drawn as it is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_axes(ax: Axes | None = None, *, figsize: tuple[float, float] | None = None) -> Axes:
    """``ax``, or the axes of a new figure (pyplot imported only now)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def figure_of(ax: Any) -> Figure:
    """``ax.figure``, what the plot functions return: the figure of the axes they drew on (a
    ``SubFigure`` only when the caller's axes sit in one)."""
    return ax.figure  # type: ignore[no-any-return]


def literal(text: object) -> str:
    """``text`` as matplotlib should draw it: exactly as written.

    matplotlib reads text between two ``$`` as mathtext and raises on what does not parse
    (a metric ``"cost$"`` next to a model ``"net_$v2"``), so every user-provided string a plot
    draws (titles, metric and model names, axis labels, legend entries) goes through here, which
    escapes its dollar signs. Mathtext in such strings is therefore drawn literally too.
    """
    return str(text).replace("$", r"\$")
