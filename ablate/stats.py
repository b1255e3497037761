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
    item_variance(items, ...)    the item-set noise of a mean or paired difference, counted once
    power(delta, sd, k, ...)     the probability the report's test marks a true difference (noncentral t)
    mde(sd, k, ...)              the smallest difference k runs a side detect with 80% power, at the
                                 family's Holm-adjusted level; replicates_needed the k for a difference

Spikes (counted by training, described by the report): a step's loss above LOSS_SPIKE x, or its
gradient norm above GRAD_SPIKE x, the median of the SPIKE_WINDOW steps before it (counted once
SPIKE_MIN_HISTORY steps are there).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
LOSS_SPIKE, GRAD_SPIKE, SPIKE_WINDOW, SPIKE_MIN_HISTORY = 1.2, 5.0, 50, 10


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # runs
    kind: str  # "t over runs", "item-only", or "" when no interval can be given


def interval(values: np.ndarray, item_se: float = math.nan, level: float = 0.95,
             items: tuple[float, int] | None = None) -> Interval:
    """The mean of a metric over runs with its interval: t over runs (k - 1 degrees of freedom)
    with two or more runs, widened by the item-set noise where `items` gives it (its variance and
    the number of independent units it rests on, as `item_variance` returns; Satterthwaite's
    degrees of freedom); with one run, the item-level interval (normal, from the eval's own
    standard error) labelled item-only; none without either."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    k = len(values)
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "")
    mean = float(values.mean())
    if k >= 2:
        parts = [(values.var(ddof=1) / k, k - 1)]
        if items is not None and math.isfinite(items[0]):
            parts.append(items)
        var, df = satterthwaite(parts)
        half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(var)
        return Interval(mean, mean - half, mean + half, k, "t over runs + items" if len(parts) > 1 else "t over runs")
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
    """Variant against baseline for one metric: `compare(values_variant, values_baseline,
    items_variant, items_baseline).p_value` is the test the report's marks come from.

    variant, baseline: the metric per run. paired_runs: the two arrays are aligned replicate by
    replicate (run k of both arms shares its init seed and data order). items_*: per-item results
    on the shared items, (runs, items), where the eval kept them (accuracies); clusters: per item,
    the context it shares with others (one cluster each where None). se_*: the item-level standard
    error of the single run, for the one-run case.

    Two or more runs on both sides: Student's t on the per-replicate differences where paired
    (k - 1 degrees of freedom: what the arms share, a data order, cancels), else Welch's t over
    runs; plus, where per-item results exist, the item-set sampling variance of the paired
    difference (`item_variance`: the items are one sample that every run answers, so seed-to-seed
    spread cannot show it; the part it can show is subtracted, so item noise counts once), with
    Satterthwaite's degrees of freedom. Otherwise training noise is
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
        return _over_runs(v, b, delta, paired_runs, items_variant if paired else None, items_baseline, clusters)
    if paired and len(v) == 1 and len(b) == 1:
        return _item_only_paired(delta, items_variant, items_baseline, clusters)
    se = math.sqrt(se_variant**2 + se_baseline**2) if math.isfinite(se_variant) and math.isfinite(se_baseline) \
        else math.nan
    if not math.isfinite(se) or se == 0:
        return Comparison(delta, math.nan, math.nan, math.nan, "none: training noise unknown", False)
    half = stats.norm.ppf(1 - ALPHA / 2) * se
    p = float(2 * stats.norm.sf(abs(delta) / se))
    return Comparison(delta, delta - half, delta + half, p, "item-only, unpaired", False)


def _over_runs(v: np.ndarray, b: np.ndarray, delta: float, paired_runs: bool, items_variant: np.ndarray | None,
               items_baseline: np.ndarray | None, clusters: np.ndarray | None) -> Comparison:
    """Two or more runs a side: paired t over replicates or Welch's t, plus the item-set noise of
    the paired difference where per-item results exist (items_variant not None)."""
    paired = items_variant is not None
    if paired_runs:
        parts = [((v - b).var(ddof=1) / len(v), len(v) - 1)]
    else:
        parts = [(v.var(ddof=1) / len(v), len(v) - 1), (b.var(ddof=1) / len(b), len(b) - 1)]
    if paired:
        parts.append(item_variance(items_variant, items_baseline, clusters))
    var, df = satterthwaite(parts)
    runs = "paired over replicates" if paired_runs else "welch over runs"
    test = runs + (" + paired items" if paired else "")
    test += " (clustered)" if paired and clusters is not None else ""
    if var == 0:
        return Comparison(delta, delta, delta, 1.0 if delta == 0 else 0.0, test, True)
    t = delta / math.sqrt(var)
    half = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(var)
    return Comparison(delta, delta - half, delta + half, float(2 * stats.t.sf(abs(t), df)), test, True)


def _item_only_paired(delta: float, items_variant: np.ndarray, items_baseline: np.ndarray,
                      clusters: np.ndarray | None) -> Comparison:
    """One run a side with per-item results: McNemar's exact test, or a normal test over clusters."""
    one_v, one_b = np.asarray(items_variant, float)[0], np.asarray(items_baseline, float)[0]
    if clusters is None:
        return _mcnemar(one_v, one_b)
    se, _ = _cluster_se(one_v - one_b, clusters)
    if se == 0:
        return Comparison(delta, delta, delta, 1.0 if delta == 0 else 0.0, "item-only, paired over clusters", False)
    half = stats.norm.ppf(1 - ALPHA / 2) * se
    return Comparison(delta, delta - half, delta + half, float(2 * stats.norm.sf(abs(delta) / se)),
                      "item-only, paired over clusters", False)


NORMAL_DF = 10**6  # the degrees of freedom of a variance known as well as a normal's (hundreds of windows)


def satterthwaite(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """The sum of independent variance estimates, each (variance, degrees of freedom), and the
    Welch-Satterthwaite degrees of freedom of that sum (the first part's where the sum is 0)."""
    var = sum(p for p, _ in parts)
    return var, (var**2 / sum(p**2 / d for p, d in parts if p > 0) if var > 0 else parts[0][1])


def item_variance(items: np.ndarray, items_baseline: np.ndarray | None = None,
                  clusters: np.ndarray | None = None) -> tuple[float, int]:
    """The item-set sampling variance of an arm's mean over items (or, with `items_baseline`, of the
    paired difference of two arms' means), counted once: (variance, degrees of freedom).

    items: (runs, items) per-item results of runs that all answer the same items; clusters: per
    item, the context it shares with others (each item its own where None). The spread of the
    per-item mean over items, (G / (G - 1)) sum_u R_u^2 / n^2 over the G units (R_u: a unit's sum
    of residuals), holds two things: how much the items differ (which a new item set would
    redraw, and no number of runs shows) and each run's own item-level noise (the within-arm
    part, sum_u var_r(S_ru) / k over an arm's k runs, S_ru a run's sum of residuals over the unit). The second is
    already in the run-to-run spread of the means, so it is subtracted; the result is floored at 0.
    An arm of one run has no within part to subtract (nothing else can then be added either)."""
    arms = [np.asarray(items, dtype=float)] + ([] if items_baseline is None else [np.asarray(items_baseline, float)])
    d = arms[0].mean(0) - (arms[1].mean(0) if len(arms) > 1 else 0.0)
    n = len(d)
    index, groups = _units(clusters, n)
    if groups < 2:
        return math.nan, max(groups - 1, 1)
    between = _cluster_se(d, index)[0] ** 2
    within = 0.0
    for a in arms:
        if len(a) >= 2:
            # a run's residuals: a run better on every item moves the mean, which the spread of
            # means over runs already holds, and not the residuals the between part is made of
            sums = np.stack([np.bincount(index, weights=row - row.mean(), minlength=groups) for row in a])
            within += float(sums.var(axis=0, ddof=1).sum()) / len(a) / n**2
    return max(0.0, between - within), groups - 1


def cluster_se(x: np.ndarray, clusters: np.ndarray | None = None) -> float:
    """The standard error of the mean of per-item values `x` whose items come in `clusters` (items
    that share a context: the rows of one copied span, the queries of one table): the
    cluster-robust (sandwich) estimate with the G / (G - 1) small-sample factor, G the number of
    clusters. Without clusters, the usual SD / sqrt(n)."""
    return _cluster_se(np.asarray(x, dtype=float), clusters)[0]


def _units(clusters: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Each item's independent unit (its cluster, or itself), numbered 0..G-1, and G."""
    index = np.arange(n) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    return index, (int(index.max()) + 1 if n else 0)


def _cluster_se(x: np.ndarray, clusters: np.ndarray | None) -> tuple[float, int]:
    """(standard error of the mean, number of independent units): (G / (G - 1)) sum_u R_u^2 / n^2
    over the G units, R_u a unit's sum of residuals (with one item a unit, SD / sqrt(n))."""
    index, groups = _units(clusters, len(x))
    if groups < 2:
        return math.nan, groups
    sums = np.bincount(index, weights=x - x.mean(), minlength=groups)
    return float(math.sqrt(groups / (groups - 1) * (sums**2).sum()) / len(x)), groups


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


def power(delta: float, sd: float, k: int, tests: int = 1, paired: bool = False, item_var: float = 0.0,
          alpha: float = ALPHA, sd_diff: float | None = None) -> float:
    """The probability that the report's test marks a true difference `delta` between two arms of k
    runs each, run SD `sd`, item-set variance `item_var` of the difference, at alpha / tests (the
    first, strictest step of Holm over a family of `tests`).

    Paired over replicates: Student's t on k - 1 degrees of freedom with `sd_diff` the SD of the
    per-replicate differences (2 sd^2 where not given): the noncentral t, integrated over the
    chi-square of the variance estimate (exact where scipy's noncentral t gives up). Welch's: its
    degrees of freedom are themselves estimated, so the power is averaged over POWER_DRAWS draws
    of the two sample variances (fixed draws: a smooth function of delta)."""
    if k < 2 or not math.isfinite(sd):
        return math.nan
    level = alpha / tests
    if paired:
        df = k - 1
        var = (sd_diff**2 if sd_diff is not None else 2 * sd**2) / k + item_var
        if var <= 0:
            return 1.0 if delta else level
        ncp, crit = abs(delta) / math.sqrt(var), stats.t.ppf(1 - level / 2, df)

        def marked(v: float) -> float:  # given the chi-square draw v of the variance estimate
            scale = crit * math.sqrt(v / df)
            return (stats.norm.sf(scale - ncp) + stats.norm.cdf(-scale - ncp)) * stats.chi2.pdf(v, df)

        return float(min(1.0, integrate.quad(marked, 0, math.inf, limit=200)[0]))
    chi = _welch_draws(k)
    runs = sd**2 * chi / (k - 1) / k  # each arm's estimated variance of its mean, per draw
    var = runs.sum(axis=1) + item_var
    df = var**2 / ((runs**2).sum(axis=1) / (k - 1))
    se = math.sqrt(2 * sd**2 / k + item_var)
    crit = stats.t.ppf(1 - level / 2, df) * np.sqrt(var) / se  # the bar in units of the true SE
    return float(np.mean(stats.norm.sf(crit - abs(delta) / se) + stats.norm.cdf(-crit - abs(delta) / se)))


POWER_DRAWS = 20_000


@functools.lru_cache(maxsize=16)
def _welch_draws(k: int) -> np.ndarray:
    """(POWER_DRAWS, 2) chi-square draws on k - 1 degrees of freedom, the same for every call."""
    return np.random.default_rng(k).chisquare(k - 1, size=(POWER_DRAWS, 2))


def mde(sd: float, k: int, alpha: float = ALPHA, target: float = 0.8, tests: int = 1, paired: bool = False,
        item_var: float = 0.0, sd_diff: float | None = None) -> float:
    """Minimum detectable difference: the smallest true difference the report's test (see `power`)
    marks with probability `target`, for two arms of k runs each with run SD `sd`."""
    if k < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    args = (sd, k, tests, paired, item_var, alpha, sd_diff)
    high = math.sqrt((sd_diff**2 if paired and sd_diff is not None else 2 * sd**2) / k + item_var)
    if high == 0:  # the differences do not vary: any difference is seen
        return 0.0
    while power(high, *args) < target:  # bracket it: on few degrees of freedom at a small level it is many SEs
        high *= 2
        if high > 1e6 * sd:
            return math.inf
    return float(optimize.brentq(lambda d: power(d, *args) - target, 0.0, high))


def replicates_needed(delta: float, sd: float, tests: int = 1, paired: bool = False, item_var: float = 0.0,
                      target: float = 0.8, most: int = 1000, sd_diff: float | None = None) -> int | None:
    """The fewest replicates an arm needs for the report's test to mark `delta` with probability
    `target` (None: more than `most`)."""
    for k in range(2, most + 1):
        if power(delta, sd, k, tests, paired, item_var, sd_diff=sd_diff) >= target:
            return k
    return None


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
