"""Analyse: a Collection -> per variant and metric, the mean over completed runs and its 95%
interval, with what the tests and sections need (each run's values, the item results, which
accuracies are informative, what a cell leaves out), held in a typed `Analysis`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ablate import stats
from ablate.registry import ConfigError
from ablate.report.collect import COST, STABILITY, Collection, Items
from ablate.report.keys import AVERAGE, AVERAGE_ADJ, VAL_BPB, VAL_LOSS, MetricKey

# the metric that stands for a task in the table, in order of preference
MAIN_METRICS = ("acc", "perplexity", "word_perplexity")
# cost columns shown only where some run recorded them (MFU: a device with a known peak; a teacher's forward)
SOMETIMES = ("mfu", "teacher_flops_per_token", "live_eval_share")
# shown, never tested: costs, counts of rare events, and per-token metrics of arms with different
# tokenizers (a token is not the same unit)
UNTESTED = ("cost", "stability", "confounded")
HIGHER_IS_BETTER = {"acc": True, "acc_chance_adj": True, "perplexity": False, "word_perplexity": False,
                    "val_loss": False, "val_bpb": False}


@dataclass(frozen=True)
class Column:
    """One metric of the table."""

    key: MetricKey
    label: str
    higher_is_better: bool
    chance: float | None = None  # accuracy by guessing, where known
    kind: str = "task"  # train | task | extrapolation | average | cost | stability | confounded
    lexicon: float | None = None  # the copy probe: guessing any word of the lexicon (chance: any source word)


@dataclass
class Analysis:
    """The report's numbers, for every section to read.

    variants: in the sweep's order; baseline: the one every other is compared with. columns: the
    table's metrics. runs: variant -> its completed runs; values / ses: per completed run (rows)
    and MetricKey (columns), the value and its item-level standard error (cluster-robust where
    items share a context). cells: (variant, key) -> the mean and its interval. seeds: variant ->
    completed runs; run_counts: variant -> its runs by status, as text. uninformative: the
    accuracies no variant lifts above chance. average_tasks: the tasks the averages are over.
    notes: (variant, key) -> which runs a cell leaves out and why. replicates: run -> (init seed,
    data order), which pairs runs across arms. primary: the primary family, where declared."""

    collection: Collection
    variants: list[str]
    baseline: str
    columns: list[Column]
    runs: dict[str, list[str]]
    values: pd.DataFrame
    ses: pd.DataFrame
    cells: dict[tuple[str, MetricKey], stats.Interval] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    run_counts: dict[str, str] = field(default_factory=dict)
    uninformative: list[MetricKey] = field(default_factory=list)
    average_tasks: list[MetricKey] = field(default_factory=list)
    notes: dict[tuple[str, MetricKey], str] = field(default_factory=dict)
    replicates: dict[str, tuple[int, int]] = field(default_factory=dict)
    primary: list[MetricKey | str] | None = None
    rungs: dict[str, str] = field(default_factory=dict)  # a ladder: variant -> its rung

    def baseline_of(self, variant: str) -> str | None:
        """The variant a variant is compared with: the baseline, or on a ladder the baseline's arm
        at the variant's own rung (never a variant of another rung); None where that arm has no
        run at the rung."""
        if not self.rungs:
            return self.baseline
        arm = self.collection.arms.get(self.baseline)
        same = [v for v in self.variants if self.rungs.get(v) == self.rungs.get(variant)
                and self.collection.arms.get(v) == arm]
        return same[0] if same else None

    @property
    def items(self) -> dict[tuple[str, str], Items]:
        return self.collection.items

    @property
    def groups(self) -> dict[str, list[str]]:
        return self.collection.groups

    @property
    def tokenizers(self) -> list[str]:
        return self.collection.tokenizers

    @property
    def subtasks(self) -> set[str]:
        """The tasks inside an lm-eval group (the group counts once, as one task)."""
        return {t for sub in self.groups.values() for t in sub}

    def column(self, key: MetricKey) -> Column:
        return next(c for c in self.columns if c.key == key)

    def has(self, key: MetricKey) -> bool:
        return any(c.key == key for c in self.columns)

    def means(self, key: MetricKey) -> pd.Series:
        """Each variant's mean of a metric (NaN where it has none)."""
        return pd.Series({v: self.cells[(v, key)].mean for v in self.variants}, dtype=float)

    def run_values(self, variant: str, key: MetricKey) -> pd.Series:
        """The values of a variant's completed runs on a metric (NaN where a run has none)."""
        got = self.values.reindex(self.runs[variant])
        return got[key] if key in got else pd.Series(math.nan, index=got.index)

    def table(self) -> pd.DataFrame:
        """table.csv: one row per variant; per metric its mean, interval bounds, runs and the
        interval's kind (`task|metric|low`, ...)."""
        rows = []
        for v in self.variants:
            row: dict[str, Any] = {"variant": v, "seeds": self.seeds[v], "runs": self.run_counts[v]}
            for c in self.columns:
                iv = self.cells[(v, c.key)]
                row.update({str(c.key): iv.mean, c.key.stat("low"): iv.low, c.key.stat("high"): iv.high,
                            c.key.stat("n"): iv.n, c.key.stat("interval"): iv.kind})
            rows.append(row)
        return pd.DataFrame(rows).set_index("variant")


def main_metrics(rows: pd.DataFrame) -> dict[str, str]:
    """task -> the metric that represents it (acc, else perplexity, ...); extrapolation rows keep perplexity."""
    chosen = {}
    for task, group in rows[~rows.task.isin(["train", "eval"])].groupby("task"):
        for metric in MAIN_METRICS:
            if metric in set(group.metric):
                chosen[task] = metric
                break
    return chosen


def columns_of(found: Collection) -> list[Column]:
    """The table's metrics: validation loss, each task's main metric, then the costs (the averages
    are added by analyse)."""
    df = found.rows
    per_byte = bool(found.tokenizers)  # arms with different tokenizers: a token is no common unit
    cols = ([Column(VAL_BPB, "val bits/byte", False, kind="train"),
             Column(VAL_LOSS, "val_loss per token (tokenizers differ: not compared)", False, kind="confounded")]
            if per_byte else [Column(VAL_LOSS, "val_loss", False, kind="train")])
    for task, metric in main_metrics(df).items():
        key = MetricKey(task, metric)
        kind = "extrapolation" if key.length is not None else "task"
        kind = "confounded" if per_byte and (kind == "extrapolation" or metric == "perplexity") else kind
        acc = key.is_accuracy
        cols.append(Column(key, f"{key.short_task} {metric}", HIGHER_IS_BETTER.get(metric, True),
                           found.chance.get(task) if acc else None, kind,
                           found.chance_lexicon.get(task) if acc else None))
    measured = set(df.metric[(df.task == "train") & df.value.notna()])
    cols += [Column(MetricKey("train", key), name, key in ("tokens_per_s", "mfu"), kind="cost")
             for key, name in COST.items() if key not in SOMETIMES or key in measured]
    have = set(df.metric[df.task == "train"])
    cols += [Column(MetricKey("train", key), name, False, kind="stability")
             for key, name in STABILITY.items() if key in have]
    return cols


def run_values(found: Collection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per completed run (rows) and MetricKey (columns): the value, and lm-eval's item-level stderr
    (cluster-robust where items share a context: lm-eval's treats them as independent)."""
    df = found.rows
    ok = df[df.status == "completed"].copy()
    main = main_metrics(df)
    ok = ok[(ok.task == "train") | ok.task.map(main).eq(ok.metric)]
    ok["key"] = [MetricKey(t, m) for t, m in zip(ok.task, ok.metric)]
    values = ok.pivot_table(index="run", columns="key", values="value", aggfunc="first", dropna=False)
    ses = ok.pivot_table(index="run", columns="key", values="stderr", aggfunc="first", dropna=False)
    values.columns.name = ses.columns.name = None
    for (run, task), got in found.items.items():
        key = MetricKey(task, "acc")
        if got.cluster is not None and run in ses.index and key in ses:
            ses.loc[run, key] = stats.cluster_se(got.acc, got.cluster)
    return values, ses


def analyse(found: Collection, baseline: str | None = None,
            primary: list[MetricKey | str] | None = None) -> Analysis:
    """One row per variant (in the sweep's order): for each metric the mean over completed runs and
    its 95% interval (t over runs, k - 1 degrees of freedom, widened by the item set's noise; with
    one run, lm-eval's item-level interval, labelled item-only), the averages over tasks, and run
    counts by status.

    The baseline is the first variant of the sweep unless `baseline` names another (ConfigError
    for a name that is not a variant). `primary`: the primary family's metrics, over what the
    experiment declares (`task|metric` text or keys)."""
    df = found.rows
    present = set(df.variant)
    variants = [v for v in found.order if v in present] or list(dict.fromkeys(df.variant))
    if baseline is None:
        baseline = variants[0]
    elif baseline not in variants:
        raise ConfigError("baseline", baseline, "not a variant of this experiment", valid=variants)
    values, ses = run_values(found)
    status = found.runs()
    runs = {v: list(status.index[(status.variant == v) & (status.status == "completed")]) for v in variants}
    a = Analysis(found, variants, baseline, columns_of(found), runs, values, ses,
                 replicates={r: (int(s.seed), int(s.data_seed)) for r, s in status.iterrows()},
                 primary=primary if primary else found.primary,
                 rungs=dict(zip(status.variant, status.rung)) if "rung" in status else {})
    # an accuracy is uninformative when no variant is above chance; one without a chance level (an
    # exact-match accuracy, as lambada's) when no variant is above 0
    a.uninformative = [c.key for c in a.columns
                       if (c.chance is not None or (c.kind == "task" and c.key.is_accuracy))
                       and not _lifted(a, c.key, c.chance or 0.0)]
    _add_averages(a)
    for variant in variants:
        _fill_variant(a, variant, df[df.variant == variant])
    return a


def _fill_variant(a: Analysis, variant: str, part: pd.DataFrame) -> None:
    """A variant's run counts, and per metric its mean and interval (and which runs it leaves out)."""
    counts = part.drop_duplicates("run").status.value_counts()
    retried = part[(part.metric == "retried_after") & (part.status == "completed")].run.nunique()
    a.seeds[variant] = len(a.runs[variant])
    a.run_counts[variant] = (", ".join(f"{n} {s}" for s, n in counts.items())
                             + (f" ({retried} retried after diverging)" if retried else ""))
    for c in a.columns:
        got = a.run_values(variant, c.key)
        se = a.ses.reindex(a.runs[variant])[c.key].dropna() if c.key in a.ses else pd.Series(dtype=float)
        a.cells[(variant, c.key)] = stats.interval(
            got.to_numpy(), float(se.iloc[0]) if len(got.dropna()) == 1 and len(se) else math.nan,
            items=item_term(a.items, list(got.dropna().index), c.key) or _window_term(se, c))
        if c.kind not in UNTESTED:
            note = _left_out(part, set(got.dropna().index), c.kind != "train", c.key)
            if note:
                a.notes[(variant, c.key)] = note


def _add_averages(a: Analysis) -> None:
    """The averages: over the multiple-choice accuracies (those with a chance level) every variant
    has, groups as units (their subtasks left out), tasks at chance left out; per run, then over runs."""
    measured = [v for v in a.variants if a.runs[v]]
    values, ses = a.values, a.ses
    a.average_tasks = [c.key for c in a.columns if c.key.is_accuracy and c.kind == "task" and c.chance is not None
                       and c.key.task not in a.subtasks and c.key not in a.uninformative
                       and all(values.reindex(a.runs[v])[c.key].notna().any() for v in measured)]
    if not a.average_tasks:
        return
    tasks = a.average_tasks
    guess = pd.Series({c.key: c.chance or 0.0 for c in a.columns if c.key in tasks})[tasks]
    values[AVERAGE] = values[tasks].mean(axis=1, skipna=False)
    values[AVERAGE_ADJ] = ((values[tasks] - guess) / (1 - guess)).mean(axis=1, skipna=False)
    # a run's item-level error of the mean over tasks (disjoint items, so independent within a run)
    ses[AVERAGE] = np.sqrt((ses[tasks] ** 2).sum(axis=1, min_count=1)) / len(tasks)
    ses[AVERAGE_ADJ] = ses[AVERAGE]
    at = next((i for i, c in enumerate(a.columns) if c.kind == "cost"), len(a.columns))
    a.columns[at:at] = [Column(AVERAGE, "average acc", True, kind="average"),
                        Column(AVERAGE_ADJ, "average acc (chance-adj.)", True, kind="average")]


def item_matrix(items: dict[tuple[str, str], Items], names: list[str], task: str,
                ids: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(runs, items) per-item accuracies of the runs `names` on `task`, on the items they all
    answered (or on `ids`), in doc order, with those items' clusters; (None, None) where a run kept
    none."""
    ids = shared_ids(items, names, task) if ids is None else ids
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


def shared_ids(items: dict[tuple[str, str], Items], names: list[str], task: str) -> np.ndarray | None:
    """The doc ids every run of `names` answered on `task`, sorted; None where a run kept none."""
    if not names or not all((r, task) in items for r in names):
        return None
    return np.array(sorted(set.intersection(*(set(items[(r, task)].ids.tolist()) for r in names))))


def item_term(items: dict[tuple[str, str], Items], names: list[str], key: MetricKey) -> tuple[float, int] | None:
    """The item-set noise of the mean accuracy of runs `names` (stats.item_variance), for an
    accuracy whose items every run kept; None otherwise (a loss, a perplexity, one run)."""
    if not key.is_accuracy or len(names) < 2:
        return None
    x, clusters = item_matrix(items, names, key.task)
    return None if x is None else stats.item_variance(x, clusters=clusters)


def _window_term(se: pd.Series, c: Column) -> tuple[float, int] | None:
    """The evaluation text's own noise in a perplexity measured on windows every run reads (the
    windows are the items): each run's delta-method variance, averaged over runs; None for other
    metrics or without standard errors."""
    if c.kind != "extrapolation" or len(se) < 2:
        return None
    return float((se**2).mean()), stats.NORMAL_DF


def _lifted(a: Analysis, key: MetricKey, chance: float) -> bool:
    """Whether some variant's interval (item noise included; Bonferroni over the variants) lies
    above chance."""
    if key not in a.values:
        return False
    level = 1 - stats.ALPHA / max(1, len(a.variants))
    for names in a.runs.values():
        got = a.values.reindex(names)[key].dropna()
        se = a.ses.reindex(names)[key].dropna() if key in a.ses else pd.Series(dtype=float)
        iv = stats.interval(got.to_numpy(), float(se.iloc[0]) if len(got) == 1 and len(se) else math.nan, level,
                            items=item_term(a.items, list(got.index), key))
        if math.isfinite(iv.low) and iv.low > chance:
            return True
    return False


def _left_out(part: pd.DataFrame, used: set[str], evals: bool, key: MetricKey) -> str:
    """Why the runs of a variant that a cell does not average are left out, e.g. "1 diverged, 1 stale eval"
    ("not applicable": the evaluation measured nothing there, as learned positions beyond their length)."""
    reasons = []
    for run, group in part.groupby("run", sort=True):
        if run in used:
            continue
        status = group.status.iloc[0]
        if status != "completed":
            reasons.append(status)
        elif evals and ((group.task == key.task) & (group.metric == key.metric)).any():
            reasons.append("not applicable")
        elif evals:
            reasons.append("stale eval" if group.metric.str.startswith("stale:").any() else "no eval")
    return ", ".join(f"{n} {r}" for r, n in pd.Series(reasons, dtype=object).value_counts().items())


def paired_items(a: Analysis, variant: str, key: MetricKey) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(runs, items) per-item accuracies of `variant` on the items every run of both arms answered,
    in doc order, and those items' clusters (None where each item is its own)."""
    if not key.is_accuracy:
        return None, None
    base = a.baseline_of(variant)
    shared = shared_ids(a.items, a.runs[variant] + a.runs[base], key.task)  # both arms answered
    return (None, None) if shared is None else item_matrix(a.items, a.runs[variant], key.task, shared)


def aligned(a: Analysis, variant: str) -> tuple[list[str], list[str], bool]:
    """The completed runs of `variant` and of the baseline, and whether they pair: where both arms
    hold the same replicates, the baseline's runs reordered so that run k of each is replicate k."""
    base = a.baseline_of(variant)
    keys_v, keys_b = _replicates(a, variant), _replicates(a, base)
    if keys_v is None or keys_b is None or set(keys_v) != set(keys_b):
        return a.runs[variant], a.runs[base], False
    by_key = dict(zip(keys_b, a.runs[base]))
    return a.runs[variant], [by_key[k] for k in keys_v], True


def _replicates(a: Analysis, variant: str) -> list[tuple[int, int]] | None:
    """The (init seed, data order) of each completed run of `variant`, in its run order; None
    where two runs share one (then no replicate pairs with another arm's)."""
    keys = [a.replicates.get(r) for r in a.runs[variant]]
    return keys if None not in keys and len(set(keys)) == len(keys) else None
