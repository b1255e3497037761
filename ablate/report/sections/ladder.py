"""A ladder (a sweep over ladder.size): the fits of each variant's metric against compute with
the prediction at the target, the ranks per rung, the pairs' decisions against the largest rung
(ablate.ladder computes them), ladder.csv, decisions.csv, scaling.png and ranks.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate import ladder, stats
from ablate.report.keys import MetricKey
from ablate.report.parts import Block, Bullets, Context, Frame, Heading, Part, Section, Table, Text
from ablate.report.plots import pyplot, save


class Ladder(Section):
    name = "ladder"

    def build(self, ctx: Context) -> Part:
        result = ctx.ladder
        if not result:
            return Part()
        blocks = ladder_blocks(result["fits"], result["decisions"], result["ranks"], result["target"],
                               result["accuracy"])
        blocks[1:1] = probability_blocks(result["probabilities"])
        fits = result["fits"]
        return Part(blocks, [Table("ladder", fits), Table("decisions", result["decisions"]),
                             Table("probabilities", result["probabilities"]),
                             Table("decision_accuracy", result["accuracy"])], plot(result, ctx.out))


def probability_lines(table: pd.DataFrame) -> list[str]:
    """Per pair of arms and fitted metric: which is predicted better at the target, and with what
    probability (from the two fits' uncertainty); "too few replicates" where there is none."""
    lines = []
    for r in table.itertuples(index=False):
        if not math.isfinite(r.p_a_better):
            lines.append(f"{label(r.metric)}: `{r.variant_a}` against `{r.variant_b}` at {r.target_flops:.3g} FLOPs: "
                         f"too few replicates (at least {ladder.MIN_REPLICATES} per rung) for a probability")
            continue
        first, second, p = ((r.variant_a, r.variant_b, r.p_a_better) if r.p_a_better >= 0.5
                            else (r.variant_b, r.variant_a, 1 - r.p_a_better))
        lines.append(f"{label(r.metric)}: `{first}` beats `{second}` at {r.target_flops:.3g} FLOPs with probability "
                     f"{p:.2f}")
    return lines


def checked_lines(table: pd.DataFrame) -> list[str]:
    """The same probability from the smaller rungs, at the largest rung, against what it measured."""
    lines = []
    for r in table.itertuples(index=False):
        if not math.isfinite(r.p_a_better_at_largest):
            continue
        first, second, p = ((r.variant_a, r.variant_b, r.p_a_better_at_largest) if r.p_a_better_at_largest >= 0.5
                            else (r.variant_b, r.variant_a, 1 - r.p_a_better_at_largest))
        right = (first == r.variant_a) == bool(r.a_better_at_largest)
        lines.append(f"{label(r.metric)}: from the smaller rungs, `{first}` beats `{second}` at the largest rung "
                     f"({r.largest_flops:.3g} FLOPs) with probability {p:.2f}; the largest rung measured "
                     + ("the same order (right)" if right else "the other order (wrong)"))
    return lines


def probability_blocks(table: pd.DataFrame) -> list[Block]:
    if table.empty:
        return []
    blocks: list[Block] = [Text(["The order at the target, from each arm's fit and its uncertainty (the fits' "
                                 "confidence distributions, the arms independent; probabilities.csv):"]),
                           Bullets(probability_lines(table))]
    checked = checked_lines(table)
    if checked:
        blocks += [Text(["Checked where it can be: the same probability from the smaller rungs alone, at the "
                         "largest rung, against what that rung measured:"]), Bullets(checked)]
    return blocks


def label(key: str) -> str:
    """A metric key as a table cell: `val_loss`, `ablate_heldout bits_per_byte`."""
    return MetricKey.parse(key).label


def ladder_blocks(fits: pd.DataFrame, table: pd.DataFrame, rank_tables: dict[str, pd.DataFrame],
                  target: float, accuracy: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = [Heading("Ladder")]
    if not fits.empty:
        blocks.append(Text([f"Fits of L(C) = E + A * C^(-alpha) to each variant's runs against training compute C "
                            f"(FLOPs), least squares on every run, with 95% profile-likelihood intervals (they "
                            f"cover a known truth 92-96% of the time in simulation at 5 rungs x 3 replicates; "
                            f"none with fewer than {ladder.MIN_REPLICATES} replicates a rung); the prediction is "
                            f"at C = {target:.3g} FLOPs. Leave-one-rung-out: fitted without the largest rung, "
                            "the prediction there minus what the runs measured, the honest error of extrapolating "
                            "one rung."]))
        shown = pd.DataFrame([{"metric": label(r.metric), "variant": r.variant, "E": _iv(r.E, r.E_low, r.E_high),
                               "alpha": _iv(r.alpha, r.alpha_low, r.alpha_high),
                               "predicted at target": _iv(r.predicted, r.predicted_low, r.predicted_high)
                               + ("" if math.isfinite(r.predicted_low) else f" ({r.interval})"),
                               "leave-one-rung-out error": "n/a" if not math.isfinite(r.loo_error)
                               else f"{r.loo_error:+.4g}",
                               "rungs": r.rungs, "runs": r.runs} for r in fits.itertuples(index=False)])
        blocks.append(Frame(shown.set_index("metric")))
    for key, rank in rank_tables.items():
        part = accuracy[accuracy.metric == key] if len(accuracy) else accuracy
        blocks += _rank_blocks(key, rank, table[table.metric == key], part)
    return blocks


def _rank_blocks(key: str, rank: pd.DataFrame, part: pd.DataFrame, accuracy: pd.DataFrame) -> list[Block]:
    order = {rung: ", ".join(f"`{v}`" for v in rank.loc[rung].sort_values().index) for rung in rank.index}
    at_rungs = "; ".join(f"{r}: {o}" for r, o in order.items())
    lines = [f"**{label(key)}**: best first at each rung: {at_rungs}."]
    if len(accuracy):
        apart = part.groupby("rung", sort=False).p_adjusted.apply(
            lambda p: f"{(p < stats.ALPHA).sum()} of {len(p)}")
        pairs = int(accuracy.pairs.iloc[0])
        lines.append(f"Decision accuracy (the share of the {pairs} pair{'s' if pairs != 1 else ''} ordered as at the "
                     "largest rung, chance 50%, [95% interval resampling every rung's replicates, the largest's "
                     "too]; an order counts whether or not its difference is significant): "
                     + ", ".join(f"{r.rung}: {r.accuracy:.0%} [{r.low:.0%}, {r.high:.0%}]"
                                 for r in accuracy.itertuples(index=False))
                     + ". Pairs significantly apart (Welch, Holm-adjusted over every pair and rung, 5%) at each "
                     "rung: " + ", ".join(f"{r}: {n}" for r, n in apart.items()) + ".")
    flips = part[part.sign_change != ""].drop_duplicates(["variant_a", "variant_b"])
    changes = [f"`{f.variant_a}` vs `{f.variant_b}` "
               + ("changes sign, significantly on both sides after Holm's adjustment (a flip: the small rungs' "
                  "answer does not hold)" if f.sign_change == "flip"
                  else "changes sign across rungs: order not established") + "."
               for f in flips.itertuples(index=False)]
    return [Text(lines), *([Bullets(changes)] if changes else [])]


def _iv(mean: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{mean:.4g}"
    return f"{mean:.4g} [{low:.4g}, {high:.4g}]"


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """scaling.png (each fitted metric against compute, log-log, runs, rung means and fits) and
    ranks.png (each variant's rank per rung, per metric)."""
    plt = pyplot()
    written = []
    fitted = sorted(set(result["fits"].metric)) if not result["fits"].empty else []
    if fitted:
        fig, axes = plt.subplots(1, len(fitted), figsize=(6 * len(fitted), 4.5), squeeze=False)
        for ax, key in zip(axes[0], fitted):
            _scaling_axis(ax, key, result)
        fig.tight_layout()
        written.append(save(fig, out / "scaling.png"))
    if result["ranks"]:
        keys = list(result["ranks"])
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            rank = result["ranks"][key]
            for arm in rank.columns:
                ax.plot(range(len(rank)), rank[arm], marker="o", label=arm)
            ax.set_xticks(range(len(rank)), [str(r) for r in rank.index], rotation=30, fontsize=8)
            ax.set(ylabel="rank (1 = best)", title=label(key))
            ax.invert_yaxis()
            ax.legend(fontsize=8)
        written.append(save(fig, out / "ranks.png"))
    return written


def _scaling_axis(ax, key: str, result: dict[str, Any]) -> None:
    values = result["points"][key]
    for i, (arm, group) in enumerate(values.groupby("variant", sort=False)):
        color = f"C{i}"
        ax.scatter(group.compute, group.value, color=color, alpha=0.4, s=12)
        means = group.groupby("compute").value.mean()
        ax.scatter(means.index, means.values, color=color, s=40, label=arm)
        row = result["fits"][(result["fits"].metric == key) & (result["fits"].variant == arm)]
        if len(row):
            r = row.iloc[0]
            grid = np.geomspace(group.compute.min(), result["target"], 100)
            ax.plot(grid, ladder.Fit(r.E, r.A, r.alpha)(grid), color=color)
            if not math.isnan(r.predicted_low):
                ax.errorbar([result["target"]], [r.predicted], color=color, capsize=4, fmt="x",
                            yerr=[[r.predicted - r.predicted_low], [r.predicted_high - r.predicted]])
    ax.set(xscale="log", yscale="log", xlabel="training compute (FLOPs)", ylabel=label(key), title=label(key))
    ax.axvline(result["target"], color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=8)
