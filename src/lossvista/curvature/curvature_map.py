"""Curvature over a slice: the extreme Hessian eigenvalues at every grid point of a landscape."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._functional import functional
from .._version import __version__
from ..engine import _check_tensors
from ..errors import InputError, StoreMismatchError
from ..landscape import Landscape
from ..objective import Objective
from ..params import fingerprint
from ..store import SurfaceStore, check_writable
from ._common import ConvergenceWarning, check_objective, check_positive_int, plain
from .hvp import GRAPH_BYTES, HessianOperator, Method
from .lanczos import eigs_of

KIND = "curvature_map"


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
    hvp_method: Method = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
    progress: bool = True,
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
        max_iter, seed, hvp_method, max_graph_bytes: as in ``hessian_eigs``.
        progress: a progress bar on a terminal.

    Returns:
        A :class:`~lossvista.Landscape` of kind ``"curvature_map"`` with values ``"loss"``,
        ``"lambda_max"`` and ``"lambda_min"``: ``.plot(metric="lambda_max")`` draws it.
        Points whose eigenpairs did not converge keep their best values, with one
        :class:`ConvergenceWarning` naming how many.

    Raises:
        InputError: not a slice with directions; the model is not at the landscape's origin;
            ``bn="recompute"`` with BatchNorm (statistics would be those of the origin).
        StoreMismatchError: resuming a file made with other settings.
    """
    check_objective(obj)
    k = check_positive_int(k, "k")
    directions, origin = _check_inputs(obj, landscape)
    names = ("loss", *_eigen_names(k))
    curvature = {
        "k": k,
        "tol": float(tol),
        "max_iter": max_iter,
        "seed": int(seed),
        "hvp_method": hvp_method,
        "source_kind": landscape.kind,
    }
    settings: dict[str, Any] = {
        "kind": KIND,
        "span": [[float(c[0]), float(c[-1])] for c in landscape.coords],
        "steps": [len(c) for c in landscape.coords],
        "objective": obj.settings(),
        "directions": [d.meta for d in landscape.directions],
        "direction_fingerprints": [d.fingerprint() for d in landscape.directions],
        "origin_fingerprint": fingerprint(origin),
        "curvature": curvature,
        "lossvista_version": __version__,
    }
    shape = landscape.shape
    values = {name: np.full(shape, np.nan) for name in names}
    computed = np.zeros(shape, dtype=bool)
    surface = _open_store(store, resume, settings, names, landscape, values, computed)

    grid = np.stack(np.meshgrid(*landscape.coords, indexing="ij"), -1).reshape(-1, len(shape))
    missing = np.flatnonzero(~computed.reshape(-1))
    unconverged = 0
    with functional(obj) as view:
        with torch.no_grad():
            center = {"loss": float(view.loss(origin))}
        if surface is not None:
            surface.write_header(center=center)
        for flat in tqdm(missing, desc=KIND, unit="point", disable=None if progress else True):
            params = dict(origin)
            for coefficient, d in zip(grid[flat], directions):
                for name, t in d.items():
                    params[name] = params[name] + float(coefficient) * t
            op = HessianOperator.at(
                obj, view, params, method=hvp_method, max_graph_bytes=max_graph_bytes
            )
            try:
                result = eigs_of(
                    op, k, which="both", tol=tol, max_iter=max_iter, seed=seed, warn=False
                )
            finally:
                op.release()
            with torch.no_grad():
                point = {"loss": float(view.loss(params))}
            point.update(zip(_eigen_names(k), _ordered(result.values, k)))
            unconverged += int(not result.all_converged)
            index = np.unravel_index(flat, shape)
            for name, value in point.items():
                values[name][index] = value
            computed[index] = True
            if surface is not None:
                surface.write(np.array([flat]), {n: np.array([v]) for n, v in point.items()})
    if unconverged:
        warnings.warn(
            f"curvature_map: at {unconverged} of {len(missing)} points the eigenpairs did not "
            f"reach tol={tol:g}; their values are the best available (raise max_iter or tol)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return Landscape(
        coords=landscape.coords,
        values=values,
        directions=landscape.directions,
        center=center,
        kind=KIND,
        settings=settings,
        seed=landscape.seed,
        axis_labels=landscape.axis_labels,
        markers=dict(landscape.markers),
        computed=computed,
        path=None if surface is None else surface.path,
    )


def _eigen_names(k: int) -> list[str]:
    """``lambda_max, lambda_max_2, ..., lambda_min, lambda_min_2, ...``."""
    suffix = ["", *(f"_{i}" for i in range(2, k + 1))]
    return [f"lambda_max{s}" for s in suffix] + [f"lambda_min{s}" for s in suffix]


def _ordered(values: np.ndarray, k: int) -> list[float]:
    return [float(v) for v in values[:k]] + [float(v) for v in values[k : 2 * k]]


def _check_inputs(
    obj: Objective, landscape: Landscape
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
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
    model_params = dict(obj.model.named_parameters())
    directions = [
        _check_tensors(d, model_params, obj.param_names, f"direction {i}")
        for i, d in enumerate(landscape.directions)
    ]
    origin = {n: t.detach().clone() for n, t in obj.parameters().items()}
    stored = landscape.settings.get("origin_fingerprint")
    same_selection = (landscape.settings.get("objective") or {}).get("params") == list(
        obj.param_names
    )
    if stored and same_selection and stored != fingerprint(origin):
        raise InputError(
            "the objective's model is not at the landscape's origin (parameter fingerprints "
            "differ); load the parameters the slice was computed at"
        )
    return directions, origin


def _open_store(
    store: str | Path | None,
    resume: bool | None,
    settings: Mapping[str, Any],
    names: tuple[str, ...],
    landscape: Landscape,
    values: dict[str, np.ndarray],
    computed: np.ndarray,
) -> SurfaceStore | None:
    """Create the surface file, or read what an existing one holds into ``values``/``computed``."""
    if store is None:
        return None
    path = Path(store)
    check_writable(path)
    surface = SurfaceStore(path)
    if path.exists() and resume is not False:
        surface.check_matches(settings, names)
        stored = surface.header()["settings"].get("curvature")
        wanted = plain(settings["curvature"])
        if stored != wanted:
            raise StoreMismatchError(
                f"{str(path)!r} was made with other curvature settings, so it cannot be "
                f"resumed: file has {stored}, asked for {wanted}. Pass another store path, or "
                "resume=False to overwrite it."
            )
        previous = surface.read()
        computed[...] = np.asarray(previous.computed, dtype=bool)
        for name in names:
            values[name][...] = previous.values[name]
        return surface
    return SurfaceStore.create(
        path,
        kind=KIND,
        coords=landscape.coords,
        value_names=names,
        directions=landscape.directions,
        settings=settings,
        axis_labels=landscape.axis_labels,
        markers=landscape.markers,
        seed=landscape.seed,
    )
