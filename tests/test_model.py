"""The Transformer over its axes: the full grid builds, trains and is causal; the KV cache and the
backends agree with the plain forward for every position scheme."""

import itertools

import pytest
import torch
import yaml
from torch.testing import assert_close

from ablate.config import AttentionConfig, MlpConfig, ModelConfig, NormConfig, PositionConfig
from ablate.model import Transformer, model_facts
from ablate.model.attention import FlexBackend
from ablate.model.block import PLACEMENTS
from ablate.model.mlp import MLPS
from ablate.model.position import POSITIONS, alibi_slopes

from conftest import ROOT, cli_in_process, pairwise

VOCAB = 61
KV_HEADS = {"mha": None, "gqa": 2, "mqa": 1}


def tiny(position="rope", attention="gqa", placement="pre", mlp="swiglu", **kw) -> ModelConfig:
    attn = dict(n_heads=4, n_kv_heads=KV_HEADS[attention])
    attn.update(kw.pop("attn", {}))
    pos = PositionConfig(kind=position, **kw.pop("pos", {}))
    return ModelConfig(vocab_size=VOCAB, dim=32, n_layers=kw.pop("n_layers", 2), max_seq_len=32, position=pos,
                       attention=AttentionConfig(**attn), placement=placement, mlp=MlpConfig(kind=mlp), **kw)


GRID = list(itertools.product(POSITIONS.names(), KV_HEADS, PLACEMENTS.names(), MLPS.names()))
# the fast tier builds a pairwise cut of the grid (every two choices of any two axes together); all of it is slow
PAIRWISE = pairwise([POSITIONS.names(), list(KV_HEADS), PLACEMENTS.names(), MLPS.names()])
AXES = {"position": (POSITIONS, 0), "placement": (PLACEMENTS, 2), "mlp": (MLPS, 3)}  # registry, GRID column


@pytest.mark.parametrize("axis", AXES)
def test_every_choice_has_a_yaml_and_the_grid_has_every_choice(axis):
    """conf/model/<axis>/ and the axis registry name the same choices, and the grid tests them all."""
    choices = set()
    for path in (ROOT / "conf" / "model" / axis).glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        if "moe" in node:  # experts of any mlp kind: tests/test_moe.py
            continue
        choices.add(node["kind"] if "kind" in node else node[axis])
    registry, column = AXES[axis]
    assert choices == set(registry.names())
    assert {row[column] for row in GRID} == choices


@pytest.mark.parametrize("position,attention,placement,mlp",
                         [pytest.param(*row, marks=() if row in PAIRWISE else pytest.mark.slow) for row in GRID])
def test_grid_builds_backprops_and_is_causal(position, attention, placement, mlp):
    cfg = tiny(position, attention, placement, mlp, n_layers=4, pos=dict(nope_every=2))
    model = Transformer(cfg)
    assert model_facts(cfg).params == model.num_parameters()  # counted on the meta device: the same module
    tokens = torch.randint(0, VOCAB, (2, 12))
    logits = model(tokens)
    assert logits.shape == (2, 12, VOCAB)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    t = 7  # change the token at position t: nothing before t may move, position t must
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4


def test_unusual_combination_trains():
    """ALiBi + sandwich + MQA + GeGLU: no family uses it, it must still learn."""
    torch.manual_seed(0)
    model = Transformer(tiny("alibi", "mqa", "sandwich", "geglu"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = torch.arange(24).remainder(7)[None].repeat(4, 1)  # a periodic sequence to memorise
    losses = []
    for _ in range(60):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


CACHE_CASES = [
    *[dict(position=p) for p in POSITIONS.names()],
    dict(position="rope_nope", pos=dict(nope_every=2), placement="mix", n_layers=4),
    dict(position="alibi", attn=dict(window=5, window_pattern="local")),
    dict(position="rope", attn=dict(window=4, window_pattern="alternating", softcap=20.0), logit_softcap=10.0),
    dict(position="sinusoidal", attn=dict(window=3, window_pattern="alternating")),
    dict(position="rope", attention="mqa", placement="sandwich", mlp="geglu"),
    dict(position="rope", attention="mha", attn=dict(kv_lora_rank=8, rope_head_dim=4)),  # latent attention
    dict(position="rope", attention="mha", attn=dict(kv_lora_rank=6, q_lora_rank=10, rope_head_dim=4, v_head_dim=6)),
    dict(position="rope", attention="mha", attn=dict(qk_norm="head")),
    dict(position="alibi", attention="gqa", attn=dict(qk_norm="all"), placement="reordered"),
]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("case", CACHE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_kv_cache_matches_full_forward(case, backend):
    cfg = tiny(**case)
    if backend == "sdpa" and cfg.attention.softcap:
        pytest.skip("sdpa cannot soft-cap")
    model = Transformer(cfg).eval().set_backend(backend)
    tokens = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        prefill = model(tokens[:, :5], cache)  # a prompt, then chunks of 3, then single tokens
        chunks = [model(tokens[:, i:i + 3], cache) for i in (5, 8)]
        singles = [model(tokens[:, i:i + 1], cache) for i in range(11, 14)]
    assert cache.length == 14
    assert_close(torch.cat([prefill, *chunks, *singles], dim=1), full)


def test_latent_attention_generates_alike_with_and_without_its_compressed_cache():
    """Greedy generation from the cache (the latent and the shared rope key, nothing per head)
    equals re-running the whole sequence; the cache holds kv_lora_rank + rope_head_dim per token."""
    model = Transformer(tiny("rope", "mha", attn=dict(kv_lora_rank=8, q_lora_rank=12, rope_head_dim=4))).eval()
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=8)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)
    cache = model.new_cache()
    with torch.no_grad():
        model(prompt, cache)
    assert [tuple(k.shape) for k in cache.keys] == [(2, 1, 5, 8)] * 2 and cache.values[0].shape == (2, 1, 5, 4)
    assert model_facts(model.cfg).kv_bytes_per_token == 2 * (8 + 4) * 2  # layers x (latent + rope key) x bf16


def test_learned_positions_refuse_beyond_their_table():
    model = Transformer(tiny("learned"))
    with pytest.raises(ValueError, match="learned positions cover 0..31"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_generate_is_greedy_and_stops():
    model = Transformer(tiny("alibi", attn=dict(window=4, window_pattern="alternating"))).eval()
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    seq = prompt  # the same greedy path without a cache: re-run the whole sequence each step
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)
    stop = int(out[0, 7])
    first_stop = 5 + out[0, 5:].tolist().index(stop)  # the stop token may come before position 7
    first = model.generate(prompt[:1], max_new_tokens=8, stop=stop)
    assert torch.equal(first[0], out[0, : first_stop + 1])


BACKEND_CASES = [
    dict(position="alibi"),
    dict(position="rope", attention="mqa"),
    dict(position="nope", attn=dict(window=6, window_pattern="local")),
    dict(position="alibi", attn=dict(window=6, window_pattern="alternating", softcap=5.0)),
    dict(position="rope", attn=dict(window=6, window_pattern="alternating", softcap=5.0), logit_softcap=10.0),
]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_backends_agree_forward(case):
    model = Transformer(tiny(**case)).eval()
    tokens = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        eager = model.set_backend("eager")(tokens)
        flex = model.set_backend("flex")(tokens)
        assert_close(flex, eager)
        if model.cfg.attention.softcap is None:
            assert_close(model.set_backend("sdpa")(tokens), eager)
        cache = model.new_cache()  # flex with a cached prefix too
        steps = [model(tokens[:, :15], cache), model(tokens[:, 15:], cache)]
    assert_close(torch.cat(steps, dim=1), eager)


def test_compiled_flex_forward_matches_on_cpu():
    """The GPU path is flex_attention under torch.compile; its CPU build must compute the same."""
    model = Transformer(tiny("alibi", attn=dict(window=8, window_pattern="alternating", softcap=5.0))).eval()
    tokens = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        eager = model.set_backend("eager")(tokens)
        model.backend = FlexBackend(compile=True)
        assert_close(model(tokens), eager, rtol=1e-4, atol=1e-4)


def test_gqa_equals_mha_with_repeated_kv_heads():
    """GQA is MHA whose key/value heads come in copies: build both and compare."""
    gqa = Transformer(tiny("rope", "gqa")).eval()
    mha = Transformer(tiny("rope", "mha")).eval()
    sd = gqa.state_dict()
    H, Hkv, hd, dim = 4, 2, 8, 32
    for i in range(2):
        w = sd[f"blocks.{i}.attn.wqkv.weight"]
        q, k, v = w.split((H * hd, Hkv * hd, Hkv * hd))
        rep = lambda t: t.view(Hkv, hd, dim).repeat_interleave(H // Hkv, dim=0).reshape(H * hd, dim)
        sd[f"blocks.{i}.attn.wqkv.weight"] = torch.cat((q, rep(k), rep(v)))
    mha.load_state_dict(sd)
    tokens = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert_close(mha(tokens), gqa(tokens))


@pytest.mark.parametrize("attention", [
    {"n_kv_heads": 1},  # MQA
    {"kv_lora_rank": 64, "rope_head_dim": 16},  # the mla preset
    {"kv_lora_rank": 32, "q_lora_rank": 48, "rope_head_dim": 8, "v_head_dim": 32},
    {"kv_lora_rank": 384, "rope_head_dim": 32},  # more than MHA spends: a narrower MLP
], ids=["mqa", "mla", "mla-query-latent", "mla-wide"])
def test_match_mha_params_spends_what_the_attention_saves(attention):
    """model.match_mha_params: the MLP takes the parameters the attention saves against MHA of the
    same heads (counted from the modules built), and the model lands within 0.5% of MHA's size."""
    def build(extra: dict, match: bool = False) -> Transformer:
        return Transformer(ModelConfig.from_dict({"dim": 256, "attention": {"n_heads": 4, **extra},
                                                  "match_mha_params": match}))

    mha, own, matched = build({}), build(attention), build(attention, match=True)
    saved = sum(p.numel() for p in mha.blocks[0].attn.parameters()) - sum(
        p.numel() for p in own.blocks[0].attn.parameters())
    units = matched.blocks[0].mlp.w_in.out_features - own.blocks[0].mlp.w_in.out_features
    assert units == round(saved / (3 * 256))  # a SwiGLU unit: three dim-wide rows
    size = {name: model_facts(m.cfg).non_embedding_params for name, m in (("mha", mha), ("own", own),
                                                                            ("matched", matched))}
    assert abs(size["matched"] - size["mha"]) / size["mha"] < 0.005 < abs(size["own"] - size["mha"]) / size["mha"]


def test_alibi_slopes_follow_the_paper():
    assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: the 4-head slopes, then odd-numbered slopes of the 8-head sequence
    assert_close(alibi_slopes(6), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]))


def test_partial_rotary_leaves_the_rest_untouched():
    from ablate.model.position import RotaryPositions

    rope = RotaryPositions(head_dim=16, theta=10_000.0, rotary_fraction=0.25)
    q = torch.randn(1, 2, 5, 16)
    q2, _ = rope.rotate(q, q, torch.arange(5))
    assert torch.equal(q2[..., 4:], q[..., 4:]) and not torch.allclose(q2[:, :, 1:, :4], q[:, :, 1:, :4])
    assert torch.equal(q2[:, :, 0], q[:, :, 0])  # position 0 is the identity rotation


def test_norm_options():
    x = torch.randn(3, 16)
    from ablate.model.norm import build_norm

    rms = build_norm(NormConfig(kind="rmsnorm", unit_offset=True), 16)
    assert torch.equal(rms.weight, torch.zeros(16))  # (1 + w) starts at 1
    assert_close(rms(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    ln = build_norm(NormConfig(kind="layernorm", bias=True, eps=1e-5), 16)
    assert_close(ln(x), torch.nn.functional.layer_norm(x, (16,), eps=1e-5))
    assert ln.bias is not None and rms.bias is None


def test_auto_backend_picks_by_device_and_need():
    from ablate.model.attention import AutoBackend, EagerBackend, FlexBackend, SdpaBackend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bias = torch.zeros(4, 3, 3)
    assert isinstance(AutoBackend().pick(cpu, bias, 8), SdpaBackend)
    assert isinstance(AutoBackend(softcap=5.0).pick(cpu, None, None), EagerBackend)
    assert isinstance(AutoBackend().pick(cuda, bias, None), FlexBackend)
    assert isinstance(AutoBackend(softcap=5.0, dropout=0.1).pick(cuda, None, None), EagerBackend)
    assert isinstance(AutoBackend().pick(cuda, None, None), SdpaBackend)
    model = Transformer(tiny("alibi", attn=dict(softcap=0.01))).eval()  # a cap that bites at init's scores
    tokens = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():  # auto's pick on CPU computes what another backend computes, soft-cap and bias included
        auto, flex = model(tokens), model.set_backend("flex")(tokens)
        assert_close(auto, flex)


def test_rope_nope_acts_in_the_layers_its_plan_says():
    """nope_every=1: no layer has positions (NoPE); beyond the depth: every layer has them (RoPE);
    in between, layers k-1, 2k-1, ... have none."""
    cfg = tiny("rope_nope", pos=dict(nope_every=4), n_layers=8)
    assert [layer.positions for layer in Transformer(cfg).plan] == [True, True, True, False] * 2
    tokens = torch.randint(0, VOCAB, (2, 12))
    for every, twin in ((1, "nope"), (9, "rope")):
        model = Transformer(tiny("rope_nope", pos=dict(nope_every=every), n_layers=3)).eval()
        reference = Transformer(tiny(twin, n_layers=3)).eval()
        reference.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert_close(model(tokens), reference(tokens))


def test_mix_ln_is_post_norm_early_and_pre_norm_late():
    """Mix-LN over 8 layers: layers 0-1 post-norm, 2-7 pre-norm, then a final norm; the forward is
    exactly that composition of the blocks' own sublayers."""
    model = Transformer(tiny("rope", placement="mix", n_layers=8)).eval()
    assert [layer.placement.final_norm for layer in model.plan] == [False] * 2 + [True] * 6
    assert model.final_norm is not None
    assert [b.attn_norm is None and b.attn_out_norm is not None for b in model.blocks] == [True] * 2 + [False] * 6
    tokens = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        x = model.tok_embed(tokens)
        step = model.step(torch.arange(12), None)
        for i, b in enumerate(model.blocks):
            if i < 2:
                x = b.attn_out_norm(x + b.attn(x, step))
                x = b.mlp_out_norm(x + b.mlp(x))
            else:
                x = x + b.attn(b.attn_norm(x), step)
                x = x + b.mlp(b.mlp_norm(x))
        assert_close(model(tokens), model.logits(x))


def test_each_component_owns_its_init():
    """Init is each component's: the model does not re-initialise a module it does not know."""
    from torch import nn

    from ablate.model.mlp import Mlp

    class Scaled(Mlp):
        def init_weights(self) -> None:
            for linear in (self.w_gate, self.w_in, self.w_out):
                nn.init.constant_(linear.weight, 0.5)

    model = Transformer(tiny("rope"))
    model.blocks[0].mlp = Scaled(32, 88, "swiglu")
    model.reset_parameters()
    assert bool((model.blocks[0].mlp.w_out.weight == 0.5).all())
    w_out = model.blocks[1].mlp.w_out.weight
    assert w_out.std().item() == pytest.approx(0.02 / 2, rel=0.2)  # GPT-2's 1/sqrt(2 n_layers) scaling


def _init_streams(placement: str, **kw) -> tuple[list[float], list[float], float]:
    """At init, on random tokens: the residual stream's RMS entering block 0 and after each block,
    what each sublayer adds (its output before any norm on the stream; sandwich: after its output
    norm), and the token embedding's share (cosine) of the final state."""
    torch.manual_seed(0)
    cfg = ModelConfig(placement=placement, **kw)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (8, 128), generator=torch.Generator().manual_seed(1))
    streams, adds = [], []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: streams.append(o))
        for branch, norm in ((block.attn, block.attn_out_norm), (block.mlp, block.mlp_out_norm)):
            sandwich = not block.placement.out_on_stream and norm is not None  # sandwich or reordered
            (norm if sandwich else branch).register_forward_hook(lambda m, i, o: adds.append(o))
    with torch.no_grad():
        x0 = model.embed(tokens, torch.arange(128))
        model(tokens)
    rms = [float(t.pow(2).mean().sqrt()) for t in (x0, *streams)]
    share = float(torch.nn.functional.cosine_similarity(streams[-1], x0, dim=-1).mean())
    return rms, [float(t.pow(2).mean().sqrt()) for t in adds], share


@pytest.mark.parametrize("n_layers", [4, 12])
def test_placements_start_from_comparable_branch_scales(n_layers):
    """The per-placement init rule (ablate.model.block): sandwich's output norms start at a
    pre-norm branch's scale, so its stream follows pre-norm's at every depth and the embedding is
    not drowned (reordered's too, and its stream grows more slowly); post adds what pre adds in
    every sublayer whose input is a normalised stream."""
    pre, pre_adds, pre_share = _init_streams("pre", n_layers=n_layers)
    sandwich, sandwich_adds, sandwich_share = _init_streams("sandwich", n_layers=n_layers)
    post, post_adds, _ = _init_streams("post", n_layers=n_layers)
    reordered, reordered_adds, reordered_share = _init_streams("reordered", n_layers=n_layers)
    # reordered: the branch output, from an unnormalised stream of RMS init_std, is below the norm's
    # eps at init, so what it adds starts smaller than pre's and never larger; the embedding keeps its share
    assert all(s <= 1.05 * p for s, p in zip(reordered, pre)) and reordered_share > 0.9, (reordered, pre)
    assert all(a < 1.5 * b for a, b in zip(reordered_adds, pre_adds)), (reordered_adds, pre_adds)
    assert all(0.5 < s / p < 2.0 for s, p in zip(sandwich, pre)), (sandwich, pre)
    assert sandwich_share > 0.3 and pre_share > 0.3
    assert all(0.2 < s / p < 5.0 for s, p in zip(sandwich_adds, pre_adds)), (sandwich_adds, pre_adds)
    assert post[1:] == pytest.approx([1.0] * n_layers, abs=1e-3)  # the stream is the norm's scale
    assert all(0.25 < a / b < 4.0 for a, b in zip(post_adds[1:], pre_adds[1:])), (post_adds, pre_adds)


def test_sandwich_output_norms_start_at_the_branch_scale_under_a_unit_offset():
    model = Transformer(ModelConfig(placement="sandwich", n_layers=8, norm=NormConfig(unit_offset=True)))
    expected = 0.02 / (2 * 8) ** 0.5
    assert_close(model.blocks[3].mlp_out_norm.scale(), torch.full((256,), expected))
    assert_close(model.blocks[3].mlp_norm.scale(), torch.ones(256))  # input norms start at 1


def _saved_bytes_per_token(cfg, seq: int = 256) -> float:
    """What autograd keeps for backward per token under bf16 autocast, measured: the difference
    between batches of 4 and 2 sequences (weights and their bf16 copies cancel out)."""
    import torch.nn.functional as F

    def saved(batch: int) -> int:
        model = Transformer(cfg)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        x = torch.randint(0, cfg.vocab_size, (batch, seq))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x.reshape(-1))
        return sum(seen.values())

    return (saved(4) - saved(2)) / (2 * seq)


@pytest.mark.parametrize("preset,low,high", [("gpt2", 0.95, 1.05), ("llama2", 0.78, 1.0)])
def test_activation_estimate_against_what_autograd_keeps(preset, low, high):
    from ablate.cli import compose_model
    from ablate.model.facts import activation_bytes_per_token

    cfg = compose_model([f"model={preset}", "model.dim=256", "model.attention.n_heads=4", "model.vocab_size=4096",
                         "model.n_layers=4", "model.max_seq_len=256"])
    ratio = activation_bytes_per_token(cfg) / _saved_bytes_per_token(cfg)
    assert low < ratio < high, ratio


def test_fsdp_memory_divides_the_model_state_by_the_process_count():
    from ablate.cli import compose_model
    from ablate.model.facts import training_memory

    cfg = compose_model(["model=llama2", "model.dim=512", "model.n_layers=8", "model.attention.n_heads=8"])
    n = model_facts(cfg).params
    one = training_memory(cfg, 4, processes=1)
    ddp, fsdp = training_memory(cfg, 4, processes=8), training_memory(cfg, 4, processes=8, parallel="fsdp")
    assert (one.parameters, one.gradients, one.optimizer, one.buffers) == (4 * n, 4 * n, 8 * n, 0)
    assert ddp.parameters == one.parameters and ddp.buffers == 4 * n  # DDP's buckets: another gradient copy
    assert fsdp.parameters == one.parameters / 8 and fsdp.optimizer == one.optimizer / 8
    assert fsdp.activations == ddp.activations == training_memory(cfg, 2).activations * 2
    assert fsdp.total < ddp.total


def test_ablate_model_prints_memory_per_gpu_and_refuses_a_bad_count():
    out = cli_in_process("ablate.plan.model", "model=llama2", "micro_batch=2", "gpus=4")
    assert "micro_batch 2 x 256 tokens on 4 GPUs" in out.stdout
    assert [line.split()[0] for line in out.stdout.splitlines()[-2:]] == ["ddp", "fsdp"]
    out = cli_in_process("ablate.plan.model", "gpus=0", check=False)
    assert out.returncode == 2 and "gpus" in out.stderr and "positive integer" in out.stderr
