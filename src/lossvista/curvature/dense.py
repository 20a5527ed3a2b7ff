"""The dense Hessian of a small model: the reference the iterative methods are checked against."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..objective import Objective
from ._common import check_objective, check_positive_int, renamed
from .hvp import GRAPH_BYTES, Backend, HessianOperator

#: Default size limit of :func:`hessian_dense` (selected parameter entries): 4096^2 float64
#: entries are 128 MiB, and the matrix takes 4096 Hessian-vector products.
MAX_PARAMS = 4096


@renamed(hvp_method="hvp_backend")
def hessian_dense(
    obj: Objective,
    *,
    max_params: int = MAX_PARAMS,
    hvp_backend: Backend = "auto",
    max_graph_bytes: int = GRAPH_BYTES,
) -> torch.Tensor:
    """The full Hessian of the objective's loss with respect to its selected parameters.

    Column ``i`` is ``H e_i`` (one Hessian-vector product each, on the exact sample-weighted
    loss); the result is symmetrised, ``(H + H^T) / 2``, which removes rounding asymmetry only.

    Args:
        obj: the :class:`~lossvista.Objective`.
        max_params: refuse models with more selected parameter entries than this (the matrix
            has ``P^2`` entries and costs ``P`` products); raise it deliberately for larger ones.
        hvp_backend, max_graph_bytes: as in :func:`~lossvista.curvature.hessian_eigs`
            (``hvp_method=`` is the deprecated old name of ``hvp_backend``).

    Returns:
        A ``(P, P)`` tensor in the parameters' dtype and device. Rows and columns follow
        ``obj.param_names``, each parameter flattened row-major (the order of
        ``torch.cat([p.reshape(-1) for p in obj.parameters().values()])``).

    Raises:
        InputError: more than ``max_params`` selected parameter entries.
    """
    check_objective(obj)
    max_params = check_positive_int(max_params, "max_params")
    size = sum(t.numel() for t in obj.parameters().values())
    if size > max_params:
        mib = size * size * next(iter(obj.parameters().values())).element_size() / 2**20
        raise InputError(
            f"the Hessian would be {size} x {size} ({mib:,.0f} MiB, {size} Hessian-vector "
            f"products), above max_params={max_params}. Pass max_params={size} to compute it "
            "anyway, select fewer parameters with Objective(..., params=...), or use "
            "hessian_eigs / hessian_trace / hessian_density, which need only products"
        )
    with HessianOperator(obj, backend=hvp_backend, max_graph_bytes=max_graph_bytes) as op:
        matrix = torch.empty(size, size, dtype=op.layout.dtype, device=op.layout.device)
        unit = torch.zeros(size, dtype=op.layout.dtype, device=op.layout.device)
        for i in range(size):
            unit[i] = 1.0
            matrix[:, i] = op.matvec(unit)
            unit[i] = 0.0
    return (matrix + matrix.T) / 2
