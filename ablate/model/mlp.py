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
    """w_in maps dim -> hidden (gated: dim -> 2 * hidden, gate rows first, then up rows)."""

    def __init__(self, dim: int, hidden_dim: int, kind: str, bias: bool = False) -> None:
        super().__init__()
        spec = MLPS.get(kind, "model.mlp.kind")
        self.act, self.gated = spec.act, spec.gated
        self.w_in = nn.Linear(dim, (2 if self.gated else 1) * hidden_dim, bias=bias)
        self.w_out = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_in(x)  # (B, T, [2 *] hidden)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.w_out(h)
