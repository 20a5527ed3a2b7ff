"""Worker of the distributed tests: ``torchrun --nproc_per_node=2 _worker.py SCENARIO OUT [ARGS]``.

Scenarios (every rank writes ``OUT/<scenario>_rank<r>.npz`` when it finishes):

- ``main``: a plane in the points mode (stored in ``OUT/points.h5``), the same plane in the data
  mode (and the forward passes it cost this rank), once more with clocks that disagree between
  the ranks (:func:`clocked_data_plane`), the curvature of :func:`_problem.curvature`,
  and the number of batches a Hessian operator of this rank runs over.
- ``mismatch``: a plane whose directions differ between the ranks (the refusal's message).
- ``plane DIE_AFTER``: the plane into ``OUT/resume.h5`` with 2-point rounds, counting forward
  passes; with ``DIE_AFTER > 0`` rank 1 dies (``os._exit``) at that forward pass.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _problem import AVERAGE_SAMPLES, STEPS, build, curvature, data_parallel_plane, worst_sharpness

import lossvista as lv
from lossvista.curvature import HessianOperator

torch.set_num_threads(1)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    if scenario == "main":
        forwards = [0]
        obj, directions = build(lambda: forwards.__setitem__(0, forwards[0] + 1))
        points = lv.plane(
            obj, directions, steps=STEPS, store=out / "points.h5", strategy="loop",
            progress=False,
        )  # fmt: skip
        before = forwards[0]
        data = data_parallel_plane(obj, directions, "data")
        arrays = {
            "points": points.values["loss"],
            "data": data.values["loss"],
            "data_forwards": np.array(forwards[0] - before),
        }
        arrays.update(clocked_data_plane(obj, directions, rank))
        before = forwards[0]
        lv.sharpness(obj, kind="average", rho=0.05, samples=AVERAGE_SAMPLES, seed=2)
        arrays["average_forwards"] = np.array(forwards[0] - before)
        before = forwards[0]
        worst_sharpness(obj)
        arrays["worst_forwards"] = np.array(forwards[0] - before)
        arrays.update(curvature(obj))
        with HessianOperator(obj) as op:  # the batches this rank's products run over
            arrays["operator_batches"] = np.array(op.n_batches)
    elif scenario == "plane":
        die_after = int(sys.argv[3])
        forwards = [0]

        def on_forward() -> None:
            forwards[0] += 1
            if rank == 1 and 0 < die_after <= forwards[0]:
                os._exit(3)  # a rank lost mid-run: no cleanup, no exception

        obj, directions = build(on_forward)
        result = lv.plane(
            obj, directions, steps=STEPS, store=out / "resume.h5", strategy="loop",
            chunk_size=2, progress=False,
        )  # fmt: skip
        arrays = {"loss": result.values["loss"], "forwards": np.array(forwards[0])}
    elif scenario == "mismatch":  # every rank draws its own directions: refused on both
        obj, _ = build()
        directions = lv.random_directions(obj, 2, seed=rank)
        try:
            lv.plane(obj, directions, steps=STEPS, store=out / "never.h5", progress=False)
        except lv.InputError as exc:
            arrays = {"error": np.array(str(exc))}
        else:
            arrays = {"error": np.array("")}
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    np.savez(out / f"{scenario}_rank{rank}.npz", **arrays)


def clocked_data_plane(obj: lv.Objective, directions, rank: int) -> dict[str, np.ndarray]:
    """The data-mode plane with clocks that disagree: rank 0 finds every chunk due at once,
    rank 1 never. The chunks must still close at the same points on both ranks (their sums are
    all-reduced then): rank 0 decides. Returns the values and this rank's number of chunks."""
    from lossvista import _collect, engine

    chunks = [0]
    flush = _collect.Collector.flush

    def counted(self) -> None:
        chunks[0] += bool(self._positions)
        flush(self)

    seconds = engine.CHUNK_SECONDS
    engine.CHUNK_SECONDS = 0.0 if rank == 0 else 1e9
    _collect.Collector.flush = counted
    try:
        plane = data_parallel_plane(obj, directions, "data")
    finally:
        engine.CHUNK_SECONDS = seconds
        _collect.Collector.flush = flush
    return {"clocked": plane.values["loss"], "clocked_chunks": np.array(chunks[0])}


if __name__ == "__main__":
    main()
