"""Activations kept in the C library's heap between forward passes (glibc on Linux).

glibc's ``malloc`` serves a block of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB in a fresh
process) with its own ``mmap`` and unmaps it on ``free``: every activation of that size then
costs a page fault per 4 KiB page touched, on every forward. glibc raises the threshold by
itself, to the size of a mapped block once one up to 32 MiB is freed (and keeps up to twice
that free at the top of the heap), so how fast the same forward runs depends on what the
process happened to free before. In fresh processes (``benchmarks/bench_allocator.py``) a plain
eager pass of the digits CNN in one batch took 1.7-2.3x as long as once one 32 MiB block had
been freed, and the ResNet-style model's in batches of 128 2.6-2.8x (1,000-330,000 page faults
per pass against none).

:func:`warm` frees one block just under glibc's ceiling for that rule, once per process, before
a CPU evaluation: the rule glibc applies after any such block, so nothing is set that glibc
would not set itself (``mallopt`` would switch its adjustment off for good). Elsewhere (another
C library, an allocator preloaded in glibc's place) it frees one block of that allocator, which
changes nothing.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import Any

#: Just under glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` (32 MiB on 64-bit systems), the largest
#: freed block it raises its threshold to; the block's header and page rounding stay inside.
BLOCK = 32 * 2**20 - 2 * 4096

_warmed = False


def glibc() -> bool:
    """True on Linux with glibc, where :func:`warm` has an effect."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def warm(device: Any = "cpu") -> bool:
    """Free one mapped block of :data:`BLOCK` bytes, once per process, before work on a CPU
    ``device``; True when it did now."""
    global _warmed
    if _warmed or str(device).split(":")[0] != "cpu":
        return False
    _warmed = True  # also elsewhere: finding the C library reads the interpreter's file
    if not glibc():
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own malloc
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        block = libc.malloc(BLOCK)  # mapped, not touched: no page is faulted in
        if not block:
            return False
        libc.free(block)
    except (OSError, AttributeError):  # pragma: no cover - no dynamic C library to call
        return False
    return True
