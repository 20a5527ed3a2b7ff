"""Activations stay in glibc's heap once lossvista has warmed the allocator (page-fault oracle)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from lossvista import _allocator
from lossvista.engine import PointEvaluator

MODULE = Path(_allocator.__file__)


def _transparent_huge_pages() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _allocator.glibc(), reason="the fault pattern is glibc's")
@pytest.mark.skipif(_transparent_huge_pages(), reason="huge pages hide the 4 KiB faults")
def test_a_warmed_process_keeps_a_forwards_activations_without_page_faults():
    # A fresh interpreter that imports neither torch nor lossvista's package (either may free a
    # large block and warm the allocator itself): the module is loaded from its file alone.
    script = textwrap.dedent(
        f"""
        import ctypes, importlib.util, resource
        spec = importlib.util.spec_from_file_location("allocator", {str(MODULE)!r})
        allocator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(allocator)
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        size = 4 * 2**20  # an activation of 1M float32 numbers

        def faults_per_forward():
            # four activations alive at once, freed at the end of the forward: glibc raises
            # its threshold to 4 MiB after the first, but trims the heap's top beyond 8 MiB
            counts = []
            for _ in range(4):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                blocks = [libc.malloc(size) for _ in range(4)]
                for block in blocks:
                    libc.memset(block, 1, size)
                for block in blocks:
                    libc.free(block)
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            return min(counts[1:])

        cold = faults_per_forward()
        first, again = allocator.warm("cuda:0"), allocator.warm()
        print(cold, first, again, allocator.warm(), faults_per_forward())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    cold, on_cuda, warmed, again, warm = done.stdout.split()
    assert (on_cuda, warmed, again) == ("False", "True", "False")  # once, on the CPU only
    assert int(cold) >= 2000  # 4,096 pages of 4 KiB faulted in afresh every forward
    assert int(warm) <= 20  # the heap's pages, faulted in once, are reused


def test_the_engine_warms_the_allocator_for_its_device(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(_allocator, "warm", lambda device="cpu": seen.append(str(device)))
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    X, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    obj = lv.Objective(model, nn.functional.cross_entropy, (X, y))
    dirs = lv.random_directions(model, 1, seed=0)
    PointEvaluator(obj, obj.parameters(), dirs).run(np.zeros((2, 1)), progress=False)
    assert seen == ["cpu"]
    lv.hessian_trace(obj, n_probes=2, seed=0)
    assert seen[1:] and set(seen) == {"cpu"}


def test_without_glibc_nothing_is_called_and_the_check_runs_once(monkeypatch):
    checks: list[int] = []
    monkeypatch.setattr(_allocator, "_warmed", False)
    monkeypatch.setattr(_allocator, "glibc", lambda: checks.append(1) or False)
    monkeypatch.setattr(_allocator.ctypes, "CDLL", lambda *a: pytest.fail("called the C library"))
    assert (_allocator.warm("cuda"), _allocator.warm(), _allocator.warm()) == (False,) * 3
    assert checks == [1]
