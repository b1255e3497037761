"""Families with experts or latent attention: Mixtral, OLMoE and Qwen2-MoE (routed experts, a gated
shared one), DeepSeek-V3 (multi-head latent attention, every layer dense)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ablate.config import ModelConfig
from ablate.hf.family import (
    _NO_EXTRAS,
    _PLAIN_SCALE,
    _PRE_NORMS,
    _ROPE_RMS,
    Family,
    WeightRow,
    _act_check,
    _llama_like_weights,
    _qk_norm_rows,
    _refuse,
    _rope_to_hf,
    _rows,
    _whole_heads,
)
from ablate.model.moe import expert_hidden_dim


# ---- Mixtral, OLMoE, Qwen2-MoE: routed experts (and a gated shared one) -----------------------------
def _moe_weights(qk_norm: bool = False, shared: bool = False) -> tuple[WeightRow, ...]:
    layer = "model.layers.{i}.mlp"
    dense = [row for row in _llama_like_weights(_PRE_NORMS) if ".mlp." not in row[0]]
    shared_rows = [*_rows("blocks.{i}.mlp.shared.w_gate", f"{layer}.shared_expert.gate_proj", bias=False),
                   *_rows("blocks.{i}.mlp.shared.w_in", f"{layer}.shared_expert.up_proj", bias=False),
                   *_rows("blocks.{i}.mlp.shared.w_out", f"{layer}.shared_expert.down_proj", bias=False),
                   *_rows("blocks.{i}.mlp.shared_gate", f"{layer}.shared_expert_gate", bias=False)]
    return (*dense, *(_qk_norm_rows() if qk_norm else []),
            *_rows("blocks.{i}.mlp.router", f"{layer}.gate", bias=False),
            ("blocks.{i}.mlp.w_gate_in", (f"{layer}.experts.gate_up_proj",), "same"),
            ("blocks.{i}.mlp.w_out", (f"{layer}.experts.down_proj",), "same"),
            *(shared_rows if shared else []))


_MOE_FIELDS = (("vocab_size", "vocab_size"), ("dim", "hidden_size"), ("n_layers", "num_hidden_layers"),
               ("attention.n_heads", "num_attention_heads"), ("attention.n_kv_heads", "num_key_value_heads"),
               ("norm.eps", "rms_norm_eps"), ("max_seq_len", "max_position_embeddings"),
               ("tie_embeddings", "tie_word_embeddings"), ("mlp.moe.top_k", "num_experts_per_tok"),
               ("mlp.moe.aux_loss_weight", "router_aux_loss_coef"))
_MOE_FIXED = {**_ROPE_RMS, "norm.unit_offset": False, "placement": "pre", "mlp.kind": "swiglu", "mlp.bias": False,
              **_NO_EXTRAS, "mlp.moe.balance": "aux_loss"}
_MOE_FIXED.pop("mlp.moe.n_experts")


def _topk_norm_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**_rope_to_hf(cfg), "hidden_act": "silu", "norm_topk_prob": cfg.mlp.moe.router == "topk_softmax"}


def _topk_norm_from_hf(c: Any) -> dict[str, Any]:
    return {**_act_check("silu", "hidden_act")(c),
            "mlp.moe.router": "topk_softmax" if c.norm_topk_prob else "softmax_topk"}


MIXTRAL = Family(
    "mixtral", "mixtral", "MixtralForCausalLM", "MixtralConfig",
    fixed={**_MOE_FIXED, "mlp.moe.router": "topk_softmax", "mlp.moe.n_shared_experts": 0,
           "attention.qkv_bias": False, "attention.out_bias": False},
    fields=(*_MOE_FIELDS, ("attention.head_dim", "head_dim"), ("mlp.moe.n_experts", "num_local_experts"),
            ("mlp.moe.expert_hidden_dim", "intermediate_size")),
    weights=_moe_weights(),
    check=_PLAIN_SCALE,
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "silu", "sliding_window": None,
                             "router_jitter_noise": 0.0},
    from_hf_extra=lambda c: {**_act_check("silu", "hidden_act")(c), **(
        {} if not c.router_jitter_noise and c.sliding_window is None else _refuse(
            "sliding_window / router_jitter_noise", "Mixtral's sliding window and router jitter are not supported"))},
)

OLMOE = Family(
    "olmoe", "olmoe", "OlmoeForCausalLM", "OlmoeConfig",
    fixed={**_MOE_FIXED, "attention.qk_norm": "all", "mlp.moe.n_shared_experts": 0},
    fields=(*_MOE_FIELDS, ("mlp.moe.n_experts", "num_experts"), ("mlp.moe.expert_hidden_dim", "intermediate_size"),
            ("attention.qkv_bias", "attention_bias"), ("attention.out_bias", "attention_bias")),
    weights=_moe_weights(qk_norm=True),
    check=_whole_heads,
    to_hf_extra=lambda cfg: {**_topk_norm_to_hf(cfg), "clip_qkv": None},
    from_hf_extra=lambda c: {**_topk_norm_from_hf(c), **(
        {} if c.clip_qkv is None else _refuse("clip_qkv", "OLMoE's clipping of q, k and v is not supported"))},
)


def _qwen2_moe_from_hf(c: Any) -> dict[str, Any]:
    if c.use_sliding_window or c.decoder_sparse_step != 1 or c.mlp_only_layers:
        _refuse("decoder_sparse_step / mlp_only_layers / use_sliding_window",
                "only every layer sparse, without a sliding window, is supported")
    return _topk_norm_from_hf(c)


QWEN2MOE = Family(
    "qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
    fixed={**_MOE_FIXED, "mlp.moe.n_shared_experts": 1, "mlp.moe.shared_gate": True, "attention.out_bias": False},
    fields=(*_MOE_FIELDS, ("mlp.moe.n_experts", "num_experts"), ("mlp.moe.expert_hidden_dim", "moe_intermediate_size"),
            ("mlp.moe.shared_hidden_dim", "shared_expert_intermediate_size"), ("attention.qkv_bias", "qkv_bias")),
    weights=_moe_weights(shared=True),
    check=_whole_heads,
    to_hf_extra=lambda cfg: {**_topk_norm_to_hf(cfg), "use_sliding_window": False, "decoder_sparse_step": 1,
                             "mlp_only_layers": [], "intermediate_size": expert_hidden_dim(cfg),
                             "layer_types": ["full_attention"] * cfg.n_layers},
    from_hf_extra=_qwen2_moe_from_hf,
)


# ---- DeepSeek-V3: multi-head latent attention, every layer dense -----------------------------------
def _deepseek_from_hf(c: Any) -> dict[str, Any]:
    if c.first_k_dense_replace < c.num_hidden_layers:
        _refuse("first_k_dense_replace", "DeepSeek-V3's expert layers are not supported: every layer must be dense "
                "(first_k_dense_replace = num_hidden_layers)")
    if (c.rope_parameters or {}).get("rope_type", "default") != "default":
        _refuse("rope_parameters", "only plain RoPE is supported (no YaRN)")
    return _act_check("silu", "hidden_act")(c)


def _deinterleave(state: dict[str, Tensor], hf: Any) -> dict[str, Tensor]:
    """DeepSeek lays each rotary pair side by side ((x0, x1), (x2, x3), ...: rope_interleave);
    ablate pairs channel i with i + d/2 (rotate-half). The rows that make rotary channels (each
    query head's last qk_rope_head_dim rows, the shared key's rows after the latent's) are reordered
    evens first, then odds: the same attention, in ablate's layout."""
    if not hf.rope_interleave:
        return state
    d, nope, rank = hf.qk_rope_head_dim, hf.qk_nope_head_dim, hf.kv_lora_rank
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    for key in list(state):
        if key.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
            w = state[key].view(hf.num_attention_heads, nope + d, -1).clone()
            w[:, nope:] = w[:, nope:][:, perm]
            state[key] = w.view(-1, w.shape[-1])
        elif key.endswith("self_attn.kv_a_proj_with_mqa.weight"):
            w = state[key].clone()
            w[rank:] = w[rank:][perm]
            state[key] = w
    return state


def _deepseek_weights() -> tuple[WeightRow, ...]:
    attn = "model.layers.{i}.self_attn"
    dense = [row for row in _llama_like_weights(_PRE_NORMS) if ".attn." not in row[0]]
    return (*dense, *_rows("blocks.{i}.attn.wq", f"{attn}.q_proj", bias=False),
            *_rows("blocks.{i}.attn.wq_a", f"{attn}.q_a_proj", bias=False),
            *_rows("blocks.{i}.attn.q_norm", f"{attn}.q_a_layernorm", bias=False),
            *_rows("blocks.{i}.attn.wq_b", f"{attn}.q_b_proj", bias=False),
            *_rows("blocks.{i}.attn.wkv_a", f"{attn}.kv_a_proj_with_mqa", bias=False),
            *_rows("blocks.{i}.attn.kv_norm", f"{attn}.kv_a_layernorm", bias=False),
            *_rows("blocks.{i}.attn.wkv_b", f"{attn}.kv_b_proj", bias=False),
            *_rows("blocks.{i}.attn.wo", f"{attn}.o_proj", bias=False))


DEEPSEEK_V3 = Family(
    "deepseek_v3", "deepseek_v3", "DeepseekV3ForCausalLM", "DeepseekV3Config",
    fixed={**_ROPE_RMS, "norm.unit_offset": False, "placement": "pre", "mlp.kind": "swiglu", "mlp.bias": False,
           **{k: v for k, v in _NO_EXTRAS.items() if k != "attention.kv_lora_rank"},
           "attention.qkv_bias": False, "attention.out_bias": False},
    fields=(("vocab_size", "vocab_size"), ("dim", "hidden_size"), ("n_layers", "num_hidden_layers"),
            ("attention.n_heads", "num_attention_heads"), ("attention.n_heads", "num_key_value_heads"),
            ("attention.head_dim", "qk_nope_head_dim"), ("attention.rope_head_dim", "qk_rope_head_dim"),
            ("attention.kv_lora_rank", "kv_lora_rank"), ("attention.q_lora_rank", "q_lora_rank"),
            ("attention.v_head_dim", "v_head_dim"), ("mlp.hidden_dim", "intermediate_size"),
            ("norm.eps", "rms_norm_eps"), ("max_seq_len", "max_position_embeddings"),
            ("tie_embeddings", "tie_word_embeddings")),
    weights=_deepseek_weights(),
    check=lambda cfg: [] if cfg.latent else ["attention.kv_lora_rank is null, needs latent attention"],
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "silu", "rope_interleave": False,
                             "first_k_dense_replace": cfg.n_layers, "attention_bias": False},
    from_hf_extra=_deepseek_from_hf,
    prepare=_deinterleave,
)

