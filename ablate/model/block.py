"""One transformer block. Where the norms sit around each sublayer is decided here and only here.

    pre       x = x + f(norm(x))                 GPT-2, Llama, Gemma; a final norm after the last block
    post      x = norm(x + f(x))                 the original Transformer, BERT; no final norm
    sandwich  x = x + norm_out(f(norm_in(x)))    Gemma 2; a final norm after the last block
    reordered x = x + norm(f(x))                 OLMo 2 (Swin v2's res-post-norm); a final norm
    mix       post in the first quarter of the layers, pre in the rest (Mix-LN, Li et al. 2024)

A placement may differ by depth (`for_layer`); the model has a final norm when its last layer's
placement asks for one.

Init, per placement, so that placements start from comparable branch scales (each sublayer adds to
the stream about what it adds under pre-norm; tests/test_model.py measures it):
    pre       output projections Normal(0, init_std / sqrt(2 n_layers)) (GPT-2): the stream grows
              slowly with depth, the token embedding keeps its share
    post      the same projections; the stream is renormalised to the norm's scale (1) after every
              sublayer, so what a branch adds is the same as under pre in every layer but the first
              (whose input is the raw embedding, not a normalised stream)
    sandwich  the output norms start at scale init_std / sqrt(2 n_layers), not 1: at scale 1 every
              branch would add RMS 1 to an embedding of RMS init_std and drown it (its share of the
              final state 0.008 against pre's 0.45); started at that scale, the stream's RMS follows
              pre-norm's at every depth
    reordered as sandwich: the output norms start at init_std / sqrt(2 n_layers); a branch reads
              the unnormalised stream (RMS about init_std), so its output is below the norm's eps
              at init and adds less than pre-norm's: the stream starts out growing more slowly
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.attention import Attention, Step
from ablate.model.latent import LatentAttention
from ablate.model.mlp import Mlp, mlp_hidden_dim
from ablate.model.moe import Moe
from ablate.model.norm import build_norm
from ablate.registry import Registry

if TYPE_CHECKING:
    from ablate.model.plan import LayerPlan

Sublayer = Callable[[Tensor], Tensor]
MaybeNorm = Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Placement:
    norm_in: bool  # a norm on the sublayer's input
    norm_out: bool  # a norm on its output (post: on the residual sum)
    final_norm: bool  # a norm after the last block, when this is the last block's placement
    apply: Callable[[Tensor, Sublayer, MaybeNorm, MaybeNorm], Tensor]
    out_on_stream: bool = False  # the output norm normalises the residual sum (post), not the branch

    def for_layer(self, layer: int, n_layers: int) -> Placement:
        """The placement of layer `layer` of `n_layers`: the same in every layer."""
        return self


PRE = Placement(True, False, True, lambda x, f, n_in, n_out: x + f(n_in(x)))
POST = Placement(False, True, False, lambda x, f, n_in, n_out: n_out(x + f(x)), out_on_stream=True)
SANDWICH = Placement(True, True, True, lambda x, f, n_in, n_out: x + n_out(f(n_in(x))))
REORDERED = Placement(False, True, True, lambda x, f, n_in, n_out: x + n_out(f(x)))  # OLMo 2


@dataclass(frozen=True)
class ByDepth:
    """`early` in the first floor(fraction x n_layers) layers, `late` in the others."""

    early: Placement
    late: Placement
    fraction: float

    def for_layer(self, layer: int, n_layers: int) -> Placement:
        return self.early if layer < math.floor(self.fraction * n_layers) else self.late


PLACEMENTS: Registry[Placement | ByDepth] = Registry("norm placement")
PLACEMENTS.add("pre", PRE)
PLACEMENTS.add("post", POST)
PLACEMENTS.add("sandwich", SANDWICH)
PLACEMENTS.add("reordered", REORDERED)
PLACEMENTS.add("mix", ByDepth(early=POST, late=PRE, fraction=0.25))


class Block(nn.Module):
    """Attention then MLP, each a residual sublayer with its norms where `plan.placement` puts them."""

    def __init__(self, cfg: ModelConfig, plan: LayerPlan) -> None:
        super().__init__()
        self.placement = plan.placement
        self.attn = LatentAttention(cfg, plan) if cfg.latent else Attention(cfg, plan)
        self.mlp = Moe(cfg) if cfg.mlp.moe.n_experts else Mlp(cfg.dim, mlp_hidden_dim(cfg), cfg.mlp.kind,
                                                              cfg.mlp.bias, cfg.matrix_std, cfg.n_layers)
        p = self.placement
        # a norm on a branch's output (sandwich) starts at a pre-norm branch's scale; on the stream, at 1
        out_scale = 1.0 if p.out_on_stream else cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.attn_norm = build_norm(cfg.norm, cfg.dim) if p.norm_in else None
        self.attn_out_norm = build_norm(cfg.norm, cfg.dim, out_scale) if p.norm_out else None
        self.mlp_norm = build_norm(cfg.norm, cfg.dim) if p.norm_in else None
        self.mlp_out_norm = build_norm(cfg.norm, cfg.dim, out_scale) if p.norm_out else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        """x: (B, T, dim) -> (B, T, dim)."""
        apply = self.placement.apply
        x = apply(x, lambda h: self.drop(self.attn(h, step)), self.attn_norm, self.attn_out_norm)
        return apply(x, lambda h: self.drop(self.mlp(h)), self.mlp_norm, self.mlp_out_norm)
