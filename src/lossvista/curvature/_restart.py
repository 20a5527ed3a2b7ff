"""The eigensolver around a :class:`~lossvista.curvature._krylov.LanczosProcess`: the basis size
that fits the device's memory, restarts, and the convergence checks with computed residuals (the
method is described in :mod:`lossvista.curvature.lanczos`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from . import _krylov
from ._krylov import LanczosProcess, announce_long_run, basis_bytes, vector_bytes
from ._vectors import Layout, dot, norm, unit_probe
from .hvp import HessianOperator


def default_basis(wanted: int) -> int:
    """The basis size ``max_basis=None`` asks for when memory allows."""
    return max(40, 2 * wanted + 20)


def plan_basis(layout: Layout, wanted: int, max_basis: int | None) -> int:
    """The basis size (vectors kept between restarts) for ``wanted`` pairs.

    The default (:func:`default_basis`) shrinks until its basis takes at most
    ``BASIS_MEMORY_FRACTION`` of the device's free memory, down to ``wanted + 2`` (restarts make
    up for a small basis); a basis that cannot fit the free memory at all is refused, an explicit
    ``max_basis`` as well, before any product.
    """
    n = layout.size
    floor = min(n, wanted + 2)
    free = _krylov.free_memory(layout.device)
    fewer_pairs = "ask for fewer pairs" if wanted > 1 else ""
    if max_basis is not None:
        basis = min(max_basis, n)
        if basis < floor:
            raise InputError(
                f"max_basis={basis} is too small for {wanted} pairs: give at least {wanted + 2}"
            )
        if free is not None and basis_bytes(layout, basis) > free:
            fits = free // vector_bytes(layout) - 1
            remedy = (
                f"pass max_basis <= {fits} (restarts make up for a smaller basis)"
                if fits >= floor
                else fewer_pairs
            )
            _krylov.check_basis_fits(layout, basis, f"max_basis={basis}", remedy)
        return basis
    basis = min(default_basis(wanted), n)
    if free is None or basis_bytes(layout, basis) <= _krylov.BASIS_MEMORY_FRACTION * free:
        return basis
    fits = int(_krylov.BASIS_MEMORY_FRACTION * free) // vector_bytes(layout) - 1
    if fits >= floor:
        return fits
    pairs = f"{wanted} pair{'s' if wanted > 1 else ''}"
    _krylov.check_basis_fits(
        layout, floor, f"hessian_eigs for {pairs} (its smallest basis, {floor})", fewer_pairs
    )
    return floor


class Solver:
    """Thick-restart Lanczos for the ``n_large`` largest and ``n_small`` smallest eigenpairs.

    ``announce``: warn (:func:`~lossvista.curvature._krylov.announce_long_run`) after the second
    product when the run looks long.
    """

    def __init__(
        self,
        op: HessianOperator,
        n_large: int,
        n_small: int,
        tol: float,
        basis: int,
        seed: int,
        *,
        announce: bool = True,
    ):
        self.op = op
        self.n_large, self.n_small = n_large, n_small
        self.wanted = n_large + n_small
        self.tol = tol
        self.basis = basis
        self.announce = announce
        self.start_hvp = op.n_hvp
        self.process = LanczosProcess(op.matvec, op.layout, basis, seed=seed, inject=True)
        self.process.add(unit_probe(op.layout, seed, "lanczos", 0))
        self.basis_bytes = self.process.nbytes
        self.scale = 0.0
        self.last_residuals: np.ndarray | None = None
        self.stalls = 0
        self.floor: float | None = None  # relative residual where the checks stalled

    @property
    def n_hvp(self) -> int:
        return self.op.n_hvp - self.start_hvp

    def run(self, max_iter: int):
        """(values, vectors, residuals, converged) of the wanted pairs, most extreme first."""
        process = self.process
        next_check = 0
        while True:
            process.step()
            if process.n_matvec == 2 and self.announce:
                steps = min(max_iter, self.basis)
                announce_long_run(
                    "hessian_eigs",
                    process,
                    steps + self.wanted,
                    f"the run takes up to {steps + self.wanted} products before its first "
                    f"restart ({steps} Lanczos steps and {self.wanted} residual check"
                    f"{'s' if self.wanted > 1 else ''}; at most max_iter={max_iter} steps in "
                    "all); a looser tol or a lower max_iter bounds it",
                )
            theta, s, estimates = process.ritz()
            self.scale = max(self.scale, float(np.max(np.abs(theta))))
            index = self._wanted(theta)
            exhausted = process.exhausted
            if len(index) == self.wanted:
                small_enough = np.all(estimates[index] <= self.tol * self.scale)
                if (small_enough and process.n_matvec >= next_check) or exhausted:
                    pairs = self._verify(s, index)
                    if np.all(pairs[3]) or exhausted or self._stalled(pairs[2]):
                        return pairs
                    # The Lanczos estimates are below tol but a computed residual is not
                    # (rounding in the products): go on, and check again a little later.
                    next_check = process.n_matvec + max(5, self.basis // 4)
            if process.n_matvec >= max_iter or process.stopped:
                break
            if process.size >= self.basis:
                process.restart(theta, s, self._keep(theta))
        return self._verify(s, index)

    def release(self) -> None:
        """Free the basis once the pairs are out."""
        self.process.release()

    def _stalled(self, residuals: np.ndarray) -> bool:
        """True after three checks in a row where the computed residuals did not halve although
        the Lanczos estimates were below tol: the rounding floor of the products is reached."""
        relative = residuals / max(self.scale, 1e-300)
        if self.last_residuals is not None and np.all(relative >= 0.5 * self.last_residuals):
            self.stalls += 1
        else:
            self.stalls = 0
        self.last_residuals = relative
        self.floor = float(np.max(relative))
        return self.stalls >= 2

    def _wanted(self, theta: np.ndarray) -> np.ndarray:
        """Indices (into ascending ``theta``) of the wanted Ritz values, most extreme first."""
        size = len(theta)
        if size < self.wanted:
            return np.array([], dtype=int)
        large = np.arange(size - 1, size - 1 - self.n_large, -1)
        small = np.arange(self.n_small)
        return np.concatenate([large, small]).astype(int)

    def _keep(self, theta: np.ndarray) -> np.ndarray:
        """Ritz vectors kept at a restart: the wanted ones and about half the basis more,
        nearest the wanted end(s)."""
        size = len(theta)
        extra = max(1, (self.basis - self.wanted) // 2)
        if self.n_large and self.n_small:
            n_large = self.n_large + extra // 2
            n_small = self.n_small + extra - extra // 2
        else:
            n_large = self.n_large + extra if self.n_large else 0
            n_small = self.n_small + extra if self.n_small else 0
        n_large = min(n_large, size)
        n_small = min(n_small, size - n_large)
        keep = np.concatenate([np.arange(n_small), np.arange(size - n_large, size)])
        return np.unique(keep)

    def _verify(self, s: np.ndarray, index: np.ndarray):
        """Explicit residuals of the wanted Ritz pairs (one product each), one vector at a time
        and in the basis' unused rows where it has them, so the check needs no memory beside
        the basis for its vectors. The vectors are valid until the next Lanczos step."""
        vectors: list[torch.Tensor] = []
        values = np.empty(len(index))
        residuals = np.empty(len(index))
        for i, column in enumerate(index):
            v = self.process.vector(s[:, column], spare=i)
            v.div_(norm(v))
            hv = self.op.matvec(v).to(v.dtype)
            if hv.data_ptr() == v.data_ptr():  # an operator that returned its input
                hv = hv.clone()
            values[i] = dot(v, hv)
            residuals[i] = norm(hv.sub_(v, alpha=values[i]))
            del hv
            vectors.append(v)
        self.scale = max(self.scale, float(np.max(np.abs(values))))
        converged = residuals <= self.tol * self.scale
        converged &= _orthogonal_to_previous(vectors)
        return values, [_fix_sign(v) for v in vectors], residuals, converged


def _orthogonal_to_previous(vectors: list[torch.Tensor]) -> np.ndarray:
    """False for a vector not orthogonal to an earlier one (a duplicate can never pass)."""
    if not vectors:
        return np.zeros(0, dtype=bool)
    limit = math.sqrt(torch.finfo(vectors[0].dtype).eps)  # Ritz vectors: ~eps; a copy: ~1
    return np.array(
        [
            all(abs(dot(vectors[i], vectors[j])) <= limit for j in range(i))
            for i in range(len(vectors))
        ],
        dtype=bool,
    )


def _fix_sign(v: torch.Tensor) -> torch.Tensor:
    """``v`` (in place) with its entry of largest magnitude positive."""
    high, low = float(v.max()), float(v.min())
    if -low == high:  # a tie: the first entry of largest magnitude decides
        return v.neg_() if float(v[int(torch.argmax(v.abs()))]) < 0 else v
    return v.neg_() if -low > high else v
