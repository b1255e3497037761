"""The legend under the tables: what a cell holds, which tests set the marks, what the averages
and the noise columns are."""

from __future__ import annotations

from ablate.report.parts import Context, Part, Section, Text


class Legend(Section):
    name = "legend"

    def build(self, ctx: Context) -> Part:
        a, comps = ctx.analysis, ctx.comparisons
        one_run = min(a.seeds.values()) < 2
        base = f"`{a.collection.arms.get(a.baseline, a.baseline)}` at the same rung" if a.rungs else f"`{a.baseline}`"
        return Part([Text([legend(base, comps.tests, one_run, [k.short_task for k in a.average_tasks],
                            [f"{k.task} {k.metric}" for k in comps.family])])])


def legend(base: str, tests: int, one_run: bool, averaged: list[str], family: list[str]) -> str:
    averaged_text = ", ".join(averaged) or "none"
    named = ", ".join(family) or "none"
    text = (f"Each cell: the mean over completed runs ± the half-width of its 95% interval (t over runs, k - 1 "
            f"degrees of freedom; for an accuracy, widened by the noise of its item set, counted once, and for "
            f"a perplexity on the extrapolation windows by the windows' own: `interval` in table.csv says "
            f"which), then (the difference to the baseline {base}). ")
    if one_run:
        text += ("With one run of a variant, training noise is unknown: its interval is item-only (the item-level "
                 "error, clustered where items share a context) and no difference is marked; comparisons.csv has "
                 "the item-only tests (McNemar for accuracies). ")
    text += (f"* marks a difference in the primary family ({named}) that survives seed noise and multiple "
             f"comparisons: over runs (paired over replicates where the arms share their (init seed, data order) "
             f"pairs, else Welch's t; plus the item-set noise of the paired difference for accuracies), "
             f"Holm-adjusted p < 0.05 over the family's {tests} tests; the verdict reads the same tests. Every other "
             f"difference is exploratory: comparisons.csv gives its unadjusted p, and it is never marked. Averages "
             f"are per run, over the multiple-choice accuracies every variant has ({averaged_text}; lm-eval groups "
             f"count once, tasks at chance are left out), then over runs; chance-adj. is (acc - chance) / (1 - "
             f"chance). [without ...] names the runs a cell leaves out: failed, diverged, interrupted or missing "
             f"runs, and completed runs whose evaluation is stale or absent. Noise: SD of a run over runs of one "
             f"variant (by source where seeds x data seeds cross, with the degrees of freedom each part rests on), "
             f"SD items = the item-level error of one run, SNR = the SD of the variants' true means (their spread "
             f"less what run noise alone gives, floored at 0) over the run SD, MDE = the smallest difference the "
             f"runs per variant find with 80% power at the family's Holm-adjusted level.")
    return text
