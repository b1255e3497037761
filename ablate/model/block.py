"""One transformer block. Where the norms sit around each sublayer is decided here and only here.

    pre       x = x + f(norm(x))                 GPT-2, Llama, Gemma; a final norm after the last block
    post      x = norm(x + f(x))                 the original Transformer, BERT; no final norm
    sandwich  x = x + norm_out(f(norm_in(x)))    Gemma 2; a final norm after the last block
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.attention import Attention, Step
from ablate.model.mlp import Mlp
from ablate.model.norm import build_norm
from ablate.registry import Registry

Sublayer = Callable[[Tensor], Tensor]
MaybeNorm = Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Placement:
    norm_in: bool  # a norm on the sublayer's input
    norm_out: bool  # a norm on its output (post: on the residual sum)
    final_norm: bool  # a norm after the last block
    apply: Callable[[Tensor, Sublayer, MaybeNorm, MaybeNorm], Tensor]


PLACEMENTS: Registry[Placement] = Registry("norm placement")
PLACEMENTS.add("pre", Placement(True, False, True, lambda x, f, n_in, n_out: x + f(n_in(x))))
PLACEMENTS.add("post", Placement(False, True, False, lambda x, f, n_in, n_out: n_out(x + f(x))))
PLACEMENTS.add("sandwich", Placement(True, True, True, lambda x, f, n_in, n_out: x + n_out(f(n_in(x)))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.placement = PLACEMENTS.get(cfg.placement, "model.placement")
        a = cfg.attention
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attn_scale, a.softcap,
                              cfg.layer_window(layer), a.qkv_bias, a.out_bias, cfg.dropout, layer)
        self.mlp = Mlp(cfg.dim, cfg.mlp_hidden_dim, cfg.mlp.kind, cfg.mlp.bias)
        p = self.placement
        self.attn_norm = build_norm(cfg.norm, cfg.dim) if p.norm_in else None
        self.attn_out_norm = build_norm(cfg.norm, cfg.dim) if p.norm_out else None
        self.mlp_norm = build_norm(cfg.norm, cfg.dim) if p.norm_in else None
        self.mlp_out_norm = build_norm(cfg.norm, cfg.dim) if p.norm_out else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        """x: (B, T, dim) -> (B, T, dim)."""
        apply = self.placement.apply
        x = apply(x, lambda h: self.drop(self.attn(h, step)), self.attn_norm, self.attn_out_norm)
        return apply(x, lambda h: self.drop(self.mlp(h)), self.mlp_norm, self.mlp_out_norm)
