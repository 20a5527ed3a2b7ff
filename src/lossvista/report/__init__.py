"""One self-contained, interactive HTML report of any number of results (:func:`report`).

The page embeds plotly.js (about 4.8 MB) once and requests nothing when opened: no CDN, no
fonts, no images by URL, no MathJax. Every result gets a section chosen by its kind
(:mod:`lossvista.report._sections`); user strings are escaped (:mod:`lossvista.report._html`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import _hdf5
from .._result import load
from .._version import __version__
from ..errors import InputError, MissingDependencyError
from ..landscape import Landscape
from ..trajectory import Projection
from ._html import Section, page
from ._sections import check_supported, section_for

__all__ = ["report"]

DEFAULT_TITLE = "lossvista report"


def report(
    path: str | os.PathLike[str],
    *results: Any,
    title: str | None = None,
    notes: str | None = None,
) -> Path:
    """Write one self-contained HTML file showing ``results``; returns its path.

    Each result gets a section as applicable: 2-D landscapes an interactive 3-D surface (log
    and clipping buttons) and contours with the training path, the grid minimum, local minima
    and saddles; lines and interpolations every metric and the barrier; N-D grids a plane with
    sliders for the other axes; Hessian results their eigenvalues (residuals, converged flags),
    density (log scale), trace ± stderr and verdict; sharpness with its settings; training
    monitors and comparisons their curves and tables; toy races the paths over the function's
    contours and the convergence table; other results their summary table and a plot where
    natural. Every section ends with a metadata table (settings, seeds, versions, engine).
    A :class:`~lossvista.Projection` with two coordinates is also drawn on every plane given
    that carries no trajectory of its own.

    Args:
        path: the HTML file to write (replaced if it exists; missing folders are created).
        results: result objects, or paths of files lossvista wrote (read with
            :func:`lossvista.load`), in the order they appear on the page.
        title: the page's heading (default ``"lossvista report"``).
        notes: free text shown under the title.

    Raises:
        InputError: no results, an object that is not a lossvista result (the message names
            its type and what is supported), a path that names nothing, a title or notes that
            are not text, or ``path`` naming a folder. Raised before anything is read or written.
        StoreError: a file that is not one lossvista wrote (from :func:`lossvista.load`).
    """
    target = _check_target(path)
    for name, value in (("title", title), ("notes", notes)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name} must be a str or None, got {type(value).__name__}")
    if not results:
        raise InputError("report needs at least one result or file, e.g. report(path, surface)")
    for position, item in enumerate(results, start=1):
        if isinstance(item, (str, os.PathLike)):
            source = Path(item)
            if not source.is_file():
                what = "is a folder, not a file" if source.is_dir() else "does not exist"
                raise InputError(f"result {position}: {str(source)!r} {what}")
        else:
            check_supported(item, position)
    loaded = []
    for position, item in enumerate(results, start=1):
        if isinstance(item, (str, os.PathLike)):
            loaded.append((load(item), Path(item).name))
        elif isinstance(item, Landscape) and item.path is not None:
            loaded.append((item, Path(item.path).name))  # a stored surface: its file's name
        else:
            loaded.append((item, f"result {position}"))
    for position, (obj, _) in enumerate(loaded, start=1):
        check_supported(obj, position)
    sections = _sections(loaded)
    html = page(title or DEFAULT_TITLE, notes, sections, _plotly_js(), _footer())
    data = html.encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    target.parent.mkdir(parents=True, exist_ok=True)
    _hdf5.atomic_write(target, write, what="HTML report")
    return target


def _check_target(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InputError(
            f"report needs the path of the HTML file to write first, got {type(path).__name__}: "
            "report('report.html', result, ...)"
        )
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{str(target)!r} is a folder; name the HTML file, e.g. report.html")
    return target


def _sections(loaded: list[tuple[Any, str]]) -> list[Section]:
    paths = [
        np.asarray(obj.coordinates, dtype=np.float64)
        for obj, _ in loaded
        if isinstance(obj, Projection)
        and np.ndim(obj.coordinates) == 2
        and np.shape(obj.coordinates)[1] == 2
    ]
    sections = []
    for obj, label in loaded:
        extra = None
        if isinstance(obj, Landscape) and obj.ndim == 2 and obj.trajectory is None and paths:
            extra = paths[0]
        sections.append(section_for(obj, label, extra))
    return sections


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:  # pragma: no cover - plotly is a core dependency
        raise MissingDependencyError(
            "report() needs plotly: pip install plotly (or lossvista)"
        ) from exc
    return str(get_plotlyjs())


def _footer() -> str:
    import plotly
    import torch

    return (
        f"Written by lossvista {__version__} (torch {torch.__version__}, plotly "
        f"{plotly.__version__}). Self-contained: plotly.js is embedded; nothing is fetched."
    )
