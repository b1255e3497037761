"""The tests: each variant against the baseline per metric, and each variant's extrapolation
ratio against 1, with the one declared family whose Holm-adjusted tests set the marks and the
verdict (`Comparisons`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ablate import stats
from ablate.registry import ConfigError
from ablate.report.analysis import UNTESTED, Analysis, aligned, paired_items
from ablate.report.keys import MetricKey, ratio_key

COLUMNS = ["variant", "baseline", "metric", "family", "n_seeds", "n_seeds_baseline", "mean",
           "baseline_mean", "delta", "ci_low", "ci_high", "p_value", "p_adjusted", "significant", "test"]


@dataclass
class Comparisons:
    """comparisons.csv's rows (`table`, one per variant and metric; `metric` as task|metric), the
    primary family's metrics and the number of its tests (what Holm adjusts over)."""

    table: pd.DataFrame
    family: list[MetricKey]
    tests: int

    def rows(self, key: MetricKey) -> pd.DataFrame:
        return self.table[self.table.metric == str(key)]

    @property
    def paired(self) -> bool:
        """Whether some test pairs the arms' runs by replicate."""
        return bool(self.table.test.str.startswith("paired over replicates").any())


class Ratios(NamedTuple):
    """Where an extrapolation suite ran: the longest length measured (a multiple of the training
    length), the ratio's key, and the perplexity keys at that length and at 1x."""

    longest: float
    key: MetricKey
    at_longest: MetricKey
    at_one: MetricKey


def ratios(a: Analysis) -> Ratios | None:
    """The extrapolation ratio's keys where an extrapolation suite ran; None otherwise."""
    lengths = {k.length: k for k in a.values.columns
               if k.length is not None and k.metric == "perplexity" and a.values[k].notna().any()}
    if 1.0 not in lengths or max(lengths) <= 1.0:
        return None
    longest = max(lengths)
    return Ratios(longest, ratio_key(longest), lengths[longest], lengths[1.0])


def primary_family(a: Analysis, primary: list[MetricKey | str] | None = None) -> list[MetricKey]:
    """The metrics whose tests make the report's primary family: `primary` where an experiment
    declares it (`report.primary`, or `primary=` to ablate-report), else validation loss (bits per
    byte where tokenizers differ), each informative task's accuracy (raw, not chance-adjusted; an
    lm-eval group as one task), and the extrapolation ratio at the longest length measured. A
    declared metric that the table does not have is a ConfigError naming those it has."""
    found = ratios(a)
    if primary:
        valid = [c.key for c in a.columns if c.kind not in UNTESTED] + ([found.key] if found else [])
        named = {str(k): k for k in valid}
        for key in primary:
            if str(key) not in named:
                raise ConfigError("report.primary", str(key), "not a metric of this table", valid=list(named))
        return list(dict.fromkeys(named[str(k)] for k in primary))
    family = [c.key for c in a.columns if c.kind == "train"]
    family += [c.key for c in a.columns if c.kind == "task" and c.key.is_accuracy
               and c.key not in a.uninformative and c.key.task not in a.subtasks]
    return family + ([found.key] if found else [])


def ratio_test(a: Analysis, variant: str) -> dict[str, Any] | None:
    """A variant's perplexity at the longest length over its perplexity at 1x, against 1 (no
    change): per run the log ratio; its variance over runs, plus the windows' own (the evaluation
    text's windows are items every run answers: each run's delta-method variance of the two log
    perplexities, averaged over runs). Conditional on the evaluation text: a different held-out
    text could move every variant's ratio."""
    _, key, at_l, at_1 = ratios(a)
    got = a.values.reindex(a.runs[variant])[[at_l, at_1]].dropna()
    if got.empty:
        return None
    logs = np.log(got[at_l] / got[at_1]).to_numpy()
    se = a.ses.reindex(got.index)[[at_l, at_1]] if at_l in a.ses and at_1 in a.ses else None
    windows = ((se[at_l] / got[at_l]) ** 2 + (se[at_1] / got[at_1]) ** 2).mean() if se is not None else math.nan
    row = {"variant": variant, "baseline": "1 (no change)", "metric": str(key), "n_seeds": len(logs),
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


def comparisons(a: Analysis, primary: list[MetricKey | str] | None = None) -> Comparisons:
    """Each variant against the baseline, per metric (costs aside), and each variant's extrapolation
    ratio against 1: the difference with its 95% interval and p-value (stats.compare).

    `family` says which tests the marks come from: `primary` (primary_family; Holm's step-down
    adjustment over exactly these sets `p_adjusted` and `significant`, and the verdict reads the
    same rows), `exploratory` (every other test: its unadjusted p only, never marked), `item-only`
    (one run a side: training noise unknown, never marked; p Holm-adjusted among these)."""
    family = primary_family(a, primary if primary is not None else a.primary)
    rows = []
    for variant in a.variants:
        if a.baseline_of(variant) in (None, variant):
            continue
        for c in a.columns:
            if c.kind in UNTESTED or c.key not in a.values:
                continue
            rows.append(_compare(a, variant, c.key))
    if ratios(a):
        rows += [r for r in (ratio_test(a, v) for v in a.variants) if r is not None]
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("family", "p_adjusted", "significant")]
                       + ["decides"])
    out = _marked(out, {str(k) for k in family})
    return Comparisons(out, family, int(((out.family == "primary") & out.p_value.notna()).sum()))


def _marked(out: pd.DataFrame, names: set[str]) -> pd.DataFrame:
    """Each test's family, its Holm-adjusted p within the primary family (and among the item-only
    tests), and whether it is marked (primary, adjusted p < 0.05); the columns in their order."""
    out["family"] = ["item-only" if not d else "primary" if m in names else "exploratory"
                     for m, d in zip(out.metric, out.decides)]
    out["p_adjusted"] = math.nan
    for name in ("primary", "item-only"):
        part = out.family == name
        out.loc[part, "p_adjusted"] = stats.holm(out.loc[part, "p_value"].tolist())
    out["significant"] = [bool(p < stats.ALPHA) if f == "primary" and math.isfinite(p) else None
                          for p, f in zip(out.p_adjusted, out.family)]
    return out[COLUMNS].copy()


def _compare(a: Analysis, variant: str, key: MetricKey) -> dict[str, Any]:
    v_runs, b_runs, paired_runs = aligned(a, variant)
    v, b = a.values.reindex(v_runs)[key], a.values.reindex(b_runs)[key]
    sv = a.ses.reindex(v_runs)[key] if key in a.ses else v * math.nan
    sb = a.ses.reindex(b_runs)[key] if key in a.ses else b * math.nan
    items_v, clusters = paired_items(a, variant, key)
    base = a.baseline_of(variant)
    items_b, _ = paired_items(a, base, key)
    result = stats.compare(v.to_numpy(), b.to_numpy(), items_v, items_b,
                           float(sv.iloc[0]) if len(sv) == 1 else math.nan,
                           float(sb.iloc[0]) if len(sb) == 1 else math.nan,
                           paired_runs=paired_runs, clusters=clusters)
    return {"variant": variant, "baseline": base, "metric": str(key), "n_seeds": int(v.notna().sum()),
            "n_seeds_baseline": int(b.notna().sum()), "mean": v.mean(), "baseline_mean": b.mean(),
            "delta": result.delta, "ci_low": result.low, "ci_high": result.high,
            "p_value": result.p_value, "decides": result.decides, "test": result.test}
