"""Mixture of experts: routing (softmax then top-k, or renormalised), the two balancers, active
parameters and FLOPs, every expert with a gradient, a dense-vs-MoE plan matched by active
parameters, and DDP / FSDP on two processes equal to one. Parity with Mixtral, OLMoE and Qwen2-MoE
is in test_hf_parity.py."""

import json

import pytest
import torch

from ablate.config import ModelConfig
from ablate.model import Transformer, model_facts
from ablate.model.moe import Moe, load_entropy
from ablate.registry import ConfigError

from conftest import plan_in_process


def moe_config(**moe) -> ModelConfig:
    return ModelConfig.from_dict({"dim": 32, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16,
                                  "attention": {"n_heads": 2},
                                  "mlp": {"moe": {"n_experts": 4, "top_k": 2, **moe}}})


def layer(**moe) -> Moe:
    torch.manual_seed(0)
    model = Transformer(moe_config(**moe))
    return model.blocks[0].mlp


def test_the_two_routers_weigh_the_chosen_experts_by_their_probabilities():
    h = torch.randn(10, 32)
    plain, renormalised = layer(router="softmax_topk"), layer(router="topk_softmax")
    chosen, weights, probs = plain.route(h)
    assert torch.equal(chosen, torch.topk(probs, 2).indices) and torch.equal(weights, probs.gather(-1, chosen))
    assert (weights.sum(-1) < 1).all()
    chosen2, weights2, _ = renormalised.route(h)
    assert torch.equal(chosen2, chosen)  # the same router weights: the same choice
    assert torch.allclose(weights2.sum(-1), torch.ones(10))
    logits = renormalised.router(h).float().gather(-1, chosen2)
    assert torch.allclose(weights2, torch.softmax(logits, -1))  # = the softmax of the chosen logits


def test_the_bias_balancer_chooses_without_weighing_and_moves_toward_equal_load():
    moe = layer(balance="bias")
    h = torch.randn(50, 32)
    _, _, probs = moe.route(h)
    moe.choice_bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    chosen, weights, _ = moe.route(h)
    assert (chosen == 0).any(-1).all()  # expert 0 is always chosen
    assert torch.equal(weights, probs.gather(-1, chosen))  # but weighed by its probability alone
    moe.choice_bias.zero_()
    moe.update_bias(0.01, torch.tensor([40.0, 30.0, 20.0, 10.0]))
    assert torch.allclose(moe.choice_bias, torch.tensor([-0.01, -0.01, 0.01, 0.01]))
    assert layer().choice_bias is None  # aux_loss: no bias at all (and none in the checkpoint)


def test_the_auxiliary_loss_is_one_when_balanced_and_more_when_not():
    moe = layer()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities: E x sum f_i / E = 1 whatever is chosen
        moe(x)
        assert float(moe.aux_loss) == pytest.approx(1.0)
        moe.router.weight.copy_(torch.randn(4, 32) * 3)
        moe(x)
        assert float(moe.aux_loss) > 1.0
    assert load_entropy(torch.tensor([5.0, 5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert load_entropy(torch.tensor([20.0, 0.0, 0.0, 0.0])) == pytest.approx(0.0)


def test_every_expert_gets_a_gradient_even_without_tokens():
    """DDP reduces every parameter: an expert no token chose still has a (zero) gradient."""
    moe = layer(balance="bias", n_shared_experts=1, shared_gate=True)
    moe.choice_bias.copy_(torch.tensor([10.0, 10.0, -10.0, -10.0]))
    moe(torch.randn(2, 8, 32)).pow(2).sum().backward()
    assert moe.w_gate_in.grad is not None and moe.w_out.grad is not None
    assert moe.w_out.grad[2:].abs().sum() == 0 and moe.w_out.grad[:2].abs().sum() > 0
    assert all(p.grad is not None for p in moe.parameters())


def test_active_parameters_and_flops_count_the_experts_a_token_uses():
    dense = ModelConfig.from_dict({"dim": 64, "n_layers": 2, "vocab_size": 64, "attention": {"n_heads": 2},
                                   "mlp": {"hidden_dim": 96}})
    moe = ModelConfig.from_dict({"dim": 64, "n_layers": 2, "vocab_size": 64, "attention": {"n_heads": 2},
                                 "mlp": {"hidden_dim": 96, "moe": {"n_experts": 8, "top_k": 2,
                                                                   "expert_hidden_dim": 48}}})
    d, m = model_facts(dense), model_facts(moe)
    router = 2 * 8 * 64  # per layer: 8 experts x dim
    assert d.active_params == d.params
    assert m.active_non_embedding_params - d.non_embedding_params == router
    assert m.non_embedding_params - m.active_non_embedding_params == 2 * 6 * 3 * 64 * 48  # 6 experts skipped
    assert m.params == sum(p.numel() for p in Transformer(moe).parameters())
    assert m.flops_per_token - d.flops_per_token == pytest.approx(3 * 2 * router)


def test_impossible_experts_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"model.mlp.moe.top_k=5: must be between 1 and n_experts=4"):
        moe_config(top_k=5)
    with pytest.raises(ConfigError, match=r"model.mlp.moe.router='top2'.*valid: softmax_topk, topk_softmax"):
        moe_config(router="top2")
    with pytest.raises(ConfigError, match=r"model.mlp.moe.balance='loss'.*valid: aux_loss, bias, none"):
        moe_config(balance="loss")


def test_dense_against_moe_plans_matched_by_active_parameters():
    out = plan_in_process("+experiment=moe", "results_dir=/nonexistent/moe")
    assert "confound" not in out
    assert "differs by design: total non-embedding parameters" in out
    assert "matched: active non-embedding parameters within 0.3%: 3.164M (dense), 3.173M (moe8)" in out
    row = next(line for line in out.splitlines() if "-moe-s0" in line).split()
    assert row[2:4] == ["10.56M", "4.22M"]  # total and active parameters


def test_ddp_and_fsdp_with_experts_match_one_process(cache_dir, tmp_path):
    """The bias balancer's load is summed over processes and the auxiliary loss is taken per
    micro-batch, as in one process: two processes follow one process's curve, and the router's
    statistics are recorded."""
    import test_parallel
    from test_parallel import assert_same_curve, metrics, summary, train

    test_parallel.PORTS = iter(range(29561, 29580))  # ports of its own, whichever copy of the module this is

    experts = ("model/mlp=moe", "model.mlp.moe.n_experts=4", "model.mlp.moe.n_shared_experts=1",
               "model.mlp.moe.shared_gate=true", "model.mlp.moe.balance=bias", "model.mlp.moe.bias_rate=0.01")
    one = train(cache_dir, tmp_path, "one", 1, *experts)
    ddp = train(cache_dir, tmp_path, "ddp", 2, *experts)
    fsdp = train(cache_dir, tmp_path, "fsdp", 2, "train.parallel=fsdp", *experts)
    assert_same_curve(metrics(ddp), metrics(one))
    assert_same_curve(metrics(fsdp), metrics(one))
    router = summary(one)["router"]
    assert 0 < router["load_entropy"] <= 1 and router["dropped_tokens"] == 0
    assert summary(fsdp)["router"]["load_entropy"] == pytest.approx(router["load_entropy"], rel=1e-3)
    assert all("router_load_entropy" in r for r in metrics(one))
    bias = torch.load(sorted((one / "checkpoints").iterdir())[-1], weights_only=True)["model"]
    assert any(k.endswith("mlp.choice_bias") and v.abs().sum() > 0 for k, v in bias.items())
    assert json.loads((one / "summary.json").read_text())["active_params"] < summary(one)["params"]
