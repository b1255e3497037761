"""How numbers and cells read in the report's tables: a value's digits, a p-value, a cell (the
mean, the half-width of its interval, the difference to the baseline and its mark), a column's
header (chance, whether it is averaged)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ablate.report.analysis import UNTESTED, Analysis, Column
from ablate.report.comparisons import Comparisons


def fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{x:,}"
    if abs(x) >= 1e5:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def p_value(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2g}" if p >= 0.001 else "< 0.001"


class Cells:
    """The cells of the tables: `cell(variant, column)` and `header(column)`."""

    def __init__(self, a: Analysis, comps: Comparisons) -> None:
        self.a = a
        self.marks = {(r.variant, r.metric): r for r in comps.table.itertuples()}

    def cell(self, variant: str, c: Column) -> str:
        iv = self.a.cells[(variant, c.key)]
        note = self.a.notes.get((variant, c.key))
        if not math.isfinite(iv.mean):
            return f"n/a ({note})" if note else "n/a"
        if c.kind in UNTESTED:
            return fmt(iv.mean)
        text = fmt(iv.mean) + (f" ± {fmt((iv.high - iv.low) / 2)}" if math.isfinite(iv.low) else "")
        r = self.marks.get((variant, str(c.key)))
        if r is not None and math.isfinite(r.delta):
            text += f" ({r.delta:+.3g}{'*' if r.significant else ''})"
        return text + (f" [without {note}]" if note else "")

    def header(self, c: Column) -> str:
        extra = f", chance {fmt(c.chance)}" if c.chance is not None else ""
        extra += " (any source word; any lexicon word: " + fmt(c.lexicon) + ")" if c.lexicon is not None else ""
        extra += ", at chance: not averaged" if c.key in self.a.uninformative else ""
        return f"{c.label} ({extra.removeprefix(', ')})" if extra else c.label
