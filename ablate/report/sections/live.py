"""During training: the live model's evaluations (train.eval_every_tokens) against tokens per
variant, so that one sees when variants separate, not only where they end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate import stats
from ablate.report.parts import Context, Part, Section
from ablate.report.plots import pyplot, save
from ablate.run.rundir import RunDir


class Live(Section):
    name = "live"

    def build(self, ctx: Context) -> Part:
        runs = ctx.collection.runs()
        live = live_curves(ctx.experiment.path, runs[runs.status == "completed"])
        if live.empty:
            return Part()
        return Part(figures=[plot_live(live, ctx.out / "during_training.png", ctx.note)])


def live_curves(experiment_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The evaluations of the live model during training of `runs` (indexed by run, with their
    variant): variant, run, tokens, task, value."""
    rows = [{"variant": variant, "run": run, "tokens": r["tokens"], "task": task, "value": value}
            for run, variant in runs["variant"].items() for r in RunDir(experiment_dir / run).metrics()
            if "live" in r for task, value in r["live"].items()]
    return pd.DataFrame(rows, columns=["variant", "run", "tokens", "task", "value"])


def plot_live(live: pd.DataFrame, path: Path, note: str = "") -> Path:
    """Each task's metric against tokens per variant: the mean over runs and its 95% interval (t over
    runs)."""
    plt = pyplot()
    tasks = sorted(live.task.unique())
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.2 * len(tasks)), squeeze=False, sharex=True)
    for ax, task in zip(axes[:, 0], tasks):
        for variant, part in live[live.task == task].groupby("variant", sort=False):
            points = [(tokens, stats.interval(group.value.to_numpy())) for tokens, group in part.groupby("tokens")]
            x = [t for t, _ in points]
            ax.plot(x, [iv.mean for _, iv in points], marker=".", label=variant)
            ax.fill_between(x, [iv.low for _, iv in points], [iv.high for _, iv in points], alpha=0.2)
        ax.set_ylabel(task.removeprefix("ablate_"), fontsize=8)
    axes[0, 0].set_title("During training (mean over runs, band: 95% interval)")
    axes[-1, 0].set_xlabel("tokens")
    axes[0, 0].legend(fontsize=7)
    return save(fig, path, note)
