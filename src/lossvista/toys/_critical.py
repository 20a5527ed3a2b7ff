"""Find the critical points of a toy function: dense grid seeds, then Newton's method.

This is how the minima and saddles hard-coded in :mod:`lossvista.toys.functions` were found, and
the tests run it again as the oracle that no minimum is missing from those lists.
"""

from __future__ import annotations

import numpy as np
import torch

from .functions import Bounds, ToyFunction, grid_axes


def critical_points(
    fn: ToyFunction,
    n: int = 201,
    bounds: Bounds | None = None,
    *,
    newton_steps: int = 60,
    gradient_tol: float = 1e-9,
) -> dict[str, np.ndarray]:
    """Every critical point of ``fn`` inside ``bounds`` that Newton's method reaches from a grid.

    Seeds are the grid points where the gradient norm is smallest among their eight neighbours
    (each critical point is surrounded by such a dip); each seed takes ``newton_steps`` full
    Newton steps in float64. Points that end with a gradient norm below ``gradient_tol``, inside
    ``bounds``, are kept once each (closer than 1e-6 counts as the same point).

    Args:
        fn: the function.
        n: grid points per axis; the grid spacing must be finer than the distance between
            neighbouring critical points.
        bounds: the region; ``fn.bounds`` by default.
        newton_steps: Newton iterations per seed.
        gradient_tol: the gradient norm that counts as zero.

    Returns:
        ``{"minima": (a, 2), "maxima": (b, 2), "saddles": (c, 2)}`` classified by the signs of
        the Hessian's eigenvalues (a singular Hessian counts as a saddle), each sorted by value.
    """
    bounds = fn.bounds if bounds is None else bounds
    xs, ys = grid_axes(bounds, n)
    grid = torch.as_tensor(np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1))
    norms = fn.grad(grid).norm(dim=-1).numpy()
    points = _polish(fn, torch.as_tensor(grid.numpy()[_local_minima(norms)]), newton_steps)
    gradients = fn.grad(points).norm(dim=-1)
    (xmin, xmax), (ymin, ymax) = bounds
    slack = 1e-9 * max(xmax - xmin, ymax - ymin)
    inside = (
        (points[:, 0] >= xmin - slack)
        & (points[:, 0] <= xmax + slack)
        & (points[:, 1] >= ymin - slack)
        & (points[:, 1] <= ymax + slack)
    )
    keep = torch.isfinite(points).all(dim=1) & (gradients < gradient_tol) & inside
    unique = _unique(points[keep].numpy())
    if not len(unique):
        return {kind: np.empty((0, 2)) for kind in ("minima", "maxima", "saddles")}
    eigenvalues = torch.linalg.eigvalsh(fn.hessian(unique)).numpy()
    scale = 1e-9 * max(1.0, float(np.abs(eigenvalues).max()))
    kinds = {
        "minima": eigenvalues.min(axis=1) > scale,
        "maxima": eigenvalues.max(axis=1) < -scale,
    }
    kinds["saddles"] = ~(kinds["minima"] | kinds["maxima"])
    values = fn.evaluate(unique)
    return {
        kind: unique[mask][np.argsort(values[mask], kind="stable")] for kind, mask in kinds.items()
    }


def _local_minima(values: np.ndarray) -> np.ndarray:
    """Boolean mask of entries no larger than any of their (up to eight) neighbours."""
    padded = np.pad(values, 1, constant_values=np.inf)
    mask = np.ones(values.shape, dtype=bool)
    rows, cols = values.shape
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                neighbour = padded[1 + di : 1 + di + rows, 1 + dj : 1 + dj + cols]
                mask &= values <= neighbour
    return mask


def _polish(fn: ToyFunction, points: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` Newton steps from every row of ``points`` (singular Hessians give NaN rows)."""
    for _ in range(steps):
        step = torch.linalg.lstsq(fn.hessian(points), fn.grad(points).unsqueeze(-1)).solution
        points = points - step.squeeze(-1)
    return points


def _unique(points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    kept: list[np.ndarray] = []
    for point in points:
        if all(np.linalg.norm(point - other) > tol for other in kept):
            kept.append(point)
    return np.array(kept).reshape(-1, 2)
