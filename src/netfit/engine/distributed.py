"""torch.distributed plumbing: a single process unless launched by torchrun (WORLD_SIZE > 1)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

_independent = False  # inside ``independent()``: this rank works alone


@contextlib.contextmanager
def independent() -> Iterator[None]:
    """Within this block every rank does its own job (e.g. one block of a block-wise search each): the rank
    trains and evaluates as a single process (no DDP, no collectives, no sharding) and writes its own
    checkpoints and log lines. Ranks meet again after the block (gather their results there)."""
    global _independent
    previous, _independent = _independent, True
    try:
        yield
    finally:
        _independent = previous


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) without them
    (and (0, 1, local_rank) inside ``independent()``)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if _independent:
        return 0, 1, local_rank
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local_rank


def _collective() -> bool:
    return dist.is_initialized() and not _independent


def default_device() -> torch.device:
    """This process's GPU (cuda:LOCAL_RANK under torchrun) when CUDA is present, else the CPU."""
    return torch.device(f"cuda:{dist_env()[2]}") if torch.cuda.is_available() else torch.device("cpu")


def is_distributed() -> bool:
    """True when launched by torchrun with more than one process."""
    return dist_env()[1] > 1


def init_distributed(device: torch.device | str | None = None) -> None:
    """Join the process group once (idempotent): nccl on CUDA, gloo on CPU; a no-op in a single process."""
    if not is_distributed() or dist.is_initialized():
        return
    device = torch.device(device) if device is not None else None
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        # nccl needs each rank bound to its own GPU before the group forms
        torch.cuda.set_device(device if device is not None and device.index is not None else dist_env()[2])
    dist.init_process_group("nccl" if on_cuda else "gloo")


def is_main() -> bool:
    """True on rank 0 (the process that writes checkpoints, logs and results)."""
    return dist_env()[0] == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if _collective():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over ranks (a no-op in a single process)."""
    if not _collective():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def union_keys(keys: list[str]) -> list[str]:
    """Sorted union of every rank's keys, so all ranks all-reduce the same list in the same order."""
    if not _collective():
        return sorted(keys)
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, keys)
    return sorted({k for rank_keys in gathered for k in rank_keys or []})
