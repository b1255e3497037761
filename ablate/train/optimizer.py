"""AdamW, with each parameter treated by what it does (Transformer.parameter_roles), never by how
it happens to be stored: an untied output head is decayed exactly as the token embedding it would
otherwise be, so that tying an embedding changes one thing.

    role                            weight decay                    LR scale
    matrix, out_projection          optim.weight_decay              1 (1/m under muP)
    embedding, output, position     only with optim.decay_embeddings 1
    *_norm, bias                    only with optim.decay_norms_and_biases 1

and the learning rate's schedule (`lr_at`): warmup, then cosine, linear or constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ablate.config import OptimConfig, RunConfig

TABLES = ("embedding", "output", "position")
NORMS_AND_BIASES = ("input_norm", "stream_norm", "branch_norm", "qk_norm", "final_norm", "bias")


@dataclass(frozen=True)
class Treatment:
    weight_decay: float
    lr_scale: float = 1.0

    def __str__(self) -> str:
        decay = f"decay {self.weight_decay:g}" if self.weight_decay else "no decay"
        return decay if self.lr_scale == 1 else f"{decay}, LR x{self.lr_scale:g}"


def treatment(role: str, optim: OptimConfig, width_mult: float = 1.0) -> Treatment:
    """How the optimizer treats a parameter of `role` (see the module doc); `width_mult`, the
    model's m under muP, divides the hidden matrices' LR (Adam's update of a fan-in-wide matrix
    moves its output by LR x fan-in; muP keeps that O(1) as the width grows)."""
    if role in TABLES:
        return Treatment(optim.weight_decay if optim.decay_embeddings else 0.0)
    if role in NORMS_AND_BIASES:
        return Treatment(optim.weight_decay if optim.decay_norms_and_biases else 0.0)
    return Treatment(optim.weight_decay, 1.0 / width_mult)


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW with one parameter group per distinct treatment (decayed ones first), parameters in
    model order within a group. `fused`: one kernel for the whole update (used on CUDA; the same
    arithmetic as the default up to rounding)."""
    roles, width_mult = model.parameter_roles(), model.cfg.width_mult
    groups: dict[Treatment, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(treatment(roles[name], optim, width_mult), []).append(p)
    order = sorted(groups, key=lambda t: (-t.weight_decay, -t.lr_scale))
    return torch.optim.AdamW([{"params": groups[t], "weight_decay": t.weight_decay, "lr_scale": t.lr_scale}
                              for t in order],
                             lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused or None)


def lr_at(step: int, total: int, cfg: RunConfig) -> float:
    """Linear warmup over warmup_steps, then cosine or linear decay to lr * min_lr_ratio at `total`."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * shape)


def step_unless_not_finite(opt: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """opt.step(), unless `finite` (a 0-d bool tensor) is false. A fused AdamW skips the update
    on the device (its found_inf input), so the host never waits; others read the flag."""
    if opt.defaults.get("fused"):
        opt.found_inf = (~finite).float()
        opt.step()
    elif bool(finite):
        opt.step()
