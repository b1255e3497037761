"""The dense families: GPT-2, BLOOM, Llama, Gemma, Gemma 2, Qwen 3 (QK-norm per head) and OLMo 2
(QK-norm across heads, the reordered norm)."""

from __future__ import annotations

from typing import Any

from ablate.config import ModelConfig
from ablate.hf.family import (
    _LLAMA_FIELDS,
    _NO_EXTRAS,
    _PLAIN_SCALE,
    _PRE_NORMS,
    _ROPE_RMS,
    Family,
    _act_check,
    _llama_like_weights,
    _mha_only,
    _qk_norm_rows,
    _rope_to_hf,
    _rows,
    _value,
    _whole_heads,
)
from ablate.model import layer_plan
from ablate.model.mlp import mlp_hidden_dim
from ablate.registry import ConfigError

# ---- GPT-2 ------------------------------------------------------------------------------------
_GPT2_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_GPT2_ACT_BACK = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _gpt2_from_hf(c: Any) -> dict[str, Any]:
    if c.activation_function not in _GPT2_ACT_BACK:
        raise ConfigError("activation_function", c.activation_function, "no ablate mlp kind", list(_GPT2_ACT_BACK))
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        raise ConfigError("scale_attn_weights", c.scale_attn_weights, "only 1/sqrt(head_dim) scaling is supported")
    return {"mlp.kind": _GPT2_ACT_BACK[c.activation_function], "mlp.hidden_dim": c.n_inner or 4 * c.n_embd}


GPT2 = Family(
    "gpt2", "gpt2", "GPT2LMHeadModel", "GPT2Config",
    fixed={"position.kind": "learned", "norm.kind": "layernorm", "norm.unit_offset": False, "norm.bias": True,
           "placement": "pre", "attention.qkv_bias": True, "attention.out_bias": True, "mlp.bias": True,
           **_NO_EXTRAS},
    fields=(("vocab_size", "vocab_size"), ("dim", "n_embd"), ("n_layers", "n_layer"),
            ("max_seq_len", "n_positions"), ("attention.n_heads", "n_head"), ("norm.eps", "layer_norm_epsilon"),
            ("tie_embeddings", "tie_word_embeddings"), ("dropout", "resid_pdrop"), ("dropout", "embd_pdrop"),
            ("dropout", "attn_pdrop")),
    weights=(
        ("tok_embed.weight", ("transformer.wte.weight",), "same"),
        ("position.table.weight", ("transformer.wpe.weight",), "same"),
        *_rows("blocks.{i}.attn_norm", "transformer.h.{i}.ln_1"),
        *_rows("blocks.{i}.attn.wqkv", "transformer.h.{i}.attn.c_attn", "conv1d"),
        *_rows("blocks.{i}.attn.wo", "transformer.h.{i}.attn.c_proj", "conv1d"),
        *_rows("blocks.{i}.mlp_norm", "transformer.h.{i}.ln_2"),
        *_rows("blocks.{i}.mlp.w_in", "transformer.h.{i}.mlp.c_fc", "conv1d"),
        *_rows("blocks.{i}.mlp.w_out", "transformer.h.{i}.mlp.c_proj", "conv1d"),
        *_rows("final_norm", "transformer.ln_f"),
        ("head.weight", ("lm_head.weight",), "same"),
    ),
    check=lambda cfg: _mha_only(cfg) + ([] if cfg.mlp.kind in _GPT2_ACT else
                                       [f"mlp.kind is {cfg.mlp.kind!r}, needs one of {list(_GPT2_ACT)}"]),
    to_hf_extra=lambda cfg: {"activation_function": _GPT2_ACT[cfg.mlp.kind], "n_inner": mlp_hidden_dim(cfg)},
    from_hf_extra=_gpt2_from_hf,
)

# ---- BLOOM ------------------------------------------------------------------------------------
def _bloom_from_hf(c: Any) -> dict[str, Any]:
    if c.apply_residual_connection_post_layernorm:
        raise ConfigError("apply_residual_connection_post_layernorm", True, "not supported by ablate")
    return {"max_seq_len": getattr(c, "seq_length", None) or 2048}


BLOOM = Family(
    "bloom", "bloom", "BloomForCausalLM", "BloomConfig",
    fixed={"position.kind": "alibi", "norm.kind": "layernorm", "norm.unit_offset": False, "norm.bias": True,
           "placement": "pre", "attention.qkv_bias": True, "attention.out_bias": True, "mlp.kind": "gelu_tanh",
           "mlp.bias": True, **_NO_EXTRAS, "embedding_norm": True},
    fields=(("vocab_size", "vocab_size"), ("dim", "hidden_size"), ("n_layers", "n_layer"),
            ("attention.n_heads", "n_head"), ("norm.eps", "layer_norm_epsilon"),
            ("tie_embeddings", "tie_word_embeddings"), ("dropout", "hidden_dropout"),
            ("dropout", "attention_dropout")),
    weights=(
        ("tok_embed.weight", ("transformer.word_embeddings.weight",), "same"),
        *_rows("embed_norm", "transformer.word_embeddings_layernorm"),
        *_rows("blocks.{i}.attn_norm", "transformer.h.{i}.input_layernorm"),
        *_rows("blocks.{i}.attn.wqkv", "transformer.h.{i}.self_attention.query_key_value", "bloom_qkv"),
        *_rows("blocks.{i}.attn.wo", "transformer.h.{i}.self_attention.dense"),
        *_rows("blocks.{i}.mlp_norm", "transformer.h.{i}.post_attention_layernorm"),
        *_rows("blocks.{i}.mlp.w_in", "transformer.h.{i}.mlp.dense_h_to_4h"),
        *_rows("blocks.{i}.mlp.w_out", "transformer.h.{i}.mlp.dense_4h_to_h"),
        *_rows("final_norm", "transformer.ln_f"),
        ("head.weight", ("lm_head.weight",), "same"),
    ),
    check=lambda cfg: _mha_only(cfg) + ([] if mlp_hidden_dim(cfg) == 4 * cfg.dim else
                                       [f"mlp.hidden_dim is {mlp_hidden_dim(cfg)}, needs 4 * dim = {4 * cfg.dim}"]),
    from_hf_extra=_bloom_from_hf,
)


LLAMA = Family(
    "llama", "llama", "LlamaForCausalLM", "LlamaConfig",
    fixed={**_ROPE_RMS, "norm.unit_offset": False, "placement": "pre", "mlp.kind": "swiglu", **_NO_EXTRAS},
    fields=(*_LLAMA_FIELDS, ("mlp.bias", "mlp_bias")),
    weights=_llama_like_weights(_PRE_NORMS),
    check=_PLAIN_SCALE,
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "silu"},
    from_hf_extra=_act_check("silu", "hidden_act"),
)

GEMMA = Family(
    "gemma", "gemma", "GemmaForCausalLM", "GemmaConfig",
    fixed={**_ROPE_RMS, "norm.unit_offset": True, "placement": "pre", "mlp.kind": "geglu", "mlp.bias": False,
           **_NO_EXTRAS, "embedding_scale": True},
    fields=_LLAMA_FIELDS,
    weights=_llama_like_weights(_PRE_NORMS),
    check=_PLAIN_SCALE,
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "gelu_pytorch_tanh"},
    from_hf_extra=_act_check("gelu_pytorch_tanh", "hidden_act"),
)


def _gemma2_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    types = ["sliding_attention" if layer.window else "full_attention" for layer in layer_plan(cfg)]
    return {**_rope_to_hf(cfg), "hidden_activation": "gelu_pytorch_tanh", "layer_types": types,
            "sliding_window": cfg.attention.window or cfg.max_seq_len}


def _gemma2_from_hf(c: Any) -> dict[str, Any]:
    from ablate.model.attention import WINDOW_PATTERNS

    local = [t == "sliding_attention" for t in c.layer_types]
    pattern = next((name for name in WINDOW_PATTERNS.names()
                    if [WINDOW_PATTERNS.get(name)(i) for i in range(len(local))] == local), None)
    if pattern is None:
        raise ConfigError("layer_types", c.layer_types, "no ablate window pattern gives these layers",
                          WINDOW_PATTERNS.names())
    return {**_act_check("gelu_pytorch_tanh", "hidden_activation")(c), "attention.window_pattern": pattern,
            "attention.window": c.sliding_window if any(local) else None}


GEMMA2 = Family(
    "gemma2", "gemma2", "Gemma2ForCausalLM", "Gemma2Config",
    fixed={**_ROPE_RMS, "norm.unit_offset": True, "placement": "sandwich", "mlp.kind": "geglu", "mlp.bias": False,
           "embedding_scale": True, "embedding_norm": False, "attention.qk_norm": None, "mlp.moe.n_experts": 0,
           "attention.kv_lora_rank": None},
    fields=(*_LLAMA_FIELDS, ("attention.query_pre_attn_scalar", "query_pre_attn_scalar"),
            ("attention.softcap", "attn_logit_softcapping"), ("logit_softcap", "final_logit_softcapping")),
    weights=_llama_like_weights({"attn_norm": "input_layernorm", "attn_out_norm": "post_attention_layernorm",
                                 "mlp_norm": "pre_feedforward_layernorm",
                                 "mlp_out_norm": "post_feedforward_layernorm"}),
    check=lambda cfg: [] if isinstance(_value(cfg, "attention.query_pre_attn_scalar"), int) else [
        "attention.query_pre_attn_scalar must be a whole number"],
    to_hf_extra=_gemma2_to_hf,
    from_hf_extra=_gemma2_from_hf,
)

def _qwen3_from_hf(c: Any) -> dict[str, Any]:
    if c.use_sliding_window or any(t != "full_attention" for t in (c.layer_types or [])):
        raise ConfigError("use_sliding_window", c.use_sliding_window, "Qwen 3's sliding layers are not supported",
                          [False])
    return _act_check("silu", "hidden_act")(c)


QWEN3 = Family(
    "qwen3", "qwen3", "Qwen3ForCausalLM", "Qwen3Config",
    fixed={**_ROPE_RMS, "norm.unit_offset": False, "placement": "pre", "mlp.kind": "swiglu", "mlp.bias": False,
           **_NO_EXTRAS, "attention.qk_norm": "head"},
    fields=_LLAMA_FIELDS,
    weights=(*_llama_like_weights(_PRE_NORMS), *_qk_norm_rows()),
    check=_PLAIN_SCALE,
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "silu", "use_sliding_window": False,
                             "layer_types": ["full_attention"] * cfg.n_layers},
    from_hf_extra=_qwen3_from_hf,
)


OLMO2 = Family(
    "olmo2", "olmo2", "Olmo2ForCausalLM", "Olmo2Config",
    fixed={**_ROPE_RMS, "norm.unit_offset": False, "placement": "reordered", "mlp.kind": "swiglu",
           "mlp.bias": False, **_NO_EXTRAS, "attention.qk_norm": "all"},
    fields=tuple(f for f in _LLAMA_FIELDS if f[0] not in ("attention.head_dim", "mlp.bias")),
    weights=(*_llama_like_weights({"attn_out_norm": "post_attention_layernorm",
                                   "mlp_out_norm": "post_feedforward_layernorm"}), *_qk_norm_rows()),
    check=_whole_heads,
    to_hf_extra=lambda cfg: {**_rope_to_hf(cfg), "hidden_act": "silu"},
    from_hf_extra=_act_check("silu", "hidden_act"),
)
