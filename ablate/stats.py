"""The statistics of a comparison table, as plain functions of arrays (numpy and scipy).

Units: a *run* is one trained model (a variant at one init seed and one data-order seed); a run's
value of a metric is measured on a set of eval items that every variant shares.

    interval(values)             mean over runs, t interval with k - 1 degrees of freedom
    compare(v, b, ...)           a variant against the baseline: over runs (k >= 2 on both sides),
                                 Student's t on the per-replicate differences where the arms share
                                 their replicates (init seed, data order), else Welch's t; the
                                 item-set noise of a paired difference added where per-item results
                                 exist; with one run a side, an item-only comparison (McNemar for
                                 accuracies), never a verdict on training noise
    cluster_se(x, clusters)      the standard error of a mean over items that come in clusters
    holm(p)                      Holm's step-down adjustment over every test of a table
    noise_components(grid)       init-seed, data-order and residual SDs from a seeds x data-seeds grid
    mde(sd, k)                   the smallest difference k runs a side detect at 5% with 80% power

Spikes (counted by training, described by the report): a step's loss above LOSS_SPIKE x, or its
gradient norm above GRAD_SPIKE x, the median of the SPIKE_WINDOW steps before it (counted once
SPIKE_MIN_HISTORY steps are there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
LOSS_SPIKE, GRAD_SPIKE, SPIKE_WINDOW, SPIKE_MIN_HISTORY = 1.2, 5.0, 50, 10


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # runs
    kind: str  # "t over runs", "item-only", or "" when no interval can be given


def interval(values: np.ndarray, item_se: float = math.nan, level: float = 0.95) -> Interval:
    """The mean of a metric over runs with its interval: t over runs (k - 1 degrees of freedom)
    with two or more runs; with one run, the item-level interval (normal, from the eval's own
    standard error) labelled item-only; none without either."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    k = len(values)
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "")
    mean = float(values.mean())
    if k >= 2:
        half = stats.t.ppf(0.5 + level / 2, k - 1) * values.std(ddof=1) / math.sqrt(k)
        return Interval(mean, mean - half, mean + half, k, "t over runs")
    if math.isfinite(item_se):
        half = stats.norm.ppf(0.5 + level / 2) * item_se
        return Interval(mean, mean - half, mean + half, 1, "item-only")
    return Interval(mean, math.nan, math.nan, 1, "")


def one_sample_p(values: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p of Student's t for the mean of `values` (two or more) being `null`."""
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1)
    if sd == 0:
        return 1.0 if values.mean() == null else 0.0
    t = (values.mean() - null) / (sd / math.sqrt(len(values)))
    return float(2 * stats.t.sf(abs(t), len(values) - 1))


@dataclass(frozen=True)
class Comparison:
    delta: float  # variant - baseline
    low: float
    high: float
    p_value: float  # nan where no test can be made
    test: str
    decides: bool  # whether the test accounts for training noise (a significance mark may follow)


def compare(variant: np.ndarray, baseline: np.ndarray, items_variant: np.ndarray | None = None,
            items_baseline: np.ndarray | None = None, se_variant: float = math.nan,
            se_baseline: float = math.nan, paired_runs: bool = False,
            clusters: np.ndarray | None = None) -> Comparison:
    """Variant against baseline for one metric.

    variant, baseline: the metric per run. paired_runs: the two arrays are aligned replicate by
    replicate (run k of both arms shares its init seed and data order). items_*: per-item results
    on the shared items, (runs, items), where the eval kept them (accuracies); clusters: per item,
    the context it shares with others (one cluster each where None). se_*: the item-level standard
    error of the single run, for the one-run case.

    Two or more runs on both sides: Student's t on the per-replicate differences where paired
    (k - 1 degrees of freedom: what the arms share, a data order, cancels), else Welch's t over
    runs; plus, where per-item results exist, the item-set sampling variance of the paired
    difference over clusters (the items are one sample that every run answers, so seed-to-seed
    spread cannot show it), with Satterthwaite's degrees of freedom. Otherwise training noise is
    unknown: an item-only comparison (McNemar's exact test on the discordant items for accuracies,
    a normal test over clusters where items cluster, else a normal interval from the two standard
    errors) is reported, and `decides` is False."""
    v = np.asarray(variant, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if paired_runs and len(v) == len(b):
        keep = np.isfinite(v) & np.isfinite(b)
        paired_runs = bool(keep.all())  # a replicate missing on one side breaks the pairing
    v, b = v[np.isfinite(v)], b[np.isfinite(b)]
    if len(v) == 0 or len(b) == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, "", False)
    delta = float(v.mean() - b.mean())
    paired = items_variant is not None and items_baseline is not None
    if len(v) >= 2 and len(b) >= 2:
        if paired_runs:
            parts = [((v - b).var(ddof=1) / len(v), len(v) - 1)]
        else:
            parts = [(v.var(ddof=1) / len(v), len(v) - 1), (b.var(ddof=1) / len(b), len(b) - 1)]
        if paired:
            diff = np.asarray(items_variant, float).mean(0) - np.asarray(items_baseline, float).mean(0)
            se, groups = _cluster_se(diff, clusters)
            parts.append((se**2, groups - 1))
        var = sum(p for p, _ in parts)
        runs = "paired over replicates" if paired_runs else "welch over runs"
        test = runs + (" + paired items" if paired else "")
        test += " (clustered)" if paired and clusters is not None else ""
        if var == 0:
            return Comparison(delta, delta, delta, 1.0 if delta == 0 else 0.0, test, True)
        df = var**2 / sum(p**2 / d for p, d in parts if p > 0)
        t = delta / math.sqrt(var)
        half = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(var)
        return Comparison(delta, delta - half, delta + half, float(2 * stats.t.sf(abs(t), df)), test, True)
    if paired and len(v) == 1 and len(b) == 1:
        one_v, one_b = np.asarray(items_variant, float)[0], np.asarray(items_baseline, float)[0]
        if clusters is None:
            return _mcnemar(one_v, one_b)
        se, _ = _cluster_se(one_v - one_b, clusters)
        if se == 0:
            return Comparison(delta, delta, delta, 1.0 if delta == 0 else 0.0, "item-only, paired over clusters",
                              False)
        half = stats.norm.ppf(1 - ALPHA / 2) * se
        return Comparison(delta, delta - half, delta + half, float(2 * stats.norm.sf(abs(delta) / se)),
                          "item-only, paired over clusters", False)
    se = math.sqrt(se_variant**2 + se_baseline**2) if math.isfinite(se_variant) and math.isfinite(se_baseline) \
        else math.nan
    if not math.isfinite(se) or se == 0:
        return Comparison(delta, math.nan, math.nan, math.nan, "none: training noise unknown", False)
    half = stats.norm.ppf(1 - ALPHA / 2) * se
    p = float(2 * stats.norm.sf(abs(delta) / se))
    return Comparison(delta, delta - half, delta + half, p, "item-only, unpaired", False)


def cluster_se(x: np.ndarray, clusters: np.ndarray | None = None) -> float:
    """The standard error of the mean of per-item values `x` whose items come in `clusters` (items
    that share a context: the rows of one copied span, the queries of one table): the
    cluster-robust (sandwich) estimate with the G / (G - 1) small-sample factor, G the number of
    clusters. Without clusters, the usual SD / sqrt(n)."""
    return _cluster_se(np.asarray(x, dtype=float), clusters)[0]


def _cluster_se(x: np.ndarray, clusters: np.ndarray | None) -> tuple[float, int]:
    """(standard error of the mean, number of independent units)."""
    n = len(x)
    if clusters is None:
        return (float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan), n
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    groups = int(index.max()) + 1 if n else 0
    if groups < 2:
        return math.nan, groups
    sums = np.bincount(index, weights=x - x.mean(), minlength=groups)
    return float(math.sqrt(groups / (groups - 1) * (sums**2).sum()) / n), groups


def _mcnemar(v: np.ndarray, b: np.ndarray) -> Comparison:
    """One run a side, correct / wrong on the same items: McNemar's exact test, and the normal
    interval of the paired difference in accuracy."""
    n = len(v)
    only_v, only_b = int(((v > 0.5) & (b < 0.5)).sum()), int(((v < 0.5) & (b > 0.5)).sum())
    delta = float(v.mean() - b.mean())
    discordant = only_v + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_v, discordant, 0.5).pvalue)
    diff = v - b
    half = stats.norm.ppf(1 - ALPHA / 2) * diff.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return Comparison(delta, delta - half, delta + half, p, "item-only, McNemar", False)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), math.nan)
    order = tested[np.argsort(p[tested])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def mde(sd: float, k: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Minimum detectable difference between two arms of k runs each with run-to-run SD `sd`: a
    two-sided test at `alpha` finds it with probability `power` ((t_{1-a/2} + t_power) sd sqrt(2/k),
    2k - 2 degrees of freedom)."""
    if k < 2 or not math.isfinite(sd):
        return math.nan
    df = 2 * k - 2
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd * math.sqrt(2 / k))


@dataclass(frozen=True)
class Noise:
    sd_init: float  # from the initialisation seed
    sd_data: float  # from the data-order seed
    sd_residual: float  # what neither explains (their interaction, numerics)
    sd_runs: float  # of a run's value, all sources together


def noise_components(grid: np.ndarray) -> Noise:
    """Variance components of a metric over a full grid of runs, grid[i, j] for init seed i and
    data seed j (a two-way random-effects ANOVA without replication; a component estimated below
    zero is reported as 0). With one init seed or one data seed, only sd_runs is known."""
    grid = np.asarray(grid, dtype=float)
    flat = grid[np.isfinite(grid)]
    sd_runs = float(flat.std(ddof=1)) if len(flat) > 1 else math.nan
    n_init, n_data = grid.shape
    if n_init < 2 or n_data < 2 or not np.isfinite(grid).all():
        return Noise(math.nan, math.nan, math.nan, sd_runs)
    mean = grid.mean()
    ms_init = n_data * ((grid.mean(1) - mean) ** 2).sum() / (n_init - 1)
    ms_data = n_init * ((grid.mean(0) - mean) ** 2).sum() / (n_data - 1)
    resid = grid - grid.mean(1, keepdims=True) - grid.mean(0, keepdims=True) + mean
    ms_resid = (resid**2).sum() / ((n_init - 1) * (n_data - 1))
    return Noise(math.sqrt(max(0.0, (ms_init - ms_resid) / n_data)),
                 math.sqrt(max(0.0, (ms_data - ms_resid) / n_init)), math.sqrt(ms_resid), sd_runs)
