"""Extreme Hessian eigenpairs by thick-restart Lanczos, and Hessian eigenvectors as directions.

:func:`hessian_eigs` runs the Lanczos process of :mod:`lossvista.curvature._krylov` (full
re-orthogonalisation, thick restart) on the Hessian of an objective's loss. A pair is reported
converged only after its residual was *computed*: one extra Hessian-vector product per pair gives
``r = |H v - lambda v|`` (``|v| = 1``, ``lambda = v^T H v``), and the pair counts when
``r <= tol * |H|``, with ``|H|`` estimated by the largest ``|Ritz value|`` seen. For a symmetric
``H`` some eigenvalue lies within ``r`` of ``lambda``, so ``tol`` bounds the eigenvalue error
relative to the spectral norm; for an eigenvalue separated from the rest by a gap ``g`` the error
is about ``r^2 / g``, usually far smaller. Accepted eigenvectors are also checked to be mutually
orthogonal, so no eigenvector is reported twice.

Like every single-vector Krylov method (ARPACK, ``scipy.sparse.linalg.eigsh``), Lanczos sees an
eigenvalue of exact multiplicity ``m > 1`` as one: its eigenspace meets the Krylov space in one
direction. Each returned pair is a verified eigenpair, but further copies of an exactly repeated
eigenvalue can be missing from a top-k list (repeated eigenvalues are not generic for trained
networks; a parameter symmetry such as softmax's redundant class can cause them).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._json import json_ready
from .._result import Result
from ..directions import Direction
from ..errors import InputError
from ..objective import Objective
from ._common import (
    ConvergenceWarning,
    caller_stacklevel,
    check_objective,
    check_positive_int,
    check_tol,
    renamed,
)
from ._restart import Solver, plan_basis
from ._vectors import Layout

# The spectral density lived here; its names stay importable from this module.
from .density import (  # noqa: F401
    NEGATIVE_CUTOFF,
    SpectralDensity,
    density_of,
    hessian_density,
    slq_of,
)
from .hvp import GRAPH_BYTES, Backend, HessianOperator

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Which = Literal["largest", "smallest", "both"]
_WHICH = ("largest", "smallest", "both")


@dataclasses.dataclass(eq=False, repr=False)
class EigenResult(Result):
    """Extreme eigenpairs of the Hessian, each with its computed residual.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"eigen_result"``, vectors
    included) that ``lossvista.load`` reads back; ``as_dict`` leaves the vectors out.

    Attributes:
        values: eigenvalues (float64), most extreme first: for ``"largest"`` descending, for
            ``"smallest"`` ascending (most negative first), for ``"both"`` the ``k`` largest
            (descending) followed by the ``k`` smallest (ascending).
        vectors: unit eigenvectors as :class:`~lossvista.Direction` objects over the selected
            parameters (``meta``: kind ``"hessian_eigenvector"``, eigenvalue, index, residual,
            converged), usable by ``lv.plane``. The sign is fixed so that the entry of largest
            magnitude is positive.
        residuals: ``|H v - lambda v|`` computed with one extra product per pair.
        converged: whether ``residuals <= tol * spectral_norm`` (and the vector is orthogonal
            to the other accepted ones).
        n_hvp: Hessian-vector products used in all (Lanczos steps and residual checks).
        spectral_norm: the largest ``|Ritz value|`` seen, the scale of ``tol``.
        iterations: Lanczos steps; restarts: thick restarts.
        which, k, tol, seed: the request (``tol`` as used, after the dtype default);
            settings: everything else (backend, basis size...).
    """

    result_kind = "eigen_result"
    file_format = "hdf5"

    values: np.ndarray
    vectors: tuple[Direction, ...]
    residuals: np.ndarray
    converged: np.ndarray
    n_hvp: int
    spectral_norm: float
    iterations: int
    restarts: int
    which: str
    k: int
    tol: float
    seed: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def largest(self) -> np.ndarray:
        """The largest eigenvalues (descending); empty for ``which="smallest"``."""
        return self.values[: self._n_largest]

    @property
    def smallest(self) -> np.ndarray:
        """The smallest eigenvalues (ascending); empty for ``which="largest"``."""
        return self.values[self._n_largest :]

    @property
    def _n_largest(self) -> int:
        return 0 if self.which == "smallest" else self.k

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def plot(self, ax: Axes | None = None) -> Figure:
        """The eigenvalues with their residual bounds (hollow markers: not converged); returns
        the figure. Drawn by :func:`lossvista.plot.curvature.plot_eigenvalues`."""
        from ..plot.curvature import plot_eigenvalues

        return plot_eigenvalues(self, ax)

    def as_dict(self) -> dict[str, Any]:
        """Strict-JSON summary: every attribute except the vectors (``save`` keeps them)."""
        return json_ready({k: v for k, v in self._state().items() if k != "vectors"})

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = super()._state()
        state["vectors"] = [{"tensors": dict(d), "meta": d.meta} for d in self.vectors]
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> EigenResult:
        values = dict(state)
        values["vectors"] = tuple(Direction(d["tensors"], d["meta"]) for d in values["vectors"])
        for name in ("values", "residuals"):
            values[name] = np.asarray(values[name], dtype=np.float64)
        values["converged"] = np.asarray(values["converged"], dtype=bool)
        return cls(**values)

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = []
        if len(self.largest):
            rows.append(("largest", _listed(self.largest)))
        if len(self.smallest):
            rows.append(("smallest", _listed(self.smallest)))
        residual = float(np.max(self.residuals)) if len(self.residuals) else 0.0
        rows += [
            ("converged", f"{int(np.sum(self.converged))}/{len(self.values)}"),
            ("max_residual", residual),
            ("spectral_norm", self.spectral_norm),
            ("tol", self.tol),
            ("n_hvp", self.n_hvp),
        ]
        return rows


def _listed(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


@renamed(hvp_method="hvp_backend")
def hessian_eigs(
    obj: Objective,
    k: int = 1,
    *,
    which: Which = "largest",
    tol: float | None = None,
    max_iter: int | None = None,
    max_basis: int | None = None,
    seed: int = 0,
    hvp_backend: Backend = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> EigenResult:
    """The ``k`` algebraically largest and/or smallest Hessian eigenpairs, with residuals.

    Thick-restart Lanczos with full re-orthogonalisation (Wu & Simon 2000); see the module
    docstring for the convergence test and its meaning.

    Args:
        obj: the :class:`~lossvista.Objective` (Hessian of its exact sample-weighted mean loss
            over all data, with respect to its selected parameters, at the model's parameters).
        k: pairs wanted at each requested end.
        which: ``"largest"`` (algebraically largest), ``"smallest"`` (most negative first) or
            ``"both"`` (``k`` of each, from one Krylov space).
        tol: relative residual tolerance: a pair converges when ``|H v - lambda v| <= tol * |H|``.
            ``None`` (the default) picks it by the parameters' dtype: ``1e-6`` for float64 and
            ``1e-5`` for lower precision (float32, float16, bfloat16), whose Hessian-vector
            products round at about ``1e-6 |H|`` in float32.
        max_iter: the most Lanczos steps, at least the number of pairs (default
            ``max(300, 30 * pairs)``); each residual check adds one product per pair.
        max_basis: basis vectors kept between restarts (default ``max(40, 2 * pairs + 20)``,
            at most ``P``, fewer where its memory would exceed half the device's free memory,
            down to ``pairs + 2``: restarts make up for a smaller basis). Memory:
            ``(max_basis + 1) * P`` entries in the parameters' dtype, float32 at least (float64
            for float64 models), recorded in the result's ``settings`` (``basis_bytes``,
            ``basis_dtype``). A basis that does not fit the free memory is refused before any
            product, with the sizes.
        seed: seed of the Rademacher start vector.
        hvp_backend: Hessian-vector product backend (``backend`` of
            :func:`~lossvista.curvature.hvp`); the old name ``hvp_method=`` still works, with a
            ``DeprecationWarning``.
        max_graph_bytes: memory budget for gradient graphs kept for re-use.

    Returns:
        An :class:`EigenResult`. Pairs that did not converge within ``max_iter`` are returned
        with ``converged=False`` and a :class:`ConvergenceWarning`. When the first two
        products show that the run may take longer than 30 s, a
        :class:`~lossvista.errors.LossvistaWarning` states the estimated time and the basis
        memory before the run goes on.

    Raises:
        InputError: bad arguments, or a Lanczos basis that cannot fit the free memory.
    """
    check_objective(obj)
    layout = Layout(obj.parameters())
    _, n_large, n_small = _request(k, which, layout.size)
    plan_basis(layout, n_large + n_small, _basis_argument(max_basis))  # refuse before products
    with HessianOperator(obj, backend=hvp_backend, max_graph_bytes=max_graph_bytes) as op:
        return eigs_of(
            op, k, which=which, tol=tol, max_iter=max_iter, max_basis=max_basis, seed=seed
        )


@renamed(hvp_method="hvp_backend")
def hessian_directions(
    obj: Objective, k: int = 2, *, tol: float | None = None, seed: int = 0, **kwargs: Any
) -> tuple[Direction, ...]:
    """The top ``k`` Hessian eigenvectors as unit directions for ``lv.plane`` / ``lv.line``.

    ``lv.plane(obj, lv.hessian_directions(obj))`` draws the loss along the two directions of
    largest curvature. ``tol`` (``None``: by dtype) and the keyword arguments (``max_iter``,
    ``hvp_backend``, ...) are those of :func:`hessian_eigs`.
    """
    result = hessian_eigs(obj, k, which="largest", tol=tol, seed=seed, **kwargs)
    return result.vectors


def eigs_of(
    op: HessianOperator,
    k: int,
    *,
    which: Which = "largest",
    tol: float | None = None,
    max_iter: int | None = None,
    max_basis: int | None = None,
    seed: int = 0,
    warn: bool = True,
) -> EigenResult:
    """:func:`hessian_eigs` on an open :class:`HessianOperator` (shares its kept graphs).

    ``tol=None`` is the dtype default of :func:`hessian_eigs`, by the operator's parameters.
    ``warn=False`` leaves unconverged pairs and the announcement of a long run to the caller
    (no :class:`ConvergenceWarning`, no time estimate).
    """
    k, n_large, n_small = _request(k, which, op.size)
    tol = check_tol(tol, op.layout.dtype)
    wanted = n_large + n_small
    if max_iter is None:
        max_iter = max(300, 30 * wanted)
    max_iter = check_positive_int(max_iter, "max_iter", wanted)
    basis = plan_basis(op.layout, wanted, _basis_argument(max_basis))

    solver = Solver(op, n_large, n_small, tol, basis, seed, announce=warn)
    try:
        values, vectors, residuals, converged = solver.run(max_iter)
    finally:
        solver.release()
    result = EigenResult(
        values=values,
        vectors=tuple(
            op.layout.direction(
                vectors[i],
                {
                    "kind": "hessian_eigenvector",
                    "eigenvalue": float(values[i]),
                    "index": i,
                    "which": "largest" if i < n_large else "smallest",
                    "residual": float(residuals[i]),
                    "converged": bool(converged[i]),
                },
            )
            for i in range(len(values))
        ),
        residuals=residuals,
        converged=converged,
        n_hvp=solver.n_hvp,
        spectral_norm=solver.scale,
        iterations=solver.process.n_matvec,
        restarts=solver.process.n_restarts,
        which=which,
        k=k,
        tol=tol,
        seed=int(seed),
        settings={
            **op.settings(),
            "max_iter": max_iter,
            "max_basis": basis,
            "basis_bytes": solver.basis_bytes,
            "basis_dtype": str(solver.process.dtype).removeprefix("torch."),
            "residual_floor": solver.floor if solver.stalls >= 2 else None,
        },
    )
    if warn and not result.all_converged:
        worst = float(np.max(residuals / max(solver.scale, 1e-300)))
        if solver.stalls >= 2:
            reason = (
                f"the computed residuals stopped decreasing at {worst:.1e} x |H| although the "
                f"Lanczos estimates were below tol: the rounding floor of {op.layout.dtype} "
                f"Hessian-vector products. Pass tol >= {2 * worst:.0e}, or use a float64 model"
            )
        else:
            reason = (
                f"in {result.iterations} Lanczos steps (largest residual {worst:.2e} x |H|); "
                "raise max_iter or tol"
            )
        warnings.warn(
            f"hessian_eigs: {int(np.sum(~converged))} of {len(values)} eigenpairs did not reach "
            f"tol={tol:g}: {reason}. Their values are still the best available; see "
            "result.converged and result.residuals",
            ConvergenceWarning,
            stacklevel=caller_stacklevel(),
        )
    return result


def _request(k: Any, which: Any, n: int) -> tuple[int, int, int]:
    """(k, pairs at the large end, pairs at the small end), checked against the size ``n``."""
    k = check_positive_int(k, "k")
    if which not in _WHICH:
        raise InputError(f"which must be one of {list(_WHICH)}, got {which!r}")
    n_large = k if which in ("largest", "both") else 0
    n_small = k if which in ("smallest", "both") else 0
    if n_large + n_small > n:
        raise InputError(
            f"asked for {n_large + n_small} eigenpairs but the Hessian is {n} x {n}; lower k"
        )
    return k, n_large, n_small


def _basis_argument(max_basis: Any) -> int | None:
    return None if max_basis is None else check_positive_int(max_basis, "max_basis")
