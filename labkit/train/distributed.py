"""Multi-process training with DistributedDataParallel, started by ``torchrun`` (METHOD.md §4 at scale)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class ProcessGroup:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` takes CUDA when present (this process's local GPU), else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but PyTorch sees no CUDA device; use device=cpu or auto.")
    return torch.device("cuda", local_rank)


def setup(requested_device: str = "auto") -> ProcessGroup:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(rank, world_size, local_rank, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Sum a tensor of counts over all processes (identity for one process)."""
    if group.distributed:
        values = values.to(group.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def barrier(group: ProcessGroup) -> None:
    if group.distributed:
        dist.barrier()
