"""torch.distributed for training: set up from torchrun's variables or Slurm's, gloo on CPU and
nccl on GPUs; a single process when neither is there."""

from __future__ import annotations

import os
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        ids = [self.local_rank] if torch.cuda.is_available() and next(model.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sync_grads(self, net: nn.Module, last: bool) -> Any:
        """Within gradient accumulation only the last micro-batch all-reduces."""
        return nullcontext() if last or not self.active else net.no_sync()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            td.all_reduce(value, op=td.ReduceOp.SUM)
            value /= self.world
        return value

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (so that all ranks stop at the same step)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device="cuda" if td.get_backend() == "nccl" else "cpu")
        td.all_reduce(value, op=td.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.active:
            td.barrier()


def setup_distributed() -> Dist:
    """Join the process group described by the environment (idempotent)."""
    env = os.environ
    if "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:  # torchrun, or anything that sets its variables
        dist = Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                    int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    elif int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:  # srun with one task per GPU
        dist = Dist(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                    int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]))
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000))
    else:
        return Dist()
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
        td.init_process_group(backend, rank=dist.rank, world_size=dist.world)
    return dist


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodes.split(",")[0]
