"""The main table: per variant, validation loss, each task's main metric, the averages and the
costs (every column in table.tex); table.csv, comparisons.csv; the training loss curves, the
average accuracy and the primary family's differences as figures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.report.keys import AVERAGE
from ablate.report.parts import Context, Frame, Heading, Part, Section, Table
from ablate.report.plots import pyplot, save
from ablate.run.rundir import RunDir


class Main(Section):
    name = "main"

    def build(self, ctx: Context) -> Part:
        from ablate.report.format import Cells

        a = ctx.analysis
        cells = Cells(a, ctx.comparisons)
        full = pd.DataFrame({cells.header(c): [cells.cell(v, c) for v in a.variants] for c in a.columns},
                            index=pd.Index(a.variants, name="variant"))
        full.insert(0, "runs", [a.run_counts[v] for v in a.variants])
        main = [c for c in a.columns
                if (c.kind in ("train", "confounded", "average", "cost") and c.key.metric != "wall_time_s")
                or (c.kind == "task" and c.key.task not in a.subtasks)]
        narrow = full[["runs", *[cells.header(c) for c in main]]]
        base = (f"baseline `{a.collection.arms.get(a.baseline, a.baseline)}` at each rung: no comparison across rungs"
                if a.rungs else f"baseline `{a.baseline}`")
        lines = [Heading(f"Main metrics ({base})"), Frame(narrow)]
        tables = [Table("table", a.table(), ("csv",), index=True), Table("table", full, ("tex",), index=True),
                  Table("comparisons", ctx.comparisons.table), Table("noise", ctx.noise)]
        return Part(lines, tables, [p for p in (plot_loss(ctx), plot_scores(ctx), plot_deltas(ctx)) if p])


def plot_loss(ctx: Context):
    plt = pyplot()
    runs = ctx.collection.runs()
    runs = runs[runs.status == "completed"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, group in runs.groupby("variant", sort=False):
        curves = [_loss_curve(RunDir(ctx.experiment.path / run)) for run in group.index]
        curves = [c for c in curves if c is not None]
        if not curves:
            continue
        merged = pd.concat(curves, axis=1).sort_index()
        mean, lo, hi = merged.mean(axis=1), merged.min(axis=1), merged.max(axis=1)
        ax.plot(mean.index, mean.values, label=variant)
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
    per_token = " per token (tokenizers differ: not comparable)" if ctx.analysis.tokenizers else ""
    ax.set(xlabel="tokens", ylabel="training loss", title=f"Loss{per_token} (mean, band: min-max over runs)")
    if ax.lines:
        ax.legend(fontsize=8)
    else:  # runs collected from summaries alone (metrics.jsonl gone or never copied)
        ax.text(0.5, 0.5, "no run has a training curve (metrics.jsonl)", ha="center", transform=ax.transAxes)
    return save(fig, ctx.out / "loss.png", ctx.note)


def _loss_curve(run: RunDir) -> pd.Series | None:
    points = {}
    for r in run.metrics():
        if "loss" in r:
            try:
                points[r["tokens"]] = float(r["loss"])
            except (TypeError, ValueError):
                points[r["tokens"]] = float("nan")
    return pd.Series(points, dtype=float) if points else None


def plot_scores(ctx: Context):
    a = ctx.analysis
    if not a.has(AVERAGE):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    cells = [a.cells[(v, AVERAGE)] for v in a.variants]
    mean = np.array([iv.mean for iv in cells])
    err = np.vstack([mean - np.array([iv.low for iv in cells]), np.array([iv.high for iv in cells]) - mean]).clip(min=0)
    ax.bar(a.variants, mean, yerr=np.nan_to_num(err), capsize=4)
    kinds = sorted({iv.kind for iv in cells if iv.kind})
    ax.set(ylabel="average accuracy", title=f"Average accuracy over tasks (95% interval: {', '.join(kinds)})")
    ax.tick_params(axis="x", rotation=30)
    return save(fig, ctx.out / "scores.png", ctx.note)


def plot_deltas(ctx: Context):
    """The primary family's differences to the baseline with their intervals (a forest plot)."""
    a, comps = ctx.analysis, ctx.comparisons
    cols = [c for c in a.columns if c.key in comps.family and len(comps.rows(c.key))]
    if not cols:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(cols), 1, figsize=(7, 1.2 + 1.1 * len(cols) * max(1, len(a.variants) - 1) ** 0.5),
                             squeeze=False)
    for ax, c in zip(axes[:, 0], cols):
        part = comps.rows(c.key)
        y = np.arange(len(part))
        lower = (part.delta - part.ci_low).clip(lower=0).fillna(0)
        upper = (part.ci_high - part.delta).clip(lower=0).fillna(0)
        for i, r in enumerate(part.itertuples()):
            ax.errorbar(r.delta, i, xerr=[[lower.iloc[i]], [upper.iloc[i]]], fmt="o", capsize=3,
                        color="C3" if r.significant else "C0", mfc="C3" if r.significant else "white")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, part.variant)
        better = "right" if c.higher_is_better else "left"
        ax.set_title(f"{c.label}: difference to {a.baseline} ({better} is better; red: "
                     f"marked, Holm over the primary family)", fontsize=9)
    return save(fig, ctx.out / "deltas.png", ctx.note)
