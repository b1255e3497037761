"""Configs: Hydra presets compose to the families they name; impossible configs fail at config time
with the field and the valid values; model facts equal hand counts."""

import pytest
import torch
from torch.testing import assert_close

from ablate.cli import compose_model
from ablate.config import AttentionConfig, ModelConfig, RunConfig
from ablate.hf import family_of, to_hf
from ablate.model import Transformer, model_facts
from ablate.registry import ConfigError

PRESET_FAMILY = {"default": "llama", "gpt2": "gpt2", "bloom": "bloom", "llama2": "llama", "gemma": "gemma",
                 "gemma2": "gemma2", "qwen3": "qwen3", "olmo2": "olmo2"}


@pytest.mark.parametrize("preset", PRESET_FAMILY)
def test_preset_is_its_family_in_transformers(preset):
    """Each preset, at its own size, computes what transformers' class of the family computes."""
    cfg = compose_model([f"model={preset}", "model.n_layers=2"])
    assert family_of(cfg).name == PRESET_FAMILY[preset]
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # move off the init so every tensor matters
            p.add_(torch.randn_like(p) * 0.05)
        tokens = torch.randint(0, cfg.vocab_size, (1, 40))
        assert_close(to_hf(model)(tokens).logits, model(tokens))


def test_groups_override_one_axis_of_a_preset():
    cfg = compose_model(["model=gemma2", "model/position=alibi", "model/attention=mqa", "model/placement=post",
                         "model/mlp=relu", "model/norm=layernorm", "model.dim=128"])
    assert (cfg.position.kind, cfg.n_kv_heads, cfg.placement, cfg.mlp.kind, cfg.norm.kind, cfg.dim) == (
        "alibi", 1, "post", "relu", "layernorm", 128)
    assert cfg.attention.softcap == 50.0 and cfg.attention.window_pattern == "alternating"  # the rest stays
    assert cfg.norm.unit_offset  # the preset's own setting survives a group change
    Transformer(cfg)


@pytest.mark.parametrize("overrides,field,valid", [
    (["model.attention.n_heads=8", "model.attention.n_kv_heads=3"], "model.attention.n_kv_heads=3",
     "valid: 1, 2, 4, 8"),
    (["model/position=rope", "model.attention.n_heads=8", "model.attention.head_dim=9"],
     "model.attention.head_dim=9", "even integer"),
    (["model.position.kind=xpos"], "model.position.kind='xpos'",
     "valid: nope, learned, sinusoidal, rope, rope_nope, alibi"),
    (["model.attention.window=0", "model.attention.window_pattern=local"], "model.attention.window=0", "positive"),
    (["model.attention.window_pattern=alternating"], "model.attention.window=None", "needs a window size"),
    (["model.attention.window_pattern=stripes", "model.attention.window=4"], "model.attention.window_pattern",
     "valid: global, local, alternating"),
    (["model.placement=middle"], "model.placement='middle'", "valid: pre, post, sandwich, reordered, mix"),
    (["model.mlp.kind=reglu"], "model.mlp.kind='reglu'", "valid: relu, gelu, gelu_tanh, geglu, swiglu"),
    (["model.norm.kind=batchnorm"], "model.norm.kind='batchnorm'", "valid: layernorm, rmsnorm"),
    (["model.dim=250", "model.attention.n_heads=3"], "model.attention.n_heads=3", "must divide dim=250"),
    (["model.attention.softcap=50", "model.attention.backend=sdpa"], "model.attention.backend='sdpa'",
     "valid: eager, flex, auto"),
    (["+model.attention.n_kv_head=2"], "model.attention.n_kv_head=2", "valid: n_heads, n_kv_heads"),
    (["model.dim=big"], "model.dim='big'", "expected int"),
    (["model.position.rotary_fraction=1.5"], "model.position.rotary_fraction=1.5", "(0, 1]"),
])
def test_impossible_configs_name_field_and_choices(overrides, field, valid):
    with pytest.raises(ConfigError) as err:
        compose_model(overrides)
    assert field in str(err.value) and valid in str(err.value)


def test_validation_without_hydra():
    with pytest.raises(ConfigError, match="n_kv_heads=3"):
        Transformer(ModelConfig(attention=AttentionConfig(n_heads=4, n_kv_heads=3)))


# ---- facts: hand counts --------------------------------------------------------------------------
def gpt2_small() -> ModelConfig:
    return compose_model(["model=gpt2", "model.dim=768", "model.n_layers=12", "model.attention.n_heads=12",
                          "model.max_seq_len=1024", "model.vocab_size=50257"])


def test_facts_gpt2_small_by_hand():
    f = model_facts(gpt2_small(), dtype=torch.float16)
    # embedding: wte 50257 x 768 + wpe 1024 x 768 (head tied)
    assert f.embedding_params == 50257 * 768 + 1024 * 768 == 39_383_808
    # per block: qkv 768x2304+2304, proj 768x768+768, fc 768x3072+3072, out 3072x768+768, 2 LayerNorms 2x1536
    block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 1536
    assert f.non_embedding_params == 12 * block + 1536  # + ln_f
    assert f.params == 124_439_808  # GPT-2 small's published count
    # training FLOPs/token at 1024: 3 x [2 x (12 blocks of matmuls + head) + 12 layers x 4 x 768 x 512.5 keys]
    matmul = 768 * 2304 + 768 * 768 + 2 * 768 * 3072
    assert f.flops_per_token == 3 * (2 * (12 * matmul + 50257 * 768) + 12 * 4 * 768 * 512.5)
    assert f.kv_bytes_per_token == 2 * 12 * 768 * 2  # k and v, 12 layers, 768 channels, 2 bytes


def test_facts_llama2_7b_and_gemma_2b_by_hand():
    llama = compose_model(["model=llama2", "model/attention=mha", "model.dim=4096", "model.n_layers=32",
                           "model.attention.n_heads=32", "model.mlp.hidden_dim=11008", "model.vocab_size=32000",
                           "model.max_seq_len=4096"])
    f = model_facts(llama)
    assert f.params == 6_738_415_616  # Llama-2-7B's count
    assert f.embedding_params == 2 * 32000 * 4096  # untied: embedding and head
    assert f.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524_288  # half a MiB per token in bf16
    gemma = compose_model(["model=gemma", "model.dim=2048", "model.n_layers=18", "model.attention.n_heads=8",
                           "model.attention.head_dim=256", "model.mlp.hidden_dim=16384",
                           "model.vocab_size=256128", "model.max_seq_len=8192"])
    g = model_facts(gemma)
    assert g.embedding_params == 524_550_144  # Gemma's Table 2
    assert g.non_embedding_params == 1_981_884_416  # Gemma's Table 2
    assert g.kv_bytes_per_token == 2 * 18 * 1 * 256 * 2  # MQA: one kv head


def test_facts_windows_cut_attention_flops():
    base = ["model=gemma2", "model.n_layers=2", "model.max_seq_len=8", "model.attention.window=4"]
    local = model_facts(compose_model([*base, "model.attention.window_pattern=local"]))
    alternating = model_facts(compose_model(base))
    # 8 positions see 1,2,3,4,4,4,4,4 keys under a window of 4 (mean 3.25) and 1..8 without (mean 4.5)
    hd = 4 * 64
    assert alternating.flops_per_token - local.flops_per_token == 3 * 4 * hd * (4.5 - 3.25)


@pytest.mark.parametrize("preset", PRESET_FAMILY)
def test_facts_count_what_the_module_holds(preset):
    cfg = compose_model([f"model={preset}"])
    assert model_facts(cfg).params == Transformer(cfg).num_parameters()


def test_the_yaml_defaults_are_the_dataclasses_defaults():
    """A default lives in the dataclasses (ablate/config.py); where conf/config.yaml's composition
    holds the same field, the two agree, so changing one without the other fails here. Only the
    suites' task lists live in YAML alone (they are data), and only the run name and +tune's
    fields in the dataclasses alone (set per job)."""
    from ablate.cli import compose_root
    from ablate.run.rundir import flatten

    composed, default = flatten(compose_root([])), flatten(RunConfig().to_dict())
    shared = set(composed) & set(default)
    assert len(shared) > 100  # the whole config, not a corner of it
    assert {k: (default[k], composed[k]) for k in shared if composed[k] != default[k]} == {}
    assert all(k.startswith("eval.suites.") for k in set(composed) - set(default)), set(composed) - set(default)
    assert all(k == "run_name" or k.startswith("tune.") for k in set(default) - set(composed))
