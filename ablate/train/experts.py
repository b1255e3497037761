"""A mixture of experts' bookkeeping after each optimizer step (ablate.model.moe): the load of
every layer's experts over the step, summed over processes, gives the load entropy the run logs,
and under balance=bias moves the choosing biases toward equal load (the same on every process,
as the load they see is the same)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ablate.model.moe import load_entropy
from ablate.train.distributed import Dist


def after_step(layers: Sequence[Any], dist: Dist, device: torch.device, bias_rate: float) -> float:
    """Each layer's step load, summed over processes (and then reset); under balance=bias its
    biases moved by `bias_rate`. Returns the experts' load entropy, the mean over layers."""
    entropies = []
    for layer in layers:
        load = dist.mean(layer.load.to(device)) * dist.world
        entropies.append(load_entropy(load.cpu()))
        if layer.choice_bias is not None:
            layer.update_bias(bias_rate, load)
        layer.load = torch.zeros_like(layer.load)
    return sum(entropies) / len(entropies)
