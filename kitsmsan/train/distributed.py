"""Multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m kitsmsan train ...`` starts N processes with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Each process
calls :func:`init_distributed`, which joins the process group (``nccl`` on GPUs, ``gloo`` on CPU)
and pins the process to GPU ``LOCAL_RANK``.

The paper trains one model on one device (MSAN paper, §3.1); DDP is our addition for speed. Each
rank draws its own windows through the global sample index
``index = (iteration * world_size + rank) * batch_size + j`` (CONTRIBUTING.md), so the ranks never
see the same window and the effective batch is ``world_size * batch_size``. Gradients are averaged
by DDP, so all ranks hold identical weights; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kitsmsan.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, 0 for a single-process run.
        world_size: number of processes, 1 for a single-process run.
        local_rank: rank on this machine (the GPU index).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (not distributed).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer") from None


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1; otherwise a single-process job.

    Args:
        device_type: ``"cuda"`` (backend ``nccl``, device ``cuda:LOCAL_RANK``) or ``"cpu"``
            (backend ``gloo``). Default ``"cpu"``.

    Returns:
        The :class:`DistInfo` of this process.

    Raises:
        ConfigError: malformed rank variables.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistInfo()
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo) -> None:
    """Leave the process group (no-op for a single-process job)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op for a single-process job)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged for a single process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (for decisions such as "stop now")."""
    if not info.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sample_indices(iteration: int, rank: int, world_size: int, batch_size: int) -> list[int]:
    """The dataset indices of one rank's batch at ``iteration`` (the CONTRIBUTING.md scheme).

    ``index = (iteration * world_size + rank) * batch_size + j`` for ``j`` in ``0..batch_size-1``:
    disjoint across ranks and iterations, and the same whenever the run is resumed.

    Example:
        >>> sample_indices(3, 1, 2, 2)
        [14, 15]
    """
    start = (iteration * world_size + rank) * batch_size
    return list(range(start, start + batch_size))


class WindowBatchSampler(torch.utils.data.Sampler):
    """Yields one rank's batches of sample indices for iterations ``start .. stop-1``.

    Args:
        start: first iteration (the resume point). stop: one past the last iteration.
        rank, world_size: from :class:`DistInfo`. batch_size: windows per batch and rank.
    """

    def __init__(self, start: int, stop: int, rank: int, world_size: int, batch_size: int) -> None:
        self.start, self.stop = int(start), int(stop)
        self.rank, self.world_size, self.batch_size = int(rank), int(world_size), int(batch_size)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            yield sample_indices(iteration, self.rank, self.world_size, self.batch_size)
