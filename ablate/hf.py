"""Conversion to and from transformers' own models, the reference every preset is tested against.

    from_hf(hf_model) -> Transformer         GPT2LMHeadModel, BloomForCausalLM, LlamaForCausalLM,
    to_hf(model) -> PreTrainedModel          GemmaForCausalLM, Gemma2ForCausalLM

Each family is data: the config fields it fixes (its architectural signature), the fields that map
one to one, and a weight map of (ours, theirs, transform) rows. `to_hf` picks the family whose
signature the model matches and otherwise says, family by family, what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ablate.config import ModelConfig
from ablate.model import Transformer, check_model, layer_plan
from ablate.model.mlp import mlp_hidden_dim
from ablate.model.moe import expert_hidden_dim, shared_hidden_dim
from ablate.registry import ConfigError


# ---- weight transforms: (to ours, to theirs), each given the tensor and our config ------------------
def _bloom_qkv(t: Tensor, cfg: ModelConfig, to_ours: bool) -> Tensor:
    """BLOOM interleaves per head: rows [h0: q k v | h1: q k v | ...]; ours are [q heads | k heads | v heads]."""
    H, hd = cfg.n_heads, cfg.head_dim
    shape = (H, 3, hd) if to_ours else (3, H, hd)
    return t.reshape(*shape, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


TRANSFORMS: dict[str, tuple[Callable[[Tensor, ModelConfig], Tensor], Callable[[Tensor, ModelConfig], Tensor]]] = {
    "same": (lambda t, cfg: t, lambda t, cfg: t),
    # GPT-2's Conv1D stores (in, out); a Linear stores (out, in). Biases pass unchanged.
    "conv1d": (lambda t, cfg: t.t() if t.dim() == 2 else t, lambda t, cfg: t.t() if t.dim() == 2 else t),
    "bloom_qkv": (lambda t, cfg: _bloom_qkv(t, cfg, True), lambda t, cfg: _bloom_qkv(t, cfg, False)),
}

WeightRow = tuple[str, tuple[str, ...], str]  # ours, theirs (several: concatenated along dim 0), transform


def _rows(ours: str, theirs: str | tuple[str, ...], how: str = "same", bias: bool = True) -> list[WeightRow]:
    """The weight row, and its bias row when `bias`."""
    theirs = (theirs,) if isinstance(theirs, str) else theirs
    rows = [(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), how)]
    if bias:
        rows.append((f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), how))
    return rows


# ---- resolved config values (None meaning "the default") ---------------------------------------
RESOLVED: dict[str, Callable[[ModelConfig], Any]] = {
    "attention.n_kv_heads": lambda c: c.n_kv_heads,
    "attention.head_dim": lambda c: c.head_dim,
    "mlp.hidden_dim": lambda c: mlp_hidden_dim(c),
    "attention.query_pre_attn_scalar": lambda c: _integral(c.attention.query_pre_attn_scalar or c.head_dim),
    "mlp.moe.expert_hidden_dim": lambda c: expert_hidden_dim(c),
    "mlp.moe.shared_hidden_dim": lambda c: shared_hidden_dim(c),
}


def _integral(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _value(cfg: ModelConfig, dotted: str) -> Any:
    if dotted in RESOLVED:
        return RESOLVED[dotted](cfg)
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # transformers' config.model_type
    hf_model: str  # class name in transformers
    hf_config: str
    fixed: dict[str, Any]  # our fields that this family fixes
    fields: tuple[tuple[str, str], ...]  # (our field, their config attribute), one to one
    weights: tuple[WeightRow, ...]
    check: Callable[[ModelConfig], list[str]] = lambda cfg: []  # further limits of the family
    to_hf_extra: Callable[[ModelConfig], dict[str, Any]] = lambda cfg: {}
    from_hf_extra: Callable[[Any], dict[str, Any]] = lambda hf: {}
    ignored: tuple[str, ...] = field(default=())  # their state-dict keys with nothing of ours behind them

    def mismatches(self, cfg: ModelConfig) -> list[str]:
        found = [f"{k} is {_value(cfg, k)!r}, needs {v!r}" for k, v in self.fixed.items() if _value(cfg, k) != v]
        if cfg.parametrization != "sp":  # logits / m and attention 1/d: no transformers class scales so
            return [*found, f"parametrization is {cfg.parametrization!r}, needs 'sp'"]
        return found + self.check(cfg)

    def rows(self, n_layers: int) -> Iterator[WeightRow]:
        for ours, theirs, how in self.weights:
            for i in range(n_layers) if "{i}" in ours else [0]:
                yield ours.format(i=i), tuple(t.format(i=i) for t in theirs), how


_NO_EXTRAS = {"embedding_scale": False, "embedding_norm": False, "logit_softcap": None,
              "attention.softcap": None, "attention.window": None, "attention.window_pattern": "global",
              "attention.qk_norm": None, "mlp.moe.n_experts": 0}
_PLAIN_SCALE = lambda cfg: [] if cfg.attn_scale == cfg.head_dim**-0.5 else [
    "query_pre_attn_scalar differs from head_dim"]


def _mha_only(cfg: ModelConfig) -> list[str]:
    problems = _PLAIN_SCALE(cfg)
    if cfg.n_kv_heads != cfg.n_heads:
        problems.append(f"attention.n_kv_heads is {cfg.n_kv_heads}, needs n_heads={cfg.n_heads} (MHA only)")
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        problems.append(f"attention.head_dim is {cfg.head_dim}, needs dim / n_heads = {cfg.dim / cfg.n_heads:g}")
    return problems


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


# ---- Llama, Gemma, Gemma 2: one layout, different norms and extras --------------------------------
def _llama_like_weights(norms: dict[str, str]) -> tuple[WeightRow, ...]:
    layer = "model.layers.{i}"
    attn = tuple(f"{layer}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj"))
    return (
        ("tok_embed.weight", ("model.embed_tokens.weight",), "same"),
        *[row for ours, theirs in norms.items() for row in _rows(f"blocks.{{i}}.{ours}", f"{layer}.{theirs}",
                                                                  bias=False)],
        *_rows("blocks.{i}.attn.wqkv", attn),
        *_rows("blocks.{i}.attn.wo", f"{layer}.self_attn.o_proj"),
        *_rows("blocks.{i}.mlp.w_gate", f"{layer}.mlp.gate_proj"),
        *_rows("blocks.{i}.mlp.w_in", f"{layer}.mlp.up_proj"),
        *_rows("blocks.{i}.mlp.w_out", f"{layer}.mlp.down_proj"),
        *_rows("final_norm", "model.norm", bias=False),
        ("head.weight", ("lm_head.weight",), "same"),
    )


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.position.theta}}


def _rope_from_hf(c: Any) -> dict[str, Any]:
    rope = c.rope_parameters or {"rope_type": "default", "rope_theta": 10_000.0}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError("rope_parameters.rope_type", rope["rope_type"], "only plain RoPE is supported",
                          ["default"])
    return {"position.theta": float(rope["rope_theta"])}


def _act_check(name: str, attr: str) -> Callable[[Any], dict[str, Any]]:
    def read(c: Any) -> dict[str, Any]:
        if getattr(c, attr) != name:
            raise ConfigError(attr, getattr(c, attr), "differs from what ablate's mlp kind computes", [name])
        return _rope_from_hf(c)

    return read


_LLAMA_FIELDS = (("vocab_size", "vocab_size"), ("dim", "hidden_size"), ("n_layers", "num_hidden_layers"),
                 ("attention.n_heads", "num_attention_heads"), ("attention.n_kv_heads", "num_key_value_heads"),
                 ("attention.head_dim", "head_dim"), ("mlp.hidden_dim", "intermediate_size"),
                 ("norm.eps", "rms_norm_eps"), ("max_seq_len", "max_position_embeddings"),
                 ("tie_embeddings", "tie_word_embeddings"), ("attention.qkv_bias", "attention_bias"),
                 ("attention.out_bias", "attention_bias"))
_ROPE_RMS = {"position.kind": "rope", "position.rotary_fraction": 1.0, "norm.kind": "rmsnorm", "norm.bias": False}
_PRE_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}

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
           "embedding_scale": True, "embedding_norm": False, "attention.qk_norm": None, "mlp.moe.n_experts": 0},
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

# ---- Qwen 3 and OLMo 2: QK-norm per head and across heads ------------------------------------------
def _qk_norm_rows() -> list[WeightRow]:
    return [*_rows("blocks.{i}.attn.q_norm", "model.layers.{i}.self_attn.q_norm", bias=False),
            *_rows("blocks.{i}.attn.k_norm", "model.layers.{i}.self_attn.k_norm", bias=False)]


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


def _whole_heads(cfg: ModelConfig) -> list[str]:
    problems = _PLAIN_SCALE(cfg)
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        problems.append(f"attention.head_dim is {cfg.head_dim}, needs dim / n_heads = {cfg.dim / cfg.n_heads:g}")
    return problems


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


def _refuse(attribute: str, why: str) -> dict[str, Any]:
    raise ConfigError(attribute, "set", why)


FAMILIES: dict[str, Family] = {f.name: f for f in (GPT2, BLOOM, LLAMA, GEMMA, GEMMA2, QWEN3, OLMO2, MIXTRAL, OLMOE,
                                                   QWEN2MOE)}


# ---- public API ---------------------------------------------------------------------------------
def family_of(cfg: ModelConfig) -> Family:
    """The transformers family that computes exactly what `cfg` does; ConfigError saying why not otherwise."""
    reasons = {}
    for family in FAMILIES.values():
        problems = family.mismatches(cfg)
        if not problems:
            return family
        reasons[family.name] = problems
    detail = "; ".join(f"{name}: {', '.join(p)}" for name, p in reasons.items())
    raise ConfigError("model", "this variant", f"no transformers class implements it ({detail})",
                      valid=list(FAMILIES))


def config_to_hf(cfg: ModelConfig) -> Any:
    """The transformers config of `cfg`'s family."""
    import transformers

    family = family_of(cfg)
    kwargs: dict[str, Any] = {}
    for ours, theirs in family.fields:
        value = _value(cfg, ours)
        if theirs in kwargs and kwargs[theirs] != value:
            raise ConfigError(f"model.{ours}", value, f"{family.name} has one {theirs} for it and another field")
        kwargs[theirs] = value
    kwargs.update(family.to_hf_extra(cfg))
    return getattr(transformers, family.hf_config)(**kwargs)


def config_from_hf(hf_config: Any) -> ModelConfig:
    """Our ModelConfig for a transformers config of a supported family."""
    family = _family_by_type(hf_config.model_type)
    flat: dict[str, Any] = dict(family.fixed)
    for ours, theirs in family.fields:
        value = getattr(hf_config, theirs)
        if ours in flat and flat[ours] != value and ours not in family.fixed:
            raise ConfigError(theirs, value, f"ablate has one {ours} for {theirs} and another attribute")
        flat[ours] = value
    flat.update(family.from_hf_extra(hf_config))
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return check_model(ModelConfig.from_dict(nested))


def from_hf(hf_model: Any) -> Transformer:
    """An ablate Transformer with the weights of a transformers causal LM (same dtype, same mode)."""
    cfg = config_from_hf(hf_model.config)
    family = _family_by_type(hf_model.config.model_type)
    dtype = next(hf_model.parameters()).dtype
    model = Transformer(cfg)
    theirs = hf_model.state_dict()
    ours: dict[str, Tensor] = {}
    for o, t, how in _present_rows(family, cfg, model.state_dict(), theirs):
        joined = torch.cat([theirs[k] for k in t]) if len(t) > 1 else theirs[t[0]]
        ours[o] = TRANSFORMS[how][0](joined, cfg)
    model.load_state_dict(ours, strict=True)
    return model.to(dtype).train(hf_model.training)


def to_hf(model: Transformer) -> Any:
    """A transformers causal LM computing the same logits as `model` (same dtype, same mode)."""
    import transformers

    cfg = model.cfg
    family = family_of(cfg)
    hf_model = getattr(transformers, family.hf_model)(config_to_hf(cfg))
    ours = model.state_dict()
    target = hf_model.state_dict()
    theirs: dict[str, Tensor] = {}
    for o, t, how in _present_rows(family, cfg, ours, target):
        tensor = TRANSFORMS[how][1](ours[o], cfg)
        parts = tensor.split([target[k].shape[0] for k in t]) if len(t) > 1 else (tensor,)
        theirs.update(zip(t, parts))
    if cfg.tie_embeddings:
        target.pop("lm_head.weight", None)
    missing = sorted(set(target) - set(theirs) - set(family.ignored))
    if missing:
        raise RuntimeError(f"to_hf({family.name}): nothing maps to {missing}")
    hf_model.load_state_dict(theirs, strict=False)
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    dtype = next(model.parameters()).dtype
    return hf_model.to(dtype).train(model.training)


def _family_by_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise ConfigError("model_type", model_type, "no ablate family converts it",
                      valid=[f.model_type for f in FAMILIES.values()])


def _present_rows(family: Family, cfg: ModelConfig, ours: dict[str, Tensor],
                  theirs: dict[str, Tensor]) -> Iterator[WeightRow]:
    """The weight rows present on both sides (biases, learned tables and untied heads are optional);
    a row on one side only, or a tensor of ours no row covers, is an error."""
    covered = set()
    for o, t, how in family.rows(cfg.n_layers):
        if o == "head.weight" and cfg.tie_embeddings:
            continue
        here, there = o in ours, all(k in theirs for k in t)
        if here != there:
            raise RuntimeError(f"{family.name} weight map: {o} <-> {t} exists on one side only")
        if here:
            covered.add(o)
            yield o, t, how
    uncovered = sorted(set(ours) - covered)
    if uncovered:
        raise RuntimeError(f"{family.name} weight map covers none of {uncovered}")
