"""The report's sections, one module each (ablate.report.parts says what a section gives).
`sections()` is their order in table.md: a new section is one module here and one entry there."""

from __future__ import annotations

from ablate.report.parts import Section
from ablate.report.sections import (
    extrapolation,
    fairness,
    ladder,
    legend,
    live,
    main,
    noise,
    stability,
    tuning,
    verdict,
)


def sections() -> list[Section]:
    """The sections in table.md's order."""
    return [fairness.Fairness(), verdict.Verdict(), tuning.Tuning(), ladder.Ladder(), main.Main(),
            extrapolation.Extrapolation(), stability.Stability(), noise.Noise(), legend.Legend(), live.Live()]
