"""The Hessian trace by randomised estimators, with standard errors.

- ``"hutchinson"`` (Hutchinson 1989): ``tr(H) ~ mean_i z_i^T H z_i`` over Rademacher probes
  ``z_i``; unbiased, one product per probe; standard error ``std(samples) / sqrt(n)``.
- ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace
  estimation"): a third of the products sketch the dominant range ``Q = orth(H S)``, a third
  give ``tr(Q^T H Q)`` exactly, the rest run Hutchinson on the deflated remainder
  ``(I - QQ^T) H (I - QQ^T)``. Given ``Q`` the estimate is unbiased with variance only from the
  remainder, so its standard error is that of the remainder samples. Far smaller errors when a
  few eigenvalues dominate, as for neural-network Hessians.

Every probe is used (no early stop on a relative change, which fails for a trace near or below
zero), so negative traces are estimated as well as positive ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .._result import Result
from ..errors import InputError
from ..objective import Objective
from ._common import check_objective, check_positive_int, renamed
from ._krylov import work_dtype
from ._vectors import rademacher
from .hvp import GRAPH_BYTES, Backend, HessianOperator

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TraceMethod = Literal["hutchinson", "hutch++"]
_TRACE_METHODS = ("hutchinson", "hutch++")


@dataclasses.dataclass(eq=False, repr=False)
class TraceEstimate(Result):
    """A trace estimate with its standard error.

    ``save`` writes a JSON ``lossvista-result`` file (kind ``"trace_estimate"``) that
    ``lossvista.load`` reads back.

    Attributes:
        estimate: the estimated ``tr(H)``.
        stderr: its standard error (conditional on the sketch for Hutch++); 0 when the estimate
            is exact (Hutch++ whose sketch spans the whole space).
        samples: the per-probe values averaged: ``z^T H z`` (Hutchinson) or the deflated
            remainder's ``g^T (I - QQ^T) H (I - QQ^T) g`` (Hutch++), float64.
        n_hvp: Hessian-vector products used (Hutch++ spends none on an empty remainder).
        method: ``"hutchinson"`` or ``"hutch++"``; n_probes: the product budget; seed.
        deflated: Hutch++ only: the exact part ``tr(Q^T H Q)`` (``estimate - mean(samples)``).
        settings: backend and graph re-use.
    """

    result_kind = "trace_estimate"
    file_format = "json"

    estimate: float
    stderr: float
    samples: np.ndarray
    n_hvp: int
    method: str
    n_probes: int
    seed: int
    deflated: float | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def interval(self, z: float = 2.0) -> tuple[float, float]:
        """``estimate -+ z * stderr``."""
        return self.estimate - z * self.stderr, self.estimate + z * self.stderr

    def running(self) -> tuple[np.ndarray, np.ndarray]:
        """The estimate and its standard error after each of the ``samples`` (the last ones are
        :attr:`estimate` and :attr:`stderr`; the first standard error, from one sample, is 0)."""
        count = np.arange(1, len(self.samples) + 1)
        mean = np.cumsum(self.samples) / count
        exact = 0.0 if self.deflated is None else self.deflated
        # Prefix variances (ddof=1) from prefix sums of squares, of samples centred on their mean
        # first: the variance does not change, and the sums no longer cancel catastrophically.
        centred = self.samples - (self.samples.mean() if len(self.samples) else 0.0)
        shifted_mean = np.cumsum(centred) / count
        squares = np.cumsum(centred**2) - count * shifted_mean**2
        variance = np.where(count > 1, squares / np.maximum(count - 1, 1), 0.0)
        return exact + mean, np.sqrt(np.maximum(variance, 0.0) / count)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The running estimate over the probes with its ``-+ 2 stderr`` band; returns the
        figure. Drawn by :func:`lossvista.plot.curvature.plot_trace`."""
        from ..plot.curvature import plot_trace

        return plot_trace(self, ax)

    def _summary(self) -> list[tuple[str, Any]]:
        low, high = self.interval()
        rows: list[tuple[str, Any]] = [
            ("method", self.method),
            ("estimate", self.estimate),
            ("stderr", self.stderr),
            ("interval_2se", f"[{low:.6g}, {high:.6g}]"),
        ]
        if self.deflated is not None:
            rows.append(("deflated", self.deflated))
        rows += [("n_hvp", self.n_hvp), ("n_probes", self.n_probes), ("seed", self.seed)]
        return rows


@renamed(hvp_method="hvp_backend")
def hessian_trace(
    obj: Objective,
    *,
    method: TraceMethod = "hutchinson",
    n_probes: int = 100,
    seed: int = 0,
    hvp_backend: Backend = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> TraceEstimate:
    """Estimate the trace of the Hessian of the objective's loss.

    Args:
        obj: the :class:`~lossvista.Objective`.
        method: ``"hutchinson"`` or ``"hutch++"`` (see the module docstring).
        n_probes: Hessian-vector products to spend (Hutchinson: >= 2; Hutch++: >= 4, split in
            thirds: sketch, exact part, remainder probes).
        seed: seed of the Rademacher probes.
        hvp_backend, max_graph_bytes: as in :func:`~lossvista.curvature.hessian_eigs`
            (``hvp_method=`` is the deprecated old name of ``hvp_backend``).

    Returns:
        A :class:`TraceEstimate`; ``estimate -+ 2 * stderr`` covers the trace about 95% of the
        time (checked by the calibration tests).
    """
    check_objective(obj)
    with HessianOperator(obj, backend=hvp_backend, max_graph_bytes=max_graph_bytes) as op:
        return trace_of(op, method=method, n_probes=n_probes, seed=seed)


def trace_of(
    op: HessianOperator, *, method: TraceMethod = "hutchinson", n_probes: int = 100, seed: int = 0
) -> TraceEstimate:
    """:func:`hessian_trace` on an open :class:`HessianOperator`."""
    if method not in _TRACE_METHODS:
        raise InputError(f"method must be one of {list(_TRACE_METHODS)}, got {method!r}")
    n_probes = check_positive_int(n_probes, "n_probes", 2 if method == "hutchinson" else 4)
    start = op.n_hvp
    if method == "hutchinson":
        probes = (_probe(op, seed, "hutchinson", i) for i in range(n_probes))
        samples = np.array([_quadratic_form(op, z) for z in probes])
        estimate, deflated = float(samples.mean()), None
    else:
        deflated, samples = _hutch_plus_plus(op, n_probes, seed)
        estimate = deflated + (float(samples.mean()) if len(samples) else 0.0)
    stderr = _stderr(samples)
    return TraceEstimate(
        estimate=estimate,
        stderr=stderr,
        samples=samples,
        n_hvp=op.n_hvp - start,
        method=method,
        n_probes=n_probes,
        seed=int(seed),
        deflated=deflated,
        settings=op.settings(),
    )


def _hutch_plus_plus(op: HessianOperator, n_probes: int, seed: int) -> tuple[float, np.ndarray]:
    """Meyer et al. (2021), Algorithm 1, with the budget split in thirds."""
    sketch = min(n_probes // 3, op.size)
    images = torch.stack(
        [_matvec(op, _probe(op, seed, "hutch++-sketch", i)) for i in range(sketch)], dim=1
    )
    q, _ = torch.linalg.qr(images)  # (P, sketch), orthonormal columns
    deflated = float(sum(_quadratic_form(op, q[:, i]) for i in range(q.shape[1])))
    if q.shape[1] >= op.size:  # the sketch spans everything: the trace is exact
        return deflated, np.zeros(0)
    remainder = n_probes - 2 * sketch
    samples = []
    for i in range(remainder):
        g = _probe(op, seed, "hutch++-residual", i)
        g = g - q @ (q.T @ g)
        samples.append(_quadratic_form(op, g))
    return deflated, np.array(samples)


def _probe(op: HessianOperator, seed: int, stream: str, index: int) -> torch.Tensor:
    return rademacher(op.layout, seed, stream, index).to(work_dtype(op.layout.device))


def _matvec(op: HessianOperator, v: torch.Tensor) -> torch.Tensor:
    return op.matvec(v).to(v.dtype)


def _quadratic_form(op: HessianOperator, v: torch.Tensor) -> float:
    return float(torch.dot(v, _matvec(op, v)))


def _stderr(samples: np.ndarray) -> float:
    if len(samples) < 2:
        return 0.0
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
