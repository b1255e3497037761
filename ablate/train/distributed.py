"""torch.distributed for training: set up from torchrun's variables or Slurm's, gloo on CPU and
nccl on GPUs; a single process when neither is there.

Two ways to spread a run over processes (train.parallel):
- ddp: every process holds the whole model, its gradients and AdamW state; gradients are averaged.
- fsdp: FSDP2 (`fully_shard`) shards each block, and the root (embeddings, head), over the
  processes: each holds 1/N of the parameters, gradients and AdamW state and gathers one block's
  parameters at a time. On CUDA under bf16 the gathered parameters are bf16 and gradients are
  reduced in fp32.
"""

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

    parallel: str = "ddp"

    @property
    def sharded(self) -> bool:
        """Parameters are DTensor shards (FSDP over several processes)."""
        return self.active and self.parallel == "fsdp"

    def wrap(self, model: nn.Module, parallel: str = "ddp", bf16: bool = False) -> nn.Module:
        """The module to train: `model` itself (one process), DDP around it, or `model` sharded in
        place by FSDP2 (build the optimizer after this: its parameters become DTensors)."""
        self.parallel = parallel
        if not self.active:
            return model
        cuda = next(model.parameters()).is_cuda
        if parallel == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda and bf16
                      else MixedPrecisionPolicy())
            for block in model.blocks:
                fully_shard(block, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if cuda else None)

    def sync_grads(self, net: nn.Module, last: bool) -> Any:
        """Within gradient accumulation only the last micro-batch reduces gradients."""
        if last or not self.active:
            if self.sharded:
                net.set_requires_gradient_sync(True)
            return nullcontext()
        if self.sharded:
            net.set_requires_gradient_sync(False)
            return nullcontext()
        return net.no_sync()

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


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP) as the whole tensor; any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t
