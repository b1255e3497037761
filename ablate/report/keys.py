"""The metric key: which task, which metric. The one place that reads or writes the
`task|metric` text that names a metric in table.csv, comparisons.csv and `report.primary`."""

from __future__ import annotations

from dataclasses import dataclass

from ablate.registry import ConfigError

SEPARATOR = "|"
EXTRAPOLATION = "extrapolation_"  # the extrapolation suite's tasks: extrapolation_<multiple>x


@dataclass(frozen=True, order=True)
class MetricKey:
    """A metric of the report: `task` is `train` for what training records, an lm-eval task or
    group, `average` for the averages over tasks, `extrapolation` for the length ratio."""

    task: str
    metric: str

    @classmethod
    def parse(cls, text: str) -> MetricKey:
        """`task|metric` as a key; a ConfigError for text of any other shape."""
        task, sep, metric = str(text).partition(SEPARATOR)
        if not sep or not task or not metric or SEPARATOR in metric:
            raise ConfigError("metric", text, "must be task|metric, e.g. train|val_loss or ablate_recall|acc")
        return cls(task, metric)

    def __str__(self) -> str:
        return f"{self.task}{SEPARATOR}{self.metric}"

    def stat(self, name: str) -> str:
        """The table.csv column of a statistic of this metric: `task|metric|low`."""
        return f"{self}{SEPARATOR}{name}"

    @property
    def is_accuracy(self) -> bool:
        return self.metric == "acc"

    @property
    def length(self) -> float | None:
        """For a perplexity of the extrapolation suite, the evaluation length as a multiple of the
        training length; None for any other metric."""
        if not self.task.startswith(EXTRAPOLATION):
            return None
        return float(self.task.removeprefix(EXTRAPOLATION).rstrip("x"))

    @property
    def short_task(self) -> str:
        """The task's name without the built-in probes' prefix (`ablate_recall` -> `recall`)."""
        return self.task.removeprefix("ablate_")

    @property
    def label(self) -> str:
        """As a table cell: the metric alone for training's (`val_loss`), else `task metric`."""
        return self.metric if self.task == "train" else f"{self.task} {self.metric}"


VAL_LOSS = MetricKey("train", "val_loss")
VAL_BPB = MetricKey("train", "val_bpb")
AVERAGE = MetricKey("average", "acc")
AVERAGE_ADJ = MetricKey("average", "acc_chance_adj")


def ratio_key(longest: float) -> MetricKey:
    """The key of the extrapolation ratio at `longest` times the training length."""
    return MetricKey("extrapolation", f"ratio_{longest:g}x")
