"""Length extrapolation: perplexity at multiples of the training length, per variant, and its
figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.format import Cells
from ablate.report.parts import Context, Frame, Heading, Part, Section
from ablate.report.plots import pyplot, save


class Extrapolation(Section):
    name = "extrapolation"

    def build(self, ctx: Context) -> Part:
        a = ctx.analysis
        extra = [c for c in a.columns if c.kind == "extrapolation"]
        if not extra:
            return Part()
        cells = Cells(a, ctx.comparisons)
        ex = pd.DataFrame({c.key.task.split("_")[-1]: [cells.cell(v, c) for v in a.variants] for c in extra},
                          index=pd.Index(a.variants, name="variant"))
        lines = [Heading("Length extrapolation (perplexity at multiples of the training length)"), Frame(ex)]
        return Part(lines, figures=[plot(ctx, extra)])


def plot(ctx: Context, extra: list) -> object:
    a = ctx.analysis
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [c.key.length for c in extra]
    for variant in a.variants:
        cells = [a.cells[(variant, c.key)] for c in extra]
        y = np.array([iv.mean for iv in cells])
        lo, hi = np.array([iv.low for iv in cells]), np.array([iv.high for iv in cells])
        line, = ax.plot(x, y, marker="o", label=variant)
        ok = np.isfinite(lo)
        if ok.any():
            ax.fill_between(np.array(x)[ok], lo[ok], hi[ok], alpha=0.15, color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="evaluation length / training length", ylabel="perplexity",
           title="Length extrapolation (95% intervals; n/a points omitted)")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    return save(fig, ctx.out / "extrapolation.png", ctx.note)
