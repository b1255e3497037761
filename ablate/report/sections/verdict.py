"""The verdict: in plain words, per metric of the primary family, each variant against the
baseline, read from exactly the tests that set the table's marks."""

from __future__ import annotations

import math

from ablate import stats
from ablate.report.analysis import Analysis
from ablate.report.comparisons import Comparisons, comparisons, ratios
from ablate.report.format import fmt, p_value
from ablate.report.parts import Bullets, Context, Heading, Part, Section


class Verdict(Section):
    name = "verdict"

    def build(self, ctx: Context) -> Part:
        said = verdict(ctx.analysis, ctx.comparisons)
        if ctx.ladder and not ctx.ladder["probabilities"].empty:  # a ladder: the order at the target
            from ablate.report.sections.ladder import probability_lines

            said += [f"**at the target** ({line})" for line in probability_lines(ctx.ladder["probabilities"])]
        return Part([Heading("Verdict"), Bullets(said or ["nothing to compare"])])


def verdict(a: Analysis, comps: Comparisons) -> list[str]:
    """In plain words, per metric of the primary family: each variant against the baseline, from
    exactly the rows of `comps` that set the table's marks (the same test, the same Holm-adjusted
    p): better or worse where marked, not separable otherwise; the extrapolation ratio against 1.
    With one run per variant, only the order, and that training noise is unknown. Metrics outside
    the family get no verdict (they are exploratory)."""
    found = ratios(a)
    lines = []
    for key in comps.family:
        if found is not None and key == found.key:
            line = extrapolation_verdict(a, comps)
            if line:
                lines.append(line)
            continue
        for base, group in _groups(a):
            line = _metric_line(a, comps, key, base, group)
            if line:
                lines.append(line)
    return lines


def _groups(a: Analysis) -> list[tuple[str, list[str]]]:
    """The variants that are compared together, each group with its baseline: all of them, or on a
    ladder those of each rung (never across rungs)."""
    if not a.rungs:
        return [(a.baseline, a.variants)]
    groups = {}
    for v in a.variants:
        base = a.baseline_of(v)
        if base is not None:
            groups.setdefault(base, []).append(v)
    return list(groups.items())


def _metric_line(a: Analysis, comps: Comparisons, key, base: str, variants: list[str]) -> str | None:
    c = a.column(key)
    have = {v: a.values.reindex(a.runs[v])[key].dropna() for v in variants} if key in a.values else {}
    have = {v: x for v, x in have.items() if len(x)}
    if len(have) < 2 or base not in have:
        return None
    rows = comps.rows(key)
    rows = rows[rows.variant.isin(variants)]
    direction = "higher is better" if c.higher_is_better else "lower is better"
    order = sorted(have, key=lambda v: have[v].mean(), reverse=c.higher_is_better)
    if min(len(x) for x in have.values()) < 2 or not (rows.family == "primary").any():
        named = ", ".join(f"`{v}` ({fmt(have[v].mean())})" for v in order)
        return (f"**{c.label}** ({direction}): one run per variant, so training noise is unknown and no "
                f"difference can be called real. By value: {named}.")
    parts = _sorted_out(rows, order, base, c.higher_is_better)
    k = sorted({len(x) for x in have.values()})
    runs_each = f"{k[0]} runs each" if len(k) == 1 else f"{k[0]} to {k[-1]} runs each"
    return (f"**{c.label}** ({direction}, {runs_each}; against `{base}` {fmt(have[base].mean())}): "
            + "; ".join(parts) + ".")


def _sorted_out(rows, order: list[str], base: str, higher_is_better: bool) -> list[str]:
    """The variants (best first) as better, worse (marked) or not separable from the baseline."""
    by = {r.variant: r for r in rows.itertuples()}
    better, worse, level = [], [], []
    for v in order:
        r = by.get(v)
        if v == base or r is None:
            continue
        text = f"`{v}` {fmt(r.mean)} ({r.delta:+.3g}{'*' if r.significant else ''}, p_adj {p_value(r.p_adjusted)})"
        up = (r.delta > 0) == higher_is_better
        (better if r.significant and up else worse if r.significant else level).append(text)
    parts = ([f"better: {', '.join(better)}"] if better else []) + ([f"worse: {', '.join(worse)}"] if worse else [])
    return parts + ([f"not separable: {', '.join(level)}"] if level else [])


def extrapolation_verdict(a: Analysis, comps: Comparisons | None = None) -> str | None:
    """Which variants hold their perplexity beyond the training length: per run, perplexity at the
    longest length measured over perplexity at 1x; per variant, the geometric mean of that ratio
    with its 95% interval (runs and the evaluation text's windows), and whether it differs from 1,
    from the same rows of `comps` as the marks (Holm over the primary family where the ratio is in
    it). None without an extrapolation suite."""
    found = ratios(a)
    if found is None:
        return None
    comps = comparisons(a) if comps is None else comps
    rows = comps.rows(found.key)
    by = {r.variant: r for r in rows.itertuples()}
    primary = (rows.family == "primary").any()
    parts = []
    for v in sorted(a.variants, key=lambda v: by[v].mean if v in by else math.inf):
        r = by.get(v)
        if r is None:
            why = a.notes.get((v, found.at_longest), "no value")
            parts.append(f"`{v}`: not measured at {found.longest:g}x ({why})")
        elif r.n_seeds < 2:
            parts.append(f"`{v}` {fmt(r.mean)} (one run: no interval)")
        else:
            p = r.p_adjusted if primary else r.p_value
            word = "no change detected" if p >= stats.ALPHA else "worse" if r.mean > 1 else "better"
            mark = "*" if r.significant else ""
            parts.append(f"`{v}` {fmt(r.mean)} [{fmt(r.ci_low + 1)}, {fmt(r.ci_high + 1)}] {word}{mark}")
    how = ("Holm-adjusted over the primary family" if primary else "exploratory: unadjusted")
    return (f"**extrapolation** (perplexity at {found.longest:g}x the training length over perplexity at 1x, per "
            f"run; geometric mean [95% interval from the runs and the evaluation text's windows, conditional on "
            f"that text] over runs; worse / better: differs from 1, {how}, 5%): " + "; ".join(parts) + ".")
