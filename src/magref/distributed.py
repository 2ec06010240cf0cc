"""Processes and devices: the one place that starts torch.distributed from torchrun's
environment and picks the default device, for generation (context parallelism) and training
(FSDP) alike."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(timeout=None) -> tuple[int, int]:
    """(rank, world size); initialises the default group (NCCL on GPUs, else gloo) when torchrun
    started us, and binds each rank to its GPU. `timeout`: how long a collective may wait
    (torch's default otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", **({"timeout": timeout} if timeout else {}))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def default_device() -> torch.device:
    """This process's GPU when there is one (the rank's own under torchrun), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
