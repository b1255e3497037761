"""Feed-forward sublayers: plain (act(x W1) W2) or gated (act(x Wg) * (x Wu) W2, Shazeer 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ablate.registry import Registry


@dataclass(frozen=True)
class MlpKind:
    act: Callable[[Tensor], Tensor]
    gated: bool


MLPS: Registry[MlpKind] = Registry("mlp")
_gelu_tanh = partial(F.gelu, approximate="tanh")
MLPS.add("relu", MlpKind(F.relu, gated=False))
MLPS.add("gelu", MlpKind(F.gelu, gated=False))
MLPS.add("gelu_tanh", MlpKind(_gelu_tanh, gated=False))  # GPT-2's gelu_new, BLOOM's gelu
MLPS.add("geglu", MlpKind(_gelu_tanh, gated=True))  # gate through tanh-GELU, as Gemma
MLPS.add("swiglu", MlpKind(F.silu, gated=True))  # Llama


class Mlp(nn.Module):
    """w_in maps dim -> hidden, w_out hidden -> dim; gated kinds add w_gate (dim -> hidden).
    (Gate and input stay separate matrices: on CPU, one fused matrix split in two was slower.)"""

    def __init__(self, dim: int, hidden_dim: int, kind: str, bias: bool = False) -> None:
        super().__init__()
        spec = MLPS.get(kind, "model.mlp.kind")
        self.act = spec.act
        self.w_gate = nn.Linear(dim, hidden_dim, bias=bias) if spec.gated else None
        self.w_in = nn.Linear(dim, hidden_dim, bias=bias)
        self.w_out = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.w_gate is not None:
            return self.w_out(self.act(self.w_gate(x)) * self.w_in(x))  # (B, T, hidden) inside
        return self.w_out(self.act(self.w_in(x)))
