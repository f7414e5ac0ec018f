"""Distributed training under ``torchrun``: process group setup and a few collectives.

Launch: ``torchrun --nproc_per_node N -m clipsr_cli train ...``. torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK; each process trains on cuda:LOCAL_RANK (NCCL) or on the CPU (gloo). Rank 0 alone
logs, validates and writes checkpoints.
"""

from __future__ import annotations

import gc

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)


def shutdown(*, clean: bool = True) -> None:
    """Leave the process group. After a run that finished (``clean``) wait for every rank (no
    collective still in flight) and free what still holds the group (the DDP wrapper and its
    reducer, which may sit in reference cycles) first: without that, gloo aborted one rank at exit
    now and then ("terminate called without an active exception"). After an error no barrier: the
    other ranks may be blocked in a collective this rank will never join (torchrun ends them)."""
    if dist.is_available() and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            gc.collect()
            dist.destroy_process_group()


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (used for the wall clock: one schedule, one stop)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
