"""What kind of point the model sits at: minimum, maximum, saddle or degenerate, with evidence."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._json import json_ready
from .._result import Result
from ..errors import InputError
from ..objective import Objective
from ._common import check_nonnegative, check_objective, check_tol, renamed
from ._vectors import norm
from .density import SpectralDensity, density_of
from .hvp import GRAPH_BYTES, Backend, HessianOperator
from .lanczos import EigenResult, eigs_of

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclasses.dataclass(eq=False, repr=False)
class CriticalPoint(Result):
    """The local curvature verdict and the evidence for it.

    ``save`` writes an HDF5 ``lossvista-result`` file (result kind ``"critical_point"``, with
    the eigen result and the density it holds) that ``lossvista.load`` reads back.

    Attributes:
        kind: ``"minimum"`` (every eigenvalue above ``+threshold``), ``"maximum"`` (all below
            ``-threshold``), ``"saddle"`` (curvature of both signs beyond it) or
            ``"degenerate"`` (an extreme eigenvalue within ``threshold`` of zero: flat
            directions, the usual case for over-parameterised networks).
        lambda_max, lambda_min: the extreme eigenvalues; residual_max, residual_min: their
            computed residuals ``|H v - lambda v|``; converged: both met the eigen tolerance.
        threshold: the curvature treated as zero: ``max(tol * max(|lambda_max|, |lambda_min|),
            residual_max, residual_min)``.
        condition_number: ``lambda_max / lambda_min`` at a minimum, else None.
        grad_norm: Euclidean norm of the loss gradient; loss: the loss.
        negative_mass: share of the spectrum clearly below zero (below ``-1e-3 * max|node|``, from
            the density), when computed.
        note: a warning in words (the gradient is not small, or the eigenpairs did not
            converge), else None.
        eigs: the eigen results used; density: the spectral density, when computed.
        settings: tolerances and backend.
    """

    result_kind = "critical_point"
    file_format = "hdf5"

    kind: str
    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    converged: bool
    threshold: float
    condition_number: float | None
    grad_norm: float
    loss: float
    negative_mass: float | None
    note: str | None
    eigs: EigenResult
    density: SpectralDensity | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The extreme eigenvalues with their residual bounds against the band of curvature
        treated as zero (``-+ threshold``); returns the figure. Drawn by
        :func:`lossvista.plot.curvature.plot_critical_point`."""
        from ..plot.curvature import plot_critical_point

        return plot_critical_point(self, ax)

    def as_dict(self) -> dict[str, Any]:
        """Strict-JSON summary: the eigen result without its vectors, the density by its key
        numbers (``save`` keeps both whole)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["eigs"] = self.eigs.as_dict()
        fields["density"] = None
        if self.density is not None:
            fields["density"] = {
                "negative_mass": self.density.negative_mass,
                "n_runs": self.density.n_runs,
                "n_steps": self.density.n_steps,
                "seed": self.density.seed,
                "n_hvp": self.density.n_hvp,
            }
        return json_ready(fields)

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = super()._state()
        state["eigs"] = self.eigs._state()
        state["density"] = None if self.density is None else self.density._state()
        return state

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> CriticalPoint:
        values = dict(state)
        values["eigs"] = EigenResult._from_state(values["eigs"])
        if values.get("density") is not None:
            values["density"] = SpectralDensity._from_state(values["density"])
        return cls(**values)

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("kind", self.kind),
            ("lambda_max", self.lambda_max),
            ("lambda_min", self.lambda_min),
            ("threshold", self.threshold),
        ]
        if self.condition_number is not None:
            rows.append(("condition_number", self.condition_number))
        if self.negative_mass is not None:
            rows.append(("negative_mass", self.negative_mass))
        rows += [("grad_norm", self.grad_norm), ("loss", self.loss), ("converged", self.converged)]
        if self.note is not None:
            rows.append(("note", self.note))
        return rows

    def __repr__(self) -> str:
        cond = "" if self.condition_number is None else f", condition {self.condition_number:.4g}"
        neg = "" if self.negative_mass is None else f", negative mass {self.negative_mass:.3g}"
        note = "" if self.note is None else f", note={self.note!r}"
        return (
            f"CriticalPoint({self.kind}: lambda in [{self.lambda_min:.6g}, {self.lambda_max:.6g}] "
            f"(threshold {self.threshold:.2g}){cond}{neg}, |grad| {self.grad_norm:.3g}{note})"
        )


@renamed(hvp_method="hvp_backend")
def critical_point(
    obj: Objective,
    *,
    tol: float = 1e-3,
    grad_tol: float = 1e-3,
    eigs: EigenResult | None = None,
    density: bool | SpectralDensity = False,
    eig_tol: float | None = None,
    max_iter: int | None = None,
    n_runs: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    hvp_backend: Backend = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> CriticalPoint:
    """Classify the point the model sits at by the signs of its extreme Hessian eigenvalues.

    The extreme eigenvalues come from :func:`~lossvista.curvature.hessian_eigs` with
    ``which="both"`` (or from ``eigs``, completed with the missing end). A curvature of
    magnitude below ``threshold = max(tol * max|lambda|, residuals)`` counts as zero: ``tol``
    says what "flat" means relative to the strongest curvature, and the residuals bound how far
    each computed eigenvalue can be from a true one (for a symmetric matrix some eigenvalue lies
    within ``|H v - lambda v|`` of ``lambda``), so a sign is only claimed when the evidence
    supports it. The smallest Ritz value is never below the true smallest eigenvalue, so a
    ``"saddle"`` verdict (a clearly negative ``lambda_min``) is certain even before convergence.

    Args:
        obj: the :class:`~lossvista.Objective`.
        tol: relative curvature threshold (see above).
        grad_tol: above this gradient norm the result carries a ``note``: the point is not a
            critical point at all, and ``kind`` describes its curvature only.
        eigs: eigen results computed before (any ``which``; a missing end is computed).
        density: True to compute the spectral density (for ``negative_mass``), or a
            :class:`SpectralDensity` computed before.
        eig_tol, max_iter: tolerance and step limit of the eigensolver (``tol`` and
            ``max_iter`` of :func:`~lossvista.curvature.hessian_eigs`; ``eig_tol=None`` is its
            dtype default: 1e-6 for float64 parameters, 1e-5 for lower precision).
        n_runs, n_steps: SLQ settings when ``density=True``.
        seed: seed of the eigensolver and the density.
        hvp_backend, max_graph_bytes: as in :func:`~lossvista.curvature.hessian_eigs`
            (``hvp_method=`` is the deprecated old name of ``hvp_backend``).

    Returns:
        A :class:`CriticalPoint`.
    """
    check_objective(obj)
    tol = check_nonnegative(tol, "tol")
    grad_tol = check_nonnegative(grad_tol, "grad_tol")
    if eigs is not None and not isinstance(eigs, EigenResult):
        raise InputError(
            f"eigs must be an EigenResult from hessian_eigs, got {type(eigs).__name__}"
        )
    if not isinstance(density, (bool, SpectralDensity)):
        raise InputError(
            f"density must be True, False or a SpectralDensity, got {type(density).__name__}"
        )
    with HessianOperator(obj, backend=hvp_backend, max_graph_bytes=max_graph_bytes) as op:
        eig_tol = check_tol(eig_tol, op.layout.dtype, "eig_tol")
        largest, smallest = _extremes(op, eigs, eig_tol=eig_tol, max_iter=max_iter, seed=seed)
        if density is True:
            density = density_of(op, n_runs=n_runs, n_steps=n_steps, seed=seed)
        loss, gradient = op.loss_and_gradient()
        settings = op.settings()
    return _classify(
        largest,
        smallest,
        tol=tol,
        grad_tol=grad_tol,
        grad_norm=norm(gradient),
        loss=loss,
        density=density if isinstance(density, SpectralDensity) else None,
        settings={**settings, "tol": tol, "grad_tol": grad_tol, "eig_tol": eig_tol, "seed": seed},
    )


def _extremes(
    op: HessianOperator,
    eigs: EigenResult | None,
    *,
    eig_tol: float,
    max_iter: int | None,
    seed: int,
) -> tuple[EigenResult, EigenResult]:
    """(result holding the largest eigenvalue, result holding the smallest)."""
    if eigs is None:
        both = eigs_of(op, 1, which="both", tol=eig_tol, max_iter=max_iter, seed=seed)
        return both, both
    if eigs.which == "both":
        return eigs, eigs
    missing: Literal["largest", "smallest"] = "smallest" if eigs.which == "largest" else "largest"
    other = eigs_of(op, 1, which=missing, tol=eig_tol, max_iter=max_iter, seed=seed)
    return (eigs, other) if missing == "smallest" else (other, eigs)


def _classify(
    largest: EigenResult,
    smallest: EigenResult,
    *,
    tol: float,
    grad_tol: float,
    grad_norm: float,
    loss: float,
    density: SpectralDensity | None,
    settings: dict[str, Any],
) -> CriticalPoint:
    i_max = 0  # values are ordered most extreme first at each end
    i_min = smallest.k if smallest.which == "both" else 0
    lam_max, lam_min = float(largest.values[i_max]), float(smallest.values[i_min])
    r_max, r_min = float(largest.residuals[i_max]), float(smallest.residuals[i_min])
    converged = bool(largest.converged[i_max] and smallest.converged[i_min])
    threshold = max(tol * max(abs(lam_max), abs(lam_min)), r_max, r_min)
    if lam_min > threshold:
        kind = "minimum"
    elif lam_max < -threshold:
        kind = "maximum"
    elif lam_min < -threshold and lam_max > threshold:
        kind = "saddle"
    else:
        kind = "degenerate"
    notes = []
    if grad_norm > grad_tol:
        notes.append(
            f"the gradient norm {grad_norm:.3g} exceeds grad_tol={grad_tol:g}: this is not a "
            "critical point; kind describes the local curvature only"
        )
    if not converged:
        notes.append("the extreme eigenpairs did not converge: the verdict is provisional")
    eigs = largest if largest is smallest else _merge(largest, smallest)
    return CriticalPoint(
        kind=kind,
        lambda_max=lam_max,
        lambda_min=lam_min,
        residual_max=r_max,
        residual_min=r_min,
        converged=converged,
        threshold=threshold,
        condition_number=lam_max / lam_min if kind == "minimum" else None,
        grad_norm=grad_norm,
        loss=loss,
        negative_mass=None if density is None else density.negative_mass,
        note="; ".join(notes) if notes else None,
        eigs=eigs,
        density=density,
        settings=settings,
    )


def _merge(largest: EigenResult, smallest: EigenResult) -> EigenResult:
    """One ``which="both"`` result from a largest and a smallest one (k of the first)."""
    k = min(largest.k, smallest.k)
    take_l, take_s = slice(0, k), slice(0, k)
    return EigenResult(
        values=np.concatenate([largest.values[take_l], smallest.values[take_s]]),
        vectors=(*largest.vectors[take_l], *smallest.vectors[take_s]),
        residuals=np.concatenate([largest.residuals[take_l], smallest.residuals[take_s]]),
        converged=np.concatenate([largest.converged[take_l], smallest.converged[take_s]]),
        n_hvp=largest.n_hvp + smallest.n_hvp,
        spectral_norm=max(largest.spectral_norm, smallest.spectral_norm),
        iterations=largest.iterations + smallest.iterations,
        restarts=largest.restarts + smallest.restarts,
        which="both",
        k=k,
        tol=max(largest.tol, smallest.tol),
        seed=largest.seed,
        settings=largest.settings,
    )
