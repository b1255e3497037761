"""Every family transformers implements: random reference weights, converted both ways, equal logits."""

import pytest
import torch
import transformers
from torch.testing import assert_close

from ablate.hf import config_from_hf, family_of, from_hf, to_hf
from ablate.model import Transformer
from ablate.registry import ConfigError

VOCAB, SEQ = 97, 24


def randomize_(model: torch.nn.Module, unit_offset: bool = False) -> torch.nn.Module:
    """Weights far from any init: every norm scale, bias and matrix random, so a swapped or
    missing tensor changes the logits. Norm scales are drawn around 1 (around 0 under Gemma's
    unit offset, whose scale is 1 + w), keeping logits in the range fp32 compares well."""
    g = torch.Generator().manual_seed(1)
    center = 0.0 if unit_offset else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(noise * 0.2 + (center if name.endswith("weight") else 0.0))
            else:
                p.copy_(noise / p.shape[-1] ** 0.5 if "emb" not in name and "wte" not in name and "wpe" not in name
                        else noise * 0.5)
    return model


def reference(family: str, **overrides) -> transformers.PreTrainedModel:
    common = dict(vocab_size=VOCAB)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                                embd_pdrop=0.0, attn_pdrop=0.0, **common),
        "bloom": lambda: transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **common),
        "llama": lambda: transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=64, **common),
        "gemma": lambda: transformers.GemmaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                                  max_position_embeddings=64, **common),
        "gemma2": lambda: transformers.Gemma2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                                    num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                    query_pre_attn_scalar=20, sliding_window=8,
                                                    max_position_embeddings=64, attn_implementation="eager",
                                                    **common),
        "qwen3": lambda: transformers.Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                  max_position_embeddings=64, **common),
        "mixtral": lambda: transformers.MixtralConfig(hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                      num_local_experts=5, num_experts_per_tok=2,
                                                      max_position_embeddings=64, **common),
        "olmoe": lambda: transformers.OlmoeConfig(hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, num_experts=6,
                                                  num_experts_per_tok=3, max_position_embeddings=64, **common),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=2,
                                                         moe_intermediate_size=24, shared_expert_intermediate_size=56,
                                                         num_experts=4, num_experts_per_tok=2,
                                                         max_position_embeddings=64, **common),
        "deepseek_v3": lambda: transformers.DeepseekV3Config(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
            first_k_dense_replace=2, max_position_embeddings=64, **common),
        "olmo2": lambda: transformers.Olmo2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=64, **common),
    }
    cfg = configs[family]()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "bloom": transformers.BloomForCausalLM,
           "llama": transformers.LlamaForCausalLM, "gemma": transformers.GemmaForCausalLM,
           "gemma2": transformers.Gemma2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "olmo2": transformers.Olmo2ForCausalLM, "mixtral": transformers.MixtralForCausalLM,
           "olmoe": transformers.OlmoeForCausalLM, "qwen2_moe": transformers.Qwen2MoeForCausalLM,
           "deepseek_v3": transformers.DeepseekV3ForCausalLM}[family]
    return randomize_(cls(cfg), unit_offset=family.startswith("gemma")).eval()


CASES = [
    ("gpt2", {}),
    ("gpt2", {"tie_word_embeddings": False, "activation_function": "relu"}),
    ("bloom", {}),
    ("bloom", {"n_head": 8}),  # 8 heads of 8: head layout of the fused qkv matters
    ("llama", {}),  # GQA: 4 query heads, 2 kv heads
    ("llama", {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}),  # MQA, biases
    ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),  # MHA
    ("gemma", {}),  # MQA, head_dim independent of hidden size
    ("gemma2", {}),  # alternating 8-token windows on 24 tokens, soft-caps 50 / 30
    ("gemma2", {"attn_logit_softcapping": None, "final_logit_softcapping": None,
                "layer_types": ["sliding_attention"] * 3}),
    ("qwen3", {}),  # QK-norm per head (over head_dim), GQA, head_dim independent of hidden size
    ("qwen3", {"num_key_value_heads": 1, "attention_bias": True, "tie_word_embeddings": True}),
    ("olmo2", {}),  # QK-norm across heads (over n_heads x head_dim; keys over n_kv_heads x head_dim), reordered norm
    ("olmo2", {"num_key_value_heads": 4, "attention_bias": True, "tie_word_embeddings": True}),
    ("mixtral", {}),  # 5 experts, top 2, renormalised (topk_softmax)
    ("mixtral", {"num_experts_per_tok": 1, "tie_word_embeddings": True}),
    ("olmoe", {}),  # 6 experts, top 3, not renormalised (softmax_topk), QK-norm across heads
    ("olmoe", {"norm_topk_prob": True, "attention_bias": True}),
    ("qwen2_moe", {}),  # 4 experts, top 2, a gated shared expert, qkv biases
    ("qwen2_moe", {"norm_topk_prob": True, "qkv_bias": False, "num_key_value_heads": 1}),
    ("deepseek_v3", {}),  # latent attention with a query latent, interleaved RoPE channels, every layer dense
    ("deepseek_v3", {"q_lora_rank": None, "rope_interleave": False, "tie_word_embeddings": True}),
]


def _ids(case):
    family, overrides = case
    return family + ("-" + "-".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "")


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_from_hf_logits_equal(case):
    family, overrides = case
    hf = reference(family, **overrides)
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    ours = from_hf(hf)
    assert not ours.training
    with torch.no_grad():
        assert_close(ours(tokens), hf(tokens).logits)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_to_hf_logits_equal(case):
    family, overrides = case
    cfg = config_from_hf(reference(family, **overrides).config)
    ours = randomize_(Transformer(cfg), unit_offset=cfg.norm.unit_offset).eval()
    hf = to_hf(ours)
    assert type(hf).__name__ == reference(family).__class__.__name__
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        assert_close(hf(tokens).logits, ours(tokens))


def test_round_trip_keeps_config():
    hf = reference("gemma2")
    cfg = config_from_hf(hf.config)
    assert cfg.attention.window_pattern == "alternating" and cfg.attention.window == 8
    assert cfg.attention.softcap == 50.0 and cfg.logit_softcap == 30.0
    assert config_from_hf(to_hf(Transformer(cfg)).config) == cfg


def test_variant_without_family_is_refused_with_reasons():
    cfg = config_from_hf(reference("llama").config)
    cfg.position.kind = "alibi"
    with pytest.raises(ConfigError) as err:
        family_of(cfg)
    message = str(err.value)
    assert "llama: position.kind is 'alibi', needs 'rope'" in message
    assert "gpt2:" in message and "bloom:" in message
