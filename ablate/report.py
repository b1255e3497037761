"""`ablate-report experiment=NAME` (or a path): runs -> one tidy DataFrame -> a verdict, tables
and plots whose every mark survives seed noise and multiple comparisons.

    ablate-report experiment=positions [results_dir=results] [baseline=rope] [target_flops=1e21]

Writes results/<experiment>/report/: table.md (what the arms hold equal and any confound, from the
sweep's fairness.json; the verdict; each arm's chosen LR under +tune=lr; then a narrow table of the
main metrics and costs, length extrapolation, stability, noise), table.csv and table.tex (every
column), comparisons.csv (each variant against the baseline, per metric: the difference, its
interval, p, Holm-adjusted p, the test), noise.csv (per metric: the noise of a run by source,
signal-to-noise, the smallest difference the seeds could detect), loss.png, extrapolation.png,
scores.png, deltas.png, lr_sensitivity.png (+tune=lr); prints table.md. Works on any run
directories, complete or not: failed, diverged, running and missing runs, stale evaluations and runs
without one appear as such and are never averaged in. A ladder (a sweep over ladder.size) also
gets ladder.csv (fits of loss against compute per variant, with the prediction at target_flops),
decisions.csv (each pair of variants at each rung, and whether it agrees with the largest),
scaling.png and ranks.png, and a Ladder section in table.md.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ablate import ladder, stats
from ablate.cli import command, key_values
from ablate.fairness import TOKENIZER_FIELDS, variant_name, varying
from ablate.registry import ConfigError
from ablate.rundir import ExperimentDir, RunDir, flatten, write_text

# the metric that stands for a task in the table, in order of preference
MAIN_METRICS = ("acc", "perplexity", "word_perplexity")
COST = {"non_embedding_params": "params (non-emb.)", "flops_per_token": "FLOPs/token",
        "teacher_flops_per_token": "+ teacher FLOPs/token", "kv_bytes_per_token": "KV bytes/token",
        "tokens_per_s": "tokens/s", "mfu": "MFU", "wall_time_s": "wall time (s)",
        "live_eval_share": "eval during training (share of time)"}
# cost columns shown only where some run recorded them (MFU: a device with a known peak; a teacher's forward)
SOMETIMES = ("mfu", "teacher_flops_per_token", "live_eval_share")
# recorded per run, shown per variant, never tested (a count of rare events is no metric to rank by)
STABILITY = {"loss_spikes": "loss spikes", "grad_spikes": "grad-norm spikes", "max_attn_logit": "max attn logit"}
# per-token metrics of arms with different tokenizers: shown, never tested (a token is not the same unit)
UNTESTED = ("cost", "stability", "confounded")
HIGHER_IS_BETTER = {"acc": True, "acc_chance_adj": True, "perplexity": False, "word_perplexity": False,
                    "val_loss": False, "val_bpb": False}


# ---- collect ------------------------------------------------------------------------------------
def collect(experiment_dir: str | Path) -> pd.DataFrame:
    """Every run of an experiment as tidy rows: run, status, seed, data_seed, variant, task, metric,
    value, stderr (and, for a ladder, rung and arm: the variant without its rung).

    `variant` names what differs between the runs' model / data / optim / train configs (the
    ablated axis, found, not declared); the init and data-order seeds are kept apart (runs of one
    variant). Runs planned by a sweep (ExperimentDir.planned) without a directory appear with
    status `missing`. Only evaluations of the final checkpoint of a completed run count; any other
    is a row with task `eval`, metric `stale:<suite>` and the step it measured as its value. A run
    retried after diverging has a `train` row `retried_after` (the number of diverged attempts).

    attrs: "order" the variants in the sweep's order (the first is the default baseline); "stale"
    why each stale evaluation is stale; "chance" task -> accuracy by guessing; "groups" lm-eval
    group -> its subtasks; "items" (run, task) -> (doc ids, per-item accuracy) where kept;
    "tokenizers" the fields that give runs different tokenizers (then losses are compared per byte);
    "chance_lexicon" task -> a second guessing baseline shown beside chance (the copy probe's)."""
    root = ExperimentDir(experiment_dir)
    runs = root.runs()
    planned = {name: flatten(cfg) for name, cfg in root.planned().items()}
    if not runs and not planned:
        raise ConfigError("experiment", str(root.path), "holds no runs")
    configs = {run.name: flatten(run.read_config()) for run in runs}
    missing = {name: cfg for name, cfg in planned.items() if name not in configs}
    axes = varying([*configs.values(), *missing.values()])
    if root.tuning() is not None:  # each arm at its own LR: the LR names no arm
        axes = [a for a in axes if a != "optim.lr"]
    arm_axes = [a for a in axes if a != "ladder.size"]  # a ladder: an arm is the variant at every rung

    def who(cfg: dict[str, Any]) -> dict[str, Any]:
        named = {"variant": variant_name(cfg, axes)}
        if arm_axes != axes:
            named.update(rung=ladder.rung_label(cfg), arm=variant_name(cfg, arm_axes))
        return named

    rows: list[dict[str, Any]] = [
        {"run": name, "status": "missing", "seed": cfg.get("seed", 0), "data_seed": cfg.get("data.seed", 0),
         **who(cfg), "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan}
        for name, cfg in missing.items()]
    stale: dict[tuple[str, str], str] = {}
    chance: dict[str, float] = {}
    lexicon: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    items: dict[tuple[str, str], Items] = {}
    for run in runs:
        cfg = configs[run.name]
        summary = run.summary() or {"status": "never started" if run.status() == "new" else run.status()}
        base = {"run": run.name, "status": summary.get("status", "unknown"), "seed": cfg.get("seed", 0),
                "data_seed": cfg.get("data.seed", 0), **who(cfg)}
        for key in ("val_loss", "val_ppl", "val_bpb", "train_loss", "tokens_seen", *COST, *STABILITY):
            if key in summary:
                rows.append({**base, "task": "train", "metric": key, "value": _num(summary[key]), "stderr": math.nan})
        diverged = sum(a.get("status") == "diverged" for a in summary.get("attempts", []))
        if diverged:
            rows.append({**base, "task": "train", "metric": "retried_after", "value": diverged, "stderr": math.nan})
        current = 0
        for found in run.evals():
            problem = run.eval_problem(found)
            if problem is None:
                rows += _eval_rows(base, found.results)
                current += 1
                chance.update({t: c["acc"] for t, c in found.results.get("chance", {}).items() if "acc" in c})
                lexicon.update({t: c["acc_lexicon"] for t, c in found.results.get("chance", {}).items()
                                if "acc_lexicon" in c})
                groups.update({g: list(sub) for g, sub in found.results.get("group_subtasks", {}).items() if sub})
                for task, kept in run.items(found.suite).items():
                    items[(run.name, task)] = Items(np.asarray(kept["doc_id"]), np.asarray(kept["acc"], dtype=float),
                                                    np.asarray(kept["cluster"]) if "cluster" in kept else None)
            else:
                step = found.provenance.get("step", math.nan)
                rows.append({**base, "task": "eval", "metric": f"stale:{found.suite}", "value": _num(step),
                             "stderr": math.nan})
                stale[(run.name, found.suite)] = f"{found.path.relative_to(run.path)}: {problem}"
        if not current:
            rows.append({**base, "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan})
    df = pd.DataFrame(rows)
    order = [variant_name(cfg, axes) for cfg in planned.values()] + sorted(df.variant)
    for group, subtasks in groups.items():  # a group of multiple-choice tasks guesses as its subtasks do
        if group not in chance and subtasks and all(t in chance for t in subtasks):
            chance[group] = float(np.mean([chance[t] for t in subtasks]))
    declared = next((cfg.get("report.primary") for cfg in configs.values() if cfg.get("report.primary")), None)
    df.attrs.update(order=list(dict.fromkeys(order)), stale=stale, chance=chance, chance_lexicon=lexicon,
                    groups=groups, items=items, primary=list(declared) if declared else None,
                    tokenizers=[a for a in axes if a in TOKENIZER_FIELDS])
    return df


def _eval_rows(base: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key:
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            rows.append({**base, "task": task, "metric": metric, "value": _num(value), "stderr": _num(stderr)})
    return rows


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ---- the analysis -------------------------------------------------------------------------------
class Items(NamedTuple):
    """One run's per-item results on a task: doc ids, accuracy, and the cluster of each item (items
    that share a context; None: each item its own)."""

    ids: np.ndarray
    acc: np.ndarray
    cluster: np.ndarray | None = None


@dataclass(frozen=True)
class Column:
    """One metric of the table: `key` is "<task>|<metric>" (train|val_loss, average|acc, ...)."""

    key: str
    label: str
    higher_is_better: bool
    chance: float | None = None  # accuracy by guessing, where known
    kind: str = "task"  # train | task | extrapolation | average | cost
    lexicon: float | None = None  # the copy probe: guessing any word of the lexicon (chance: any source word)


def main_metrics(df: pd.DataFrame) -> dict[str, str]:
    """task -> the metric that represents it (acc, else perplexity, ...); extrapolation rows keep perplexity."""
    chosen = {}
    for task, group in df[~df.task.isin(["train", "eval"])].groupby("task"):
        for metric in MAIN_METRICS:
            if metric in set(group.metric):
                chosen[task] = metric
                break
    return chosen


def _columns(df: pd.DataFrame) -> list[Column]:
    """The table's metrics: validation loss, each task's main metric, then the costs (the averages
    are added by summarize)."""
    chance = df.attrs.get("chance", {})
    per_byte = bool(df.attrs.get("tokenizers"))  # arms with different tokenizers: a token is no common unit
    cols = ([Column("train|val_bpb", "val bits/byte", False, kind="train"),
             Column("train|val_loss", "val_loss per token (tokenizers differ: not compared)", False, kind="confounded")]
            if per_byte else [Column("train|val_loss", "val_loss", False, kind="train")])
    for task, metric in main_metrics(df).items():
        kind = "extrapolation" if task.startswith("extrapolation_") else "task"
        kind = "confounded" if per_byte and (kind == "extrapolation" or metric == "perplexity") else kind
        cols.append(Column(f"{task}|{metric}", f"{task.removeprefix('ablate_')} {metric}",
                           HIGHER_IS_BETTER.get(metric, True), chance.get(task) if metric == "acc" else None, kind,
                           df.attrs.get("chance_lexicon", {}).get(task) if metric == "acc" else None))
    measured = set(df.metric[(df.task == "train") & df.value.notna()])
    cols += [Column(f"train|{key}", name, key in ("tokens_per_s", "mfu"), kind="cost") for key, name in COST.items()
             if key not in SOMETIMES or key in measured]
    have = set(df.metric[df.task == "train"])
    cols += [Column(f"train|{key}", name, False, kind="stability") for key, name in STABILITY.items() if key in have]
    return cols


def run_values(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per completed run (rows) and metric key (columns): the value, and lm-eval's item-level stderr."""
    ok = df[df.status == "completed"].copy()
    main = main_metrics(df)
    keep = ((ok.task == "train") | ok.task.map(main).eq(ok.metric))
    ok = ok[keep]
    ok["key"] = ok.task + "|" + ok.metric
    values = ok.pivot_table(index="run", columns="key", values="value", aggfunc="first", dropna=False)
    ses = ok.pivot_table(index="run", columns="key", values="stderr", aggfunc="first", dropna=False)
    values.attrs, ses.attrs = {}, {}  # not the collection's (its per-item arrays cannot be compared)
    # where items come in clusters (items sharing a context), lm-eval's stderr treats them as
    # independent: the cluster-robust standard error replaces it
    for (run, task), got in df.attrs.get("items", {}).items():
        key = f"{task}|acc"
        if got.cluster is not None and run in ses.index and key in ses:
            ses.loc[run, key] = stats.cluster_se(got.acc, got.cluster)
    return values, ses


def summarize(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per variant (in the sweep's order): for each metric the mean over completed runs and
    its 95% interval (t over runs, k - 1 degrees of freedom; with one run, lm-eval's item-level
    interval, labelled item-only), the averages over tasks, and run counts by status.

    The baseline is the first variant of the sweep unless `baseline` names another (ConfigError
    for a name that is not a variant). attrs: "baseline"; "columns" (Column per metric); "runs"
    variant -> its completed runs; "values" / "ses" per run; "uninformative" the accuracies no
    variant lifts above chance; "average_tasks" the tasks the averages are over; "replicates" run
    -> (init seed, data order), which pairs runs across arms; "notes"
    (variant, key) -> which runs a cell leaves out and why."""
    present = set(df.variant)
    variants = [v for v in df.attrs.get("order", []) if v in present] or list(dict.fromkeys(df.variant))
    if baseline is None:
        baseline = variants[0]
    elif baseline not in variants:
        raise ConfigError("baseline", baseline, "not a variant of this experiment", valid=variants)
    values, ses = run_values(df)
    status = df.drop_duplicates("run").set_index("run")
    runs = {v: [r for r in status.index[(status.variant == v) & (status.status == "completed")]] for v in variants}
    columns = _columns(df)
    groups = df.attrs.get("groups", {})
    subtasks = {t for sub in groups.values() for t in sub}
    items = df.attrs.get("items", {})
    # an accuracy is uninformative when no variant is above chance; one without a chance level (an
    # exact-match accuracy, as lambada's) when no variant is above 0
    uninformative = [c.key for c in columns if (c.chance is not None or (c.kind == "task" and c.key.endswith("|acc")))
                     and not _lifted(values, ses, runs, c.key, c.chance or 0.0, len(variants), items)]
    # the averages: over the multiple-choice accuracies (those with a chance level) every variant has,
    # groups as units (their subtasks left out), tasks at chance left out; per run, then over runs
    measured = [v for v in variants if runs[v]]
    average_tasks = [c.key for c in columns if c.key.endswith("|acc") and c.kind == "task" and c.chance is not None
                     and c.key.split("|")[0] not in subtasks and c.key not in uninformative
                     and all(values.reindex(runs[v])[c.key].notna().any() for v in measured)]
    if average_tasks:
        chance = {c.key: c.chance or 0.0 for c in columns}
        values["average|acc"] = values[average_tasks].mean(axis=1, skipna=False)
        guess = pd.Series({k: chance[k] for k in average_tasks})
        values["average|acc_chance_adj"] = ((values[average_tasks] - guess) / (1 - guess)).mean(axis=1, skipna=False)
        # a run's item-level error of the mean over tasks (disjoint items, so independent within a run)
        ses["average|acc"] = np.sqrt((ses[average_tasks] ** 2).sum(axis=1, min_count=1)) / len(average_tasks)
        ses["average|acc_chance_adj"] = ses["average|acc"]
        at = next((i for i, c in enumerate(columns) if c.kind == "cost"), len(columns))
        columns[at:at] = [Column("average|acc", "average acc", True, kind="average"),
                          Column("average|acc_chance_adj", "average acc (chance-adj.)", True, kind="average")]
    table, notes = [], {}
    for variant in variants:
        part = df[df.variant == variant]
        counts = part.drop_duplicates("run").status.value_counts()
        retried = part[(part.metric == "retried_after") & (part.status == "completed")].run.nunique()
        row: dict[str, Any] = {"variant": variant, "seeds": len(runs[variant]),
                               "runs": ", ".join(f"{n} {s}" for s, n in counts.items())
                               + (f" ({retried} retried after diverging)" if retried else "")}
        for c in columns:
            got = values.reindex(runs[variant])[c.key] if c.key in values else pd.Series(dtype=float)
            se = ses.reindex(runs[variant])[c.key].dropna() if c.key in ses else pd.Series(dtype=float)
            iv = stats.interval(got.to_numpy(), float(se.iloc[0]) if len(got.dropna()) == 1 and len(se) else math.nan,
                                items=_item_term(items, list(got.dropna().index), c.key)
                                or _window_term(se, c))
            row.update({c.key: iv.mean, f"{c.key}|low": iv.low, f"{c.key}|high": iv.high, f"{c.key}|n": iv.n,
                        f"{c.key}|interval": iv.kind})
            if c.kind not in UNTESTED:
                notes[(variant, c.key)] = _left_out(part, set(got.dropna().index), c.kind != "train", c.key)
        table.append(row)
    out = pd.DataFrame(table).set_index("variant")
    out.attrs.update(baseline=baseline, columns=columns, runs=runs, values=values, ses=ses, groups=groups,
                     uninformative=uninformative, average_tasks=average_tasks,
                     notes={k: v for k, v in notes.items() if v}, items=df.attrs.get("items", {}),
                     tokenizers=df.attrs.get("tokenizers", []),
                     replicates={r: (int(s.seed), int(s.data_seed)) for r, s in status.iterrows()},
                     primary=df.attrs.get("primary"))
    return out


def _item_matrix(items: dict[tuple[str, str], Items], names: list[str], task: str,
                 ids: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(runs, items) per-item accuracies of the runs `names` on `task`, on the items they all
    answered (or on `ids`), in doc order, with those items' clusters; (None, None) where a run kept
    none."""
    ids = _shared_ids(items, names, task) if ids is None else ids
    if ids is None or len(ids) < 2:
        return None, None
    rows, clusters = [], None
    for r in names:
        got = items[(r, task)]
        order = np.argsort(got.ids)
        at = order[np.searchsorted(got.ids[order], ids)]
        rows.append(got.acc[at])
        if got.cluster is not None:
            clusters = got.cluster[at]
    return np.vstack(rows), clusters


def _shared_ids(items: dict[tuple[str, str], Items], names: list[str], task: str) -> np.ndarray | None:
    """The doc ids every run of `names` answered on `task`, sorted; None where a run kept none."""
    if not names or not all((r, task) in items for r in names):
        return None
    return np.array(sorted(set.intersection(*(set(items[(r, task)].ids.tolist()) for r in names))))


def _item_term(items: dict[tuple[str, str], Items], names: list[str], key: str) -> tuple[float, int] | None:
    """The item-set noise of the mean accuracy of runs `names` (stats.item_variance), for an
    accuracy whose items every run kept; None otherwise (a loss, a perplexity, one run)."""
    task, _, metric = key.partition("|")
    if metric != "acc" or len(names) < 2:
        return None
    x, clusters = _item_matrix(items, names, task)
    return None if x is None else stats.item_variance(x, clusters=clusters)


def _window_term(se: pd.Series, c: Column) -> tuple[float, int] | None:
    """The evaluation text's own noise in a perplexity measured on windows every run reads (the
    windows are the items): each run's delta-method variance, averaged over runs; None for other
    metrics or without standard errors."""
    if c.kind != "extrapolation" or len(se) < 2:
        return None
    return float((se**2).mean()), stats.NORMAL_DF


def _lifted(values: pd.DataFrame, ses: pd.DataFrame, runs: dict[str, list[str]], key: str, chance: float,
            n_variants: int, items: dict[tuple[str, str], Items] | None = None) -> bool:
    """Whether some variant's interval (item noise included; Bonferroni over the variants) lies
    above chance."""
    if key not in values:
        return False
    level = 1 - stats.ALPHA / max(1, n_variants)
    for names in runs.values():
        got = values.reindex(names)[key].dropna()
        se = ses.reindex(names)[key].dropna() if key in ses else pd.Series(dtype=float)
        iv = stats.interval(got.to_numpy(), float(se.iloc[0]) if len(got) == 1 and len(se) else math.nan, level,
                            items=_item_term(items or {}, list(got.index), key))
        if math.isfinite(iv.low) and iv.low > chance:
            return True
    return False


def _left_out(part: pd.DataFrame, used: set[str], evals: bool, key: str = "") -> str:
    """Why the runs of a variant that a cell does not average are left out, e.g. "1 diverged, 1 stale eval"
    ("not applicable": the evaluation measured nothing there, as learned positions beyond their length)."""
    task, _, metric = key.partition("|")
    reasons = []
    for run, group in part.groupby("run", sort=True):
        if run in used:
            continue
        status = group.status.iloc[0]
        if status != "completed":
            reasons.append(status)
        elif evals and ((group.task == task) & (group.metric == metric)).any():
            reasons.append("not applicable")
        elif evals:
            reasons.append("stale eval" if group.metric.str.startswith("stale:").any() else "no eval")
    return ", ".join(f"{n} {r}" for r, n in pd.Series(reasons, dtype=object).value_counts().items())


def _paired_items(summary: pd.DataFrame, variant: str, key: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(runs, items) per-item accuracies of `variant` on the items every run of both arms answered,
    in doc order, and those items' clusters (None where each item is its own)."""
    task, metric = key.split("|")
    if metric != "acc":
        return None, None
    items, runs = summary.attrs["items"], summary.attrs["runs"]
    shared = _shared_ids(items, runs[variant] + runs[summary.attrs["baseline"]], task)  # both arms answered
    return (None, None) if shared is None else _item_matrix(items, runs[variant], task, shared)


def _aligned(summary: pd.DataFrame, variant: str) -> tuple[list[str], list[str], bool]:
    """The completed runs of `variant` and of the baseline, and whether they pair: where both arms
    hold the same replicates, the baseline's runs reordered so that run k of each is replicate k."""
    runs, base = summary.attrs["runs"], summary.attrs["baseline"]
    keys_v, keys_b = _replicates(summary, variant), _replicates(summary, base)
    if keys_v is None or keys_b is None or set(keys_v) != set(keys_b):
        return runs[variant], runs[base], False
    by_key = dict(zip(keys_b, runs[base]))
    return runs[variant], [by_key[k] for k in keys_v], True


def _replicates(summary: pd.DataFrame, variant: str) -> list[tuple[int, int]] | None:
    """The (init seed, data order) of each completed run of `variant`, in its run order; None
    where two runs share one (then no replicate pairs with another arm's)."""
    seeds = summary.attrs.get("replicates", {})
    keys = [seeds.get(r) for r in summary.attrs["runs"][variant]]
    return keys if None not in keys and len(set(keys)) == len(keys) else None


ARGUMENTS = ("experiment", "path", "results_dir", "baseline", "target_flops", "primary")  # of ablate-report

COMPARISON_COLUMNS = ["variant", "baseline", "metric", "family", "n_seeds", "n_seeds_baseline", "mean",
                      "baseline_mean", "delta", "ci_low", "ci_high", "p_value", "p_adjusted", "significant", "test"]


def primary_family(summary: pd.DataFrame, primary: list[str] | None = None) -> list[str]:
    """The metrics whose tests make the report's primary family: `primary` where an experiment
    declares it (`report.primary`, or `primary=` to ablate-report), else validation loss (bits per
    byte where tokenizers differ), each informative task's accuracy (raw, not chance-adjusted; an
    lm-eval group as one task), and the extrapolation ratio at the longest length measured. A
    declared metric that the table does not have is a ConfigError naming those it has."""
    columns = summary.attrs["columns"]
    ratio = _ratios(summary)
    if primary:
        valid = [c.key for c in columns if c.kind not in UNTESTED] + ([ratio[1]] if ratio else [])
        for key in primary:
            if key not in valid:
                raise ConfigError("report.primary", key, "not a metric of this table", valid=valid)
        return list(dict.fromkeys(primary))
    subtasks = {t for sub in summary.attrs.get("groups", {}).values() for t in sub}
    family = [c.key for c in columns if c.kind == "train"]
    family += [c.key for c in columns if c.kind == "task" and c.key.endswith("|acc")
               and c.key not in summary.attrs["uninformative"] and c.key.split("|")[0] not in subtasks]
    return family + ([ratio[1]] if ratio else [])


def _ratios(summary: pd.DataFrame) -> tuple[float, str, str, str] | None:
    """(the longest extrapolation length measured, the ratio's metric key, the longest length's
    perplexity key, 1x's) where an extrapolation suite ran; None otherwise."""
    values = summary.attrs["values"]
    lengths = {float(k.split("|")[0].removeprefix("extrapolation_").rstrip("x")): k for k in values.columns
               if k.startswith("extrapolation_") and k.endswith("|perplexity") and values[k].notna().any()}
    if 1.0 not in lengths or max(lengths) <= 1.0:
        return None
    longest = max(lengths)
    return longest, f"extrapolation|ratio_{longest:g}x", lengths[longest], lengths[1.0]


def _ratio_test(summary: pd.DataFrame, variant: str) -> dict[str, Any] | None:
    """A variant's perplexity at the longest length over its perplexity at 1x, against 1 (no
    change): per run the log ratio; its variance over runs, plus the windows' own (the evaluation
    text's windows are items every run answers: each run's delta-method variance of the two log
    perplexities, averaged over runs). Conditional on the evaluation text: a different held-out
    text could move every variant's ratio."""
    _, key, at_l, at_1 = _ratios(summary)
    values, ses, runs = summary.attrs["values"], summary.attrs["ses"], summary.attrs["runs"]
    got = values.reindex(runs[variant])[[at_l, at_1]].dropna()
    if got.empty:
        return None
    logs = np.log(got[at_l] / got[at_1]).to_numpy()
    se = ses.reindex(got.index)[[at_l, at_1]] if at_l in ses and at_1 in ses else None
    windows = ((se[at_l] / got[at_l]) ** 2 + (se[at_1] / got[at_1]) ** 2).mean() if se is not None else math.nan
    row = {"variant": variant, "baseline": "1 (no change)", "metric": key, "n_seeds": len(logs),
           "n_seeds_baseline": math.nan, "mean": float(math.exp(logs.mean())), "baseline_mean": 1.0}
    if len(logs) < 2:
        return {**row, "delta": row["mean"] - 1, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                "decides": False, "test": "none: training noise unknown"}
    parts = [(logs.var(ddof=1) / len(logs), len(logs) - 1)]
    if math.isfinite(windows):
        parts.append((float(windows), stats.NORMAL_DF))
    var, df = stats.satterthwaite(parts)
    mean = float(logs.mean())
    if var == 0:
        p, half = (1.0 if mean == 0 else 0.0), 0.0
    else:
        p = float(2 * scipy_stats.t.sf(abs(mean) / math.sqrt(var), df))
        half = float(scipy_stats.t.ppf(1 - stats.ALPHA / 2, df) * math.sqrt(var))
    return {**row, "delta": math.exp(mean) - 1, "ci_low": math.exp(mean - half) - 1,
            "ci_high": math.exp(mean + half) - 1, "p_value": p, "decides": True,
            "test": "t over runs + windows, log ratio against 0" if len(parts) > 1 else "t over runs, log ratio"}


def comparisons(summary: pd.DataFrame, primary: list[str] | None = None) -> pd.DataFrame:
    """Each variant against the baseline, per metric (costs aside), and each variant's extrapolation
    ratio against 1: the difference with its 95% interval and p-value (stats.compare).

    `family` says which tests the marks come from: `primary` (primary_family; Holm's step-down
    adjustment over exactly these sets `p_adjusted` and `significant`, and the verdict reads the
    same rows), `exploratory` (every other test: its unadjusted p only, never marked), `item-only`
    (one run a side: training noise unknown, never marked; p Holm-adjusted among these)."""
    base = summary.attrs["baseline"]
    values, ses = summary.attrs["values"], summary.attrs["ses"]
    family = primary_family(summary, primary if primary is not None else summary.attrs.get("primary"))
    rows = []
    for variant in summary.index:
        if variant == base:
            continue
        for c in summary.attrs["columns"]:
            if c.kind in UNTESTED or c.key not in values:
                continue
            v_runs, b_runs, paired_runs = _aligned(summary, variant)
            v, b = values.reindex(v_runs)[c.key], values.reindex(b_runs)[c.key]
            sv = ses.reindex(v_runs)[c.key] if c.key in ses else v * math.nan
            sb = ses.reindex(b_runs)[c.key] if c.key in ses else b * math.nan
            items_v, clusters = _paired_items(summary, variant, c.key)
            items_b, _ = _paired_items(summary, base, c.key)
            result = stats.compare(v.to_numpy(), b.to_numpy(), items_v, items_b,
                                   float(sv.iloc[0]) if len(sv) == 1 else math.nan,
                                   float(sb.iloc[0]) if len(sb) == 1 else math.nan,
                                   paired_runs=paired_runs, clusters=clusters)
            rows.append({"variant": variant, "baseline": base, "metric": c.key, "n_seeds": int(v.notna().sum()),
                         "n_seeds_baseline": int(b.notna().sum()), "mean": v.mean(), "baseline_mean": b.mean(),
                         "delta": result.delta, "ci_low": result.low, "ci_high": result.high,
                         "p_value": result.p_value, "decides": result.decides, "test": result.test})
    if _ratios(summary):
        rows += [r for r in (_ratio_test(summary, v) for v in summary.index) if r is not None]
    out = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("family", "p_adjusted", "significant")]
                       + ["decides"])
    out["family"] = ["item-only" if not d else "primary" if m in family else "exploratory"
                     for m, d in zip(out.metric, out.decides)]
    out["p_adjusted"] = math.nan
    for name in ("primary", "item-only"):
        part = out.family == name
        out.loc[part, "p_adjusted"] = stats.holm(out.loc[part, "p_value"].tolist())
    out["significant"] = [bool(p < stats.ALPHA) if f == "primary" and math.isfinite(p) else None
                          for p, f in zip(out.p_adjusted, out.family)]
    out = out[COMPARISON_COLUMNS].copy()
    out.attrs["tests"] = int(((out.family == "primary") & out.p_value.notna()).sum())
    out.attrs["family"] = family
    return out


def noise(summary: pd.DataFrame, df: pd.DataFrame, comps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per metric: the SD of a run's value over runs of one variant (pooled over variants), split
    into init-seed, data-order and residual parts where a variant's runs cross two or more seeds of
    each; the item-level SD of one run's value; the signal-to-noise ratio (the SD of the variants'
    true means, estimated as the spread of their means less what run noise alone gives, floored
    at 0, over the run SD: 0 where noise explains the spread); and the smallest difference the
    runs per variant find with 80% power by the report's test (paired where the arms pair) at the
    Holm-adjusted level of the primary family's first step. df_init / df_data: the degrees of
    freedom of the init and data-order parts (levels - 1, summed over variants). `comps`: the
    report's comparisons, where already made (the family's size and whether the arms pair)."""
    values, ses, runs = summary.attrs["values"], summary.attrs["ses"], summary.attrs["runs"]
    seeds = df.drop_duplicates("run").set_index("run")[["seed", "data_seed"]]
    comps = comparisons(summary) if comps is None and len(summary) > 1 else comps
    tests = comps.attrs["tests"] if comps is not None else 1
    paired = comps is not None and comps.test.str.startswith("paired over replicates").any()
    rows = []
    for c in summary.attrs["columns"]:
        if c.kind in UNTESTED or c.key not in values:
            continue
        variances, dfs, components, means, grid_dfs = [], [], [], [], [0, 0]
        for names in runs.values():
            got = values.reindex(names)[c.key].dropna()
            if len(got):
                means.append(got.mean())
            if len(got) >= 2:
                variances.append(got.var(ddof=1))
                dfs.append(len(got) - 1)
                grid = pd.DataFrame({"v": got, **seeds.reindex(got.index)}).pivot_table(
                    index="seed", columns="data_seed", values="v", aggfunc="mean")
                if grid.shape[0] >= 2 and grid.shape[1] >= 2 and np.isfinite(grid.to_numpy()).all():
                    components.append(stats.noise_components(grid.to_numpy()))
                    grid_dfs = [grid_dfs[0] + grid.shape[0] - 1, grid_dfs[1] + grid.shape[1] - 1]
        sd = math.sqrt(np.average(variances, weights=dfs)) if variances else math.nan
        k = min((len(values.reindex(n)[c.key].dropna()) for n in runs.values()), default=0)
        item = ses[c.key].dropna() if c.key in ses else pd.Series(dtype=float)
        parts = {name: math.sqrt(np.mean([getattr(x, name) ** 2 for x in components])) if components else math.nan
                 for name in ("sd_init", "sd_data", "sd_residual")}
        rows.append({"metric": c.key, "runs_per_variant": k, "sd_runs": sd, **parts,
                     # what each source's SD rests on: 2 (a 3 x 3 grid) shows a source, it cannot rank them
                     "df_init": grid_dfs[0] if components else math.nan,
                     "df_data": grid_dfs[1] if components else math.nan,
                     "sd_items": math.sqrt((item**2).mean()) if len(item) else math.nan,
                     # the spread of the variants' means less what run noise alone gives them (sd^2 / k)
                     "snr": math.sqrt(max(0.0, np.var(means, ddof=1) - sd**2 / k)) / sd
                     if len(means) >= 2 and sd > 0 and k else math.nan,
                     "mde": stats.mde(sd, k, tests=max(1, tests), paired=paired, item_var=_item_var_of_differences(
                         summary, c.key), sd_diff=_sd_of_differences(summary, c.key) if paired else None)})
    return pd.DataFrame(rows)


def _item_var_of_differences(summary: pd.DataFrame, key: str) -> float:
    """The item-set variance of a difference to the baseline (stats.item_variance), averaged over
    the variants; 0 for a metric without per-item results."""
    found = []
    for variant in summary.index:
        if variant == summary.attrs["baseline"]:
            continue
        v, clusters = _paired_items(summary, variant, key)
        b, _ = _paired_items(summary, summary.attrs["baseline"], key)
        if v is not None and b is not None:
            found.append(stats.item_variance(v, b, clusters)[0])
    return float(np.mean(found)) if found else 0.0


def _sd_of_differences(summary: pd.DataFrame, key: str) -> float | None:
    """The SD of the per-replicate differences to the baseline, pooled over the variants whose
    replicates pair with the baseline's (what a paired test's power rests on); None without any."""
    values, base = summary.attrs["values"], summary.attrs["baseline"]
    if key not in values:
        return None
    variances, dfs = [], []
    for variant in summary.index:
        v_runs, b_runs, paired = _aligned(summary, variant)
        if variant == base or not paired:
            continue
        d = values.reindex(v_runs)[key].to_numpy() - values.reindex(b_runs)[key].to_numpy()
        d = d[np.isfinite(d)]
        if len(d) >= 2:
            variances.append(d.var(ddof=1))
            dfs.append(len(d) - 1)
    return math.sqrt(np.average(variances, weights=dfs)) if variances else None


def verdict(summary: pd.DataFrame, comps: pd.DataFrame) -> list[str]:
    """In plain words, per metric of the primary family: each variant against the baseline, from
    exactly the rows of `comps` that set the table's marks (the same test, the same Holm-adjusted
    p): better or worse where marked, not separable otherwise; the extrapolation ratio against 1.
    With one run per variant, only the order, and that training noise is unknown. Metrics outside
    the family get no verdict (they are exploratory)."""
    values, runs, base = summary.attrs["values"], summary.attrs["runs"], summary.attrs["baseline"]
    columns = {c.key: c for c in summary.attrs["columns"]}
    lines = []
    for key in comps.attrs.get("family", []):
        rows = comps[comps.metric == key]
        if key.startswith("extrapolation|ratio_"):
            line = extrapolation_verdict(summary, comps)
            if line:
                lines.append(line)
            continue
        c = columns[key]
        have = {v: values.reindex(runs[v])[key].dropna() for v in summary.index} if key in values else {}
        have = {v: x for v, x in have.items() if len(x)}
        if len(have) < 2 or base not in have:
            continue
        direction = "higher is better" if c.higher_is_better else "lower is better"
        order = sorted(have, key=lambda v: have[v].mean(), reverse=c.higher_is_better)
        if min(len(x) for x in have.values()) < 2 or not (rows.family == "primary").any():
            named = ", ".join(f"`{v}` ({_fmt(have[v].mean())})" for v in order)
            lines.append(f"**{c.label}** ({direction}): one run per variant, so training noise is unknown and no "
                         f"difference can be called real. By value: {named}.")
            continue
        by = {r.variant: r for r in rows.itertuples()}
        better, worse, level = [], [], []
        for v in order:
            r = by.get(v)
            if v == base or r is None:
                continue
            text = f"`{v}` {_fmt(r.mean)} ({r.delta:+.3g}{'*' if r.significant else ''}, p_adj {_p(r.p_adjusted)})"
            up = (r.delta > 0) == c.higher_is_better
            (better if r.significant and up else worse if r.significant else level).append(text)
        k = sorted({len(x) for x in have.values()})
        runs_each = f"{k[0]} runs each" if len(k) == 1 else f"{k[0]} to {k[-1]} runs each"
        parts = ([f"better: {', '.join(better)}"] if better else []) + ([f"worse: {', '.join(worse)}"] if worse else [])
        parts += [f"not separable: {', '.join(level)}"] if level else []
        lines.append(f"**{c.label}** ({direction}, {runs_each}; against `{base}` {_fmt(have[base].mean())}): "
                     + "; ".join(parts) + ".")
    return lines


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2g}" if p >= 0.001 else "< 0.001"


def extrapolation_verdict(summary: pd.DataFrame, comps: pd.DataFrame | None = None) -> str | None:
    """Which variants hold their perplexity beyond the training length: per run, perplexity at the
    longest length measured over perplexity at 1x; per variant, the geometric mean of that ratio
    with its 95% interval (runs and the evaluation text's windows, _ratio_test), and whether it
    differs from 1, from the same rows of `comps` as the marks (Holm over the primary family where
    the ratio is in it). None without an extrapolation suite."""
    found = _ratios(summary)
    if found is None:
        return None
    longest, key, at_l, _ = found
    comps = comparisons(summary) if comps is None else comps
    by = {r.variant: r for r in comps[comps.metric == key].itertuples()}
    notes = summary.attrs["notes"]
    primary = (comps[comps.metric == key].family == "primary").any()
    parts = []
    for v in sorted(summary.index, key=lambda v: by[v].mean if v in by else math.inf):
        r = by.get(v)
        if r is None:
            why = notes.get((v, at_l), "no value")
            parts.append(f"`{v}`: not measured at {longest:g}x ({why})")
        elif r.n_seeds < 2:
            parts.append(f"`{v}` {_fmt(r.mean)} (one run: no interval)")
        else:
            p = r.p_adjusted if primary else r.p_value
            word = "no change detected" if p >= stats.ALPHA else "worse" if r.mean > 1 else "better"
            mark = "*" if r.significant else ""
            parts.append(f"`{v}` {_fmt(r.mean)} [{_fmt(r.ci_low + 1)}, {_fmt(r.ci_high + 1)}] {word}{mark}")
    how = ("Holm-adjusted over the primary family" if primary else "exploratory: unadjusted")
    return (f"**extrapolation** (perplexity at {longest:g}x the training length over perplexity at 1x, per run; "
            f"geometric mean [95% interval from the runs and the evaluation text's windows, conditional on that "
            f"text] over runs; worse / better: differs from 1, {how}, 5%): " + "; ".join(parts) + ".")


# ---- rendering ----------------------------------------------------------------------------------
def render(summary: pd.DataFrame, comps: pd.DataFrame, noise_table: pd.DataFrame,
           title: str = "", fairness: list[str] = (), tuning: list[str] = ()) -> tuple[str, pd.DataFrame]:
    """table.md's text (what the arms hold equal, the verdict, the chosen LRs, main table,
    extrapolation, stability, noise, legend) and the full table of strings (every column) for
    LaTeX."""
    base, notes = summary.attrs["baseline"], summary.attrs.get("notes", {})
    marks = {(r.variant, r.metric): r for r in comps.itertuples()}
    one_run = int(summary.seeds.min()) < 2

    def cell(variant: str, c: Column) -> str:
        v, low, high = summary.loc[variant, c.key], summary.loc[variant, f"{c.key}|low"], \
            summary.loc[variant, f"{c.key}|high"]
        note = notes.get((variant, c.key))
        if not math.isfinite(v):
            return f"n/a ({note})" if note else "n/a"
        if c.kind in UNTESTED:
            return _fmt(v)
        text = _fmt(v) + (f" ± {_fmt((high - low) / 2)}" if math.isfinite(low) else "")
        r = marks.get((variant, c.key))
        if r is not None and math.isfinite(r.delta):
            text += f" ({r.delta:+.3g}{'*' if r.significant else ''})"
        return text + (f" [without {note}]" if note else "")

    def header(c: Column) -> str:
        extra = f", chance {_fmt(c.chance)}" if c.chance is not None else ""
        extra += " (any source word; any lexicon word: " + _fmt(c.lexicon) + ")" if c.lexicon is not None else ""
        extra += ", at chance: not averaged" if c.key in summary.attrs["uninformative"] else ""
        return f"{c.label} ({extra.removeprefix(', ')})" if extra else c.label

    subtasks = {t for sub in summary.attrs.get("groups", {}).values() for t in sub}
    columns = summary.attrs["columns"]
    full = pd.DataFrame({header(c): [cell(v, c) for v in summary.index] for c in columns}, index=summary.index)
    full.insert(0, "runs", summary["runs"])
    main = [c for c in columns if (c.kind in ("train", "confounded", "average", "cost") and c.key != "train|wall_time_s"
                                   and not c.key.startswith("extrapolation_"))
            or (c.kind == "task" and c.key.split("|")[0] not in subtasks)]
    narrow = full[["runs", *[header(c) for c in main]]]
    extra = [c for c in columns if c.kind == "extrapolation"]
    lines = [f"# {title}" if title else ""]
    per_byte = summary.attrs.get("tokenizers")
    if per_byte:
        fairness = [*fairness, "the arms use different tokenizers (" + ", ".join(f"`{f}`" for f in per_byte)
                    + "): losses are compared in bits per byte of the held-out text (val bits/byte); per-token loss "
                    "and perplexities are shown but not compared, since a token is not the same unit across them"]
    if fairness:
        lines += ["## Fairness", "", *[f"- {line}" for line in fairness], ""]
    lines += ["## Verdict", ""]
    lines += [f"- {line}" for line in verdict(summary, comps)] or ["- nothing to compare"]
    if tuning:
        lines += ["", *tuning]
    lines += ["", f"## Main metrics (baseline `{base}`)", "", narrow.to_markdown()]
    if extra:
        ex = pd.DataFrame({c.key.split("|")[0].split("_")[-1]: [cell(v, c) for v in summary.index] for c in extra},
                          index=summary.index)
        lines += ["", "## Length extrapolation (perplexity at multiples of the training length)", "",
                  ex.to_markdown()]
    stable = [c for c in columns if c.kind == "stability"]
    if stable:
        st = pd.DataFrame({c.label: [cell(v, c) for v in summary.index] for c in stable}, index=summary.index)
        st.insert(0, "runs", summary["runs"])
        lines += ["", "## Stability (means over completed runs)", "", st.to_markdown(), "",
                  f"A loss spike: a step whose loss exceeds {stats.LOSS_SPIKE:g}x the median of the "
                  f"{stats.SPIKE_WINDOW} steps before it; a grad-norm spike: {stats.GRAD_SPIKE:g}x. "
                  "Max attn logit: the largest |q.k| x scale (before position bias and soft-cap) on the "
                  "first validation batch of the final model."]
    if not noise_table.empty:
        shown = noise_table.set_index("metric").map(_fmt)
        shown.index = shown.index.str.replace("|", "\\|")  # a metric key names its task: task|metric
        lines += ["", "## Noise per metric", "", shown.to_markdown()]
    lines += ["", _legend(base, comps.attrs.get("tests", 0), one_run, summary, comps.attrs.get("family", []))]
    return "\n".join(x for x in lines if x is not None).lstrip() + "\n", full


def _legend(base: str, tests: int, one_run: bool, summary: pd.DataFrame, family: list[str] = ()) -> str:
    averaged = ", ".join(k.split("|")[0].removeprefix("ablate_") for k in summary.attrs["average_tasks"]) or "none"
    named = ", ".join(k.replace("|", " ") for k in family) or "none"
    text = (f"Each cell: the mean over completed runs ± the half-width of its 95% interval (t over runs, k - 1 "
            f"degrees of freedom; for an accuracy, widened by the noise of its item set, counted once, and for "
            f"a perplexity on the extrapolation windows by the windows' own: `interval` in table.csv says "
            f"which), then (the difference to the baseline `{base}`). ")
    if one_run:
        text += ("With one run of a variant, training noise is unknown: its interval is item-only (the item-level "
                 "error, clustered where items share a context) and no difference is marked; comparisons.csv has "
                 "the item-only tests (McNemar for accuracies). ")
    text += (f"* marks a difference in the primary family ({named}) that survives seed noise and multiple "
             f"comparisons: over runs (paired over replicates where the arms share their (init seed, data order) "
             f"pairs, else Welch's t; plus the item-set noise of the paired difference for accuracies), "
             f"Holm-adjusted p < 0.05 over the family's {tests} tests; the verdict reads the same tests. Every other "
             f"difference is exploratory: comparisons.csv gives its unadjusted p, and it is never marked. Averages "
             f"are per run, over the multiple-choice accuracies every variant has ({averaged}; lm-eval groups count "
             f"once, tasks at chance are left out), then over runs; chance-adj. is (acc - chance) / (1 - chance). "
             f"[without ...] names the runs a cell leaves out: failed, diverged, interrupted or missing runs, and "
             f"completed runs whose evaluation is stale or absent. Noise: SD of a run over runs of one variant (by "
             f"source where seeds x data seeds cross, with the degrees of freedom each part rests on), SD items = "
             f"the item-level error of one run, SNR = the SD of the variants' true means (their spread less what "
             f"run noise alone gives, floored at 0) over the run SD, MDE = the smallest difference the runs per "
             f"variant find with 80% power at the family's Holm-adjusted level.")
    return text


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{x:,}"
    if abs(x) >= 1e5:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def fairness_lines(experiment: ExperimentDir) -> list[str]:
    """What the sweep's plan found the arms hold equal, and each confound (ablate.fairness)."""
    found = experiment.fairness()
    if found is None:
        return ["not planned by `ablate-train -m`: the arms were not checked for confounds"]
    lines = [f"**{c}**" for c in found.get("confounds", [])]
    if not lines and len(found.get("arms", [])) > 1:
        axes = ", ".join(f"`{a}`" for a in found.get("axes", [])) or "nothing"
        lines.append(f"no confound: the arms' configs differ only in {axes}")
    return lines + found.get("notes", [])


def tuning_lines(experiment: ExperimentDir, summary: pd.DataFrame) -> list[str]:
    """+tune=lr: each arm's chosen LR, and whether the arms rank the same at the shared base LR."""
    from ablate import tune

    found = experiment.tuning()
    if found is None:
        return []
    choices = [tune.Choice.from_dict(a) for a in found["arms"]]
    base = found["base_lr"]
    lines = ["## Learning rate, per arm", "",
             f"Each arm trained once (seed {found['seed']}, {found['tokens']:,} tokens) at {base:g} x "
             f"{', '.join(f'{m:g}' for m in found['multipliers'])}; its seeds ran at the LR with the lowest final "
             f"validation loss (lr_sensitivity.png).", ""]
    rows = {c.arm: {"chosen LR": f"{c.lr:g}" + (f" (at the {c.edge} end of the grid)" if c.edge else ""),
                    "largest LR not diverged": "none" if c.max_stable_lr is None else f"{c.max_stable_lr:g}",
                    **{f"val_loss @ {lr:g}": "diverged" if math.isinf(v) else f"{v:.4f}"
                       for lr, v in zip(c.lrs, c.val_loss)}} for c in choices}
    lines += [pd.DataFrame(rows).T.to_markdown(), ""]
    at_base = {c.arm: c.val_loss[c.lrs.index(base)] for c in choices if base in c.lrs}
    tuned = summary["train|val_loss"].dropna() if "train|val_loss" in summary else pd.Series(dtype=float)
    arms = [a for a in at_base if a in tuned.index]
    if len(arms) > 1:
        order_base = sorted(arms, key=lambda a: at_base[a])
        order_tuned = sorted(arms, key=lambda a: tuned[a])
        same = order_base == order_tuned
        lines.append(f"By validation loss, at each arm's own LR: {' < '.join(order_tuned)}; at the shared base LR "
                     f"{base:g} (one run an arm): {' < '.join(order_base)}. "
                     + ("The same order: giving each arm its own LR does not change the ranking."
                        if same else "**A different order: at one shared LR this comparison would have said "
                        "something else.**"))
    else:
        lines.append("The base LR is not in the grid, or too few arms finished: no comparison at the shared LR.")
    edges = [c.arm for c in choices if c.edge]
    if edges:
        lines.append(f"**{', '.join(edges)}: best at the edge of the grid; widen tune.lr_multipliers to find "
                     f"the optimum.**")
    return lines


def plot_lr_sensitivity(experiment: ExperimentDir, out: Path) -> Path | None:
    """Final validation loss against LR, one line per arm; diverged runs as x at the top, the chosen
    LR as a star."""
    from ablate import tune

    found = experiment.tuning()
    if found is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = [tune.Choice.from_dict(a) for a in found["arms"]]
    finite = [v for c in choices for v in c.val_loss if math.isfinite(v)]
    top = max(finite) * 1.02 if finite else 1.0
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in choices:
        ok = [(lr, v) for lr, v in zip(c.lrs, c.val_loss) if math.isfinite(v)]
        line, = ax.plot([p[0] for p in ok], [p[1] for p in ok], marker="o", label=c.arm)
        bad = [lr for lr, v in zip(c.lrs, c.val_loss) if not math.isfinite(v)]
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", color=line.get_color())
        best = dict(ok).get(c.lr)
        if best is not None:
            ax.scatter([c.lr], [best], marker="*", s=150, color=line.get_color(), zorder=3)
    ax.axvline(found["base_lr"], color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="learning rate", ylabel="final validation loss",
           title="LR sensitivity (one run per point; star: chosen; x: diverged; dashed: base LR)")
    ax.legend(fontsize=8)
    path = _save(fig, out / "lr_sensitivity.png")
    plt.close(fig)
    return path


# ---- plots --------------------------------------------------------------------------------------
def plot(experiment_dir: Path, df: pd.DataFrame, summary: pd.DataFrame, comps: pd.DataFrame,
         out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    df, note = plotted(df)
    runs = df.drop_duplicates("run").set_index("run")
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, group in runs.groupby("variant", sort=False):
        curves = [_loss_curve(RunDir(experiment_dir / run)) for run in group.index]
        curves = [c for c in curves if c is not None]
        if not curves:
            continue
        merged = pd.concat(curves, axis=1).sort_index()
        mean, lo, hi = merged.mean(axis=1), merged.min(axis=1), merged.max(axis=1)
        ax.plot(mean.index, mean.values, label=variant)
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
    per_token = " per token (tokenizers differ: not comparable)" if summary.attrs.get("tokenizers") else ""
    ax.set(xlabel="tokens", ylabel="training loss", title=f"Loss{per_token} (mean, band: min-max over runs)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "loss.png", note))

    extra = [c for c in summary.attrs["columns"] if c.kind == "extrapolation"]
    if extra:
        fig, ax = plt.subplots(figsize=(7, 4))
        x = [float(c.key.split("|")[0].split("_")[-1].rstrip("x")) for c in extra]
        for variant in summary.index:
            y = np.array([summary.loc[variant, c.key] for c in extra])
            lo = np.array([summary.loc[variant, f"{c.key}|low"] for c in extra])
            hi = np.array([summary.loc[variant, f"{c.key}|high"] for c in extra])
            line, = ax.plot(x, y, marker="o", label=variant)
            ok = np.isfinite(lo)
            if ok.any():
                ax.fill_between(np.array(x)[ok], lo[ok], hi[ok], alpha=0.15, color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="evaluation length / training length", ylabel="perplexity",
               title="Length extrapolation (95% intervals; n/a points omitted)")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "extrapolation.png", note))

    if "average|acc" in summary:
        fig, ax = plt.subplots(figsize=(7, 4))
        mean = summary["average|acc"]
        err = np.vstack([mean - summary["average|acc|low"], summary["average|acc|high"] - mean]).clip(min=0)
        ax.bar(summary.index, mean, yerr=np.nan_to_num(err), capsize=4)
        kinds = sorted({k for k in summary["average|acc|interval"] if k})
        ax.set(ylabel="average accuracy", title=f"Average accuracy over tasks (95% interval: {', '.join(kinds)})")
        ax.tick_params(axis="x", rotation=30)
        paths.append(_save(fig, out / "scores.png", note))

    family = comps.attrs.get("family", [])  # the forest plot shows the primary family's differences
    cols = [c for c in summary.attrs["columns"] if c.key in family and (comps.metric == c.key).any()]
    if cols:
        fig, axes = plt.subplots(len(cols), 1, figsize=(7, 1.2 + 1.1 * len(cols) * max(1, len(summary) - 1) ** 0.5),
                                 squeeze=False)
        for ax, c in zip(axes[:, 0], cols):
            part = comps[comps.metric == c.key]
            y = np.arange(len(part))
            lower = (part.delta - part.ci_low).clip(lower=0).fillna(0)
            upper = (part.ci_high - part.delta).clip(lower=0).fillna(0)
            for i, r in enumerate(part.itertuples()):
                ax.errorbar(r.delta, i, xerr=[[lower.iloc[i]], [upper.iloc[i]]], fmt="o", capsize=3,
                            color="C3" if r.significant else "C0", mfc="C3" if r.significant else "white")
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(y, part.variant)
            better = "right" if c.higher_is_better else "left"
            ax.set_title(f"{c.label}: difference to {summary.attrs['baseline']} ({better} is better; red: "
                         f"marked, Holm over the primary family)", fontsize=9)
        paths.append(_save(fig, out / "deltas.png", note))
    live = live_curves(experiment_dir, runs)
    if not live.empty:
        paths.append(plot_live(live, out / "during_training.png", note))
    return paths


def live_curves(experiment_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The evaluations of the live model during training (train.eval_every_tokens) of the plotted
    runs: variant, run, tokens, task, value."""
    rows = [{"variant": variant, "run": run, "tokens": r["tokens"], "task": task, "value": value}
            for run, variant in runs["variant"].items() for r in RunDir(experiment_dir / run).metrics()
            if "live" in r for task, value in r["live"].items()]
    return pd.DataFrame(rows, columns=["variant", "run", "tokens", "task", "value"])


def plot_live(live: pd.DataFrame, path: Path, note: str = "") -> Path:
    """Each task's metric against tokens per variant: the mean over runs and its 95% interval (t over
    runs), so that one sees when variants separate, not only where they end."""
    import matplotlib.pyplot as plt

    tasks = sorted(live.task.unique())
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.2 * len(tasks)), squeeze=False, sharex=True)
    for ax, task in zip(axes[:, 0], tasks):
        for variant, part in live[live.task == task].groupby("variant", sort=False):
            points = [(tokens, stats.interval(group.value.to_numpy())) for tokens, group in part.groupby("tokens")]
            x = [t for t, _ in points]
            ax.plot(x, [iv.mean for _, iv in points], marker=".", label=variant)
            ax.fill_between(x, [iv.low for _, iv in points], [iv.high for _, iv in points], alpha=0.2)
        ax.set_ylabel(task.removeprefix("ablate_"), fontsize=8)
    axes[0, 0].set_title("During training (mean over runs, band: 95% interval)")
    axes[-1, 0].set_xlabel("tokens")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path, note)


def plotted(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of completed runs (the only ones plots draw), and a note naming the others."""
    runs = df.drop_duplicates("run")
    others = runs[runs.status != "completed"]
    note = "not drawn: " + ", ".join(f"{r} ({s})" for r, s in zip(others.run, others.status)) if len(others) else ""
    return df[df.status == "completed"], note


def _loss_curve(run: RunDir) -> pd.Series | None:
    rows = run.metrics()
    points = {r["tokens"]: _num(r["loss"]) for r in rows if "loss" in r}
    return pd.Series(points, dtype=float) if points else None


def _save(fig, path: Path, note: str = "") -> Path:
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---- writing ------------------------------------------------------------------------------------
def report(experiment_dir: str | Path, baseline: str | None = None,
           target_flops: float | None = None, primary: list[str] | None = None) -> dict[str, Path]:
    """Build the verdict, tables and plots of an experiment (and, for a ladder, its fits and
    decisions: ablate.ladder, predicting at `target_flops`); returns the files written. `primary`:
    the primary family's metrics, over what the experiment declares (`report.primary`)."""
    experiment = ExperimentDir(experiment_dir)
    df = collect(experiment.path)
    out = experiment.report_dir
    out.mkdir(exist_ok=True)
    for run, status in df.drop_duplicates("run")[["run", "status"]].itertuples(index=False):
        if status != "completed":
            warnings.warn(f"{run}: {status}; left out of the means", stacklevel=2)
    for (run, _), why in df.attrs.get("stale", {}).items():
        warnings.warn(f"{run}: {why}; not used", stacklevel=2)
    for run in df[(df.task == "eval") & (df.metric == "missing") & (df.status == "completed")].run.unique():
        warnings.warn(f"{run}: no evaluation of its final checkpoint", stacklevel=2)
    summary = summarize(df, baseline)
    if primary:
        summary.attrs["primary"] = primary
    comps = comparisons(summary)
    noise_table = noise(summary, df, comps)
    count = f"{len(summary)} variant" + ("s" if len(summary) != 1 else "")
    text, full = render(summary, comps, noise_table, f"{experiment.path.name}: {count}",
                        fairness_lines(experiment), tuning_lines(experiment, summary))
    written = {"md": out / "table.md", "csv": out / "table.csv", "tex": out / "table.tex",
               "comparisons": out / "comparisons.csv", "noise": out / "noise.csv"}
    written["md"].write_text(text)
    summary.to_csv(written["csv"])
    comps.to_csv(written["comparisons"], index=False)
    noise_table.to_csv(written["noise"], index=False)
    tex = full.to_latex(escape=True)  # booktabs rules
    written["tex"].write_text(tex.replace("±", r"$\pm$"))
    rungs = ladder.analyse(df, target_flops) if "rung" in df else {}
    if rungs:
        written["ladder"], written["decisions"] = out / "ladder.csv", out / "decisions.csv"
        rungs["fits"].to_csv(written["ladder"], index=False)
        rungs["decisions"].to_csv(written["decisions"], index=False)
        at = text.index("## Main metrics") if "## Main metrics" in text else len(text)
        text = text[:at] + "\n".join(rungs["lines"]) + "\n" + text[at:]
        written["md"].write_text(text)
        written.update({p.stem: p for p in ladder.plot(rungs, out)})
    for path in [*plot(experiment.path, df, summary, comps, out), plot_lr_sensitivity(experiment, out)]:
        if path is not None:
            written[path.stem] = path
    images = [p for p in written.values() if p.suffix == ".png"]
    written["html"] = write_text(out / "index.html", html_page(f"{experiment.path.name}: {count}", text, images))
    print(text)
    return written


# ---- index.html ---------------------------------------------------------------------------------
def html_page(title: str, markdown: str, images: list[Path]) -> str:
    """One self-contained page: table.md's text as HTML and every plot inlined (base64), so it opens
    offline from a file browser or a paper's supplement, with no server and no other file."""
    import base64
    import html

    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>\n'
        for p in images)
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
             "code{background:#f3f3f3;padding:0 .2em}figure{margin:1.5em 0}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n{markdown_html(markdown)}\n<h2>Plots</h2>\n{figures}"
            "</body></html>\n")


def markdown_html(text: str) -> str:
    """The subset of Markdown the report writes (headings, lists, pipe tables, paragraphs, **bold**,
    `code`) as HTML."""
    import html
    import re

    def inline(s: str) -> str:
        s = html.escape(s, quote=False)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)

    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[i].strip()[1:-1])]
                if not all(set(c) <= set(":-") for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
            continue
        i += 1
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        args = key_values(argv, ARGUMENTS)
        root = Path(args.get("results_dir", "results"))
        if "experiment" not in args and "path" not in args:
            raise ConfigError("argument", sorted(args), "say experiment=NAME or path=DIR")
        target = Path(args["path"]) if "path" in args else root / args["experiment"]
        if not target.is_dir():
            there = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ConfigError("experiment", str(target), "no such directory", valid=there or None)
        try:
            target_flops = float(args["target_flops"]) if "target_flops" in args else None
        except ValueError:
            raise ConfigError("target_flops", args["target_flops"], "must be a number of FLOPs, e.g. 1e21") from None
        primary = [k for k in args["primary"].split(",") if k] if "primary" in args else None
        for name, path in report(target, args.get("baseline"), target_flops, primary).items():
            print(f"{name}: {path}")
        return 0

    return command(__doc__, argv, body)


if __name__ == "__main__":
    sys.exit(main())
