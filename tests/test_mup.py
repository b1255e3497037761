"""muP: init, per-role learning rates, logits and attention scaled relative to a base width; the
coordinate check that shows activations flat across widths under muP and growing under SP; a muP
ladder whose LR is tuned at the smallest rung, carried to the others and checked at a larger one."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from ablate.config import ModelConfig, OptimConfig
from ablate.model import Transformer
from ablate.plan import tune
from ablate.registry import ConfigError
from ablate.train.optimizer import build_optimizer

from conftest import cli_in_process, plan_in_process, tiny_overrides


def model(parametrization: str, dim: int = 128, base: int = 32) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_dict({"dim": dim, "vocab_size": 256, "parametrization": parametrization,
                                              "mup_base_dim": base, "attention": {"n_heads": dim // 16}}))


def test_mup_scales_init_lr_logits_and_attention_by_the_width_multiplier():
    sp, mup = model("sp"), model("mup")  # m = 128 / 32 = 4
    sp.requires_grad_(False), mup.requires_grad_(False)
    assert mup.cfg.width_mult == 4 and sp.cfg.width_mult == 1
    for name in ("blocks.0.attn.wqkv.weight", "blocks.1.mlp.w_in.weight", "blocks.2.attn.wo.weight"):
        ratio = float(dict(sp.named_parameters())[name].std() / dict(mup.named_parameters())[name].std())
        assert ratio == pytest.approx(2.0, rel=0.05), name  # std / sqrt(m)
    embedding = float(dict(mup.named_parameters())["tok_embed.weight"].std())
    assert embedding == pytest.approx(0.02, rel=0.05)  # an input weight: as under SP
    assert mup.cfg.attn_scale == 1 / 16 and sp.cfg.attn_scale == 16**-0.5
    roles = mup.parameter_roles()
    for net, scale in ((sp, 1.0), (mup, 0.25)):
        groups = build_optimizer(net, OptimConfig()).param_groups
        by_param = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
        for name, p in net.named_parameters():
            hidden = roles[name] in ("matrix", "out_projection")
            assert by_param[id(p)] == (scale if hidden else 1.0), name
    x = torch.randn(2, 5, 128)
    expected = F.linear(mup.final_norm(x), mup.tok_embed.weight) / 4  # the output multiplier 1/m
    assert torch.allclose(mup.logits(x), expected)


def test_at_its_base_width_mup_is_sp_but_for_the_attention_scale():
    """m = 1: the same weights from the same seed, and the same logits once the attention scales
    agree (muP's 1/d with d = query_pre_attn_scalar = 4 is SP's 1/sqrt(16))."""
    def build(parametrization: str, **attention) -> Transformer:
        torch.manual_seed(0)
        return Transformer(ModelConfig.from_dict({"dim": 64, "vocab_size": 256, "parametrization": parametrization,
                                                  "mup_base_dim": 64, "attention": {"n_heads": 4, **attention}}))

    sp, mup, mup_sp_scale = build("sp"), build("mup"), build("mup", query_pre_attn_scalar=4)
    assert all(torch.equal(a, b) for a, b in zip(sp.parameters(), mup.parameters()))
    tokens = torch.randint(0, 256, (2, 12))
    assert not torch.allclose(sp(tokens), mup(tokens))
    assert torch.equal(sp(tokens), mup_sp_scale(tokens))


def test_an_unknown_parametrization_names_the_choices_and_export_refuses_mup():
    with pytest.raises(ConfigError, match=r"model.parametrization='mu'.*valid: sp, mup"):
        ModelConfig.from_dict({"parametrization": "mu"})
    from ablate.hf import to_hf

    with pytest.raises(ConfigError, match="parametrization is 'mup', needs 'sp'"):
        to_hf(model("mup"))


def test_transfer_counts_grid_steps_between_the_two_optima():
    grid = [1e-3, 2e-3, 4e-3, 8e-3]
    small = tune.choose("rope", [(lr, "completed", v, f"r{lr}") for lr, v in zip(grid, [3.0, 2.5, 2.8, 3.1])])
    near = tune.choose("rope", [(lr, "completed", v, f"r{lr}") for lr, v in zip(grid, [3.0, 2.9, 2.7, 2.8])])
    far = tune.choose("rope", [(lr, "completed", v, f"r{lr}") for lr, v in zip(grid, [2.0, 2.9, 3.7, 3.8])])
    assert tune.transfer(small, near, 16, 48).grid_steps == 1 and tune.transfer(small, near, 16, 48).transfers
    moved = tune.transfer(small, far, 16, 48)
    assert moved.grid_steps == 1 and moved.check_edge == "lowest"
    far2 = tune.choose("rope", [(lr, "completed", v, f"r{lr}") for lr, v in zip(grid, [3.0, 2.9, 2.8, 2.1])])
    gone = tune.transfer(small, far2, 16, 48)
    assert gone.grid_steps == 2 and not gone.transfers
    assert tune.describe_transfer(gone).startswith("LR does not transfer for rope (best 0.002 at size=16, 0.008")
    assert tune.Transfer.from_dict(json.loads(json.dumps(gone.to_dict()))) == gone


def test_ablate_model_prints_a_mup_model():
    out = cli_in_process("ablate.plan.model", "model.parametrization=mup", "model.mup_base_dim=64").stdout
    assert "parametrization" in out and "mup" in out and "width x4" in out


def test_coord_check_is_flat_under_mup_and_grows_under_sp_for_pre_norm(cache_dir):
    """Pre-norm, widths 32-256, 5 Adam steps at one LR: under muP every activation's RMS at the last
    step is flat in width (|slope of log RMS on log width| <= 0.25); under SP the sublayer outputs
    and the stream grow (slope > 1: a doubling of the width more than doubles them)."""
    from ablate.plan.coord_check import coord_check, summary

    data = tiny_overrides(cache_dir, cache_dir)[:6]  # the tiny corpus and model length
    table = summary(coord_check(data, widths=(1, 2, 4, 8), placements=("pre",), base=32, head_dim=8, steps=5,
                                seeds=2))
    mup = table[table.parametrization == "mup"].set_index("activation")
    sp = table[table.parametrization == "sp"].set_index("activation")
    assert (mup.verdict == "flat").all(), mup
    assert (sp.loc[["attention", "mlp", "stream"], "slope"] > 1).all(), sp


def test_coord_check_command_writes_its_table_and_figure(cache_dir, tmp_path):
    data = tiny_overrides(cache_dir, cache_dir)[:6]
    out = cli_in_process("ablate.plan.coord_check", "placements=post,mix", "widths=1,4", "base=32", "head_dim=8",
                         "steps=2", "seeds=1", f"out={tmp_path}", *data).stdout
    assert "post" in out and "mix" in out and "slope" in out
    import pandas as pd

    rows = pd.read_csv(tmp_path / "coord_check.csv")
    assert set(rows.placement) == {"post", "mix"} and set(rows.width_mult) == {1, 4} and rows.step.max() == 2
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000
    bad = cli_in_process("ablate.plan.coord_check", "widths=1,x", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "integers" in bad.stderr


def test_arms_that_differ_in_parametrization_differ_by_design():
    out = plan_in_process("model.parametrization=sp,mup", "model.mup_base_dim=128", "results_dir=/nonexistent/x")
    assert "differs by design: optimizer treatment (follow from model.parametrization)" in out
    assert "confound: the optimizer treats" not in out


def test_a_mup_ladder_tunes_at_its_smallest_rung_and_checks_the_transfer(cache_dir, tmp_path):
    """Two arms over rungs 16 and 32 under muP, a 3-point grid: the tuning runs at size=16 choose
    each arm's LR, every rung trains at it, the same grid at size=32 checks it, and the report says
    whether it transfers."""
    sweep = ["-m", "ladder.size=16,32", "ladder.head_dim=8", "ladder.aspect=16", "ladder.tokens_per_param=2",
             "model/position=rope,alibi", "model.parametrization=mup", "model.mup_base_dim=16", "+tune=lr",
             "tune.lr_multipliers=[0.5,1,2]", *tiny_overrides(cache_dir, tmp_path, "train.eval_every=0")]
    root = tmp_path / "default"
    plan = cli_in_process("ablate.train", *sweep, "--plan").stdout
    assert "LR tuning (one run per arm and LR): 12 jobs" in plan  # 2 arms x 3 LRs x (tune at 16, check at 32)
    cli_in_process("ablate.train", *sweep)
    found = json.loads((root / "tune.json").read_text())
    assert [a["arm"] for a in found["arms"]] == ["rope", "alibi"]
    assert [(t["arm"], t["tuned_at"], t["checked_at"]) for t in found["transfer"]] == [("rope", 16, 32),
                                                                                        ("alibi", 16, 32)]
    for arm, transfer in zip(found["arms"], found["transfer"]):
        assert transfer["tuned_lr"] == arm["lr"] and transfer["transfers"] == (transfer["grid_steps"] <= 1)
        runs = [p for p in root.iterdir() if p.is_dir() and f"-{arm['arm']}-" in p.name]
        assert len(runs) == 2  # one seed at each rung
        for run in runs:  # every rung at the LR tuned at the smallest
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert math.isclose(config["optim"]["lr"], arm["lr"]) and config["seed"] != 1000
    cli_in_process("ablate.report", f"path={root}", "target_flops=1e14")
    table = (root / "report" / "table.md").read_text()
    assert "## Learning-rate transfer across the ladder (muP)" in table
    assert ("LR transfers" in table) or ("LR does not transfer for" in table)
    bad = cli_in_process("ablate.train", *sweep, "tune.check_size=24", "--plan", check=False)
    assert bad.returncode == 2 and "tune.check_size=24" in bad.stderr and "valid: 32" in bad.stderr
