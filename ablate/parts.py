"""The checks of a ModelConfig that concern one optional part of it (ModelConfig.validate calls
them): multi-head latent attention and a mixture of experts. Each raises ConfigError at the first
impossible value, naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ablate.registry import ConfigError

if TYPE_CHECKING:
    from ablate.config import ModelConfig

ROUTERS = ("softmax_topk", "topk_softmax")
BALANCES = ("aux_loss", "bias", "none")


def latent(cfg: ModelConfig, f: Callable[[str], str]) -> None:
    """Multi-head latent attention: its ranks and sizes, and what it cannot be combined with."""
    a = cfg.attention
    for name in ("kv_lora_rank", "q_lora_rank", "rope_head_dim", "v_head_dim"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise ConfigError(f(f"attention.{name}"), value, "must be a positive integer")
    if a.rope_head_dim % 2:
        raise ConfigError(f("attention.rope_head_dim"), a.rope_head_dim, "RoPE turns pairs: must be even")
    if a.n_kv_heads not in (None, a.n_heads):
        raise ConfigError(f("attention.n_kv_heads"), a.n_kv_heads, "latent attention expands its latent "
                          "to every head: leave n_kv_heads null", valid=["null"])
    if cfg.position.kind != "rope" or a.qk_norm or a.window is not None:
        raise ConfigError(f("attention.kv_lora_rank"), a.kv_lora_rank, "latent attention carries positions "
                          "by RoPE on its decoupled channels: needs model/position=rope, no qk_norm, no window")


def experts(cfg: ModelConfig, f: Callable[[str], str]) -> None:
    """Experts, their routing and balancing."""
    m = cfg.mlp.moe
    if not 1 <= m.top_k <= m.n_experts:
        raise ConfigError(f("mlp.moe.top_k"), m.top_k, f"must be between 1 and n_experts={m.n_experts}")
    for name, value, valid in (("router", m.router, ROUTERS), ("balance", m.balance, BALANCES)):
        if value not in valid:
            raise ConfigError(f(f"mlp.moe.{name}"), value, "unknown choice", valid=list(valid))
    if cfg.mlp.bias:
        raise ConfigError(f("mlp.bias"), True, "experts have no biases: set model.mlp.bias=false")
    for name in ("n_experts", "n_shared_experts", "expert_hidden_dim", "shared_hidden_dim"):
        value = getattr(m, name)
        if value is not None and value < 0:
            raise ConfigError(f(f"mlp.moe.{name}"), value, "must not be negative")
