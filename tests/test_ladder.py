"""Ladders: each rung's shape and budget, the power-law fits, the decisions between rungs, and a real
tiny ladder trained, planned and reported end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from ablate.cli import compose_root
from ablate.config import RunConfig
from ablate.ladder import decision_accuracy, decisions, fit_power_law, fit_with_intervals, ranks
from ablate.model.facts import model_facts
from ablate.registry import ConfigError
from ablate.run.lifecycle import for_train

from conftest import cli_in_process, plan_in_process, tiny_overrides


def config(*overrides: str) -> RunConfig:
    data = compose_root(list(overrides))
    data["run_name"] = "x"
    return for_train(RunConfig.from_dict(data))


def test_a_rung_sets_shape_and_budget_from_its_size():
    cfg = config("ladder.size=256", "ladder.head_dim=32", "ladder.aspect=64", "ladder.tokens_per_param=20")
    assert (cfg.model.dim, cfg.model.attention.n_heads, cfg.model.n_layers) == (256, 8, 4)
    params = model_facts(cfg.model, cfg.seq_len).non_embedding_params
    assert cfg.train.tokens % cfg.train.batch_tokens == 0
    assert 20 * params <= cfg.train.tokens < 20 * params + cfg.train.batch_tokens
    small = config("ladder.size=64", "ladder.head_dim=32", "ladder.aspect=64")
    assert small.model.n_layers == 2  # ladder.min_layers
    fixed = config("ladder.size=128", "ladder.tokens_per_param=null", "train.tokens=123456")
    assert fixed.train.tokens == 123456
    assert config().model.dim == 256  # no ladder: the model as configured
    with pytest.raises(ConfigError, match="ladder.size.*multiple of ladder.head_dim=64"):
        config("ladder.size=100")
    with pytest.raises(ConfigError, match="ladder.tokens_per_param"):
        config("ladder.size=128", "ladder.tokens_per_param=0")


def planted(rng: np.random.Generator, E=2.0, A=5e4, alpha=0.3, noise=0.004, seeds=3) -> pd.DataFrame:
    compute = np.array([1e15, 4e15, 1.6e16, 6.4e16])
    return pd.DataFrame([{"compute": c, "value": E + A * c**-alpha + rng.normal(0, noise)}
                         for c in compute for _ in range(seeds)])


def test_fits_recover_a_planted_power_law():
    rng = np.random.default_rng(0)
    exact = planted(rng, noise=0.0)
    fit = fit_power_law(exact.compute.to_numpy(), exact.value.to_numpy())
    assert fit.alpha == pytest.approx(0.3, rel=1e-3) and fit.E == pytest.approx(2.0, rel=1e-3)
    assert fit(1e18) == pytest.approx(2.0 + 5e4 * 1e18**-0.3, rel=1e-4)
    hits = 0
    for trial in range(10):  # with seed noise: close, and the intervals cover the truth
        got = fit_with_intervals(planted(np.random.default_rng(trial)), target=1e17, seed=trial, resamples=200)
        truth = 2.0 + 5e4 * 1e17**-0.3
        assert got["alpha"] == pytest.approx(0.3, abs=0.1) and got["predicted"] == pytest.approx(truth, rel=0.02)
        hits += got["predicted_low"] <= truth <= got["predicted_high"]
    assert hits >= 7
    one_seed = fit_with_intervals(planted(rng, seeds=1), target=1e17)
    assert math.isnan(one_seed["predicted_low"]) and one_seed["runs"] == 4


def test_decisions_and_their_accuracy_are_exact_on_constructed_rankings():
    # losses (lower is better): at the small rung a < b < c; at the middle and largest b < a < c
    means = {"small": {"a": 3.0, "b": 3.2, "c": 3.5}, "mid": {"a": 2.9, "b": 2.7, "c": 3.1},
             "large": {"a": 2.6, "b": 2.4, "c": 2.9}}
    compute = {"small": 1e15, "mid": 1e16, "large": 1e17}
    rows = [{"variant": v, "rung": r, "compute": compute[r], "value": m + d}
            for r, by in means.items() for v, m in by.items() for d in (-0.01, 0.0, 0.01)]
    values = pd.DataFrame(rows)
    table = decisions(values)
    assert len(table) == 3 * 3
    ab = table[(table.variant_a == "a") & (table.variant_b == "b")].set_index("rung")
    assert list(ab.better) == ["a", "b", "b"] and list(ab.agrees_with_largest) == [False, True, True]
    assert (ab.sign_change == "flip").all()  # significant on both sides
    assert (table[table.variant_b == "c"].sign_change == "").all()
    assert decision_accuracy(table).to_dict() == pytest.approx({"small": 2 / 3, "mid": 1.0})
    assert ranks(values).loc["small"].to_dict() == {"a": 1, "b": 2, "c": 3}
    assert ranks(values).loc["large"].to_dict() == {"a": 2, "b": 1, "c": 3}
    # a sign change inside the noise is named as such, not as a flip
    noisy = values.copy()
    noisy.loc[(noisy.rung == "small") & (noisy.variant == "a"), "value"] = [2.7, 3.3, 3.55]
    flags = decisions(noisy).set_index(["variant_a", "variant_b", "rung"]).sign_change
    assert flags[("a", "b", "small")] == "order changes"


def test_a_tiny_ladder_plans_trains_and_reports(cache_dir, tmp_path):
    ladder = ["ladder.size=16,24,32", "ladder.head_dim=8", "ladder.aspect=16", "ladder.tokens_per_param=2",
              "model/position=rope,alibi", "train.checkpoint_every=1000", "train.eval_every=0"]
    args = ["-m", *tiny_overrides(cache_dir, tmp_path), *ladder]
    plan = cli_in_process("ablate.train", *args, "--plan").stdout
    assert "ladder rungs (per run):" in plan and "rung size=16: matched: non-embedding parameters" in plan
    lines = plan.split("ladder rungs (per run):")[1].strip().splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["16", "24", "32"] and all(line.split()[-1] == "2" for line in lines)
    cli_in_process("ablate.train", *args)
    out = cli_in_process("ablate.report", f"path={tmp_path / 'default'}", "target_flops=1e14").stdout
    report = tmp_path / "default" / "report"
    fits = pd.read_csv(report / "ladder.csv")
    assert sorted(fits.variant) == ["alibi", "rope"] and set(fits.metric) == {"train|val_loss"}
    assert (fits.target_flops == 1e14).all() and (fits.rungs == 3).all() and (fits.runs == 3).all()
    assert fits.predicted.notna().all() and fits.predicted_low.isna().all()  # one seed: no interval
    table = pd.read_csv(report / "decisions.csv")
    assert len(table[table.metric == "train|val_loss"]) == 3  # one pair at three rungs
    assert table.agrees_with_largest.dropna().isin([True, False]).all()
    assert (report / "scaling.png").stat().st_size > 5000 and (report / "ranks.png").stat().st_size > 5000
    assert "## Ladder" in out and "Decision accuracy" in out
    (largest,) = [run for run in (tmp_path / "default").glob("*-s0")  # a name gives way to a hash when long
                  if "alibi" in run.name and yaml.safe_load((run / "config.yaml").read_text())["ladder"]["size"] == 32]
    summary = json.loads((largest / "summary.json").read_text())
    assert summary["tokens_seen"] >= 2 * summary["non_embedding_params"]


def test_arms_of_a_rung_must_match(cache_dir, tmp_path):
    out = plan_in_process(*tiny_overrides(cache_dir, tmp_path), "ladder.size=16,32", "ladder.head_dim=8",
                          "model/attention=mha,mqa")
    assert "confound: rung size=16: non-embedding parameters differ" in out
    assert "confound: rung size=32: non-embedding parameters differ" in out
