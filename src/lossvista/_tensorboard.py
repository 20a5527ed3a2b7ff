"""Results to TensorBoard (their key numbers as scalars under fixed tags, their pictures as
images) and to the other sinks of a :class:`~lossvista.LandscapeProbe`.

:func:`log_to_tensorboard` writes any of lossvista's results at one training step. The tags
(``prefix`` defaults to ``"lossvista"``):

============================  =================================================================
result                        scalars (images)
============================  =================================================================
``Landscape``                 ``<prefix>/center_loss`` and ``<prefix>/center_<metric>`` for the
                              other values at the origin (image ``<prefix>/landscape``: the
                              contour plot of a plane, the curve of a line)
``Interpolation``             ``<prefix>/barrier``, ``<prefix>/barrier_t`` (image
                              ``<prefix>/interpolation``)
``Curve``                     ``<prefix>/curve_barrier``, ``<prefix>/line_barrier`` (image
                              ``<prefix>/curve``)
``EigenResult``               ``<prefix>/lambda_max`` (largest eigenvalue), ``<prefix>/lambda_min``
                              (smallest, when asked for)
``TraceEstimate``             ``<prefix>/trace``, ``<prefix>/trace_stderr``
``Sharpness``                 ``<prefix>/sharpness`` (the loss increase), and
                              ``<prefix>/sharpness_stderr`` for ``kind="average"``
``SurfaceMetrics``            ``<prefix>/surface/roughness``, ``.../mean_abs_slope``,
                              ``.../convexity_ratio``, ``.../n_basins`` (``surface/<metric>/...``
                              for a metric other than the loss)
``ProbeResults``              those of its plane, eigenvalues and sharpness
============================  =================================================================

:func:`log_results` hands a probe's results to one sink: a writer, a Lightning logger (its
writer when it has one, else ``log_metrics`` of the scalars) or a callable ``sink(step,
results)``. TensorBoard stores scalars as float32. The ``tensorboard`` package is needed only to create a
writer from a folder (:func:`summary_writer`); any object with ``add_scalar`` and
``add_figure`` (a ``torch.utils.tensorboard.SummaryWriter``, tensorboardX's) is a writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import check_int
from .errors import InputError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "TAG_PREFIX",
    "is_writer",
    "log_results",
    "log_to_tensorboard",
    "scalars",
    "sinks",
    "summary_writer",
]

#: The default first part of every tag.
TAG_PREFIX = "lossvista"
TENSORBOARD_MISSING = (
    "writing TensorBoard event files needs the tensorboard package: "
    "pip install 'lossvista[tensorboard]'"
)
_ACCEPTED = (
    "Landscape, Interpolation, Curve, EigenResult, TraceEstimate, Sharpness, SurfaceMetrics, "
    "ProbeResults or None"
)


def summary_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir``.

    Raises:
        MissingDependencyError: the tensorboard package is missing (the message names the pip extra).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(TENSORBOARD_MISSING) from exc
    return SummaryWriter(log_dir=str(log_dir))


def is_writer(obj: Any) -> bool:
    """Whether ``obj`` writes like a ``SummaryWriter`` (``add_scalar`` and ``add_figure``)."""
    return callable(getattr(obj, "add_scalar", None)) and callable(getattr(obj, "add_figure", None))


def scalars(*results: Any, prefix: str = TAG_PREFIX) -> dict[str, float]:
    """The scalars :func:`log_to_tensorboard` writes for ``results``, tag -> value.

    Raises:
        InputError: a result of another type, or two results that give the same tag.
    """
    out: dict[str, float] = {}
    for result in _flattened(results):
        for name, value in _numbers(result):
            tag = f"{prefix}/{name}"
            if tag in out:
                raise InputError(
                    f"two results give the TensorBoard tag {tag!r}; log them in separate calls "
                    "or with different prefix= values"
                )
            out[tag] = float(value)
    return out


def log_to_tensorboard(
    writer: Any, step: int, *results: Any, prefix: str = TAG_PREFIX, figures: bool = True
) -> dict[str, float]:
    """Write ``results`` at ``step``: their scalars and (``figures``) their pictures.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``
            and ``add_figure``), or a folder to create one in (needs the tensorboard package:
            ``pip install 'lossvista[tensorboard]'``).
        step: the global step the values belong to (>= 0).
        *results: :class:`~lossvista.Landscape`, :class:`~lossvista.Interpolation`,
            :class:`~lossvista.Curve`, :class:`~lossvista.EigenResult`,
            :class:`~lossvista.TraceEstimate`, :class:`~lossvista.Sharpness`,
            :class:`~lossvista.SurfaceMetrics` or a probe's results; ``None`` is skipped.
        prefix: the first part of every tag (the tags are listed in the module docstring).
        figures: also draw the landscapes and curves (with lossvista's plot functions) and add
            them as images; a landscape without a finite value is not drawn.

    Returns:
        The scalars written, tag -> value (float64; TensorBoard keeps them as float32).

    Raises:
        InputError: a result of another type, two results giving the same tag, a bad step or
            writer; all before anything is written.
    """
    step = check_int(step, "step", 0)
    if isinstance(writer, (str, Path)):
        writer = summary_writer(writer)
    if not is_writer(writer):
        raise InputError(
            f"writer must be a torch.utils.tensorboard.SummaryWriter (add_scalar and add_figure) "
            f"or a folder, got {type(writer).__name__}"
        )
    values = scalars(*results, prefix=prefix)
    pictures = [(f"{prefix}/{name}", r) for r in _flattened(results) for name in _figure_tag(r)]
    for tag, value in values.items():
        writer.add_scalar(tag, value, global_step=step)
    if figures:
        for tag, result in pictures:
            figure = _draw(result)
            if figure is not None:
                writer.add_figure(tag, figure, global_step=step, close=True)
    flush = getattr(writer, "flush", None)
    if callable(flush):
        flush()  # live monitoring: visible in TensorBoard now, not at the next periodic flush
    return values


def sinks(value: Any) -> list[Any]:
    """``value`` (``None``, one sink or a list) as a list of sinks, checked; a folder becomes a
    ``SummaryWriter``."""
    listed = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for sink in listed:
        if isinstance(sink, (str, Path)):
            sink = summary_writer(sink)
        elif not (
            is_writer(sink) or callable(getattr(sink, "log_metrics", None)) or callable(sink)
        ):
            raise InputError(
                "a sink must be a SummaryWriter (or a folder), a Lightning logger or a callable "
                f"sink(step, results); got {type(sink).__name__}"
            )
        out.append(sink)
    return out


def log_results(sink: Any, step: int, results: Any) -> None:
    """Hand ``results`` to one sink: a writer, a Lightning logger or a callable."""
    if is_writer(sink):
        log_to_tensorboard(sink, step, results)
    elif callable(getattr(sink, "log_metrics", None)):
        experiment = getattr(sink, "experiment", None)
        if is_writer(experiment):
            log_to_tensorboard(experiment, step, results)
        else:
            sink.log_metrics(scalars(results), step=step)
    else:
        sink(step, results)


# -- what each result gives -------------------------------------------------------------------------
def _flattened(results: tuple[Any, ...]) -> Iterator[Any]:
    from .probe import ProbeResults  # lazily: the probe module imports this one

    for result in results:
        if result is None:
            continue
        if isinstance(result, ProbeResults):
            yield from result.parts()
        elif _kind(result) is None:
            raise InputError(
                f"cannot log a {type(result).__name__} to TensorBoard; expected {_ACCEPTED}"
            )
        else:
            yield result


def _kind(result: Any) -> str | None:
    from .curvature import EigenResult, TraceEstimate
    from .geometry import Curve
    from .landscape import Interpolation, Landscape
    from .sharpness import Sharpness
    from .surface_metrics import SurfaceMetrics

    for cls, name in (
        (Interpolation, "interpolation"),
        (Landscape, "landscape"),
        (Curve, "curve"),
        (EigenResult, "eigen"),
        (TraceEstimate, "trace"),
        (Sharpness, "sharpness"),
        (SurfaceMetrics, "surface"),
    ):
        if isinstance(result, cls):
            return name
    return None


def _numbers(result: Any) -> list[tuple[str, float]]:
    kind = _kind(result)
    if kind == "interpolation":
        if not result.endpoints:
            return []
        return [("barrier", result.barrier), ("barrier_t", result.barrier_t)]
    if kind == "landscape":
        return [(f"center_{name}", value) for name, value in result.center.items()]
    if kind == "curve":
        return [("curve_barrier", result.barrier), ("line_barrier", result.line.barrier)]
    if kind == "eigen":
        out = []
        if len(result.largest):
            out.append(("lambda_max", float(result.largest[0])))
        if len(result.smallest):
            out.append(("lambda_min", float(result.smallest[0])))
        return out
    if kind == "trace":
        return [("trace", result.estimate), ("trace_stderr", result.stderr)]
    if kind == "sharpness":
        out = [("sharpness", result.value)]
        if result.kind == "average":
            out.append(("sharpness_stderr", result.stderr))
        return out
    # surface metrics
    base = "surface" if result.metric == "loss" else f"surface/{result.metric}"
    out = [
        (f"{base}/roughness", result.roughness),
        (f"{base}/mean_abs_slope", result.mean_abs_slope),
        (f"{base}/convexity_ratio", result.convexity_ratio),
    ]
    if result.n_basins is not None:
        out.append((f"{base}/n_basins", float(result.n_basins)))
    return out


def _figure_tag(result: Any) -> list[str]:
    kind = _kind(result)
    if kind in ("landscape", "interpolation") and result.ndim <= 2:
        return [kind]
    return ["curve"] if kind == "curve" else []


def _draw(result: Any) -> Figure | None:
    """The result's own plot on a figure outside pyplot (nothing piles up in a long run)."""
    from matplotlib.figure import Figure

    values = result.path.values["loss"] if _kind(result) == "curve" else result.values["loss"]
    if not np.isfinite(values).any():
        return None  # a diverged model: nothing to draw, the scalars say NaN
    figure = Figure(figsize=(5.0, 4.0))
    result.plot(ax=figure.add_subplot())
    return figure
