"""Curvature over a slice: the extreme Hessian eigenvalues at every grid point of a landscape."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._functional import functional
from .._grid import Grid, RunOptions, run_grid
from ..engine import EngineConfig, PointEvaluator, Sink
from ..errors import ConvergenceWarning, InputError
from ..landscape import Landscape
from ..objective import Objective
from ..params import fingerprint
from ._common import check_objective, check_positive_int, renamed
from .hvp import GRAPH_BYTES, Backend, HessianOperator
from .lanczos import eigs_of

KIND = "curvature_map"


@renamed(hvp_method="hvp_backend")
def curvature_map(
    obj: Objective,
    landscape: Landscape,
    *,
    store: str | Path | None = None,
    resume: bool | None = None,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    hvp_backend: Backend = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
    progress: bool = True,
    check_center: bool = True,
    distributed: bool | str = "auto",
    distributed_mode: str = "auto",
) -> Landscape:
    """The largest and smallest Hessian eigenvalue (and the loss) at every point of a slice.

    The points are those of ``landscape`` (a 1-D or 2-D slice from ``lv.line`` / ``lv.plane``):
    ``theta + sum_i coords_i * d_i`` with ``theta`` the objective's current parameters and
    ``d_i`` the landscape's directions. The parameters are set functionally, never written into
    the model. Every point costs one :func:`~lossvista.curvature.hessian_eigs` run
    (``which="both"``), so keep the grid small (e.g. 11 x 11).

    Args:
        obj: the :class:`~lossvista.Objective`; its model must sit at the landscape's origin.
        landscape: the slice whose grid and directions to use.
        store: an HDF5 surface file filled point by point (same format as slices).
        resume: with an existing ``store``: ``None``/``True`` computes only its missing points
            (refusing a file made with other settings), ``False`` overwrites it.
        k: eigenvalues per end; values ``"lambda_max"``/``"lambda_min"`` hold the extreme ones,
            ``"lambda_max_2"``... ``"lambda_min_2"``... the next ones when ``k > 1``.
        tol: relative residual tolerance of the eigensolver (see ``hessian_eigs``).
        max_iter, seed, hvp_backend, max_graph_bytes: as in ``hessian_eigs``.
        progress: a progress bar on a terminal.
        check_center: compare the engine's loss at the origin with ``obj.evaluate()`` and refuse
            a model or data that do not reproduce it (as the slices do).
        distributed, distributed_mode: as in :func:`lv.line` (under torchrun the points are
            shared between the ranks).

    Returns:
        A :class:`~lossvista.Landscape` of kind ``"curvature_map"`` with the objective's values
        (``"loss"`` and its metrics), ``"lambda_max"`` and ``"lambda_min"``: ``.plot(metric="lambda_max")`` draws it.
        Points whose eigenpairs did not converge keep their best values, with one
        :class:`ConvergenceWarning` naming how many.

    Raises:
        InputError: not a slice with directions; the model is not at the landscape's origin;
            ``bn="recompute"`` with BatchNorm (statistics would be those of the origin).
        CenterMismatchError: the model or data do not reproduce the loss at the origin.
        StoreMismatchError: resuming a file made with other settings.
    """
    check_objective(obj)
    k = check_positive_int(k, "k")
    _check_inputs(obj, landscape)
    solver = _CurvatureSolver(
        obj,
        k,
        settings={
            "k": k,
            "tol": float(tol),
            "max_iter": max_iter,
            "seed": int(seed),
            "hvp_backend": hvp_backend,
            "source_kind": landscape.kind,
        },
        max_graph_bytes=max_graph_bytes,
    )
    grid = Grid(
        kind=KIND,
        coords=landscape.coords,
        directions=tuple(landscape.directions),
        axis_labels=landscape.axis_labels,
        markers=landscape.markers,
        seed=landscape.seed,
    )
    options = RunOptions(
        store=store,
        resume=resume,
        progress=progress,
        check_center=check_center,
        distributed=distributed,
        distributed_mode=distributed_mode,
    )
    result = run_grid(obj, grid, options, solver)
    if solver.unconverged:
        warnings.warn(
            f"curvature_map: at {solver.unconverged} of {solver.solved} points the eigenpairs did "
            f"not reach tol={tol:g}; their values are the best available (raise max_iter or tol)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result


class _CurvatureSolver:
    """Grid solver: the objective's values through the engine, then the extreme eigenpairs."""

    settings_key = "curvature"

    def __init__(self, obj: Objective, k: int, *, settings: dict[str, Any], max_graph_bytes: int):
        self.obj = obj
        self.k = k
        self.settings = settings
        self.extra_names = tuple(_eigen_names(k))
        self.max_graph_bytes = max_graph_bytes
        self.unconverged = 0
        self.solved = 0

    def __call__(
        self,
        evaluator: PointEvaluator,
        points: np.ndarray,
        flat: np.ndarray,
        sink: Sink,
        *,
        options: RunOptions,
        config: EngineConfig | None,
        on_config: Callable[[EngineConfig], None],
        desc: str,
    ) -> EngineConfig | None:
        s = self.settings
        with functional(self.obj) as view:
            for coefficients, index in tqdm(
                list(zip(points, flat, strict=True)),
                desc=desc,
                unit="point",
                disable=None if options.progress else True,
            ):
                values, _ = evaluator.run(coefficients[None, :], strategy="loop", progress=False)
                params = {**evaluator.origin, **evaluator.moving_parameters(coefficients)}
                op = HessianOperator.at(
                    self.obj,
                    view,
                    params,
                    backend=s["hvp_backend"],
                    max_graph_bytes=self.max_graph_bytes,
                )
                try:
                    result = eigs_of(
                        op,
                        self.k,
                        which="both",
                        tol=s["tol"],
                        max_iter=s["max_iter"],
                        seed=s["seed"],
                        warn=False,
                    )
                finally:
                    op.release()
                values.update(
                    {
                        name: np.array([v])
                        for name, v in zip(
                            self.extra_names, _ordered(result.values, self.k), strict=True
                        )
                    }
                )
                self.unconverged += int(not result.all_converged)
                self.solved += 1
                sink(np.array([index]), values)
        return None


def _eigen_names(k: int) -> list[str]:
    """``lambda_max, lambda_max_2, ..., lambda_min, lambda_min_2, ...``."""
    suffix = ["", *(f"_{i}" for i in range(2, k + 1))]
    return [f"lambda_max{s}" for s in suffix] + [f"lambda_min{s}" for s in suffix]


def _ordered(values: np.ndarray, k: int) -> list[float]:
    return [float(v) for v in values[:k]] + [float(v) for v in values[k : 2 * k]]


def _check_inputs(obj: Objective, landscape: Landscape) -> None:
    if not isinstance(landscape, Landscape):
        raise InputError(
            f"landscape must be an lv.Landscape (from lv.line or lv.plane), got "
            f"{type(landscape).__name__}"
        )
    if landscape.ndim not in (1, 2) or len(landscape.directions) != landscape.ndim:
        raise InputError(
            f"the landscape ({landscape.kind}) has {landscape.ndim} axes and "
            f"{len(landscape.directions)} directions; curvature_map needs a 1-D or 2-D slice "
            "with its directions (imported legacy files have none)"
        )
    if obj.bn == "recompute" and obj.batchnorm_modules:
        raise InputError(
            "curvature_map evaluates the Hessian functionally, with the BatchNorm statistics of "
            "the origin at every point, which is not what bn='recompute' promises; use an "
            "Objective with bn='eval'"
        )
    stored = landscape.settings.get("origin_fingerprint")
    same_selection = (landscape.settings.get("objective") or {}).get("params") == list(
        obj.param_names
    )
    if stored and same_selection and stored != fingerprint(obj.parameters()):
        raise InputError(
            "the objective's model is not at the landscape's origin (parameter fingerprints "
            "differ); load the parameters the slice was computed at"
        )
