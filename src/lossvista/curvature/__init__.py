"""Curvature of the loss: Hessian-vector products, eigenpairs, trace, spectral density,
critical-point classification, curvature over a slice, and the summary of all of them that
``lossvista hessian`` writes (:class:`HessianSummary`).

Every function takes an :class:`~lossvista.Objective`; the Hessian is that of its exact
sample-weighted mean loss over all data, with respect to its selected parameters (``params=``),
at the model's current parameters, which are never changed. The Hessian-vector products come
from a backend chosen by ``hvp_backend=`` (``backend=`` of :func:`hvp`); ``method=`` names an
estimator (``hessian_trace``).
"""

from ._common import ConvergenceWarning, HessianWarning
from .critical import CriticalPoint, critical_point
from .curvature_map import curvature_map
from .dense import hessian_dense
from .density import SpectralDensity, hessian_density
from .hvp import HessianOperator, HvpChoice, hvp, hvp_choice
from .lanczos import EigenResult, hessian_directions, hessian_eigs
from .summary import HessianSummary
from .trace import TraceEstimate, hessian_trace

__all__ = [
    "ConvergenceWarning",
    "CriticalPoint",
    "EigenResult",
    "HessianOperator",
    "HessianSummary",
    "HessianWarning",
    "HvpChoice",
    "SpectralDensity",
    "TraceEstimate",
    "critical_point",
    "curvature_map",
    "hessian_dense",
    "hessian_density",
    "hessian_directions",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "hvp_choice",
]
