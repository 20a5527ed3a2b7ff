"""The Lanczos process with full re-orthogonalisation, shared by the eigensolver and SLQ.

Every new vector is orthogonalised against *all* basis vectors, twice (Kahan's "twice is
enough"; a third pass when the second one still removed more than half of the vector), so the
basis stays orthonormal to working precision. That is what rules out the "ghost" copies of
converged eigenvalues that plain three-term Lanczos produces (Paige 1972; Parlett & Scott 1979):
Ritz vectors of an orthonormal basis are orthonormal, so one eigenvector cannot appear twice.

The basis is float64 whatever the model's dtype (float32 where the device has no float64): the
products are computed in the model's dtype, but orthogonalisation and Ritz vectors in float32
would leave a residual floor ~30x above the products' own rounding (measured on a float32 MLP:
3e-6 against 1e-7 of ``|H|``), so a tolerance of 1e-6 would be out of reach.

The projected matrix ``T = V^T H V`` is kept dense (float64), filled column by column with the
orthogonalisation coefficients, so a thick restart (Wu & Simon 2000, "Thick-restart Lanczos
method for large symmetric eigenvalue problems") needs no special bookkeeping: after keeping Ritz
vectors ``y_i = V s_i`` and the last residual vector, ``T`` restarts as ``diag(theta_i)`` and the
coupling row is recomputed by the next step. In every state ``H V = V T + beta v_next e_last^T``,
so the residual of a Ritz pair is ``|beta * s_last|`` without a product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._vectors import Layout, norm, unit_probe

#: A second pass that removes more than this share of a vector triggers a third.
_REORTH_RATIO = 0.5


class LanczosProcess:
    """Builds an orthonormal Krylov basis of a symmetric operator and its projection ``T``.

    Args:
        matvec: ``v -> H v`` on flat vectors.
        layout: the vector layout (length, dtype, device).
        capacity: the most basis vectors with a product (``T`` is at most this size); memory is
            ``(capacity + 1) * P`` float64 entries on the parameters' device.
        seed: seed of the random vectors drawn when the space is exhausted (an invariant
            subspace was found) and more vectors are needed.
        inject: on breakdown, continue with a fresh random vector orthogonal to the basis
            (eigensolver) instead of stopping (quadrature, which then is exact already).
    """

    def __init__(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        layout: Layout,
        capacity: int,
        *,
        seed: int = 0,
        inject: bool = True,
    ) -> None:
        self.matvec = matvec
        self.layout = layout
        self.capacity = capacity
        self.seed = seed
        self.inject = inject
        self.dtype = work_dtype(layout.device)
        rows = min(capacity + 1, layout.size)
        self.basis = torch.empty(rows, layout.size, dtype=self.dtype, device=layout.device)
        self.T = np.zeros((capacity, capacity))
        self.size = 0  # columns of T: basis vectors whose product is known
        self.count = 0  # basis vectors (size, or size + 1 with the next Lanczos vector)
        self.beta = 0.0  # norm of the residual of the last step
        self.n_matvec = 0
        self.n_restarts = 0
        self.n_injected = 0
        self.stopped = False  # breakdown without injection: the Krylov space is exhausted

    @property
    def exhausted(self) -> bool:
        """The basis spans the whole space: every Ritz pair is exact."""
        return self.size >= self.layout.size

    # -- building the basis -------------------------------------------------------------------------
    def add(self, vector: torch.Tensor) -> bool:
        """Append ``vector`` orthogonalised against the basis and normalised; False if it lies
        in the span of the basis already."""
        w = vector.to(dtype=self.dtype, device=self.layout.device).clone()
        _, ok = self._orthogonalize(w, self.count, norm(w))
        if not ok:
            return False
        self.basis[self.count] = w / norm(w)
        self.count += 1
        return True

    def step(self) -> None:
        """One Lanczos step: the product of the newest vector, its coefficients and residual."""
        j = self.size
        w = self.matvec(self.basis[j]).to(dtype=self.dtype)
        self.n_matvec += 1
        before = norm(w)
        coefficients, ok = self._orthogonalize(w, j + 1, before)
        self.T[: j + 1, j] = coefficients
        self.T[j, : j + 1] = coefficients
        self.size = j + 1
        self.count = j + 1
        self.beta = norm(w) if ok else 0.0
        if self.exhausted or self.size >= self.basis.shape[0]:
            return
        if ok and self.beta > 0.0:
            self.basis[self.size] = w / self.beta
            self.count += 1
        elif self.inject:
            self._inject()
        else:
            self.stopped = True

    def _inject(self) -> None:
        """Continue an exhausted Krylov space with a random vector orthogonal to it."""
        for _ in range(10):  # a random vector outside a proper subspace: at once, in practice
            self.n_injected += 1
            if self.add(unit_probe(self.layout, self.seed, "lanczos-inject", self.n_injected)):
                return
        self.stopped = True

    def _orthogonalize(self, w: torch.Tensor, k: int, before: float) -> tuple[np.ndarray, bool]:
        """Remove from ``w`` (in place) its components along ``basis[:k]``; returns the removed
        coefficients (float64) and whether ``w`` is numerically outside the span."""
        total = np.zeros(k)
        if k == 0:
            return total, before > 0.0
        basis = self.basis[:k]
        previous = before
        for attempt in range(3):
            c = basis @ w
            w.sub_(basis.T @ c)
            total += c.double().cpu().numpy()
            after = norm(w)
            if attempt >= 1 and after >= _REORTH_RATIO * previous:
                return total, after > 0.0
            if after == 0.0:
                return total, False
            previous = after
        return total, False  # still shrinking after three passes: w lies in the span

    # -- Ritz pairs and restarts ---------------------------------------------------------------------
    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), the eigenvectors ``S`` of ``T`` (columns), and the residual
        estimates ``|beta * S[last, i]|`` (exact for an orthonormal basis)."""
        theta, s = _eigh(self.T[: self.size, : self.size])
        return theta, s, np.abs(self.beta * s[-1, :])

    def vectors(self, s: np.ndarray) -> torch.Tensor:
        """Ritz vectors ``V s`` for the columns of ``s``, as rows of shape ``(len, P)``."""
        weights = torch.as_tensor(s.T, dtype=self.dtype, device=self.layout.device)
        return weights @ self.basis[: self.size]

    def restart(self, theta: np.ndarray, s: np.ndarray, keep: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors ``keep`` (column indices of ``s``) and the last
        Lanczos vector; ``T`` becomes ``diag(theta[keep])``."""
        kept = self.vectors(s[:, keep])
        has_next = self.count > self.size
        next_vector = self.basis[self.size].clone() if has_next else None
        n_keep = len(keep)
        self.basis[:n_keep] = kept
        self.T[:] = 0.0
        self.T[np.arange(n_keep), np.arange(n_keep)] = theta[keep]
        self.size = n_keep
        self.count = n_keep
        if next_vector is not None:
            self.basis[n_keep] = next_vector
            self.count += 1
        elif self.inject:
            self._inject()
        self.n_restarts += 1


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for vectors of the Krylov basis, except on devices without it (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigen-decomposition of a small float64 matrix.

    Done by torch on the CPU rather than numpy: numpy's BLAS thread pool and torch's OpenMP pool
    fight over the cores when calls alternate, which made every step ~100x slower in tests.
    """
    theta, s = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(matrix)))
    return theta.numpy(), s.numpy()
