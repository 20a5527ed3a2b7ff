"""Distributed evaluation on ``torch.distributed``: the ranks of a ``torchrun`` or ``srun`` job.

Under ``torchrun --nproc_per_node=N`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or ``srun``
(``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` with ``MASTER_ADDR``/``MASTER_PORT``),
every grid of :func:`lossvista._grid.run_grid` is shared between the ranks (a :class:`Team`). The
process group is the user's when one is initialised, else one is started here (gloo on CPU, NCCL
on CUDA; one device per rank: the model's). Two modes:

- ``"points"``: the missing points are split between the ranks in rounds; each round every rank
  evaluates its block of points (exactly the single-process computation per point, so the values
  are bit for bit those of one process), the finished chunks are gathered on every rank, and rank
  0 alone writes them to the store before the next round.
- ``"data"``: every rank evaluates the same points on its share of the batches (batch ``i`` on
  rank ``i % N``), and the item-weighted sums are added up over the ranks before the means are
  taken (:data:`lossvista._averaging.TOTALS_REDUCE`): the single-process values up to the
  rounding of a different order of summation. Chosen by ``"auto"`` when there are fewer missing
  points than ranks.

Every rank must make the same call (same objective, directions and arguments; a rank whose grid
differs is refused on every rank, :func:`check_same`). When the file holds no engine
configuration yet, rank 0 chooses it as one process would (``strategy="auto"`` tunes there) and
the others use it. Rank 0's failures in opening the store, and any rank's failure in the points
mode, are raised on every rank.

Hessian-vector products use the data mode on their own (:func:`hessian_team`), so ``hessian_eigs``,
``hessian_trace``, ``hessian_density`` and ``sharpness(kind="hessian")`` split the data between
the ranks. :func:`single_process` (``lv.single_process()``), ``RunOptions(distributed=False)`` or
``LOSSVISTA_DISTRIBUTED=0`` in the environment keep a process to itself: needed where lossvista
is called on one rank only (a training callback on rank 0), which would otherwise wait for the
other ranks.
"""

from .grid import check_same, solve
from .team import (
    MODES,
    Team,
    active_team,
    can_share_data,
    check_options,
    data_share,
    environment,
    hessian_team,
    secondary_rank,
    shared_items,
    single_process,
    team_for,
    use_local_device,
)

__all__ = [
    "MODES",
    "Team",
    "active_team",
    "can_share_data",
    "check_options",
    "check_same",
    "data_share",
    "environment",
    "hessian_team",
    "secondary_rank",
    "shared_items",
    "single_process",
    "solve",
    "team_for",
    "use_local_device",
]
