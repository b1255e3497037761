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

BOOTSTRAP = 1000  # resamples of each rung's seeds for the fits' intervals


# ---- fits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fit:
    E: float
    A: float
    alpha: float

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(compute, -self.alpha)


def fit_power_law(compute: np.ndarray, loss: np.ndarray, start: Fit | None = None) -> Fit:
    """L(C) = E + A * C^(-alpha), least squares on log L, with E in [0, min L) and alpha in
    (0, 3]. Compute is scaled by its geometric mean inside, so A is for C in FLOPs. Several
    starting points unless `start` (a nearby fit) is given."""
    from scipy.optimize import least_squares

    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    scale = math.exp(np.log(compute).mean())
    x = compute / scale
    lowest = float(loss.min())

    def residual(p: np.ndarray) -> np.ndarray:
        e, log_a, alpha = p
        return np.log(e + np.exp(log_a) * x ** (-alpha)) - np.log(loss)

    starts = []
    if start is not None:
        e0 = min(start.E, lowest * 0.99)
        starts.append([e0, math.log(start.A / scale**start.alpha), float(np.clip(start.alpha, 0.01, 2.9))])
    else:
        for share in (0.0, 0.5, 0.9):  # several starts for E: the surface has flat valleys
            e0 = share * lowest
            slope = np.polyfit(np.log(x), np.log(np.maximum(loss - e0, 1e-9)), 1)[0] if len(set(x)) > 1 else -0.1
            starts.append([e0, math.log(max(lowest - e0, 1e-9)), float(np.clip(-slope, 0.01, 2.9))])
    best = None
    for first in starts:
        got = least_squares(residual, np.array(first), bounds=([0.0, -50.0, 1e-3], [lowest * (1 - 1e-9), 50.0, 3.0]))
        if best is None or got.cost < best.cost:
            best = got
    e, log_a, alpha = best.x
    return Fit(float(e), float(math.exp(log_a) * scale**alpha), float(alpha))


def fit_with_intervals(points: pd.DataFrame, target: float, seed: int = 0,
                       resamples: int = BOOTSTRAP) -> dict[str, float]:
    """Fit on the rungs' means (`points`: compute, value, one row per run), then resample each
    rung's runs with replacement BOOTSTRAP times for 95% percentile intervals of E, alpha and the
    prediction at `target`; no intervals when no rung has two runs."""
    means = points.groupby("compute").value.mean()
    fit = fit_power_law(means.index.to_numpy(), means.to_numpy())
    out = {"E": fit.E, "A": fit.A, "alpha": fit.alpha, "target_flops": target, "predicted": float(fit(target)),
           "rungs": len(means), "runs": len(points)}
    groups = [g.value.to_numpy() for _, g in points.groupby("compute")]
    if max(len(g) for g in groups) < 2:
        return {**out, **{f"{k}_{e}": math.nan for k in ("E", "alpha", "predicted") for e in ("low", "high")}}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        resampled = [rng.choice(g, size=len(g)).mean() for g in groups]
        f = fit_power_law(means.index.to_numpy(), np.array(resampled), start=fit)
        draws.append((f.E, f.alpha, float(f(target))))
    draws = np.array(draws)
    for i, key in enumerate(("E", "alpha", "predicted")):
        out[f"{key}_low"], out[f"{key}_high"] = (float(v) for v in np.percentile(draws[:, i], [2.5, 97.5]))
    return out


# ---- decisions ----------------------------------------------------------------------------------
def decisions(values: pd.DataFrame, higher_is_better: bool = False) -> pd.DataFrame:
    """For each pair of variants and each rung (`values`: variant, rung, compute, value, one row
    per run), the difference of the means (a - b), Welch's p over runs, which is better, and
    whether that agrees with the largest rung. A pair whose difference changes sign across rungs
    is flagged: `flip` when a rung on each side is significant at 5%, `order changes` otherwise."""
    rows = []
    rungs = sorted(values.rung.unique(), key=lambda r: values[values.rung == r].compute.iloc[0])
    largest = rungs[-1]
    variants = list(dict.fromkeys(values.variant))
    for a, b in combinations(variants, 2):
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
        signs = {np.sign(r["delta"]) for r in pair if r["delta"]}
        significant = {np.sign(r["delta"]) for r in pair if r["delta"] and r["p_value"] < stats.ALPHA}
        flag = "flip" if len(significant) > 1 else "order changes" if len(signs) > 1 else ""
        for r in pair:
            rows.append({**r, "agrees_with_largest": None if final is None else r["better"] == final,
                         "sign_change": flag})
    return pd.DataFrame(rows, columns=["variant_a", "variant_b", "rung", "compute", "delta", "p_value", "better",
                                       "agrees_with_largest", "sign_change"])


def decision_accuracy(table: pd.DataFrame) -> pd.Series:
    """Per rung (smaller than the largest): the share of pairs ordered as at the largest rung."""
    if table.empty:
        return pd.Series(dtype=float)
    largest = table.loc[table.compute.idxmax(), "rung"]
    part = table[table.rung != largest]
    return part.groupby("rung", sort=False)["agrees_with_largest"].mean()


def ranks(values: pd.DataFrame, higher_is_better: bool = False) -> pd.DataFrame:
    """The variants' rank (1 = best, by mean over runs) at each rung: rows rungs (by compute),
    columns variants."""
    means = values.groupby(["rung", "variant"], sort=False).value.mean().unstack("variant")
    order = values.groupby("rung").compute.first().sort_values().index
    return means.loc[order].rank(axis=1, ascending=not higher_is_better, method="min")


# ---- from a collected experiment ----------------------------------------------------------------
def analyse(df: pd.DataFrame, target: float | None = None) -> dict[str, Any]:
    """The ladder part of a report, from collect()'s rows (completed runs with a `rung` and an
    `arm`): per metric (validation loss, and bits per byte where evaluated), fits per arm; per
    metric (those, and each accuracy), ranks per rung and the pairs' decisions. `target`: the
    compute to predict at (default: 10x the largest rung's). Returns "fits", "decisions" (tables),
    "ranks" (metric -> table), "points" (metric -> per-run table), "target"."""
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
    fits, tables, rank_tables, points = [], [], {}, {}
    for task, metric, higher, fitted in wanted:
        part = ok[(ok.task == task) & (ok.metric == metric)].set_index("run").value.rename("value")
        values = runs.join(part, how="inner").reset_index().rename(columns={"arm": "variant"})
        if values.empty or values.rung.nunique() < 2:
            continue
        key = f"{task}|{metric}"
        points[key] = values
        if fitted:
            for arm, group in values.groupby("variant", sort=False):
                if group.rung.nunique() >= 3:  # three parameters: at least three rungs
                    fits.append({"variant": arm, "metric": key, **fit_with_intervals(group, target)})
        table = decisions(values, higher)
        table.insert(0, "metric", key)
        tables.append(table)
        rank_tables[key] = ranks(values, higher)
    fit_table = pd.DataFrame(fits)
    decision_table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return {"fits": fit_table, "decisions": decision_table, "ranks": rank_tables, "points": points,
            "target": target}
