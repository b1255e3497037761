"""What a section of the report is made of. A section reads the analysis (`Context`) and gives a
`Part`: blocks (headings, prose, lists, tables) that the Markdown and HTML writers render, tables
the csv and tex writers write, and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate.report.analysis import Analysis
from ablate.report.collect import Collection
from ablate.report.comparisons import Comparisons
from ablate.run.rundir import ExperimentDir


@dataclass
class Context:
    """What every section may read: the experiment, what was collected and analysed, the tests,
    the noise table, where figures go, the ladder's target compute, and the note the plots carry
    (which runs they leave out)."""

    experiment: ExperimentDir
    collection: Collection
    analysis: Analysis
    comparisons: Comparisons
    noise: pd.DataFrame
    out: Path
    target_flops: float | None = None
    note: str = ""
    ladder: dict = field(default_factory=dict)  # ablate.ladder.analyse's result, for a ladder


@dataclass
class Table:
    """A table a writer writes: `name` is the file's stem (table -> table.csv), `formats` which
    writers take it (csv, tex), `index` whether the frame's index is a column."""

    name: str
    frame: pd.DataFrame
    formats: tuple[str, ...] = ("csv",)
    index: bool = False


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """Lines of prose, one paragraph each; **bold** and `code` are the only markup."""

    lines: list[str]


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Frame:
    """A table shown in the page (its index a column). `numbers_as_text`: cells are shown as
    written (1.860 stays 1.860), not read as numbers and aligned."""

    frame: pd.DataFrame
    numbers_as_text: bool = False


Block = Heading | Text | Bullets | Frame


@dataclass
class Part:
    blocks: list[Block] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)  # files the writers write
    figures: list[Path] = field(default_factory=list)


class Section:
    """One part of the report. `build` may return an empty Part (nothing to say)."""

    name = ""

    def build(self, ctx: Context) -> Part:
        raise NotImplementedError
