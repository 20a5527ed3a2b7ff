"""Landscapes of the final models of a comparison on one plane of directions, side by side."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._checks import check_int
from ..directions import Direction, Norm, random_directions
from ..errors import InputError
from ..objective import Objective
from ..slices import plane
from ._runs import LossFn, build_model

if TYPE_CHECKING:  # pragma: no cover
    from ..landscape import Landscape
    from .comparison import Comparison

__all__ = ["shared_plane"]


def shared_plane(
    comparison: Comparison,
    *,
    data: Any = None,
    loss_fn: LossFn | None = None,
    names: Sequence[str] | None = None,
    span: Any = (-1.0, 1.0),
    steps: int | tuple[int, int] = (21, 21),
    norm: Norm = "filter",
    ignore: str | Iterable[str] | None = ("bias", "bn"),
    seed: int = 0,
    per_model_normalization: bool = True,
    progress: bool = False,
    **plane_kwargs: Any,
) -> dict[str, Landscape]:
    """The loss on one plane of directions around every final model of ``comparison``.

    The directions come from one seed. With ``per_model_normalization`` (the default) the same
    Gaussian draw is filter-normalised to each model's own weights, so that models with different
    weight scales are compared fairly (Li et al. 2018, §5, small vs large batch); with ``False``
    the very same direction tensors, normalised to the first model, are used for every model.

    Args:
        comparison: a :class:`~lossvista.Comparison` from :func:`~lossvista.compare_optimizers`
            or :func:`~lossvista.sweep` (it keeps the model factory, the loss and the data; one
            read back from a file has no models to rebuild).
        data: evaluation data (default: the training data).
        loss_fn: default: the training loss.
        names: runs to include (default: all).
        span, steps: of every plane (see :func:`lossvista.plane`).
        norm, ignore, seed: of the random directions (see :func:`lossvista.random_directions`).
        per_model_normalization: see above.
        progress: progress bars.
        **plane_kwargs: passed on to :func:`lossvista.plane` (``strategy``, ...).

    Returns:
        Run name -> 2-D :class:`~lossvista.Landscape` centred on that run's final model.
    """
    from .comparison import Comparison

    if not isinstance(comparison, Comparison):
        raise InputError(
            f"shared_plane takes a Comparison (from compare_optimizers or sweep), got "
            f"{type(comparison).__name__}"
        )
    seed = check_int(seed, "seed")
    if comparison.model_factory is None:
        raise InputError(
            "this comparison has no model_factory to rebuild its models from (a comparison read "
            "from a file keeps only its table and histories); run compare_optimizers or sweep again"
        )
    data = comparison.data if data is None else data
    loss_fn = comparison.loss_fn if loss_fn is None else loss_fn
    if data is None or loss_fn is None:
        raise InputError("shared_plane needs data= and loss_fn=")
    chosen = comparison.names if names is None else list(names)
    unknown = [n for n in chosen if n not in comparison.models]
    if unknown or not chosen:
        raise InputError(f"unknown runs {unknown}; this comparison has {comparison.names}")
    landscapes: dict[str, Landscape] = {}
    directions: tuple[Direction, ...] | None = None
    for name in chosen:
        model = build_model(comparison.model_factory, comparison.settings.get("seed", 0))
        model.load_state_dict(comparison.models[name])
        objective = Objective(model, loss_fn, data)
        if directions is None or per_model_normalization:
            directions = random_directions(objective, 2, norm=norm, ignore=ignore, seed=seed)
        landscapes[name] = plane(
            objective, directions, span=span, steps=steps, progress=progress, **plane_kwargs
        )
    return landscapes
