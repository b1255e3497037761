"""Stability: loss and grad-norm spikes and the largest attention logit, per variant (shown,
never tested: counts of rare events are no metric to rank by)."""

from __future__ import annotations

import pandas as pd

from ablate import stats
from ablate.report.format import Cells
from ablate.report.parts import Context, Frame, Heading, Part, Section, Text


class Stability(Section):
    name = "stability"

    def build(self, ctx: Context) -> Part:
        a = ctx.analysis
        stable = [c for c in a.columns if c.kind == "stability"]
        if not stable:
            return Part()
        cells = Cells(a, ctx.comparisons)
        st = pd.DataFrame({c.label: [cells.cell(v, c) for v in a.variants] for c in stable},
                          index=pd.Index(a.variants, name="variant"))
        st.insert(0, "runs", [a.run_counts[v] for v in a.variants])
        return Part([Heading("Stability (means over completed runs)"), Frame(st), Text([
                     f"A loss spike: a step whose loss exceeds {stats.LOSS_SPIKE:g}x the median of the "
                     f"{stats.SPIKE_WINDOW} steps before it; a grad-norm spike: {stats.GRAD_SPIKE:g}x. "
                     "Max attn logit: the largest |q.k| x scale (before position bias and soft-cap) on the "
                     "first validation batch of the final model."]
                     + (["Mixture of experts, at the last step: expert load entropy, the entropy of the experts' "
                         "share of assignments over log(n_experts) (1: balanced, 0: one expert takes all), the "
                         "mean over layers; balancing loss, Switch's n_experts x sum f_i P_i per layer (1 when "
                         "balanced; recorded under balance=aux_loss); dropped tokens: 0, as no capacity limits an "
                         "expert."] if any(c.label == "expert load entropy" for c in stable) else []))])
