"""The noise of a run, per metric: by source where seeds and data orders cross, the item-level
error, the signal-to-noise ratio, and the smallest difference the replicates can detect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablate import stats
from ablate.report.analysis import UNTESTED, Analysis, aligned, paired_items
from ablate.report.comparisons import Comparisons, comparisons
from ablate.report.keys import MetricKey


def noise(a: Analysis, comps: Comparisons | None = None) -> pd.DataFrame:
    """Per metric: the SD of a run's value over runs of one variant (pooled over variants), split
    into init-seed, data-order and residual parts where a variant's runs cross two or more seeds of
    each; the item-level SD of one run's value; the signal-to-noise ratio (the SD of the variants'
    true means, estimated as the spread of their means less what run noise alone gives, floored
    at 0, over the run SD: 0 where noise explains the spread); and the smallest difference the
    runs per variant find with 80% power by the report's test (paired where the arms pair) at the
    Holm-adjusted level of the primary family's first step. df_init / df_data: the degrees of
    freedom of the init and data-order parts (levels - 1, summed over variants). `comps`: the
    report's comparisons, where already made (the family's size and whether the arms pair)."""
    seeds = a.collection.runs()[["seed", "data_seed"]]
    comps = comparisons(a) if comps is None and len(a.variants) > 1 else comps
    tests = comps.tests if comps is not None else 1
    paired = comps is not None and comps.paired
    rows = []
    for c in a.columns:
        if c.kind in UNTESTED or c.key not in a.values:
            continue
        sd, k, means, parts, grid_dfs = _run_noise(a, c.key, seeds)
        item = a.ses[c.key].dropna() if c.key in a.ses else pd.Series(dtype=float)
        rows.append({"metric": str(c.key), "runs_per_variant": k, "sd_runs": sd, **parts,
                     # what each source's SD rests on: 2 (a 3 x 3 grid) shows a source, it cannot rank them
                     "df_init": grid_dfs[0], "df_data": grid_dfs[1],
                     "sd_items": math.sqrt((item**2).mean()) if len(item) else math.nan,
                     # the spread of the variants' means less what run noise alone gives them (sd^2 / k)
                     "snr": math.sqrt(max(0.0, np.var(means, ddof=1) - sd**2 / k)) / sd
                     if len(means) >= 2 and sd > 0 and k else math.nan,
                     "mde": stats.mde(sd, k, tests=max(1, tests), paired=paired,
                                      item_var=_item_var_of_differences(a, c.key),
                                      sd_diff=_sd_of_differences(a, c.key) if paired else None)})
    return pd.DataFrame(rows)


def _run_noise(a: Analysis, key: MetricKey, seeds: pd.DataFrame) -> tuple:
    """A metric's run noise: the SD over runs of one variant (pooled over variants), the fewest
    runs of a variant, the variants' means, the SD by source (init, data order, residual) where
    a variant's runs cross seeds and data orders, and the degrees of freedom of the first two."""
    variances, dfs, components, means, grid_dfs = [], [], [], [], [0, 0]
    for names in a.runs.values():
        got = a.values.reindex(names)[key].dropna()
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
    k = min((len(a.values.reindex(n)[key].dropna()) for n in a.runs.values()), default=0)
    parts = {name: math.sqrt(np.mean([getattr(x, name) ** 2 for x in components])) if components else math.nan
             for name in ("sd_init", "sd_data", "sd_residual")}
    return sd, k, means, parts, grid_dfs if components else [math.nan, math.nan]


def _item_var_of_differences(a: Analysis, key: MetricKey) -> float:
    """The item-set variance of a difference to the baseline (stats.item_variance), averaged over
    the variants; 0 for a metric without per-item results."""
    found = []
    for variant in a.variants:
        base = a.baseline_of(variant)
        if base in (None, variant):
            continue
        v, clusters = paired_items(a, variant, key)
        b, _ = paired_items(a, base, key)
        if v is not None and b is not None:
            found.append(stats.item_variance(v, b, clusters)[0])
    return float(np.mean(found)) if found else 0.0


def _sd_of_differences(a: Analysis, key: MetricKey) -> float | None:
    """The SD of the per-replicate differences to the baseline, pooled over the variants whose
    replicates pair with the baseline's (what a paired test's power rests on); None without any."""
    if key not in a.values:
        return None
    variances, dfs = [], []
    for variant in a.variants:
        if a.baseline_of(variant) in (None, variant):
            continue
        v_runs, b_runs, paired = aligned(a, variant)
        if not paired:
            continue
        d = a.values.reindex(v_runs)[key].to_numpy() - a.values.reindex(b_runs)[key].to_numpy()
        d = d[np.isfinite(d)]
        if len(d) >= 2:
            variances.append(d.var(ddof=1))
            dfs.append(len(d) - 1)
    return math.sqrt(np.average(variances, weights=dfs)) if variances else None
