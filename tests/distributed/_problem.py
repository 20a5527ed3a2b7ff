"""The small float64 problem every distributed test evaluates, in the workers and in pytest.

Imported by the worker script (``_worker.py``, run under torchrun) and by the tests, which build
the single-process references from the same function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import lossvista as lv

#: The plane's grid; 35 points, more than the 2 ranks, fewer than one default round.
STEPS = (7, 5)
#: Noise draws of the average sharpness (shared between the ranks in blocks).
AVERAGE_SAMPLES = 8
SPAN = (-1.0, 1.0)
#: 48 samples in batches of 8: 6 batches, so 2 ranks can share them.
SAMPLES, BATCH = 48, 8


def build(on_forward=None) -> tuple[lv.Objective, list[lv.Direction]]:
    """A two-layer tanh network in float64 on seeded data, and two seeded directions.

    ``on_forward`` (no arguments) is called at every forward pass of the model.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 5, generator=g, dtype=torch.float64)
    y = torch.randn(SAMPLES, 2, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    if on_forward is not None:
        model.register_forward_hook(lambda *_: on_forward())
    obj = lv.Objective(model, nn.MSELoss(), (x, y), batch_size=BATCH)
    return obj, list(lv.random_directions(obj, 2, seed=0))


def data_parallel_plane(obj: lv.Objective, directions, mode: str) -> lv.Landscape:
    """The plane with ``distributed_mode=mode``."""
    return lv.plane(
        obj, tuple(directions), span=SPAN, steps=STEPS, strategy="loop", progress=False,
        distributed_mode=mode,
    )  # fmt: skip


def worst_sharpness(obj: lv.Objective) -> lv.Sharpness:
    """The worst-case sharpness by projected gradient ascent (a random restart, seeded)."""
    return lv.sharpness(obj, kind="worst", rho=0.05, ascent_steps=8, restarts=1, seed=4)


def curvature(obj: lv.Objective) -> dict[str, np.ndarray]:
    """Top and bottom Hessian eigenvalues, a Hutchinson trace, an SLQ density, the Hessian,
    average and worst-case sharpness (all seeded)."""
    eigs = lv.hessian_eigs(obj, k=2, which="both", seed=0)
    trace = lv.hessian_trace(obj, n_probes=8, seed=3)
    density = lv.hessian_density(obj, n_runs=2, n_steps=12, seed=5)
    sharp = lv.sharpness(obj, kind="hessian", rho=0.05)
    noisy = lv.sharpness(obj, kind="average", rho=0.05, samples=AVERAGE_SAMPLES, seed=2)
    worst = worst_sharpness(obj)
    return {
        "worst": np.array([worst.value, worst.base_loss, worst.n_evaluations]),
        "average": np.array([noisy.value, noisy.stderr, noisy.base_loss]),
        "eigs": np.asarray(eigs.values, dtype=np.float64),
        "trace": np.array([trace.estimate, trace.stderr]),
        "density_nodes": np.asarray(density.nodes, dtype=np.float64),
        "density_weights": np.asarray(density.weights, dtype=np.float64),
        "sharpness": np.array([sharp.value, sharp.lambda_max]),
    }
