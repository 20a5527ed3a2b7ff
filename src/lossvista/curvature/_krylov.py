"""The Lanczos process with full re-orthogonalisation, shared by the eigensolver and SLQ, and the
memory and time its basis costs.

Every new vector is orthogonalised against *all* basis vectors, twice (Kahan's "twice is
enough"; a third pass when the second one still removed more than half of the vector), so the
basis stays orthonormal to working precision. That is what rules out the "ghost" copies of
converged eigenvalues that plain three-term Lanczos produces (Paige 1972; Parlett & Scott 1979):
Ritz vectors of an orthonormal basis are orthonormal, so one eigenvector cannot appear twice.

The basis is kept in the parameters' dtype, float32 at least (:func:`basis_dtype`): float64 for
float64 models, float32 for float32, float16 and bfloat16 ones. It is the one large cost beyond
the products (``(capacity + 1) * P`` entries; ResNet-18's 41 float64 vectors took 3.7 GB), and a
float64 copy of float32 products buys no accuracy the products do not have. What keeps a float32
basis accurate is done in float64 where it is cheap: ``T`` and the orthogonalisation
coefficients are float64, norms and the eigensolver's residual checks accumulate in float64, and
the inner products of the second (and third) orthogonalisation pass, which decide how
orthogonal the basis ends up, sum their products in float64, a block of columns at a time. A
plain float32 ``basis @ w`` is off by about ``sqrt(P) eps`` times the largest partial sum: once
the vectors concentrate on a few entries (converging eigenvectors do) that left a basis of
``P = 5e5`` orthonormal only to 1e-4 and the residuals stuck at 5e-5 ``|H|``. With the float64
sums the float32 basis stays orthonormal to about ``eps`` (1e-7; 2e-6 after hundreds of
restarts) and the verified residuals reach the float32 products' own floor, in the same number
of products as a float64 basis (``tests/curvature/test_lanczos_memory.py``). The block sums cost
about twice a float32 pass (13 against 6 ms for 40 vectors of 1.2M entries on 2 CPU cores).

The projected matrix ``T = V^T H V`` is kept dense (float64), filled column by column with the
orthogonalisation coefficients, so a thick restart (Wu & Simon 2000, "Thick-restart Lanczos
method for large symmetric eigenvalue problems") needs no special bookkeeping: after keeping Ritz
vectors ``y_i = V s_i`` and the last residual vector, ``T`` restarts as ``diag(theta_i)`` and the
coupling row is recomputed by the next step. In every state ``H V = V T + beta v_next e_last^T``,
so the residual of a Ritz pair is ``|beta * s_last|`` without a product. The restart combines
the basis in place, a block of columns at a time, so it needs no second basis.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, LossvistaWarning
from ._common import caller_stacklevel
from ._vectors import Layout, norm, unit_probe

#: A second pass that removes more than this share of a vector triggers a third.
_REORTH_RATIO = 0.5
#: The share of the device's free memory a default-sized basis may take (the products need the
#: rest: activations, gradient graphs and a few vectors).
BASIS_MEMORY_FRACTION = 0.5
#: Runs estimated to take longer than this (seconds) are announced before they go on.
LONG_RUN_SECONDS = 30.0
#: The clock that times the first products (a module attribute, so tests can replace it).
_clock = time.perf_counter


class LanczosProcess:
    """Builds an orthonormal Krylov basis of a symmetric operator and its projection ``T``.

    Args:
        matvec: ``v -> H v`` on flat vectors.
        layout: the vector layout (length, dtype, device).
        capacity: the most basis vectors with a product (``T`` is at most this size); memory is
            ``(capacity + 1) * P`` entries of ``dtype`` on the parameters' device
            (:func:`basis_bytes`).
        seed: seed of the random vectors drawn when the space is exhausted (an invariant
            subspace was found) and more vectors are needed.
        inject: on breakdown, continue with a fresh random vector orthogonal to the basis
            (eigensolver) instead of stopping (quadrature, which then is exact already).
        dtype: the basis dtype; default :func:`basis_dtype` of the layout.
        timings: a list the wall times of the products are appended to while it holds fewer
            than two (shared by the runs of SLQ); default a new one, :attr:`timings`.
    """

    def __init__(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        layout: Layout,
        capacity: int,
        *,
        seed: int = 0,
        inject: bool = True,
        dtype: torch.dtype | None = None,
        timings: list[float] | None = None,
    ) -> None:
        self.matvec = matvec
        self.layout = layout
        self.capacity = capacity
        self.seed = seed
        self.inject = inject
        self.dtype = basis_dtype(layout) if dtype is None else dtype
        rows = basis_rows(layout, capacity)
        self.basis = torch.empty(rows, layout.size, dtype=self.dtype, device=layout.device)
        self.T = np.zeros((capacity, capacity))
        self.size = 0  # columns of T: basis vectors whose product is known
        self.count = 0  # basis vectors (size, or size + 1 with the next Lanczos vector)
        self.beta = 0.0  # norm of the residual of the last step
        self.n_matvec = 0
        self.n_restarts = 0
        self.n_injected = 0
        self.stopped = False  # breakdown without injection: the Krylov space is exhausted
        self.timings: list[float] = [] if timings is None else timings

    @property
    def exhausted(self) -> bool:
        """The basis spans the whole space: every Ritz pair is exact."""
        return self.size >= self.layout.size

    @property
    def nbytes(self) -> int:
        """Bytes of the basis."""
        return self.basis.numel() * self.basis.element_size()

    # -- building the basis -------------------------------------------------------------------------
    def add(self, vector: torch.Tensor) -> bool:
        """Append ``vector`` orthogonalised against the basis and normalised; False if it lies
        in the span of the basis already."""
        w = vector.to(dtype=self.dtype, device=self.layout.device, copy=True)
        _, length = self._orthogonalize(w, self.count)
        if length == 0.0:
            return False
        self.basis[self.count].copy_(w).div_(length)
        self.count += 1
        return True

    def step(self) -> None:
        """One Lanczos step: the product of the newest vector, its coefficients and residual."""
        j = self.size
        start = _clock()
        w = self.matvec(self.basis[j]).to(dtype=self.dtype)
        if w.data_ptr() == self.basis[j].data_ptr():  # an operator that returned its input
            w = w.clone()
        if len(self.timings) < 2:
            if w.device.type == "cuda":
                torch.cuda.synchronize(w.device)
            self.timings.append(_clock() - start)
        self.n_matvec += 1
        coefficients, length = self._orthogonalize(w, j + 1)
        self.T[: j + 1, j] = coefficients
        self.T[j, : j + 1] = coefficients
        self.size = j + 1
        self.count = j + 1
        self.beta = length
        if self.exhausted or self.size >= self.basis.shape[0]:
            return
        if self.beta > 0.0:
            self.basis[self.size].copy_(w).div_(self.beta)
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

    def _orthogonalize(self, w: torch.Tensor, k: int) -> tuple[np.ndarray, float]:
        """Remove from ``w`` (in place) its components along ``basis[:k]``; returns the removed
        coefficients (summed in float64) and the norm of what is left, ``0.0`` where ``w`` lies
        numerically in the span."""
        total = np.zeros(k)
        if k == 0:
            return total, norm(w)
        basis = self.basis[:k]
        previous = None
        for attempt in range(3):
            # The first pass removes the bulk; the later ones, which decide how orthogonal the
            # basis ends up, sum their products in float64 (a float32 sum over P entries is off
            # by ~sqrt(P) eps times the largest partial sum).
            c = basis @ w if attempt == 0 else _inner_products(basis, w)
            w.addmv_(basis.T, c.to(w.dtype), alpha=-1)  # w -= basis^T c, no temporary vector
            total += c.double().cpu().numpy()
            after = norm(w)
            if previous is not None and after >= _REORTH_RATIO * previous:
                return total, after
            if after == 0.0:
                return total, 0.0
            previous = after
        return total, 0.0  # still shrinking after three passes: w lies in the span

    # -- Ritz pairs and restarts ---------------------------------------------------------------------
    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), the eigenvectors ``S`` of ``T`` (columns), and the residual
        estimates ``|beta * S[last, i]|`` (exact for an orthonormal basis)."""
        theta, s = _eigh(self.T[: self.size, : self.size])
        return theta, s, np.abs(self.beta * s[-1, :])

    def vector(self, s: np.ndarray, spare: int = -1) -> torch.Tensor:
        """The Ritz vector ``V s`` for one column ``s`` (length :attr:`size`), written into the
        ``spare``-th unused row of the basis when it has one (no new memory; the next step
        overwrites it), else a new 1-D tensor."""
        weights = torch.as_tensor(s, dtype=self.dtype, device=self.layout.device)
        row = self.count + spare
        if spare >= 0 and row < self.basis.shape[0]:
            return torch.mv(self.basis[: self.size].T, weights, out=self.basis[row])
        return self.basis[: self.size].T @ weights

    def restart(self, theta: np.ndarray, s: np.ndarray, keep: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors ``keep`` (column indices of ``s``) and the last
        Lanczos vector; ``T`` becomes ``diag(theta[keep])``."""
        n_keep = len(keep)
        weights = torch.as_tensor(s[:, keep].T, dtype=self.dtype, device=self.layout.device)
        old = self.basis[: self.size]
        # In place, a block of columns at a time: temporaries of about one vector, not a basis.
        width = -(-self.layout.size // self.size)
        for start in range(0, self.layout.size, width):
            columns = slice(start, start + width)
            self.basis[:n_keep, columns] = weights @ old[:, columns]
        has_next = self.count > self.size
        if has_next:
            self.basis[n_keep].copy_(self.basis[self.size])  # n_keep <= size: never overlap
        self.T[:] = 0.0
        self.T[np.arange(n_keep), np.arange(n_keep)] = theta[keep]
        self.size = n_keep
        self.count = n_keep + int(has_next)
        if not has_next and self.inject:
            self._inject()
        self.n_restarts += 1

    def release(self) -> None:
        """Free the basis (the process cannot step afterwards)."""
        self.basis = self.basis.new_empty(0, self.layout.size)


# -- dtype, memory and time of a basis -----------------------------------------------------------
def basis_dtype(layout: Layout) -> torch.dtype:
    """The dtype of Krylov basis vectors: the parameters' dtype, float32 at least."""
    return torch.float64 if layout.dtype == torch.float64 else torch.float32


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for probe vectors of the trace estimators, except on devices without it (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def basis_rows(layout: Layout, capacity: int) -> int:
    """Vectors a process of ``capacity`` allocates: one more than its capacity, at most ``P``."""
    return min(capacity + 1, layout.size)


def vector_bytes(layout: Layout) -> int:
    """Bytes of one basis vector (``P`` entries of :func:`basis_dtype`)."""
    return layout.size * torch.empty(0, dtype=basis_dtype(layout)).element_size()


def basis_bytes(layout: Layout, capacity: int) -> int:
    """Bytes of the basis of a process of ``capacity``."""
    return basis_rows(layout, capacity) * vector_bytes(layout)


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``; ``None`` where unknown.

    CUDA: free device memory plus what PyTorch's cache holds unused. CPU: available RAM
    (Linux's ``MemAvailable``, else ``SC_AVPHYS_PAGES * SC_PAGE_SIZE``), capped by the room left
    under a cgroup memory limit (containers).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    available = _meminfo("MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
            return None
    room = _cgroup_room()
    return available if room is None else min(available, room)


def check_basis_fits(layout: Layout, capacity: int, what: str, remedy: str) -> None:
    """Refuse (before any product) a basis larger than the device's free memory; the message
    names ``what`` asked for it and offers ``remedy`` (may be empty) first."""
    need = basis_bytes(layout, capacity)
    free = free_memory(layout.device)
    if free is not None and need > free:
        raise InputError(
            f"{what} needs a Lanczos basis of {basis_rows(layout, capacity)} x {layout.size:,} "
            f"{_dtype_name(basis_dtype(layout))} values ({format_bytes(need)}), but only "
            f"{format_bytes(free)} of {layout.device.type} memory is free; "
            f"{remedy + ', ' if remedy else ''}free memory, or select fewer parameters "
            "(Objective(params=...))"
        )


def announce_long_run(what: str, process: LanczosProcess, products: int, detail: str) -> None:
    """Warn when ``products`` products take over :data:`LONG_RUN_SECONDS`, timed by the faster
    of the first two (the first one pays one-off costs: kernels, caches, lazy set-up)."""
    if len(process.timings) < 2:
        return
    seconds = min(process.timings)
    if seconds * products <= LONG_RUN_SECONDS:
        return
    warnings.warn(
        f"{what}: about {format_seconds(seconds * products)} in all: a Hessian-vector product "
        f"takes {format_seconds(seconds)} and {detail}; the Lanczos basis takes "
        f"{format_bytes(process.nbytes)} of {process.layout.device.type} memory "
        f"({process.basis.shape[0]} x {process.layout.size:,} {_dtype_name(process.dtype)} "
        "values). Fewer samples make each product cheaper",
        LossvistaWarning,
        stacklevel=caller_stacklevel(),
    )


def format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.2f} {unit}"
    return f"{n / 1024:.2f} GiB"


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _inner_products(basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``basis @ w`` with the products summed in float64, a block of columns at a time.

    Each product is rounded to the basis dtype once, so the error is ``eps`` of the largest
    product rather than of the largest partial sum. The blocks' products (and their float64
    copies) take about 1.5 vectors of memory, less than a Hessian-vector product needs.
    """
    if basis.dtype == torch.float64:
        return basis @ w
    rows, size = basis.shape
    width = min(max(-(-size // (2 * rows)), 4096), size)
    partial = torch.empty(-(-size // width), rows, dtype=torch.float64, device=basis.device)
    products = torch.empty(rows, width, dtype=basis.dtype, device=basis.device)
    for block, start in enumerate(range(0, size, width)):
        n = min(width, size - start)
        torch.mul(basis[:, start : start + n], w[start : start + n], out=products[:, :n])
        torch.sum(products[:, :n], dim=1, dtype=torch.float64, out=partial[block])
    return partial.sum(0)


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1); None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = [line.split("::", 1)[1] for line in lines if line.startswith("0::")]
    candidates = [
        (Path("/sys/fs/cgroup") / p.lstrip("/") / "memory.max", "memory.current") for p in v2
    ]
    candidates.append(
        (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), "memory.usage_in_bytes")
    )
    for limit_file, usage_name in candidates:
        try:
            limit = limit_file.read_text().strip()
            usage = int((limit_file.parent / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 reports "no limit" as a huge number
            return max(int(limit) - usage, 0)
    return None


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigen-decomposition of a small float64 matrix.

    Done by torch on the CPU rather than numpy: numpy's BLAS thread pool and torch's OpenMP pool
    fight over the cores when calls alternate, which made every step ~100x slower in tests.
    """
    theta, s = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(matrix)))
    return theta.numpy(), s.numpy()
