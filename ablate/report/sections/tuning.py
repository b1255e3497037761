"""+tune=lr: each arm's chosen learning rate, whether the arms rank the same at the shared base
LR, and the LR-sensitivity figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.plan import tune
from ablate.report.keys import VAL_LOSS
from ablate.report.parts import Block, Context, Frame, Heading, Part, Section, Text
from ablate.report.plots import pyplot, save


class Tuning(Section):
    name = "tuning"

    def build(self, ctx: Context) -> Part:
        found = ctx.experiment.tuning()
        if found is None:
            return Part()
        tuned = ctx.analysis.means(VAL_LOSS).dropna() if ctx.analysis.has(VAL_LOSS) else pd.Series(dtype=float)
        return Part(tuning_lines(found, tuned), figures=[plot_lr_sensitivity(found, ctx.out)])


def tuning_lines(found: dict[str, Any], tuned: pd.Series) -> list[Block]:
    """Each arm's chosen LR (`found`: the sweep's tuning.json), and whether the arms rank the same
    by `tuned` (their validation loss at their own LR) as at the shared base LR."""
    choices = [tune.Choice.from_dict(a) for a in found["arms"]]
    base = found["base_lr"]
    blocks: list[Block] = [Heading("Learning rate, per arm"), Text([
             f"Each arm trained once (seed {found['seed']}, {found['tokens']:,} tokens) at {base:g} x "
             f"{', '.join(f'{m:g}' for m in found['multipliers'])}; its seeds ran at the LR with the lowest final "
             f"validation loss (lr_sensitivity.png)."])]
    rows = {c.arm: {"chosen LR": f"{c.lr:g}" + (f" (at the {c.edge} end of the grid)" if c.edge else ""),
                    "largest LR not diverged": "none" if c.max_stable_lr is None else f"{c.max_stable_lr:g}",
                    **{f"val_loss @ {lr:g}": "diverged" if math.isinf(v) else f"{v:.4f}"
                       for lr, v in zip(c.lrs, c.val_loss)}} for c in choices}
    blocks.append(Frame(pd.DataFrame(rows).T))
    if found.get("transfer"):
        return [*blocks, *transfer_lines([tune.Transfer.from_dict(t) for t in found["transfer"]])]
    lines = []
    at_base = {c.arm: c.val_loss[c.lrs.index(base)] for c in choices if base in c.lrs}
    arms = [a for a in at_base if a in tuned.index]
    if len(arms) > 1:
        order_base = sorted(arms, key=lambda a: at_base[a])
        order_tuned = sorted(arms, key=lambda a: tuned[a])
        same = order_base == order_tuned
        lines.append(f"By validation loss, at each arm's own LR: {' < '.join(order_tuned)}; at the shared base LR "
                     f"{base:g} (one run an arm): {' < '.join(order_base)}. "
                     + ("The same order: giving each arm its own LR does not change the ranking."
                        if same else "**A different order: at one shared LR this comparison would have said "
                        "something else.**"))
    else:
        lines.append("The base LR is not in the grid, or too few arms finished: no comparison at the shared LR.")
    edges = [c.arm for c in choices if c.edge]
    if edges:
        lines.append(f"**{', '.join(edges)}: best at the edge of the grid; widen tune.lr_multipliers to find "
                     f"the optimum.**")
    return [*blocks, Text(lines)]


def transfer_lines(transfers: list[tune.Transfer]) -> list[Block]:
    """A muP ladder: per arm, whether the LR tuned at the smallest rung is still the best (within
    one grid step) at the larger rung it was checked at."""
    first = transfers[0]
    rows = {t.arm: {f"best LR at size={t.tuned_at}": f"{t.tuned_lr:g}",
                    f"best LR at size={t.checked_at}": f"{t.check_lr:g}"
                    + (f" ({t.check_edge} end)" if t.check_edge else ""),
                    "grid steps apart": t.grid_steps, "verdict": "LR transfers" if t.transfers else "does not transfer"}
            for t in transfers}
    failing = [t.arm for t in transfers if not t.transfers]
    verdict = (f"**LR does not transfer for {', '.join(failing)}**: its rungs above size={first.tuned_at} ran at an "
               "LR that is not their best; tune each rung (model.parametrization=sp tunes every rung) or widen the "
               "check." if failing else "The LR transfers for every arm: within one grid step at the larger rung.")
    return [Heading("Learning-rate transfer across the ladder (muP)"), Text([
        f"Under muP the LR was tuned at the smallest rung (size={first.tuned_at}) and used at every rung; the same "
        f"grid ran at size={first.checked_at}, with the tuning seeds, to check it.", verdict]),
        Frame(pd.DataFrame(rows).T)]


def plot_lr_sensitivity(found: dict[str, Any], out: Path) -> Path:
    """Final validation loss against LR, one line per arm; diverged runs as x at the top, the chosen
    LR as a star."""
    plt = pyplot()
    choices = [tune.Choice.from_dict(a) for a in found["arms"]]
    finite = [v for c in choices for v in c.val_loss if math.isfinite(v)]
    top = max(finite) * 1.02 if finite else 1.0
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in choices:
        ok = [(lr, v) for lr, v in zip(c.lrs, c.val_loss) if math.isfinite(v)]
        line, = ax.plot([p[0] for p in ok], [p[1] for p in ok], marker="o", label=c.arm)
        bad = [lr for lr, v in zip(c.lrs, c.val_loss) if not math.isfinite(v)]
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", color=line.get_color())
        best = dict(ok).get(c.lr)
        if best is not None:
            ax.scatter([c.lr], [best], marker="*", s=150, color=line.get_color(), zorder=3)
    ax.axvline(found["base_lr"], color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="learning rate", ylabel="final validation loss",
           title="LR sensitivity (one run per point; star: chosen; x: diverged; dashed: base LR)")
    ax.legend(fontsize=8)
    return save(fig, out / "lr_sensitivity.png")
