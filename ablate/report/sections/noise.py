"""The noise table: per metric, the SD of a run by source, the item-level SD, the signal-to-noise
ratio and the smallest detectable difference (ablate.report.noise computes it)."""

from __future__ import annotations

from ablate.report.format import fmt
from ablate.report.parts import Context, Frame, Heading, Part, Section


class Noise(Section):
    name = "noise"

    def build(self, ctx: Context) -> Part:
        if ctx.noise.empty:
            return Part()
        shown = ctx.noise.set_index("metric").map(fmt)
        return Part([Heading("Noise per metric"), Frame(shown)])
