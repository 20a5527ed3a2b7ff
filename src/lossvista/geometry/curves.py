"""Curves between minima: :func:`connect` fits a Bezier curve or a polygonal chain between two
models whose loss stays low all along (Garipov et al., 2018, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs").

The curve's bends are trained by minimising the expected loss ``E_{t ~ U(0, 1)} L(theta(t))``
with minibatches of the objective's data; the end points stay fixed. Only the objective's
selected parameters lie on the curve; every other parameter and buffer is the objective's
model's (as in :func:`lossvista.interpolate`). The result, :class:`Curve`, holds the control
points, the loss along the curve and along the straight line (exact, on all the data), and builds
models on the curve with :meth:`Curve.model_at`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_objective, check_optional_int
from .._result import Result
from ..errors import DirectionError, InputError
from ..landscape import Interpolation
from ..objective import Objective
from ..slices import _selected
from ._curve_fit import (
    KINDS,
    curve_point,
    evaluator,
    fit_bends,
    recompute_batchnorm,
    straight_bends,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Curve", "connect"]

ModelLike = nn.Module | Mapping[str, torch.Tensor]
TensorDict = dict[str, torch.Tensor]


@dataclasses.dataclass(eq=False, repr=False)
class Curve(Result):
    """A curve between two models and the loss along it.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"curve"``) that ``lossvista.load``
    reads back: control points, kind, settings, the fitting losses and the values along the
    curve and the line. The objective is not saved, so a loaded curve builds models only from a
    template: ``curve.model_at(t, model=template)`` (and ``objective=`` for ``bn="recompute"``).

    Attributes:
        control_points: ``bends + 2`` mappings name -> tensor over the objective's selected
            parameters; the first is ``model_a``'s, the last ``model_b``'s (bit for bit).
        kind: ``"bezier"`` or ``"polychain"``.
        bn: the BatchNorm policy of the fit and of the values (``"eval"`` or ``"recompute"``).
        path: the loss (and metrics) along the curve over ``t`` in ``[0, 1]``, an
            :class:`~lossvista.landscape.Interpolation` with end points ``"a"`` and ``"b"``.
        line: the same on the straight line ``(1 - t) theta_a + t theta_b``.
        fit_loss: ``(steps,)`` the minibatch loss of every training step.
        settings: kind, bends, steps, lr, batch_size, bn, seed, points, optimizer, objective.
    """

    control_points: list[TensorDict]
    kind: str
    bn: str
    path: Interpolation
    line: Interpolation
    fit_loss: np.ndarray
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    result_kind = "curve"
    file_format = "hdf5"

    def __post_init__(self) -> None:
        self._objective: Objective | None = None

    @property
    def bends(self) -> int:
        return len(self.control_points) - 2

    @property
    def barrier(self) -> float:
        """The curve's loss barrier, defined as :attr:`Interpolation.barrier` (``path.barrier``)."""
        return self.path.barrier

    def parameters_at(self, t: float) -> TensorDict:
        """The curve's parameters (the objective's selected ones) at ``t`` in ``[0, 1]``."""
        t = _check_t(t)
        with torch.no_grad():
            return curve_point(self.control_points, self.kind, t)

    def model_at(
        self, t: float, model: nn.Module | None = None, *, objective: Objective | None = None
    ) -> nn.Module:
        """A new module with the curve's parameters at ``t``; the template is not changed.

        Args:
            t: where on the curve, in ``[0, 1]``.
            model: the template to deep-copy (default: the objective's model, which a loaded
                curve does not have).
            objective: the objective whose data re-estimate the BatchNorm statistics when
                ``bn="recompute"`` (default: the one the curve was fitted with).

        Returns:
            A deep copy of the template with the selected parameters set to the curve's point
            at ``t``; under ``bn="recompute"`` its BatchNorm statistics re-estimated at that
            point on the objective's data. Other parameters and buffers are the template's.
        """
        params = self.parameters_at(t)
        obj = objective or self._objective
        template = model if model is not None else (obj.model if obj is not None else None)
        if template is None:
            raise InputError(
                "this curve has no objective (it was loaded from a file): pass a model of the "
                "same architecture as the template, curve.model_at(t, model=template)"
            )
        new = copy.deepcopy(template)
        named = dict(new.named_parameters())
        missing = [n for n in params if n not in named]
        if missing:
            raise DirectionError(f"the template lacks parameters of the curve: {missing[:10]}")
        with torch.no_grad():
            for name, value in params.items():
                if tuple(named[name].shape) != tuple(value.shape):
                    raise DirectionError(
                        f"the template's {name!r} has shape {tuple(named[name].shape)}, the "
                        f"curve's {tuple(value.shape)}"
                    )
                named[name].copy_(value)
        if self.bn == "recompute" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in new.modules()
        ):
            if obj is None:
                raise InputError(
                    "bn='recompute' re-estimates BatchNorm statistics on the objective's data: "
                    "pass objective= (the curve was loaded from a file)"
                )
            recompute_batchnorm(obj, new)
        return new

    def plot(self, ax: Axes | None = None) -> Figure:
        """The loss along the curve and along the straight line, both over ``t``; returns the
        figure. Drawn by :func:`lossvista.plot.curves.plot_curve`."""
        from ..plot.curves import plot_curve

        return plot_curve(self, ax)

    # -- result protocol ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "control_points": [dict(p) for p in self.control_points],
            "kind": self.kind,
            "bn": self.bn,
            "t": self.path.coords[0],
            "path_values": dict(self.path.values),
            "path_endpoints": self.path.endpoints,
            "line_values": dict(self.line.values),
            "line_endpoints": self.line.endpoints,
            "fit_loss": self.fit_loss,
            "settings": self.settings,
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Curve:
        t = np.asarray(state["t"], dtype=np.float64)
        kind, bends = str(state["kind"]), len(state["control_points"]) - 2
        return cls(
            control_points=[dict(p) for p in state["control_points"]],
            kind=kind,
            bn=str(state["bn"]),
            path=_interpolation(t, state["path_values"], state["path_endpoints"], kind, bends),
            line=_interpolation(t, state["line_values"], state["line_endpoints"], "line", 0),
            fit_loss=np.asarray(state["fit_loss"], dtype=np.float64),
            settings=dict(state["settings"]),
        )

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("kind", self.kind),
            ("bends", self.bends),
            ("steps", self.settings.get("steps")),
            ("bn", self.bn),
            ("barrier", self.barrier),
            ("line barrier", self.line.barrier),
            ("barrier at t", self.path.barrier_t),
            ("loss at a", self.path.endpoints["a"].get("loss")),
            ("loss at b", self.path.endpoints["b"].get("loss")),
        ]


def connect(
    obj: Objective,
    model_a: ModelLike,
    model_b: ModelLike,
    *,
    kind: Literal["bezier", "polychain"] = "bezier",
    bends: int = 1,
    steps: int = 1000,
    lr: float = 0.01,
    batch_size: int | None = None,
    bn: Literal["eval", "recompute"] | None = None,
    seed: int = 0,
    points: int = 51,
    progress: bool = True,
) -> Curve:
    """Fit a low-loss curve between ``model_a`` and ``model_b`` (Garipov et al., 2018).

    The bends start on the straight line (equally spaced control points, so the initial curve
    *is* the line) and are trained with Adam for ``steps`` steps; each step draws
    ``t ~ U(0, 1)`` (seeded by ``seed``) and one minibatch of the objective's data (its batches
    of ``batch_size``, in order, cycled) and lowers that batch's loss at ``theta(t)``, evaluated
    with ``torch.func.functional_call`` so no model is ever written. The caller's models and the
    objective's model are left unchanged.

    Only the objective's selected parameters lie on the curve; every other parameter and buffer
    (BatchNorm running statistics under ``bn="eval"``) is the objective's model's, as in
    :func:`lossvista.interpolate`.

    Args:
        obj: the :class:`~lossvista.Objective`.
        model_a, model_b: the end points: models or state dicts with the objective's parameter
            names and shapes.
        kind: ``"bezier"`` (degree ``bends + 1``, Bernstein weights) or ``"polychain"``
            (piecewise linear through the bends at ``t = k / (bends + 1)``).
        bends: number of trainable control points (>= 1).
        steps: optimisation steps (>= 1).
        lr: Adam's learning rate.
        batch_size: minibatch size of the fit (tensor data; loaders keep their batches);
            default the objective's batch size.
        bn: ``"eval"`` (running statistics) or ``"recompute"`` (batch statistics while fitting,
            statistics re-estimated on all the data at every evaluated point); default the
            objective's policy.
        seed: seed of the random ``t`` of the fit.
        points: number of ``t`` values (>= 2, ends included) of ``.path`` and ``.line``.
        progress: progress bar on a terminal.

    Returns:
        A :class:`Curve`.
    """
    check_objective(obj)
    if kind not in KINDS:
        raise InputError(f"kind must be 'bezier' or 'polychain', got {kind!r}")
    bends = check_int(bends, "bends", 1)
    steps = check_int(steps, "steps", 1)
    points = check_int(points, "points", 2)
    seed = check_int(seed, "seed")
    batch_size = check_optional_int(batch_size, "batch_size", 1)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    policy = obj.bn if bn is None else bn
    if policy not in ("eval", "recompute"):
        raise InputError(f"bn must be 'eval' or 'recompute', got {bn!r}")
    a, b = _selected(obj, model_a, "model_a"), _selected(obj, model_b, "model_b")
    a = {n: t.clone() for n, t in a.items()}
    b = {n: t.clone() for n, t in b.items()}
    if all(torch.equal(a[n], b[n]) for n in a):
        raise DirectionError("model_a and model_b are identical on the selected parameters")
    start = straight_bends(a, b, bends)
    control, fit_loss = fit_bends(
        obj,
        start,
        kind=kind,
        steps=steps,
        lr=float(lr),
        batch_size=batch_size,
        bn=policy,
        seed=seed,
        progress=progress,
    )
    t = np.linspace(0.0, 1.0, points)
    scorer = evaluator(obj, policy)
    path_values = _values_along(scorer, [curve_point(control, kind, float(x)) for x in t])
    line_values = _values_along(scorer, [curve_point([a, b], "bezier", float(x)) for x in t])
    settings = {
        "kind": kind,
        "bends": bends,
        "steps": steps,
        "lr": float(lr),
        "batch_size": batch_size,
        "bn": policy,
        "seed": seed,
        "points": points,
        "optimizer": "adam",
        "objective": obj.settings(),
    }
    curve = Curve(
        control_points=control,
        kind=kind,
        bn=policy,
        path=_interpolation(t, path_values, _ends(path_values), kind, bends),
        line=_interpolation(t, line_values, _ends(line_values), "line", 0),
        fit_loss=fit_loss,
        settings=settings,
    )
    curve._objective = obj
    return curve


def _values_along(obj: Objective, at: list[TensorDict]) -> dict[str, np.ndarray]:
    rows = [obj.evaluate(at=p) for p in at]
    return {name: np.array([r[name] for r in rows], dtype=np.float64) for name in rows[0]}


def _ends(values: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {
        "a": {m: float(v[0]) for m, v in values.items()},
        "b": {m: float(v[-1]) for m, v in values.items()},
    }


def _interpolation(
    t: np.ndarray,
    values: Mapping[str, Any],
    endpoints: Mapping[str, Mapping[str, float]],
    kind: str,
    bends: int,
) -> Interpolation:
    label = "t  (straight line)" if kind == "line" else f"t  ({kind} curve, {bends} bend(s))"
    ends = {e: {m: float(v) for m, v in endpoints[e].items()} for e in ("a", "b")}
    return Interpolation(
        coords=(np.asarray(t, dtype=np.float64),),
        values={m: np.asarray(v, dtype=np.float64) for m, v in values.items()},
        center=dict(ends["a"]),
        kind="interpolation",
        axis_labels=(label,),
        markers={"a": (0.0,), "b": (1.0,)},
        endpoints=ends,
    )


def _check_t(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise InputError(f"t must be a number in [0, 1], got {t!r}")
    return float(t)
