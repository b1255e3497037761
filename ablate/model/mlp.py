"""Feed-forward sublayers: plain (act(x W1) W2) or gated (act(x Wg) * (x Wu) W2, Shazeer 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.init import init_linear
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


def mlp_hidden_dim(cfg: ModelConfig) -> int:
    """model.mlp.hidden_dim, or by default 4 x dim, two thirds of that (rounded up to 8) for gated
    kinds, so that gated and plain MLPs have about the same parameters; with match_mha_params, plus
    the hidden units that spend the parameters GQA, MQA or latent attention saves against MHA of the
    same heads (Llama 2; for latent attention fewer units where it spends more)."""
    gated = MLPS.get(cfg.mlp.kind, "model.mlp.kind").gated
    hidden = cfg.mlp.hidden_dim
    if hidden is None:
        hidden = 8 * math.ceil(8 * cfg.dim / 3 / 8) if gated else 4 * cfg.dim
    if cfg.match_mha_params and (cfg.latent or cfg.n_kv_heads < cfg.n_heads):
        saved = (_mha_minus_latent(cfg) if cfg.latent else
                 2 * (cfg.n_heads - cfg.n_kv_heads) * cfg.head_dim * (cfg.dim + cfg.attention.qkv_bias))
        per_unit = (3 if gated else 2) * cfg.dim + ((2 if gated else 1) if cfg.mlp.bias else 0)
        hidden += round(saved / per_unit)
    return hidden


def _mha_minus_latent(cfg: ModelConfig) -> int:
    """One layer's parameters of MHA (n_heads of head_dim, wqkv and wo) less those of latent
    attention (ablate.model.latent: the query path, the latent and its norm, its expansion, wo)."""
    a, H, dim = cfg.attention, cfg.n_heads, cfg.dim
    mha = 3 * H * cfg.head_dim * (dim + a.qkv_bias) + (H * cfg.head_dim + a.out_bias) * dim
    queries = (dim * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * cfg.qk_head_dim if a.q_lora_rank
               else dim * H * cfg.qk_head_dim)
    latent = dim * (a.kv_lora_rank + a.rope_head_dim) + a.kv_lora_rank
    expansion = a.kv_lora_rank * H * (cfg.head_dim + cfg.v_head_dim) + H * cfg.v_head_dim * dim
    return mha - (queries + latent + expansion)


class Mlp(nn.Module):
    """w_in maps dim -> hidden, w_out hidden -> dim; gated kinds add w_gate (dim -> hidden).
    (Gate and input stay separate matrices: on CPU, one fused matrix split in two was slower.)"""

    def __init__(self, dim: int, hidden_dim: int, kind: str, bias: bool = False, init_std: float = 0.02,
                 n_layers: int = 1) -> None:
        super().__init__()
        spec = MLPS.get(kind, "model.mlp.kind")
        self.act = spec.act
        self.init_std, self.n_layers = init_std, n_layers
        self.w_gate = nn.Linear(dim, hidden_dim, bias=bias) if spec.gated else None
        self.w_in = nn.Linear(dim, hidden_dim, bias=bias)
        self.w_out = nn.Linear(hidden_dim, dim, bias=bias)

    def init_weights(self) -> None:
        """Normal(0, init_std) matrices, the output projection scaled by 1/sqrt(2 n_layers) (GPT-2);
        zero biases."""
        out_std = self.init_std / math.sqrt(2 * self.n_layers)
        for linear, std in ((self.w_gate, self.init_std), (self.w_in, self.init_std), (self.w_out, out_std)):
            if linear is not None:
                init_linear(linear, std)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, dim) -> (B, T, dim)
        if self.w_gate is not None:
            return self.w_out(self.act(self.w_gate(x)) * self.w_in(x))  # (B, T, hidden) inside
        return self.w_out(self.act(self.w_in(x)))  # (B, T, hidden) inside
