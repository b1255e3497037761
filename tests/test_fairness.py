"""Fair by construction: the plan names every confound (and none in a shipped experiment), the
optimizer treats a role alike however it is stored, `+tune=lr` gives every arm its own LR and the
report shows it, and every run records its stability."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ablate.config import ModelConfig, RunConfig, TuneConfig
from ablate.model import Transformer
from ablate.plan import fairness, tune
from ablate.train import State, optimizer

from conftest import ROOT, cli_in_process, plan_in_process, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def confounds(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("confound:")]


def test_plan_flags_a_norm_sweep_that_changes_bias_and_eps_too(tmp_path):
    found = confounds(plan_in_process("model/norm=layernorm,rmsnorm", f"results_dir={tmp_path}"))
    assert [line.split(" differs")[0] for line in found] == ["confound: model.norm.bias", "confound: model.norm.eps"]
    assert "1e-05 (bias, eps=1e-05, layernorm), 1e-06 (no bias, eps=1e-06, rmsnorm)" in found[1]
    written = json.loads((tmp_path / "default" / "fairness.json").read_text())
    assert written["confounds"] == found and written["axes"] == ["model.norm.kind"]
    held = plan_in_process("model/norm=layernorm,rmsnorm", "model.norm.eps=1e-5", "model.norm.bias=false",
                           f"results_dir={tmp_path}")
    assert confounds(held) == [] and "matched: non-embedding parameters" in held


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_plans_without_a_confound(experiment, tmp_path, request):
    # a distillation experiment names a teacher that must exist (and be finished) before anything is planned
    teacher = [f"train.distill.teacher={request.getfixturevalue('any_teacher')}"] if "distill" in experiment \
        and experiment != "distillation_teacher" else []
    plan = plan_in_process(f"+experiment={experiment}", f"results_dir={tmp_path}", *teacher)
    assert confounds(plan) == [], plan
    # a replicate is an (init seed, data order) pair, varied fastest: the first jobs span two data orders
    name = yaml.safe_load((ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text()).get("experiment")
    jobs = [json.loads(line)["config"] for line in (tmp_path / name / "runs.jsonl").read_text().splitlines()]
    if len(jobs) > 1:
        assert [j["data"]["seed"] for j in jobs[:2]] in ([0, 1], [1, 0]), experiment
        assert all(j["data"]["seed"] == j["seed"] for j in jobs) or experiment == "noise", experiment


def test_unmatched_attention_arms_are_a_parameter_confound(tmp_path):
    (line,) = confounds(plan_in_process("model/attention=mha,mqa", f"results_dir={tmp_path}"))
    assert line.startswith("confound: non-embedding parameters differ by 12.4%") and "match_mha_params" in line
    sized = plan_in_process("model.dim=128,256", f"results_dir={tmp_path}")
    assert confounds(sized) == [] and "differs by design: non-embedding parameters" in sized


def test_a_role_treated_or_started_differently_is_a_confound(monkeypatch):
    """The check itself, against the rule it guards: with an untied head decayed as a matrix (and
    a tied one not), a tying sweep changes two things, and the plan says so."""
    configs = [RunConfig.from_dict({"model": {"tie_embeddings": tied}}) for tied in (True, False)]
    overrides = [["model.tie_embeddings=true"], ["model.tie_embeddings=false"]]
    assert fairness.check(overrides, configs).confounds == []
    fair_rule = optimizer.treatment
    monkeypatch.setattr(optimizer, "treatment",
                        lambda role, o, m=1.0: fair_rule("matrix" if role == "output" else role, o, m))
    (line,) = fairness.check(overrides, configs).confounds
    assert line == ("confound: the optimizer treats output parameters differently: no decay (tie_embeddings), "
                    "decay 0.1 (no tie_embeddings)")
    monkeypatch.undo()
    # an init that differs in a role both arms have, from no field of the sweep's
    monkeypatch.setattr("ablate.model.transformer.Head.init_weights",
                        lambda self: torch.nn.init.normal_(self.weight, 0.0, 0.05))
    (line,) = fairness.check(overrides, configs).confounds
    assert line.startswith("confound: output parameters start at other scales (RMS at init): 0.02 (tie_embeddings)")


def test_an_axis_group_covers_its_kind_or_every_field_it_sets():
    assert fairness.axis_fields("model/norm", ["layernorm", "rmsnorm"]) == ["model.norm.kind"]
    assert fairness.axis_fields("model/attention", ["mha", "mqa"]) == ["model.attention.n_kv_heads"]
    assert fairness.axis_fields("model/softcap", ["on", "off"]) == ["model.attention.softcap", "model.logit_softcap"]
    assert fairness.axis_fields("model/placement", ["pre", "post"]) == ["model.placement"]
    assert fairness.axis_fields("model", ["gpt2", "llama2"]) == ["model."]
    assert fairness.axis_fields("model.embedding_norm", ["true", "false"]) == ["model.embedding_norm"]


# ---- +tune=lr -------------------------------------------------------------------------------------
def test_choose_takes_the_lowest_loss_counts_divergence_and_flags_edges():
    runs = [(0.001, "completed", 3.2, "a"), (0.002, "completed", 3.1, "b"), (0.004, "diverged", math.nan, "c")]
    c = tune.choose("x", runs)
    assert (c.lr, c.edge, c.max_stable_lr) == (0.002, None, 0.002) and math.isinf(c.val_loss[2])
    edge = tune.choose("x", [(0.001, "completed", 3.0, "a"), (0.002, "completed", 3.1, "b")])
    assert (edge.lr, edge.edge) == (0.001, "lowest")
    assert tune.Choice.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert tune.lr_grid(3e-3, TuneConfig(lr_multipliers=[0.25, 1, 4])) == [0.00075, 0.003, 0.012]


def test_a_reported_replicate_cannot_be_a_tuning_run(cache_dir, tmp_path):
    sweep = ["-m", "model/attention=mha,mqa", "model.match_mha_params=true", "seed=0,1", "+tune=lr",
             "tune.seed=1", *tiny_overrides(cache_dir, tmp_path, "train.tokens=8192"), "--plan"]
    out = cli_in_process("ablate.train", *sweep, check=False)
    assert out.returncode == 2 and "tune.seed=1: is also a reported run's" in out.stderr
    assert not (tmp_path / "default").exists()


def test_the_tuning_split_is_held_out_apart_from_the_validation_split(tmp_path):
    from ablate.config import DataConfig
    from ablate.data.tokens import prepare

    common = {"synthetic_words": 20000, "vocab_size": 512, "val_tokens": 1024, "cache_dir": str(tmp_path)}
    reported, tuning = prepare(DataConfig(**common)), prepare(DataConfig(**common, holdout="tuning"))
    n = len(reported.train) + len(reported.val)
    assert len(tuning.val) == len(reported.val) == 1024 and len(tuning.train) == n - 2048
    # the tuning split is the 1,024 tokens before the validation split, and the tuning runs never train on it
    assert np.array_equal(np.asarray(tuning.val), np.asarray(reported.train[-1024:]))
    assert np.array_equal(np.asarray(tuning.train), np.asarray(reported.train[:-1024]))


def test_tune_lr_end_to_end(cache_dir, tmp_path):
    """Two arms, a 3-point grid, 2 seeds: the plan lists both stages, the tuning runs pick each
    arm's LR by final validation loss, the seeds run at it, and the report shows the choice, the
    sensitivity plot and whether the order holds at the shared base LR."""
    sweep = ["-m", "model/attention=mha,mqa", "model.match_mha_params=true", "seed=0,1", "+tune=lr",
             "tune.lr_multipliers=[0.5,1,2]",
             *tiny_overrides(cache_dir, tmp_path, "train.tokens=8192", "train.eval_every=0")]
    root = tmp_path / "default"
    plan = cli_in_process("ablate.train", *sweep, "--plan")
    assert "LR tuning (one run per arm and LR): 6 jobs" in plan.stdout
    assert "after tuning, at each arm's chosen LR: 4 jobs" in plan.stdout and not (root / "tune").exists()
    lines = (root / "jobs.txt").read_text().splitlines()  # what can run now: the tuning
    assert len(lines) == 6 and all("tune/" in line and "optim.lr=" in line for line in lines)
    cli_in_process("ablate.train", *sweep)
    lines = (root / "jobs.txt").read_text().splitlines()
    assert len(lines) == 4 and all("tune/" not in line and "optim.lr=" in line for line in lines)
    chosen = json.loads((root / "tune.json").read_text())
    assert [a["arm"] for a in chosen["arms"]] == ["mha", "mqa"] and chosen["base_lr"] == 3e-3
    for arm in chosen["arms"]:
        losses = {}
        for name in arm["runs"]:
            run = root / "tune" / name
            summary = json.loads((run / "summary.json").read_text())
            config = (run / "config.yaml").read_text()
            assert "seed: 1000" in config and "holdout: tuning" in config and summary["status"] == "completed"
            losses[float(name.split("-lr=")[1].split("-")[0])] = summary["val_loss"]
        assert sorted(losses) == [0.0015, 0.003, 0.006] and arm["lr"] == min(losses, key=losses.get)
        assert arm["val_loss"] == [losses[lr] for lr in sorted(losses)]
        mains = [p for p in root.iterdir() if p.is_dir() and f"-{arm['arm']}-" in p.name and p.name != "tune"]
        assert len(mains) == 2 and all(f"lr={arm['lr']:g}-s" in p.name for p in mains)
        for p in mains:
            summary = json.loads((p / "summary.json").read_text())
            assert summary["status"] == "completed" and {"loss_spikes", "grad_spikes", "max_attn_logit"} <= set(summary)
    # no reported run is a tuning run: other init seeds, other data orders, another held-out split
    tuned = [yaml.safe_load((root / "tune" / n / "config.yaml").read_text()) for a in chosen["arms"] for n in a["runs"]]
    reported = [yaml.safe_load((p / "config.yaml").read_text()) for p in root.iterdir()
                if (p / "summary.json").exists()]
    assert len(reported) == 4 and len(tuned) == 6
    assert {c["seed"] for c in tuned}.isdisjoint(c["seed"] for c in reported)
    assert {c["data"]["seed"] for c in tuned}.isdisjoint(c["data"]["seed"] for c in reported)
    assert {c["data"]["holdout"] for c in tuned} == {"tuning"} and {c["data"]["holdout"] for c in reported} == {
        "validation"}
    report = cli_in_process("ablate.report", f"path={root}")
    table = (root / "report" / "table.md").read_text()
    assert "## Learning rate, per arm" in table and "chosen LR" in table and "## Stability" in table
    assert "at the shared base LR 0.003 (one run an arm)" in table
    assert "| mha " in table and "lr=" not in table.split("## Main metrics")[1].split("\n")[4]  # arms not named by LR
    assert (root / "report" / "lr_sensitivity.png").stat().st_size > 10_000 and "lr_sensitivity" in report.stdout
    again = cli_in_process("ablate.train", *sweep)  # everything done: nothing launched, the same choice
    assert "to run: 0 jobs" in again.stdout and json.loads((root / "tune.json").read_text()) == chosen


def test_tuning_a_swept_lr_is_refused_before_anything_runs(tmp_path):
    proc = cli_in_process("ablate.train", "-m", "optim.lr=1e-3,2e-3", "+tune=lr", f"results_dir={tmp_path}",
                          check=False)
    assert proc.returncode == 2 and "error: optim.lr='0.001,0.002': is swept and tuned at once" in proc.stderr
    assert not (tmp_path / "default" / "tune").exists()


# ---- stability ------------------------------------------------------------------------------------
def test_spikes_are_counted_against_the_running_median():
    state = State()
    for i in range(30):
        state.note_step(3.0 - 0.01 * i, 1.0)
    assert (state.loss_spikes, state.grad_spikes) == (0, 0)
    state.note_step(3.0, 4.0)  # loss 1.08x the median, grad 4x: neither
    state.note_step(3.6, 6.0)  # 1.29x and 6x: both
    assert (state.loss_spikes, state.grad_spikes) == (1, 1) and len(state.recent_losses) == 32
    for _ in range(60):
        state.note_step(2.0, 1.0)
    assert len(state.recent_losses) == 50 and state.loss_spikes == 1


def test_max_attention_logit_is_the_largest_scaled_score():
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"dim": 32, "n_layers": 1, "max_seq_len": 16, "vocab_size": 64,
                                 "position": {"kind": "nope"}, "attention": {"n_heads": 2}})
    model = Transformer(cfg)
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    step = model.step(torch.arange(16), None)
    with torch.no_grad():
        q, k, _ = attn.wqkv(x).split((32, 32, 32), dim=-1)
    q, k = q.view(2, 16, 2, 16).transpose(1, 2), k.view(2, 16, 2, 16).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / 4.0).abs().tril()  # causal pairs only
    assert attn.max_logit(x, step) == pytest.approx(float(scores.max()), rel=1e-5)
    with torch.no_grad():
        attn.wqkv.weight[:32] *= 2  # queries twice as large: logits twice as large
    assert attn.max_logit(x, step) == pytest.approx(2 * float(scores.max()), rel=1e-5)


def test_the_readme_has_a_fairness_section():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Fairness")[1].split("\n## ")[0]
    for needle in ("confound:", "+tune=lr", "match_mha_params", "sandwich", "decay", "--plan"):
        assert needle in section, needle
    assert Path(ROOT / "conf" / "tune" / "lr.yaml").exists()
