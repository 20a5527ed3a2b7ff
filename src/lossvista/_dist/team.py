"""The ranks of a distributed job (:class:`Team`), how lossvista joins or starts their process
group, and the context variables that make a rank read its share of the data
(see :mod:`lossvista._dist`)."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from .._averaging import TOTALS_REDUCE
from .._collect import FLUSH_AGREE
from .._data import BATCH_SHARE
from ..errors import InputError, LossvistaError

Mode = Literal["auto", "points", "data"]
MODES = ("auto", "points", "data")

#: Set inside the rounds of the points mode: nothing nested is shared between the ranks again.
_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("lossvista_local", default=False)
#: The team of the data mode while it runs (Hessian operators inside it reduce over it).
_ACTIVE: contextvars.ContextVar[Team | None] = contextvars.ContextVar(
    "lossvista_active_team", default=None
)


@dataclasses.dataclass(frozen=True)
class Team:
    """The ranks of a process group working on one call (``rank`` 0 writes the store)."""

    rank: int
    world: int
    device: torch.device  # where tensors of collectives live (CUDA for NCCL)
    group: Any = None  # None: the default process group

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        from torch import distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self._object_device())
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        from torch import distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor, same dtype and device)."""
        from torch import distributed as dist

        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out.to(tensor.device)

    def sum_rows(self, rows: np.ndarray) -> np.ndarray:
        """The sum of float64 ``rows`` over the ranks."""
        return self.sum_tensor(torch.from_numpy(np.ascontiguousarray(rows))).cpu().numpy()

    def gather_or_raise(self, value: Any, failure: BaseException | None) -> list[Any]:
        """Every rank's ``value`` (rank order); a failure on any rank is raised on every rank
        after the gather, so no rank waits for one that gave up."""
        gathered = self.all_gather((value, None if failure is None else _portable(failure)))
        errors = [error for _, error in gathered if error is not None]
        if errors:
            raise failure if failure is not None else errors[0]
        return [item for item, _ in gathered]

    def agree(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0 only and return its result on every rank; an exception it
        raises is raised on every rank (so no rank waits for a rank that gave up)."""
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.rank == 0:
            try:
                outcome = ("ok", action())
            except Exception as exc:
                error = exc
                outcome = ("error", _portable(exc))
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            raise error if error is not None else outcome[1]
        return outcome[1]

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def check_options(distributed: Any, mode: Any) -> None:
    """Refuse ``distributed=`` and ``distributed_mode=`` values before any work."""
    if distributed not in ("auto", True, False):
        raise InputError(f"distributed must be 'auto', True or False, got {distributed!r}")
    if mode not in MODES:
        raise InputError(f"distributed_mode must be one of {list(MODES)}, got {mode!r}")


def environment() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` from torchrun's variables, else SLURM's, else None."""
    for names in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        values = [os.environ.get(n) for n in names]
        if values[0] is not None and values[1] is not None:
            try:
                return int(values[0]), int(values[1]), int(values[2] or 0)
            except ValueError as exc:
                raise InputError(
                    f"the environment variables {names} hold {values}, which are not integers"
                ) from exc
    return None


def team_for(distributed: Any, device: torch.device) -> Team | None:
    """The team of this call, starting the process group when the launcher's variables say
    there are several ranks and none is initialised yet; ``None``: one process."""
    if distributed is False or _LOCAL.get():
        return None
    if distributed == "auto" and os.environ.get("LOSSVISTA_DISTRIBUTED", "") in ("0", "false"):
        return None
    try:
        from torch import distributed as dist
    except ImportError:  # pragma: no cover - torch built without it
        dist = None  # type: ignore[assignment]
    available = dist is not None and dist.is_available()
    if available and dist.is_initialized():
        world = dist.get_world_size()
        if world > 1:
            return Team(dist.get_rank(), world, _collective_device(device))
    else:
        env = environment()
        if env is not None and env[1] > 1:
            if not available:
                raise InputError(
                    "the environment describes a distributed job (RANK/WORLD_SIZE or SLURM_*), "
                    "but this torch has no torch.distributed; pass distributed=False or set "
                    "LOSSVISTA_DISTRIBUTED=0 to evaluate in each process alone"
                )
            _start_group(*env, device)
            return Team(env[0], env[1], _collective_device(device))
    if distributed is True:
        raise InputError(
            "distributed=True, but there is no process group and no torchrun (RANK, WORLD_SIZE) "
            "or SLURM (SLURM_PROCID, SLURM_NTASKS) variables with more than one process; start "
            "the script with torchrun --nproc_per_node=N or srun, or pass distributed='auto'"
        )
    return None


def secondary_rank() -> bool:
    """True in a rank other than 0 of a distributed job (which leaves reports and pictures to
    rank 0)."""
    from torch import distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() != 0
    env = environment()
    return env is not None and env[1] > 1 and env[0] != 0


def use_local_device() -> None:
    """Make ``cuda`` mean this rank's GPU (``cuda:LOCAL_RANK``) in a job of several ranks, so
    that ``--device cuda`` on the command line gives one device per rank."""
    env = environment()
    if env is not None and env[1] > 1 and torch.cuda.is_available():
        torch.cuda.set_device(env[2] % torch.cuda.device_count())


def _start_group(rank: int, world: int, local: int, device: torch.device) -> None:
    from torch import distributed as dist

    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
    if missing:
        raise InputError(
            f"a distributed job of {world} processes needs {missing} in the environment to find "
            "rank 0 (torchrun sets them; under srun export e.g. MASTER_ADDR=$(scontrol show "
            "hostnames $SLURM_JOB_NODELIST | head -n 1) and MASTER_PORT=29500 in the job script)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else local)
    address = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world)
    atexit.register(_stop_group)


#: At exit the gloo ranks wait this long for each other before the group is destroyed.
EXIT_BARRIER_SECONDS = 60


def _stop_group() -> None:
    """Destroy the group at exit; under gloo after a barrier, so that no rank tears its
    connections down while another still uses them (which can abort the process with
    "terminate called without an active exception"). A rank that died only delays the exit by
    :data:`EXIT_BARRIER_SECONDS` (torchrun has usually stopped the job by then)."""
    import datetime

    from torch import distributed as dist

    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        with contextlib.suppress(Exception):  # a rank is gone: nothing to wait for
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=EXIT_BARRIER_SECONDS))
    dist.destroy_process_group()


def _collective_device(device: torch.device) -> torch.device:
    from torch import distributed as dist

    if dist.get_backend() == "nccl":
        return (
            device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        )
    return torch.device("cpu")


def _portable(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling (to be raised on the other ranks), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return LossvistaError(f"rank 0 failed: {type(exc).__name__}: {exc}")
    return exc


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Inside the block lossvista works in this process alone, whatever the job around it.

    For lossvista calls made on one rank of a distributed job only (a training callback on rank
    0): without it, a grid or a Hessian computation there would wait for the other ranks to join
    it. Example::

        if trainer.is_global_zero:
            with lv.single_process():
                surface = lv.plane(obj, directions)
    """
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


@contextlib.contextmanager
def data_share(team: Team) -> Iterator[None]:
    """Inside the block this rank reads its share of the batches, and the totals of a point are
    summed over the ranks (the data mode)."""
    tokens = (
        BATCH_SHARE.set((team.rank, team.world)),
        TOTALS_REDUCE.set(team.sum_rows),
        _ACTIVE.set(team),
        FLUSH_AGREE.set(lambda size: int(team.agree(lambda: size))),  # rank 0's chunk size
    )
    try:
        yield
    finally:
        FLUSH_AGREE.reset(tokens[3])
        _ACTIVE.reset(tokens[2])
        TOTALS_REDUCE.reset(tokens[1])
        BATCH_SHARE.reset(tokens[0])


def can_share_data(objective: Any, team: Team, batch_size: int | None) -> str | None:
    """Why the data mode cannot be used for ``objective`` (None: it can)."""
    if objective.bn == "recompute" and objective.batchnorm_modules:
        return "bn='recompute' re-estimates BatchNorm statistics from all the data at every point"
    count = objective._data.count_batches(batch_size or objective._default_batch_size())
    if count is None:
        return "the data are a stream of unknown length (len() of the loader is needed)"
    if count < team.world:
        return f"the data have {count} batches, fewer than the {team.world} ranks"
    return None


def shared_items(team: Team, view: Any, params: Any) -> tuple[float, float]:
    """``(items of this rank's batches, items of all ranks)`` by the objective's count, for a
    functional view (:mod:`lossvista._functional`) whose batches are this rank's, at ``params``."""
    from .._data import call_functional

    averaging, model = view.objective._averaging, view.objective.model
    local = 0.0
    for inputs, target, _ in view.batches():
        output = None
        if averaging.needs_output:  # the model's other tensors are those of the view's origin
            with torch.no_grad():
                output = call_functional(model, dict(params), inputs)
        local += float(averaging.count_of(output, target))
    total = team.sum_tensor(torch.tensor([local], dtype=torch.float64))
    return local, float(total[0])


def active_team() -> Team | None:
    """The team of the data mode while a grid runs in it (else ``None``)."""
    return _ACTIVE.get()


def hessian_team(objective: Any) -> Team | None:
    """The team a Hessian operator of ``objective`` sums its products over: the data mode's
    while it runs, nobody inside the points mode, else the job's when the data can be shared."""
    active = _ACTIVE.get()
    if active is not None:
        return active
    team = team_for("auto", objective.device)
    if team is None or can_share_data(objective, team, None) is not None:
        return None
    return team
