"""ablate-report: tables from hand-made run directories with known numbers, and from a real sweep."""

import json
import math
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from ablate.config import RunConfig
from ablate.registry import ConfigError
from ablate.report import analyse, collect, comparisons, noise, report
from ablate.report.collect import plotted
from ablate.report.keys import MetricKey
from ablate.report.parts import Context
from ablate.report.sections import sections
from ablate.report.writers import markdown
from ablate.run.rundir import ExperimentDir, RunDir

from conftest import cli_in_process, tiny_overrides

TASK_A = "task_a acc (chance 0.500)"  # the column of make_run's task, a two-choice one


def render(a, comps=None):
    """table.md's text and the full table (table.tex's cells) of an analysis, from the report's own
    sections (figures go to a temporary directory)."""
    comps = comparisons(a) if comps is None else comps
    out = Path(tempfile.mkdtemp())
    ctx = Context(ExperimentDir(out), a.collection, a, comps, noise(a, comps), out)
    parts = [section.build(ctx) for section in sections()]
    (full,) = [t.frame for p in parts for t in p.tables if t.name == "table" and "tex" in t.formats]
    return markdown("", parts), full


def make_run(root: Path, position: str, seed: int, status: str = "completed", acc: float | None = None,
             val_loss: float = 3.0, ppl: dict[str, float] | None = None, eval_step: int = 10,
             attempts: list[dict] | None = None, data_seed: int | None = None) -> Path:
    """A run directory as ablate-train and ablate-eval leave it, with known numbers; the eval
    measured step `eval_step` (the run ends at step 10)."""
    cfg = RunConfig()
    cfg.model.position.kind, cfg.seed, cfg.run_name = position, seed, f"{position}-s{seed}"
    cfg.data.seed = seed if data_seed is None else data_seed
    run = root / cfg.run_name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "summary.json").write_text(json.dumps({
        "status": status, "step": 10, "steps_total": 10, "val_loss": val_loss, "non_embedding_params": 1000,
        "flops_per_token": 6000, "kv_bytes_per_token": 64, "tokens_per_s": 100.0, "wall_time_s": 10.0,
        **({"attempts": attempts} if attempts else {})}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "tokens": 100 * i, "loss": 5.0 - i / 10})
                                               + "\n" for i in range(1, 6)))
    if acc is not None:
        (run / "eval").mkdir()
        results = {"task_a": {"acc,none": acc, "acc_stderr,none": 0.01}}
        for length, value in (ppl or {}).items():
            results[f"extrapolation_{length}x"] = {"perplexity,none": value, "perplexity_stderr,none": 0.1}
        provenance = {"step": eval_step, "config_hash": RunDir(run).config_hash()}
        (run / "eval" / "probes.json").write_text(json.dumps({"results": results, "provenance": provenance,
                                                              "chance": {"task_a": {"acc": 0.5}}}))
    return run


@pytest.fixture
def experiment(tmp_path) -> Path:
    root = tmp_path / "exp"
    make_run(root, "rope", 0, acc=0.60, val_loss=3.0, ppl={1: 20.0, 4: 40.0})
    make_run(root, "rope", 1, acc=0.70, val_loss=3.2, ppl={1: 22.0, 4: 44.0})
    # alibi's replicates do not share rope's data orders: nothing pairs them (Welch)
    make_run(root, "alibi", 0, acc=0.80, val_loss=2.9, ppl={1: 21.0, 4: 21.0}, data_seed=5)
    make_run(root, "alibi", 1, acc=0.90, val_loss=2.9, ppl={1: 21.0, 4: 22.0}, data_seed=6)
    make_run(root, "learned", 0, status="failed")
    make_run(root, "sinusoidal", 0, acc=0.62)
    make_run(root, "sinusoidal", 1, status="diverged", acc=0.10)
    planned = RunConfig()
    planned.model.position.kind, planned.seed = "learned", 1
    (root / "runs.jsonl").write_text(json.dumps({"run": "learned-s1", "config": planned.to_dict()}) + "\n")
    return root


def test_collect_is_tidy_and_finds_the_axis(experiment):
    df = collect(experiment).rows
    assert set(df.columns) == {"run", "status", "seed", "data_seed", "variant", "task", "metric", "value", "stderr"}
    assert set(df.variant) == {"rope", "alibi", "learned", "sinusoidal"}  # position differs; seeds do not count
    status = df.drop_duplicates("run").set_index("run").status
    assert status["learned-s1"] == "missing" and status["learned-s0"] == "failed"
    row = df[(df.run == "rope-s1") & (df.task == "task_a")].iloc[0]
    assert (row.metric, row.value, row.stderr) == ("acc", 0.70, 0.01)


def test_means_intervals_comparisons_and_failed_rows(experiment):
    s = analyse(collect(experiment), baseline="rope")
    t = s.table()
    assert t.loc["rope", "task_a|acc"] == pytest.approx(0.65)
    half = scipy_stats.t.ppf(0.975, 1) * 0.05  # std(0.6, 0.7) / sqrt(2), t with 1 degree of freedom
    assert (t.loc["rope", "task_a|acc|low"], t.loc["rope", "task_a|acc|high"]) == pytest.approx((0.65 - half,
                                                                                                0.65 + half))
    assert t.loc["rope", "task_a|acc|interval"] == "t over runs" and t.loc["alibi", "task_a|acc"] == pytest.approx(0.85)
    assert t.loc["rope", "train|val_loss"] == pytest.approx(3.1)
    # a perplexity on windows every run reads holds the text's own noise too (the runs' stderr, 0.1)
    assert t.loc["rope", "extrapolation_4x|perplexity|interval"] == "t over runs + items"
    half = t.loc["rope", "extrapolation_4x|perplexity|high"] - t.loc["rope", "extrapolation_4x|perplexity"]
    var = np.var([40.0, 44.0], ddof=1) / 2 + 0.1**2
    df = var**2 / ((np.var([40.0, 44.0], ddof=1) / 2) ** 2 / 1 + 0.1**4 / 10**6)
    assert half == pytest.approx(scipy_stats.t.ppf(0.975, df) * math.sqrt(var))
    # one completed run: lm-eval's item interval, labelled item-only; the diverged run is not averaged in
    assert t.loc["sinusoidal", "task_a|acc"] == pytest.approx(0.62)
    assert t.loc["sinusoidal", "task_a|acc|interval"] == "item-only"
    assert t.loc["sinusoidal", "task_a|acc|high"] == pytest.approx(0.62 + 1.96 * 0.01, rel=1e-3)
    assert t.loc["sinusoidal", "runs"] == "1 completed, 1 diverged"
    assert math.isnan(t.loc["learned", "task_a|acc"]) and t.loc["learned", "runs"] in (
        "1 failed, 1 missing", "1 missing, 1 failed")
    c = comparisons(s).table.set_index(["variant", "metric"])
    alibi = c.loc[("alibi", "task_a|acc")]
    assert alibi.delta == pytest.approx(0.20) and alibi.test == "welch over runs"
    assert alibi.p_value == pytest.approx(scipy_stats.ttest_ind([0.8, 0.9], [0.6, 0.7], equal_var=False).pvalue)
    assert not alibi.significant  # 2 runs a side: t = 2.83 on 2 degrees of freedom is not enough
    sinusoidal = c.loc[("sinusoidal", "task_a|acc")]
    assert pd.isna(sinusoidal.significant) and sinusoidal.test == "none: training noise unknown"
    text, full = render(s)
    assert "\n## Verdict\n" in text and "Holm" in text and "`rope`" in text
    assert full.loc["alibi", TASK_A].startswith("0.850 ± ")  # the interval's half-width, then the delta
    assert "(+0.2)" in full.loc["alibi", TASK_A] and "*" not in full.loc["alibi", TASK_A]
    assert full.loc["sinusoidal", TASK_A].endswith("[without 1 diverged]")  # the cell says what it lacks
    assert full.loc["learned", TASK_A] in ("n/a (1 failed, 1 missing)", "n/a (1 missing, 1 failed)")


def test_replicates_that_share_init_seed_and_data_order_are_paired(tmp_path):
    """Run k of each arm is replicate k (seed k, data order k): the comparison is Student's t on the
    per-replicate differences, which a shared data-order effect does not blur."""
    root = tmp_path / "exp"
    for seed, (base, variant) in enumerate([(0.50, 0.56), (0.70, 0.77), (0.60, 0.65)]):  # order k moves both
        make_run(root, "rope", seed, acc=base)
        make_run(root, "alibi", seed, acc=variant)
    c = comparisons(analyse(collect(root), baseline="rope")).table.set_index(["variant", "metric"])
    row = c.loc[("alibi", "task_a|acc")]
    assert row.test == "paired over replicates"
    assert row.p_value == pytest.approx(scipy_stats.ttest_rel([0.56, 0.77, 0.65], [0.50, 0.70, 0.60]).pvalue)
    assert row.p_value < 0.01 < scipy_stats.ttest_ind([0.56, 0.77, 0.65], [0.50, 0.70, 0.60], equal_var=False).pvalue


def test_report_files_and_warnings(experiment):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = report(experiment, baseline="rope")
    messages = " ".join(str(w.message) for w in caught)
    assert "learned-s0: failed" in messages and "learned-s1: missing" in messages
    assert "sinusoidal-s1: diverged" in messages
    assert {"csv", "md", "tex", "comparisons", "noise", "loss", "extrapolation", "scores", "deltas"} <= set(written)
    md = written["md"].read_text()
    assert md.index("## Verdict") < md.index("## Main metrics") and "1 failed" in md and "1 missing" in md
    assert r"\toprule" in written["tex"].read_text()
    table = pd.read_csv(written["csv"], index_col=0)
    assert table.loc["alibi", "extrapolation_4x|perplexity"] == pytest.approx(21.5)
    comps = pd.read_csv(written["comparisons"])
    assert list(comps.columns) == ["variant", "baseline", "metric", "family", "n_seeds", "n_seeds_baseline", "mean",
                                   "baseline_mean", "delta", "ci_low", "ci_high", "p_value", "p_adjusted",
                                   "significant", "test"]
    # every variant's extrapolation ratio is tested against 1, the baseline's too
    assert set(comps.variant) == {"alibi", "learned", "sinusoidal", "rope"}
    assert (comps[~comps.metric.str.startswith("extrapolation|ratio")].baseline == "rope").all()
    assert all(p.stat().st_size > 5000 for k, p in written.items() if p.suffix == ".png")


def test_chance_groups_and_averages(tmp_path):
    """Chance is shown and normalised against; a task no variant lifts above chance is left out of
    the average; an lm-eval group counts once, its subtasks not at all."""
    root = tmp_path / "exp"
    for position, good in (("rope", 0.9), ("alibi", 0.8)):
        for seed in (0, 1, 2):
            run = make_run(root, position, seed, acc=good + 0.01 * seed)
            results = json.loads((run / "eval" / "probes.json").read_text())
            results["results"].update({"coin": {"acc,none": 0.5 + 0.01 * seed, "acc_stderr,none": 0.02},
                                       "grp": {"acc,none": 0.7, "acc_stderr,none": 0.01},
                                       "grp_sub": {"acc,none": 0.2, "acc_stderr,none": 0.01}})
            results.update(chance={"task_a": {"acc": 0.25}, "coin": {"acc": 0.5}, "grp_sub": {"acc": 0.1}},
                           group_subtasks={"grp": ["grp_sub"]})
            (run / "eval" / "probes.json").write_text(json.dumps(results))
    s = analyse(collect(root))
    t = s.table()
    assert [str(k) for k in s.uninformative] == ["coin|acc"]  # 0.50-0.52 against a chance of 0.5
    assert [str(k) for k in s.average_tasks] == ["grp|acc", "task_a|acc"]  # not coin, not grp_sub
    assert s.column(MetricKey("grp", "acc")).chance == 0.1  # its subtasks'
    assert t.loc["rope", "average|acc"] == pytest.approx(np.mean([0.7, 0.91]))
    adjusted = [(0.7 - 0.1) / 0.9, (0.91 - 0.25) / 0.75]
    assert t.loc["rope", "average|acc_chance_adj"] == pytest.approx(np.mean(adjusted))
    text, _ = render(s)
    assert "coin acc (chance 0.500, at chance: not averaged)" in text and "task_a acc (chance 0.250)" in text
    assert "grp_sub" not in text.split("## Main metrics")[1].split("\n\n")[1]  # subtasks: CSV and LaTeX only


def test_report_of_a_real_sweep(cache_dir, tmp_path):
    cli_in_process("ablate.train", "-m", "model/position=rope,alibi", "train.eval_at_end=true", "eval=probes",
                   "eval.probe_items=40", *tiny_overrides(cache_dir, tmp_path, "train.tokens=8192"))
    out = cli_in_process("ablate.report", "experiment=default", f"results_dir={tmp_path}")
    assert out.stdout.startswith("# default: 2 variants") and "## Verdict" in out.stdout
    assert "agreement acc (chance 0.500" in out.stdout
    assert "one run per variant, so training noise is unknown" in out.stdout
    table = pd.read_csv(tmp_path / "default" / "report" / "table.csv", index_col=0)
    assert set(table.index) == {"rope", "alibi"} and (table["seeds"] == 1).all()
    assert table["ablate_agreement|acc"].between(0, 1).all()


def test_stale_evaluations_are_listed_never_averaged(tmp_path):
    """An eval of another checkpoint than the final one (or with no provenance) is not used."""
    root = tmp_path / "exp"
    make_run(root, "rope", 0, acc=0.60)
    make_run(root, "rope", 1, acc=0.99, eval_step=4)  # measured at step 4 of 10: a half-trained model
    legacy = make_run(root, "alibi", 0, acc=0.99)
    results = json.loads((legacy / "eval" / "probes.json").read_text())
    del results["provenance"]  # as an older ablate wrote it
    (legacy / "eval" / "probes.json").write_text(json.dumps(results))
    make_run(root, "alibi", 1, acc=0.70)
    df = collect(root)
    assert set(df.stale) == {("rope-s1", "probes"), ("alibi-s0", "probes")}
    assert "measured step 4; the run ended at step 10" in df.stale[("rope-s1", "probes")]
    s = analyse(df, baseline="rope")
    t = s.table()
    assert t.loc["rope", "task_a|acc"] == pytest.approx(0.60) and t.loc["alibi", "task_a|acc"] == pytest.approx(0.70)
    assert t.loc["rope", "train|val_loss"] == pytest.approx(3.0)  # the runs themselves still count
    _, full = render(s)
    assert full.loc["rope", TASK_A].endswith("[without 1 stale eval]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report(root)
    assert any("rope-s1: eval/probes.json: it measured step 4" in str(w.message) for w in caught)
    extra = df.rows[df.rows.task.str.startswith("extrapolation_")]
    assert extra.empty or not set(extra.run) & {"rope-s1", "alibi-s0"}


def test_baseline_is_the_sweeps_first_arm_and_must_exist(tmp_path):
    root = tmp_path / "exp"
    for position in ("rope", "alibi"):
        make_run(root, position, 0, acc=0.5)
    order = []
    for position in ("rope", "alibi"):  # the sweep's order, as the sweeper writes it: rope first
        cfg = RunConfig()
        cfg.model.position.kind = position
        order.append(json.dumps({"run": f"{position}-s0", "config": cfg.to_dict()}))
    (root / "runs.jsonl").write_text("\n".join(order) + "\n")
    s = analyse(collect(root))
    assert s.baseline == "rope" and s.variants == ["rope", "alibi"]  # not alphabetical
    with pytest.raises(ConfigError, match=r"baseline='rop': not a variant of this experiment \(valid: rope, alibi\)"):
        analyse(collect(root), baseline="rop")
    out = cli_in_process("ablate.report", f"path={root}", "baseline=rop", check=False)
    assert out.returncode == 2 and "baseline='rop'" in out.stderr and "Traceback" not in out.stderr


def test_plots_draw_completed_runs_only_and_retries_are_shown(experiment):
    make_run(experiment, "nope", 0, acc=0.5, attempts=[{"status": "diverged", "step": 3, "diverged_at_step": 3}])
    df = collect(experiment)
    drawn, note = plotted(df)
    assert set(drawn.status) == {"completed"} and "learned-s0" not in set(drawn.run)
    assert "learned-s0 (failed)" in note and "sinusoidal-s1 (diverged)" in note and "learned-s1 (missing)" in note
    s = analyse(df, baseline="rope")
    t = s.table()
    assert t.loc["nope", "runs"] == "1 completed (1 retried after diverging)"


def test_marks_on_real_runs_null_and_width(cache_dir, tmp_path):
    """Real tiny runs, 3 seeds an arm. Null: Adam's eps at 1e-8 against 1.1e-8, a setting too small
    to matter (eps only counts where sqrt(v) is near 1e-8, far below these gradients), with other
    replicates (init seeds and data orders) so the arms are as independent as two architectures'
    runs: no mark (Welch). Width: 32 against 128 on shared replicates: the validation loss
    difference is marked (paired over replicates)."""
    def sweep(name: str, *args: str) -> None:
        cli_in_process("ablate.train", "-m", *tiny_overrides(cache_dir, tmp_path / name, "train.tokens=20480",
                                                             "train.eval_every=0", *args))

    sweep("same", "seed=0,1,2")
    sweep("same", "optim.eps=1.1e-8", "seed=3,4,5")
    sweep("width", "model.dim=32,128", "seed=0,1,2")
    for name, marked, test in (("same", False, "welch over runs"), ("width", True, "paired over replicates")):
        cli_in_process("ablate.report", f"path={tmp_path / name / 'default'}")
        comps = pd.read_csv(tmp_path / name / "default" / "report" / "comparisons.csv").set_index("metric")
        row = comps.loc["train|val_loss"]
        assert (row.n_seeds, row.n_seeds_baseline, row.test) == (3, 3, test)
        assert bool(row.significant) is marked, (name, row.to_dict())
    width = pd.read_csv(tmp_path / "width" / "default" / "report" / "comparisons.csv").set_index("metric")
    width = width.loc["train|val_loss"]
    assert width.delta < 0 and width.ci_high < 0  # the wider model's loss is lower, by a margin


def test_extrapolation_verdict_says_which_variants_hold_with_intervals(tmp_path):
    """Per run, perplexity at the longest length over that at 1x; per variant, its geometric mean,
    interval and whether it differs from 1 (Holm over variants); a variant without the longest
    length is named, with why."""
    from ablate.report import extrapolation_verdict

    root = tmp_path / "exp"
    for seed, (alibi, rope, sinusoidal) in enumerate([(20.0, 26.0, 40.0), (20.4, 27.0, 44.0), (19.8, 26.5, 41.0)]):
        make_run(root, "alibi", seed, acc=0.6, ppl={1: 20.0 + seed / 10, 8: alibi})
        make_run(root, "rope", seed, acc=0.6, ppl={1: 20.0, 8: rope})
        make_run(root, "sinusoidal", seed, acc=0.6, ppl={1: 20.0, 8: sinusoidal})
        make_run(root, "learned", seed, acc=0.6, ppl={1: 21.0})
    line = extrapolation_verdict(analyse(collect(root)))
    parts = {p.split("`")[1]: p for p in line.split("5%): ", 1)[1].rstrip(".").split("; ")}
    assert list(parts) == ["alibi", "rope", "sinusoidal", "learned"]  # best held first
    assert "no change detected" in parts["alibi"] and "worse" in parts["rope"] and "worse" in parts["sinusoidal"]
    # the interval: the runs' spread of the log ratio and the windows' own noise (each run's delta-method
    # error of its two log perplexities, here stderr 0.1 at both lengths)
    ratios = np.log([26.0 / 20, 27.0 / 20, 26.5 / 20])
    windows = np.mean([(0.1 / x) ** 2 + (0.1 / 20) ** 2 for x in (26.0, 27.0, 26.5)])
    var = ratios.var(ddof=1) / 3 + windows
    df = var**2 / ((ratios.var(ddof=1) / 3) ** 2 / 2 + windows**2 / 10**6)
    low = math.exp(ratios.mean() - scipy_stats.t.ppf(0.975, df) * math.sqrt(var))
    assert f"`rope` {math.exp(ratios.mean()):.3f} [{low:.3f}, " in parts["rope"]
    assert "not measured at 8x" in parts["learned"]
    assert line.startswith("**extrapolation** (perplexity at 8x the training length over perplexity at 1x")
    assert "conditional on that text" in line
    # one run each: the ratio, and no claim
    one = tmp_path / "one"
    make_run(one, "alibi", 0, acc=0.6, ppl={1: 20.0, 2: 20.0})
    make_run(one, "rope", 0, acc=0.6, ppl={1: 20.0, 2: 30.0})
    assert "`rope` 1.500 (one run: no interval)" in extrapolation_verdict(analyse(collect(one)))
    no_extrapolation = tmp_path / "none"
    make_run(no_extrapolation, "alibi", 0, acc=0.6)
    make_run(no_extrapolation, "rope", 0, acc=0.6)
    assert extrapolation_verdict(analyse(collect(no_extrapolation))) is None


def test_the_verdict_and_the_marks_are_one_computation(tmp_path):
    """The verdict reads the rows that set the table's marks: a variant is called better or worse
    exactly where its cell is starred, in the primary family only. The case that used to disagree:
    4 arms, where the old verdict's pairwise tests (Holm within one metric, 6 pairs) and the old
    table's family (Holm over every test) gave different answers for alibi."""
    from ablate.report import verdict

    root = tmp_path / "exp"
    losses = {"learned": [3.40, 3.39, 3.41], "alibi": [3.35, 3.37, 3.33], "rope": [3.30, 3.31, 3.32],
              "sinusoidal": [3.40, 3.42, 3.38]}
    for position, values in losses.items():
        for seed, loss in enumerate(values):
            make_run(root, position, seed, acc=0.6 + 0.01 * seed, val_loss=loss, data_seed=10 * seed + len(position))
    summary = analyse(collect(root), baseline="learned")
    comps = comparisons(summary)
    assert [str(k) for k in comps.family] == ["train|val_loss", "task_a|acc"]  # task_a is above chance
    primary = comps.table[comps.table.family == "primary"]
    assert comps.tests == len(primary) == 6 and comps.table[comps.table.family != "primary"].significant.isna().all()
    (line,) = [v for v in verdict(summary, comps) if v.startswith("**val_loss**")]
    said = {name: section.split(":")[0] for section in line.split("): ", 1)[1].rstrip(".").split("; ")
            for name in re.findall(r"`(\w+)` \d", section)}
    loss = primary[primary.metric == "train|val_loss"]
    assert loss.significant.any() and not loss.significant.all()  # a case with both answers
    for r in loss.itertuples():
        assert said[r.variant] == ("better" if r.significant else "not separable"), (r.variant, line)
        assert f"p_adj {r.p_adjusted:.2g}" in line or r.p_adjusted < 0.001
    _, full = render(summary, comps)
    for r in primary.itertuples():
        cell = full.loc[r.variant, {"train|val_loss": "val_loss", "task_a|acc": TASK_A}[r.metric]]
        assert ("*" in cell) == bool(r.significant), (r.variant, r.metric, cell)


def test_a_declared_family_is_the_one_marked(tmp_path):
    """report.primary (or primary= to ablate-report) replaces the default family; a metric the
    table does not have is an error naming those it has."""
    root = tmp_path / "exp"
    for seed in range(3):
        make_run(root, "rope", seed, acc=0.6 + 0.01 * seed, val_loss=3.0 + 0.01 * seed)
        make_run(root, "alibi", seed, acc=0.7 + 0.01 * seed, val_loss=3.5 + 0.01 * seed)
    summary = analyse(collect(root))
    comps = comparisons(summary, primary=["task_a|acc"])
    assert [str(k) for k in comps.family] == ["task_a|acc"] and comps.tests == 1
    assert comps.table.set_index("metric").loc["train|val_loss"].family == "exploratory"
    with pytest.raises(ConfigError, match=r"report.primary='val_los': not a metric of this table \(valid: "):
        comparisons(summary, primary=["val_los"])
    out = cli_in_process("ablate.report", f"path={root}", "primary=task_a|acc")
    assert "primary family (task_a acc)" in out.stdout


def test_noise_by_source_says_what_it_rests_on(tmp_path):
    """A 3 x 3 grid of init seeds and data orders: the split into sources is given with the 2
    degrees of freedom each part rests on (enough to see a source, not to rank them)."""
    root = tmp_path / "exp"
    rng = np.random.default_rng(0)
    for seed in range(3):
        for data_seed in range(3):
            run = make_run(root, "rope", seed, acc=0.6 + 0.02 * seed + 0.01 * data_seed + rng.normal(0, 0.002),
                           data_seed=data_seed)
            run.rename(run.with_name(f"rope-s{seed}-d{data_seed}"))
    s = analyse(collect(root))
    row = noise(s).set_index("metric").loc["task_a|acc"]
    assert (row.runs_per_variant, row.df_init, row.df_data) == (9, 2, 2)
    assert row.sd_init > row.sd_data > 0


def test_an_exact_match_task_at_zero_is_never_averaged_and_a_declared_family_comes_from_the_runs(tmp_path):
    """A task with no chance level (an exact-match accuracy, as lambada's) at 0.000 for every run is
    uninformative: not averaged, not in the family. An experiment's `report.primary`, recorded in its
    runs' configs, is the family the report marks."""
    root = tmp_path / "exp"
    for seed in range(3):
        for position, acc in (("rope", 0.6), ("alibi", 0.7)):
            run = make_run(root, position, seed, acc=acc + 0.01 * seed)
            results = json.loads((run / "eval" / "probes.json").read_text())
            results["results"]["exact"] = {"acc,none": 0.0, "acc_stderr,none": 0.0}
            (run / "eval" / "probes.json").write_text(json.dumps(results))
    s = analyse(collect(root))
    assert MetricKey("exact", "acc") in s.uninformative and s.average_tasks == [MetricKey("task_a", "acc")]
    assert "exact|acc" not in [str(k) for k in comparisons(s).family]
    for config in root.glob("*/config.yaml"):  # as `report.primary: [task_a|acc]` in the experiment file
        cfg = yaml.safe_load(config.read_text())
        cfg["report"] = {"primary": ["task_a|acc"]}
        config.write_text(yaml.safe_dump(cfg))
        provenance = json.loads((config.parent / "eval" / "probes.json").read_text())
        provenance["provenance"]["config_hash"] = RunDir(config.parent).config_hash()
        (config.parent / "eval" / "probes.json").write_text(json.dumps(provenance))
    comps = comparisons(analyse(collect(root)))
    assert [str(k) for k in comps.family] == ["task_a|acc"]
    assert comps.table.set_index("metric").loc["train|val_loss"].family == "exploratory"
