"""The pieces every transformers family is made of (ablate.hf): weight transforms and rows, the
config values a family compares resolved, the Family record, and the helpers several share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ablate.config import ModelConfig
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
    "attention.v_head_dim": lambda c: c.v_head_dim,
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
    # their state dict rewritten into our layout before the rows map it (an interleaved RoPE layout)
    prepare: Callable[[dict[str, Tensor], Any], dict[str, Tensor]] = lambda state, hf: state

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
              "attention.qk_norm": None, "mlp.moe.n_experts": 0, "attention.kv_lora_rank": None}
_PLAIN_SCALE = lambda cfg: [] if cfg.attn_scale == cfg.head_dim**-0.5 else [
    "query_pre_attn_scalar differs from head_dim"]


def _mha_only(cfg: ModelConfig) -> list[str]:
    problems = _PLAIN_SCALE(cfg)
    if cfg.n_kv_heads != cfg.n_heads:
        problems.append(f"attention.n_kv_heads is {cfg.n_kv_heads}, needs n_heads={cfg.n_heads} (MHA only)")
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        problems.append(f"attention.head_dim is {cfg.head_dim}, needs dim / n_heads = {cfg.dim / cfg.n_heads:g}")
    return problems


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

# ---- QK-norm rows ------------------------------------------
def _qk_norm_rows() -> list[WeightRow]:
    return [*_rows("blocks.{i}.attn.q_norm", "model.layers.{i}.self_attn.q_norm", bias=False),
            *_rows("blocks.{i}.attn.k_norm", "model.layers.{i}.self_attn.k_norm", bias=False)]


def _whole_heads(cfg: ModelConfig) -> list[str]:
    problems = _PLAIN_SCALE(cfg)
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        problems.append(f"attention.head_dim is {cfg.head_dim}, needs dim / n_heads = {cfg.dim / cfg.n_heads:g}")
    return problems


def _refuse(attribute: str, why: str) -> dict[str, Any]:
    raise ConfigError(attribute, "set", why)

