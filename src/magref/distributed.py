"""Processes and devices: the one place that starts torch.distributed from torchrun's
environment and picks the default device, for generation (context parallelism), training
(FSDP) and the encoding cache alike."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(timeout=None, share_gpus: bool = False) -> tuple[int, int]:
    """(rank, world size); initialises the default group (NCCL on GPUs, else gloo) when torchrun
    started us, and binds each rank to its GPU. `timeout`: how long a collective may wait
    (torch's default otherwise). `share_gpus`: more processes than GPUs on a machine may share
    them round-robin over gloo (NCCL refuses two ranks on one GPU). Only `magref encode` asks:
    its small per-clip encodes leave a GPU mostly idle under one process and it needs nothing
    but barriers; FSDP and context parallelism over gloo on CUDA tensors are not supported, so
    every other caller is refused with a line that says how many to start."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        shared = 0 < gpus < local
        if shared and not share_gpus:
            from .errors import MagrefInputError

            raise MagrefInputError(f"{local} processes on this machine but {gpus} GPU(s): this needs one process per GPU.",
                                   f"start at most {gpus} (torchrun --nproc_per_node {gpus}); only `magref encode` may start more.")
        dist.init_process_group("nccl" if gpus and not shared else "gloo", **({"timeout": timeout} if timeout else {}))
        if gpus:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % gpus)
    return rank_and_world()


def launch_rank() -> int:
    """This process's rank as torchrun's environment gives it, before (or without) a process group:
    0 unless a multi-process launch (WORLD_SIZE > 1, as `init_from_env` reads it) says otherwise.
    For what one process of a launch does alone: print, warn, lock a folder."""
    return int(os.environ.get("RANK") or 0) if int(os.environ.get("WORLD_SIZE") or 1) > 1 else 0


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def default_device() -> torch.device:
    """This process's GPU when there is one (the rank's own under torchrun), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
