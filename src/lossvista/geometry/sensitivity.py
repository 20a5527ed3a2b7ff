"""Per-layer sensitivity: which parameter groups are the sharp ones.

Each group is measured with only its own parameters moving, everything else fixed at the
model's values: the objective is the caller's, restricted to the group's parameters (the same
model, loss, data and settings), so the group's Hessian is the diagonal block of the full
Hessian that belongs to it.

- ``kind="curvature"``: the block's top eigenvalue (``lambda_max``, :func:`lossvista.hessian_eigs`)
  and its trace with the standard error (``trace``, ``trace_stderr``,
  :func:`lossvista.hessian_trace`).
- ``kind="sharpness"``: :func:`lossvista.sharpness` of the group (``sharpness``,
  ``sharpness_stderr``).
- ``kind="slice"``: the loss along one seeded filter-normalised random direction of the group
  (:func:`lossvista.random_directions` then :func:`lossvista.line`); every parameter of the group
  moves (biases and normalisation layers included, unless ``ignore=`` says otherwise) so that a
  group made only of them still has a slice. Under ``bn="perturb"`` the running statistics of
  the group's own BatchNorm modules move with it, no others. The row holds ``max_increase``: the largest loss
  along the slice minus the loss at the centre.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from .._result import Result
from ..errors import InputError, MissingDependencyError
from ..objective import Objective
from ..params import select_names

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["LayerSensitivity", "layer_sensitivity"]

Kind = Literal["curvature", "sharpness", "slice"]
_MAIN_VALUE = {"curvature": "lambda_max", "sharpness": "sharpness", "slice": "max_increase"}
_CURVATURE_OPTIONS = ("n_probes", "trace_method", "tol", "max_iter", "hvp_backend")
_SLICE_OPTIONS = ("span", "steps", "strategy", "ignore", "norm")


@dataclasses.dataclass(eq=False, repr=False)
class LayerSensitivity(Result):
    """One measurement per parameter group (see the module docstring).

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"layer_sensitivity"``) that
    ``lossvista.load`` reads back.

    Attributes:
        kind: ``"curvature"``, ``"sharpness"`` or ``"slice"``.
        rows: one dict per group: ``group``, ``n_params``, ``params`` (the names moved) and the
            values: ``lambda_max``, ``trace``, ``trace_stderr`` (curvature); ``sharpness``,
            ``sharpness_stderr`` (sharpness); ``center_loss``, ``max_increase`` (slice).
        slices: for ``"slice"``, group -> ``{"coords": (steps,), "loss": (steps,)}``.
        settings: the options used and the seed.
    """

    kind: str
    rows: list[dict[str, Any]]
    slices: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    result_kind: ClassVar[str] = "layer_sensitivity"
    file_format: ClassVar[str] = "hdf5"

    @property
    def value_name(self) -> str:
        """The main value of a row, the one the bar chart draws."""
        return _MAIN_VALUE[self.kind]

    def plot(self, ax: Axes | None = None) -> Figure:
        """A bar per group (and the slices overlaid, for ``"slice"``); returns the figure. Drawn
        by :func:`lossvista.plot.geometry.plot_sensitivity`."""
        from ..plot.geometry import plot_sensitivity

        return plot_sensitivity(self, ax)

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (one row per group; ``params`` left out)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise MissingDependencyError(
                "LayerSensitivity.to_pandas needs pandas: pip install pandas (or read .rows, a "
                "list of dicts)"
            ) from exc
        return pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in self.rows])

    def _summary(self) -> list[tuple[str, Any]]:
        key = self.value_name
        out: list[tuple[str, Any]] = [("kind", self.kind), ("groups", len(self.rows))]
        out += [(f"{key}[{row['group']}]", float(row[key])) for row in self.rows]
        return out


def layer_sensitivity(
    obj: Objective,
    *,
    kind: Kind = "curvature",
    groups: Mapping[str, str | list[str] | tuple[str, ...]] | None = None,
    seed: int = 0,
    **options: Any,
) -> LayerSensitivity:
    """Measure every parameter group with only its own parameters moving.

    Args:
        obj: the :class:`~lossvista.Objective`; only its selected parameters are grouped.
        kind: ``"curvature"``, ``"sharpness"`` or ``"slice"`` (see the module docstring).
        groups: group name -> a name or glob, or a list of them, matched against the objective's
            selected parameters. Default: one group per module that owns selected parameters
            directly (``named_parameters(recurse=False)``), named by its module path (the root
            module: ``"(model)"``).
        seed: seed of the eigensolver, trace probes, sharpness noise or slice direction.
        options: for ``"curvature"``: ``n_probes`` (trace products, default 100),
            ``trace_method`` (``"hutchinson"`` or ``"hutch++"``; Hutch++ with
            ``n_probes >= 3 * n_params`` is exact), ``tol``, ``max_iter``, ``hvp_backend``. For
            ``"sharpness"``: :func:`lossvista.sharpness`'s arguments, with ``sharpness_kind``
            for its ``kind`` (default ``"average"``) and ``rho`` required. For ``"slice"``:
            ``span`` (default ``(-1, 1)``), ``steps`` (default 21), ``strategy``, ``norm``
            (default ``"filter"``), ``ignore`` (default ``()``).

    Returns:
        A :class:`LayerSensitivity`. The model is not changed.
    """
    if not isinstance(obj, Objective):
        raise InputError(f"layer_sensitivity needs an lv.Objective, got {type(obj).__name__}")
    if kind not in _MAIN_VALUE:
        raise InputError(f"kind must be one of {list(_MAIN_VALUE)}, got {kind!r}")
    measure = {"curvature": _curvature, "sharpness": _sharpness, "slice": _slice}[kind]
    _check_options(kind, options)
    rows, slices = [], {}
    for name, names in _groups(obj, groups).items():
        sub = _restricted(obj, names)
        n_params = sum(int(t.numel()) for t in sub.parameters().values())
        values, piece = measure(sub, seed, options)
        rows.append({"group": name, "n_params": n_params, "params": list(names), **values})
        if piece is not None:
            slices[name] = piece
    settings = {"seed": int(seed), **{k: _plain(v) for k, v in options.items()}}
    return LayerSensitivity(kind, rows, slices, settings)


def _check_options(kind: str, options: Mapping[str, Any]) -> None:
    allowed = {"curvature": _CURVATURE_OPTIONS, "slice": _SLICE_OPTIONS}.get(kind)
    unknown = sorted(set(options) - set(allowed)) if allowed is not None else []
    if unknown:
        raise InputError(f"kind={kind!r} takes the options {list(allowed or ())}, got {unknown}")
    if kind == "sharpness" and "rho" not in options:
        raise InputError("kind='sharpness' needs rho= (and sharpness_kind=, default 'average')")


def _groups(obj: Objective, groups: Any) -> dict[str, tuple[str, ...]]:
    selected = obj.param_names
    if groups is None:
        out: dict[str, tuple[str, ...]] = {}
        for path, module in obj.model.named_modules():
            prefix = f"{path}." if path else ""
            own = [f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False)]
            names = tuple(n for n in own if n in selected)
            if names:
                out[path or "(model)"] = names
        return out
    if not isinstance(groups, Mapping) or not groups:
        raise InputError(f"groups must be a non-empty mapping name -> glob(s), got {groups!r}")
    return {str(name): select_names(selected, patterns) for name, patterns in groups.items()}


def _restricted(obj: Objective, names: tuple[str, ...]) -> Objective:
    """The objective with only ``names`` selected: a shallow copy, so that the model, loss, data
    (streams included, which cannot be read again from the start) and settings are shared; the
    caller's objective keeps its own selection.

    Under ``bn="perturb"`` only the running statistics of the modules that own the group's
    parameters move with it (a BatchNorm group moves its own statistics; a ``Linear`` group
    moves none): the other groups' statistics stay where they are, like their parameters.
    """
    owners = {name.rpartition(".")[0] for name in names}

    class _GroupObjective(type(obj)):  # type: ignore[misc, valid-type]
        def perturbed_buffers(self) -> dict[str, Any]:
            every = super().perturbed_buffers()
            return {n: t for n, t in every.items() if n.rpartition(".")[0] in owners}

    sub = _GroupObjective.__new__(_GroupObjective)
    sub.__dict__.update(copy.copy(obj.__dict__))
    sub.param_names = tuple(names)
    sub.param_selection = list(names)
    return sub


def _curvature(sub: Objective, seed: int, options: Mapping[str, Any]) -> tuple[dict, None]:
    from ..curvature import hessian_eigs, hessian_trace

    backend = options.get("hvp_backend", "auto")
    eig_options = {k: options[k] for k in ("tol", "max_iter") if k in options}
    eigs = hessian_eigs(sub, k=1, seed=seed, hvp_backend=backend, **eig_options)
    trace = hessian_trace(
        sub,
        method=options.get("trace_method", "hutchinson"),
        n_probes=options.get("n_probes", 100),
        seed=seed,
        hvp_backend=backend,
    )
    values = {
        "lambda_max": float(eigs.values[0]),
        "trace": float(trace.estimate),
        "trace_stderr": float(trace.stderr),
    }
    return values, None


def _sharpness(sub: Objective, seed: int, options: Mapping[str, Any]) -> tuple[dict, None]:
    from ..sharpness import sharpness

    forwarded = {k: v for k, v in options.items() if k != "sharpness_kind"}
    result = sharpness(sub, kind=options.get("sharpness_kind", "average"), seed=seed, **forwarded)
    return {"sharpness": float(result.value), "sharpness_stderr": float(result.stderr)}, None


def _slice(sub: Objective, seed: int, options: Mapping[str, Any]) -> tuple[dict, dict]:
    from ..directions import random_directions
    from ..slices import line

    (direction,) = random_directions(
        sub, 1, seed=seed, norm=options.get("norm", "filter"), ignore=options.get("ignore", ())
    )
    landscape = line(
        sub,
        direction,
        span=options.get("span", (-1.0, 1.0)),
        steps=options.get("steps", 21),
        strategy=options.get("strategy", "auto"),
        progress=False,
    )
    coords = np.asarray(landscape.coords[0], dtype=np.float64)
    loss = np.asarray(landscape.values["loss"], dtype=np.float64)
    centre = float(sub.evaluate()["loss"])
    finite = loss[np.isfinite(loss)]
    increase = float(finite.max() - centre) if finite.size else float("nan")
    return {"center_loss": centre, "max_increase": increase}, {"coords": coords, "loss": loss}


def _plain(value: Any) -> Any:
    """Options as JSON values (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value
