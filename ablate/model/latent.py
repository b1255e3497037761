"""Multi-head latent attention (DeepSeek-V2, -V3), with model.attention.kv_lora_rank set.

    queries   x -> [q_lora_rank latent -> RMSNorm ->] H heads of head_dim + rope_head_dim channels
    latent    x -> c (kv_lora_rank, RMS-normalised) and k_rope (rope_head_dim): all the KV cache keeps
    keys      per head: c W_k (head_dim channels) beside the one shared, RoPE-turned k_rope
    values    per head: c W_v (v_head_dim channels)

RoPE turns only the rope_head_dim channels of queries and the shared key (decoupled RoPE), in
the rotate-half layout (transformers' rope_interleave=False; ablate.hf permutes an interleaved
checkpoint's rows into it). Scores are scaled by (head_dim + rope_head_dim)^-0.5. The cache holds
kv_lora_rank + rope_head_dim numbers per token and layer, against 2 x n_kv_heads x head_dim for
the other attention kinds; keys and values are expanded from it at every step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ablate.config import NormConfig
from ablate.model.attention import Step, visible
from ablate.model.init import init_linear
from ablate.model.norm import build_norm
from ablate.model.position import RotaryPositions

if TYPE_CHECKING:
    from ablate.config import ModelConfig
    from ablate.model.plan import LayerPlan


class LatentAttention(nn.Module):
    """See the module doc. wq (or wq_a, q_norm, wq_b), wkv_a (dim -> latent + rope key), kv_norm,
    wkv_b (latent -> per-head key and value channels), wo."""

    def __init__(self, cfg: ModelConfig, plan: LayerPlan) -> None:
        super().__init__()
        a = cfg.attention
        self.n_heads, self.nope, self.rope, self.v_dim = cfg.n_heads, cfg.head_dim, a.rope_head_dim, cfg.v_head_dim
        self.rank = a.kv_lora_rank
        self.scale, self.softcap, self.dropout, self.layer = cfg.attn_scale, a.softcap, cfg.dropout, plan.index
        self.window, self.positions = None, True
        self.init_std, self.n_layers = cfg.matrix_std, cfg.n_layers
        H, qk = self.n_heads, self.nope + self.rope
        # the latents' norms: RMSNorm as the references, at the model's eps, without a bias
        latent_norm = NormConfig(kind="rmsnorm", eps=cfg.norm.eps)
        if a.q_lora_rank:
            self.wq_a = nn.Linear(cfg.dim, a.q_lora_rank, bias=False)
            self.q_norm = build_norm(latent_norm, a.q_lora_rank)
            self.wq_b = nn.Linear(a.q_lora_rank, H * qk, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, H * qk, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, self.rank + self.rope, bias=False)
        self.kv_norm = build_norm(latent_norm, self.rank)
        self.wkv_b = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(H * self.v_dim, cfg.dim, bias=False)
        self.rotary = RotaryPositions(self.rope, cfg.position.theta)

    def init_weights(self) -> None:
        """Normal(0, init_std); the output projection scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        for name in ("wq", "wq_a", "wq_b", "wkv_a", "wkv_b"):
            if hasattr(self, name):
                init_linear(getattr(self, name), self.init_std)
        init_linear(self.wo, self.init_std / math.sqrt(2 * self.n_layers))

    def queries(self, x: Tensor, step: Step) -> Tensor:
        """x: (B, T, dim) -> q (B, H, T, head_dim + rope_head_dim), its rope channels turned."""
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)  # (B, T, H*qk)
        q = q.view(B, T, self.n_heads, self.nope + self.rope).transpose(1, 2)  # (B, H, T, qk)
        q_nope, q_rope = q.split((self.nope, self.rope), dim=-1)
        q_rope, _ = self.rotary.rotate(q_rope, q_rope[:, :1], step.pos)  # (B, H, T, rope)
        return torch.cat((q_nope, q_rope), dim=-1)

    def latents(self, x: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        """x: (B, T, dim) -> the normalised latent (B, 1, T, rank) and the turned shared key (B, 1, T, rope)."""
        B, T, _ = x.shape
        c, k_rope = self.wkv_a(x).split((self.rank, self.rope), dim=-1)  # (B, T, rank), (B, T, rope)
        c = self.kv_norm(c).view(B, 1, T, self.rank)
        k_rope = k_rope.view(B, 1, T, self.rope)
        _, k_rope = self.rotary.rotate(k_rope, k_rope, step.pos)
        return c, k_rope

    def expand(self, c: Tensor, k_rope: Tensor) -> tuple[Tensor, Tensor]:
        """The latent (B, 1, Tk, rank) and shared key (B, 1, Tk, rope) -> k (B, H, Tk, qk), v (B, H, Tk, v_dim)."""
        B, _, Tk, _ = c.shape
        kv = self.wkv_b(c.squeeze(1)).view(B, Tk, self.n_heads, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)  # (B, H, Tk, nope), (B, H, Tk, v_dim)
        k = torch.cat((k_nope, k_rope.expand(B, self.n_heads, Tk, self.rope)), dim=-1)  # (B, H, Tk, qk)
        return k, v

    @torch.no_grad()
    def max_logit(self, x: Tensor, step: Step) -> float:
        """The largest |q.k x scale| over the pairs this layer attends. Not for a cache."""
        q = self.queries(x, step)
        k, _ = self.expand(*self.latents(x, step))
        scores = (q.float() @ k.float().transpose(-1, -2)).abs() * self.scale  # (B, H, T, T)
        return float(scores.masked_fill(~visible(step.pos, step.pos, None), 0.0).max())

    def forward(self, x: Tensor, step: Step) -> Tensor:
        B, T, _ = x.shape  # x: (B, T, dim)
        q = self.queries(x, step)  # (B, H, T, qk)
        c, k_rope = self.latents(x, step)  # (B, 1, T, rank), (B, 1, T, rope)
        if step.cache is not None:
            c, k_rope = step.cache.update(self.layer, c, k_rope)  # the compressed cache: (B, 1, Tk, ...)
        k, v = self.expand(c, k_rope)  # (B, H, Tk, qk), (B, H, Tk, v_dim)
        y = step.backend.attend(q, k, v, step.plans[None, True], self.scale, self.softcap,
                                self.dropout if self.training else 0.0)  # (B, H, T, v_dim)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim))  # (B, T, dim)
