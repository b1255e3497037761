"""Ladders: an axis at several model sizes, and how far the small rungs' answer can be trusted.

A ladder experiment sweeps `ladder.size` beside its axis. Each rung's shape and budget follow from
the size (ablate.run.lifecycle.apply_rung, where a run's config is derived), so that every arm of
a rung has the same shape and every rung the same proportions:

    model.dim                = size
    model.attention.n_heads  = max(1, size // ladder.head_dim)        (size must be a multiple)
    model.n_layers           = max(ladder.min_layers, round(size / ladder.aspect))
    train.tokens             = ladder.tokens_per_param x non-embedding parameters, rounded up to
                               whole batches (null: train.tokens as configured)

This module holds the statistics. The report (`analyse`) fits, per variant and metric,
L(C) = E + A * C^(-alpha) to the runs' final values against training compute C (FLOPs/token x
tokens), with intervals from resampling each rung's seeds; predicts L at a target compute; ranks
the variants at each rung; and measures, for every pair of variants, whether the order at each
smaller rung is the order at the largest (the share of pairs that agree is DataDecide's decision
accuracy), flagging a pair whose difference changes sign across rungs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from ablate import stats

# ---- fits ---------------------------------------------------------------------------------------
ALPHAS = np.concatenate([np.geomspace(1e-3, 0.05, 40, endpoint=False), np.linspace(0.05, 3.0, 600)])
MIN_REPLICATES = 3  # per rung, for an interval: the noise is estimated from the replicates' scatter too
LEVEL = 0.95


@dataclass(frozen=True)
class Fit:
    E: float
    A: float
    alpha: float

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(compute, -self.alpha)


def _scaled(compute: np.ndarray) -> tuple[np.ndarray, float]:
    """Compute over its geometric mean (the fits are far better conditioned), and that mean."""
    scale = math.exp(np.log(compute).mean())
    return compute / scale, scale


def _rss_per_alpha(x: np.ndarray, y: np.ndarray, alphas: np.ndarray = ALPHAS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each alpha, the least-squares E >= 0 and A of y = E + A x^-alpha (linear in E and A
    once alpha is fixed) and its residual sum of squares: (rss, E, A), one per alpha."""
    r = x[None, :] ** -alphas[:, None]  # (alphas, points)
    rm, ym = r.mean(axis=1), y.mean()
    var_r = ((r - rm[:, None]) ** 2).sum(axis=1)
    a = ((r - rm[:, None]) * (y - ym)).sum(axis=1) / np.maximum(var_r, 1e-300)
    e = ym - a * rm
    neg = e < 0  # E >= 0 (a loss): on the bound, A alone
    a = np.where(neg, (r * y).sum(axis=1) / (r * r).sum(axis=1), a)
    e = np.where(neg, 0.0, e)
    rss = ((y[None, :] - e[:, None] - a[:, None] * r) ** 2).sum(axis=1)
    return rss, e, a


def fit_power_law(compute: np.ndarray, loss: np.ndarray, start: Fit | None = None) -> Fit:
    """L(C) = E + A * C^(-alpha) by least squares on every point, E >= 0 and alpha in (0, 3]: for
    each alpha on a fine grid E and A are linear least squares, then the best alpha is refined.
    `start` is accepted for compatibility and not needed (the grid finds the global minimum)."""
    from scipy.optimize import minimize_scalar

    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    x, scale = _scaled(compute)
    rss, _, _ = _rss_per_alpha(x, loss)
    i = int(np.argmin(rss))
    lo, hi = ALPHAS[max(i - 1, 0)], ALPHAS[min(i + 1, len(ALPHAS) - 1)]
    best = minimize_scalar(lambda al: _rss_per_alpha(x, loss, np.array([al]))[0][0], bounds=(lo, hi),
                           method="bounded", options={"xatol": 1e-7})
    alpha = float(best.x) if best.fun <= rss[i] else float(ALPHAS[i])
    _, e, a = _rss_per_alpha(x, loss, np.array([alpha]))
    return Fit(float(e[0]), float(a[0] * scale**alpha), alpha)


def _min_over_alpha(rss_of) -> float:
    """The minimum over alpha in (0, 3] of `rss_of(alphas)` (an array of residual sums of squares):
    the grid, then two finer grids around its best point (a grid's minimum alone overstates the
    profile, and so narrows its intervals, when the noise is small)."""
    values = rss_of(ALPHAS)
    i = int(np.argmin(values))
    lo, hi, best = ALPHAS[max(i - 1, 0)], ALPHAS[min(i + 1, len(ALPHAS) - 1)], float(values[i])
    for _ in range(2):
        fine = np.linspace(lo, hi, 41)
        got = rss_of(fine)
        j = int(np.argmin(got))
        best = min(best, float(got[j]))
        lo, hi = fine[max(j - 1, 0)], fine[min(j + 1, 40)]
    return best


def _profile_prediction(x: np.ndarray, y: np.ndarray, t: float, p: np.ndarray) -> np.ndarray:
    """The smallest residual sum of squares with the prediction at scaled compute `t` held at
    each value of `p`: y = E + (P - E) (x / t)^-alpha, E in [0, P], minimised over alpha and E
    (closed form for each alpha)."""
    def rss_of(pj: float):
        def at(alphas: np.ndarray) -> np.ndarray:
            r = (x[None, :] / t) ** -alphas[:, None]  # (alphas, points)
            w, rest = 1 - r, y[None, :] - pj * r  # y - P r = E (1 - r)
            e = np.clip((w * rest).sum(axis=1) / np.maximum((w * w).sum(axis=1), 1e-300), 0.0, max(pj, 0.0))
            return ((rest - e[:, None] * w) ** 2).sum(axis=1)
        return at

    return np.array([_min_over_alpha(rss_of(pj)) for pj in p])


def _profile_interval(stat, center: float, spread: float, limit: float, floor: float) -> tuple[float, float]:
    """Where `stat` (the profile statistic, 0 at `center`) crosses `limit` on each side: doubling
    steps from `spread`, then bisection. +inf / `floor` where it never does (the data cannot bound it)."""
    ends = []
    for sign in (-1.0, 1.0):
        step, inside, outside = spread, center, None
        for _ in range(60):
            probe = center + sign * step
            if sign < 0 and probe <= floor:
                if stat(floor) <= limit:
                    break
                probe = floor
            if stat(probe) > limit:
                outside = probe
                break
            inside, step = probe, step * 2
            if step > 1e6 * max(spread, 1e-12):
                break
        if outside is None:
            ends.append(floor if sign < 0 else math.inf)
            continue
        for _ in range(50):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if stat(mid) <= limit else (inside, mid)
        ends.append((inside + outside) / 2)
    return ends[0], ends[1]


def fit_with_intervals(points: pd.DataFrame, target: float, seed: int = 0, resamples: int | None = None,
                       level: float = LEVEL) -> dict[str, float]:
    """Fit L(C) = E + A * C^(-alpha) to every run (`points`: compute, value, one row per run) and
    predict at `target`, with profile-likelihood intervals (profile t): the noise variance s^2 is
    estimated from the residuals (n - 3 degrees of freedom: the replicates' scatter and any lack
    of fit), and a value is inside the interval while holding the prediction (or E, or alpha)
    there raises the residual sum of squares by at most s^2 * t^2(n - 3). An end the data cannot
    bound is infinite. With fewer than MIN_REPLICATES runs at some rung no interval is given
    (`interval`: "too few replicates"). Also the leave-one-rung-out error: fitted without the
    largest rung, the prediction there minus the runs' mean there (`loo_error`), the honest error
    of extrapolating one rung. `seed` and `resamples` are accepted for compatibility (nothing is
    random)."""
    from scipy import stats as scipy_stats

    compute, y = points.compute.to_numpy(float), points.value.to_numpy(float)
    fit = fit_power_law(compute, y)
    per_rung = points.groupby("compute").value.agg(["mean", "size"])
    out = {"E": fit.E, "A": fit.A, "alpha": fit.alpha, "target_flops": target, "predicted": float(fit(target)),
           "rungs": len(per_rung), "runs": len(points), "min_replicates": int(per_rung["size"].min())}
    out.update(_leave_largest_out(points, per_rung))
    nan = {f"{k}_{e}": math.nan for k in ("E", "alpha", "predicted") for e in ("low", "high")}
    n = len(y)
    if out["min_replicates"] < MIN_REPLICATES or len(per_rung) < 3 or n <= 3:
        return {**out, **nan, "interval": "too few replicates" if len(per_rung) >= 3 else "too few rungs"}
    x, scale = _scaled(compute)
    rss_alpha, _, _ = _rss_per_alpha(x, y)
    rss_min = float(min(rss_alpha.min(), ((y - fit(compute)) ** 2).sum()))
    s2 = rss_min / (n - 3)
    if s2 <= 0:
        return {**out, **nan, "interval": "no residual noise"}
    limit = scipy_stats.t.ppf(0.5 + level / 2, n - 3) ** 2
    spread = float(np.std(y)) or 1e-3
    t = target / scale

    def stat_p(p: float) -> float:
        return (_profile_prediction(x, y, t, np.array([p]))[0] - rss_min) / s2

    def stat_alpha(al: float) -> float:
        return (_rss_per_alpha(x, y, np.array([al]))[0][0] - rss_min) / s2

    def stat_e(e: float) -> float:
        def at(alphas: np.ndarray) -> np.ndarray:
            r = x[None, :] ** -alphas[:, None]
            a = np.maximum((r * (y - e)).sum(axis=1) / (r * r).sum(axis=1), 0.0)
            return ((y[None, :] - e - a[:, None] * r) ** 2).sum(axis=1)
        return (_min_over_alpha(at) - rss_min) / s2

    out["predicted_low"], out["predicted_high"] = _profile_interval(stat_p, out["predicted"], spread, limit, 0.0)
    out["alpha_low"], out["alpha_high"] = _profile_interval(stat_alpha, fit.alpha, 0.05, limit, 1e-3)
    out["alpha_high"] = min(out["alpha_high"], 3.0)
    out["E_low"], out["E_high"] = _profile_interval(stat_e, fit.E, spread, limit, 0.0)
    out["E_high"] = min(out["E_high"], float(y.min()) + 3 * math.sqrt(s2))
    out["interval"] = f"profile t, {n - 3} df"
    out["noise_sd"] = math.sqrt(s2)
    return out


def _leave_largest_out(points: pd.DataFrame, per_rung: pd.DataFrame) -> dict[str, float]:
    """Fitted without the largest rung (needs 3 others), the prediction at the largest rung and
    its error against that rung's mean."""
    if len(per_rung) < 4:
        return {"loo_predicted": math.nan, "loo_error": math.nan}
    largest = per_rung.index.max()
    rest = points[points.compute != largest]
    got = float(fit_power_law(rest.compute.to_numpy(float), rest.value.to_numpy(float))(largest))
    return {"loo_predicted": got, "loo_error": got - float(per_rung.loc[largest, "mean"])}


def prediction_distribution(points: pd.DataFrame, target: float, grid: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The prediction at `target` as a confidence distribution: values and their CDF, from the
    signed root of the profile statistic on the t distribution (n - 3 degrees of freedom). Its
    quantiles are the profile intervals at every level; P(A better than B) compares two such."""
    from scipy import stats as scipy_stats

    compute, y = points.compute.to_numpy(float), points.value.to_numpy(float)
    fit = fit_power_law(compute, y)
    n = len(y)
    x, scale = _scaled(compute)
    rss_min = float(min(_rss_per_alpha(x, y)[0].min(), ((y - fit(compute)) ** 2).sum()))  # as fit_with_intervals
    s2 = rss_min / (n - 3)
    center, t = float(fit(target)), target / scale
    # the grid spans the 99.9% interval (the prediction's profile alone, not E's and alpha's)
    low, high = _profile_interval(lambda v: (_profile_prediction(x, y, t, np.array([v]))[0] - rss_min) / s2,
                                  center, float(np.std(y)) or 1e-3, scipy_stats.t.ppf(0.9995, n - 3) ** 2, 0.0)
    high = high if math.isfinite(high) else center + 100 * (center - low + 1e-9)
    values = np.unique(np.concatenate([np.linspace(low, high, grid), [center]]))
    stat = (_profile_prediction(x, y, t, values) - rss_min) / s2
    root = np.sign(values - center) * np.sqrt(np.maximum(stat, 0.0))
    return values, scipy_stats.t.cdf(root, n - 3)


def probability_lower(a: pd.DataFrame, b: pd.DataFrame, target: float) -> float:
    """P(A's value at `target` < B's), the two arms' fits independent: from their confidence
    distributions (prediction_distribution). NaN where either arm has too few replicates."""
    for points in (a, b):
        if points.groupby("compute").size().min() < MIN_REPLICATES or points.compute.nunique() < 3:
            return math.nan
    va, ca = prediction_distribution(a, target)
    vb, cb = prediction_distribution(b, target)
    # P(A < B) = integral of P(A < x) dF_B(x); the mass beyond a grid's ends sits at its ends
    mass_b = np.diff(np.concatenate([[0.0], cb, [1.0]]))  # at each grid value, and what lies beyond the last
    at = np.concatenate([vb, [vb[-1]]])
    below = np.interp(at, va, ca, left=0.0, right=1.0)
    return float(np.clip((below * mass_b).sum(), 0.0, 1.0))


# ---- decisions ----------------------------------------------------------------------------------
def decisions(values: pd.DataFrame, higher_is_better: bool = False) -> pd.DataFrame:
    """For each pair of variants and each rung (`values`: variant, rung, compute, value, one row
    per run), the difference of the means (a - b), Welch's p over runs and its Holm-adjusted p
    (over every pair and rung of the metric: one family), which is better, and whether that agrees
    with the largest rung. A pair whose difference changes sign across rungs is flagged `flip` when
    a rung on each side of the change is significant after Holm's adjustment (the small rungs'
    answer is then wrong), `order not established` otherwise."""
    rows = []
    rungs = sorted(values.rung.unique(), key=lambda r: values[values.rung == r].compute.iloc[0])
    largest = rungs[-1]
    for a, b in combinations(list(dict.fromkeys(values.variant)), 2):
        pair = []
        for rung in rungs:
            va = values[(values.variant == a) & (values.rung == rung)].value.to_numpy()
            vb = values[(values.variant == b) & (values.rung == rung)].value.to_numpy()
            if not len(va) or not len(vb):
                continue
            c = stats.compare(va, vb)
            better = a if (c.delta > 0) == higher_is_better else b
            pair.append({"variant_a": a, "variant_b": b, "rung": rung,
                         "compute": float(values[values.rung == rung].compute.iloc[0]), "delta": c.delta,
                         "p_value": c.p_value if c.decides else math.nan, "better": better if c.delta else "tie"})
        final = next((r["better"] for r in pair if r["rung"] == largest), None)
        rows += [{**r, "agrees_with_largest": None if final is None else r["better"] == final} for r in pair]
    table = pd.DataFrame(rows, columns=["variant_a", "variant_b", "rung", "compute", "delta", "p_value", "better",
                                        "agrees_with_largest"])
    table.insert(6, "p_adjusted", stats.holm(table.p_value.tolist()) if len(table) else [])
    table["sign_change"] = ""
    for _, part in table.groupby(["variant_a", "variant_b"], sort=False):
        table.loc[part.index, "sign_change"] = _sign_change(part)
    return table


def _sign_change(part: pd.DataFrame) -> str:
    """A pair's rungs: `flip` where the difference changes sign with a Holm-significant rung on each
    side, `order not established` where it changes sign otherwise, "" where it keeps its sign."""
    signs = {np.sign(d) for d in part.delta if d}
    marked = {np.sign(d) for d, p in zip(part.delta, part.p_adjusted) if d and p < stats.ALPHA}
    if len(signs) < 2:
        return ""
    return "flip" if len(marked) > 1 else "order not established"


def decision_accuracy(table: pd.DataFrame) -> pd.Series:
    """Per rung (smaller than the largest): the share of pairs ordered as at the largest rung."""
    if table.empty:
        return pd.Series(dtype=float)
    largest = table.loc[table.compute.idxmax(), "rung"]
    part = table[table.rung != largest]
    return part.groupby("rung", sort=False)["agrees_with_largest"].mean()


def decision_accuracy_intervals(values: pd.DataFrame, higher_is_better: bool = False, draws: int = 500,
                                seed: int = 0) -> pd.DataFrame:
    """Per rung smaller than the largest: the decision accuracy, the number of pairs it is over,
    chance (0.5: a coin orders a pair as the largest rung does half the time), and a 95% bootstrap
    interval that resamples every rung's replicates, the largest rung's too (its order is itself
    measured with noise)."""
    table = decisions(values, higher_is_better)
    accuracy = decision_accuracy(table)
    if accuracy.empty:
        return pd.DataFrame(columns=["rung", "accuracy", "pairs", "chance", "low", "high"])
    rng = np.random.default_rng(seed)
    groups = {key: g.value.to_numpy() for key, g in values.groupby(["variant", "rung"], sort=False)}
    compute = values.groupby("rung").compute.first()
    largest = compute.idxmax()
    variants = list(dict.fromkeys(values.variant))
    pairs = list(combinations(variants, 2))
    sampled = []
    for _ in range(draws):
        means = {k: rng.choice(v, len(v)).mean() for k, v in groups.items()}
        sampled.append({rung: np.mean([_order(means, a, b, rung, higher_is_better)
                                       == _order(means, a, b, largest, higher_is_better) for a, b in pairs
                                       if (a, rung) in means and (b, rung) in means])
                        for rung in accuracy.index})
    draws_by_rung = pd.DataFrame(sampled)
    return pd.DataFrame([{"rung": rung, "accuracy": float(acc), "pairs": len(pairs), "chance": 0.5,
                          "low": float(draws_by_rung[rung].quantile(0.025)),
                          "high": float(draws_by_rung[rung].quantile(0.975))} for rung, acc in accuracy.items()])


def _order(means: dict, a: str, b: str, rung: str, higher_is_better: bool) -> bool:
    """Whether `a` is better than `b` at `rung` by these means."""
    return (means[(a, rung)] > means[(b, rung)]) == higher_is_better


def ranks(values: pd.DataFrame, higher_is_better: bool = False) -> pd.DataFrame:
    """The variants' rank (1 = best, by mean over runs) at each rung: rows rungs (by compute),
    columns variants."""
    means = values.groupby(["rung", "variant"], sort=False).value.mean().unstack("variant")
    order = values.groupby("rung").compute.first().sort_values().index
    return means.loc[order].rank(axis=1, ascending=not higher_is_better, method="min")


# ---- from a collected experiment ----------------------------------------------------------------
def _p_better(a: pd.DataFrame, b: pd.DataFrame, compute: float, higher_is_better: bool) -> float:
    """P(a's value at `compute` is the better one) from the two fits."""
    lower = probability_lower(a, b, compute)
    return 1 - lower if higher_is_better else lower


def _checked_at_largest(a: pd.DataFrame, b: pd.DataFrame, higher_is_better: bool) -> dict[str, Any]:
    """The same probability from the smaller rungs only, at the largest rung's compute, beside what
    the largest rung measured (whether a's mean there is the better one): how often such a
    statement is right, at the confidence it states, is what the ladder's predictions are worth."""
    largest = max(a.compute.max(), b.compute.max())
    smaller_a, smaller_b = a[a.compute < largest], b[b.compute < largest]
    if smaller_a.compute.nunique() < 3 or smaller_b.compute.nunique() < 3:
        return {"largest_flops": largest, "p_a_better_at_largest": math.nan, "a_better_at_largest": None}
    mean_a, mean_b = a[a.compute == largest].value.mean(), b[b.compute == largest].value.mean()
    return {"largest_flops": largest, "p_a_better_at_largest": _p_better(smaller_a, smaller_b, largest,
                                                                          higher_is_better),
            "a_better_at_largest": bool((mean_a > mean_b) == higher_is_better)}


def analyse(df: pd.DataFrame, target: float | None = None) -> dict[str, Any]:
    """The ladder part of a report, from collect()'s rows (completed runs with a `rung` and an
    `arm`): per metric (validation loss, and bits per byte where evaluated), fits per arm; per
    metric (those, and each accuracy), ranks per rung and the pairs' decisions. `target`: the
    compute to predict at (default: 10x the largest rung's). Returns "fits", "decisions",
    "probabilities" (for every pair of arms and fitted metric, P(a better than b at the target),
    fit_with_intervals' fits independent per arm) (tables), "ranks" (metric -> table), "points"
    (metric -> per-run table), "target"."""
    ok = df[(df.status == "completed") & df.rung.notna()]
    compute = (ok[ok.metric == "flops_per_token"].set_index("run").value
               * ok[ok.metric == "tokens_seen"].set_index("run").value).rename("compute")
    runs = ok.drop_duplicates("run").set_index("run")[["arm", "rung"]].join(compute, how="inner")
    if runs.empty or runs.rung.nunique() < 2:
        return {}
    target = target or float(runs.compute.max() * 10)
    wanted = [("train", "val_loss", False, True)]
    wanted += [(t, "bits_per_byte", False, True) for t in sorted(ok[ok.metric == "bits_per_byte"].task.unique())]
    wanted += [(t, "acc", True, False) for t in sorted(ok[(ok.metric == "acc") & (ok.task != "train")].task.unique())]
    fits, tables, rank_tables, points, chances, accuracies = [], [], {}, {}, [], []
    for task, metric, higher, fitted in wanted:
        part = ok[(ok.task == task) & (ok.metric == metric)].set_index("run").value.rename("value")
        values = runs.join(part, how="inner").reset_index().rename(columns={"arm": "variant"})
        if values.empty or values.rung.nunique() < 2:
            continue
        key = f"{task}|{metric}"
        points[key] = values
        if fitted:
            arms = {arm: g[["compute", "value"]] for arm, g in values.groupby("variant", sort=False)
                    if g.rung.nunique() >= 3}  # three parameters: at least three rungs
            fits += [{"variant": arm, "metric": key, **fit_with_intervals(g, target)} for arm, g in arms.items()]
            for a, b in combinations(arms, 2):
                chances.append({"metric": key, "variant_a": a, "variant_b": b, "target_flops": target,
                                "p_a_better": _p_better(arms[a], arms[b], target, higher),
                                **_checked_at_largest(arms[a], arms[b], higher)})
        table = decisions(values, higher)
        table.insert(0, "metric", key)
        tables.append(table)
        accuracy = decision_accuracy_intervals(values, higher)
        accuracy.insert(0, "metric", key)
        accuracies.append(accuracy)
        rank_tables[key] = ranks(values, higher)
    fit_table = pd.DataFrame(fits)
    decision_table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    probabilities = pd.DataFrame(chances, columns=["metric", "variant_a", "variant_b", "target_flops", "p_a_better",
                                                   "largest_flops", "p_a_better_at_largest", "a_better_at_largest"])
    return {"fits": fit_table, "decisions": decision_table, "ranks": rank_tables, "points": points,
            "target": target, "probabilities": probabilities,
            "accuracy": pd.concat(accuracies, ignore_index=True) if accuracies else pd.DataFrame()}
