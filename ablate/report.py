"""`ablate-report experiment=NAME` (or a path): runs -> one tidy DataFrame -> tables and plots.

    ablate-report experiment=positions [results_dir=results] [baseline=rope]

Writes results/<experiment>/report/: table.md, table.csv, table.tex (booktabs), loss.png,
extrapolation.png, scores.png; prints the table. Works on any run directories, complete or not:
failed, diverged, running and missing runs, and runs without an eval, appear as such.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.cli import command, key_values
from ablate.config import DERIVED, IDENTITY, OPERATIONAL, attention_family
from ablate.registry import ConfigError
from ablate.rundir import ExperimentDir, RunDir, flatten

# the metric that stands for a task in the table, in order of preference
MAIN_METRICS = ("acc", "perplexity", "word_perplexity")
COST = {"non_embedding_params": "params (non-emb.)", "flops_per_token": "FLOPs/token",
        "kv_bytes_per_token": "KV bytes/token", "tokens_per_s": "tokens/s", "wall_time_s": "wall time (s)"}
Z95 = 1.96


# ---- collect ------------------------------------------------------------------------------------
def collect(experiment_dir: str | Path) -> pd.DataFrame:
    """Every run of an experiment as tidy rows: run, status, seed, variant, task, metric, value, stderr.

    `variant` names what differs between the runs' model / data / optim / train configs (the
    ablated axis, found, not declared); `seed` is kept apart. Runs planned by a sweep (ExperimentDir.planned)
    without a directory appear with status `missing`. Only evaluations of the final checkpoint of
    a completed run count; any other is a row with task `eval`, metric `stale:<suite>` and the step
    it measured as its value. A run retried after diverging has a `train` row `retried_after`
    (the number of diverged attempts). The frame's attrs["order"] lists the variants in the
    sweep's order (the first is the default baseline) and attrs["stale"] says why each stale
    evaluation is stale."""
    root = ExperimentDir(experiment_dir)
    runs = root.runs()
    planned = {name: flatten(cfg) for name, cfg in root.planned().items()}
    if not runs and not planned:
        raise ConfigError("experiment", str(root.path), "holds no runs")
    configs = {run.name: flatten(run.read_config()) for run in runs}
    missing = {name: cfg for name, cfg in planned.items() if name not in configs}
    axes = varying([*configs.values(), *missing.values()])
    rows: list[dict[str, Any]] = [
        {"run": name, "status": "missing", "seed": cfg.get("seed", 0), "variant": variant_name(cfg, axes),
         "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan}
        for name, cfg in missing.items()]
    stale: dict[tuple[str, str], str] = {}
    for run in runs:
        cfg = configs[run.name]
        summary = run.summary() or {"status": "never started"}
        base = {"run": run.name, "status": summary.get("status", "unknown"), "seed": cfg.get("seed", 0),
                "variant": variant_name(cfg, axes)}
        for key in ("val_loss", "val_ppl", "train_loss", *COST):
            if key in summary:
                rows.append({**base, "task": "train", "metric": key, "value": _num(summary[key]), "stderr": math.nan})
        diverged = sum(a.get("status") == "diverged" for a in summary.get("attempts", []))
        if diverged:
            rows.append({**base, "task": "train", "metric": "retried_after", "value": diverged, "stderr": math.nan})
        current = 0
        for found in run.evals():
            problem = run.eval_problem(found)
            if problem is None:
                rows += _eval_rows(base, found.results)
                current += 1
            else:
                step = found.provenance.get("step", math.nan)
                rows.append({**base, "task": "eval", "metric": f"stale:{found.suite}", "value": _num(step),
                             "stderr": math.nan})
                stale[(run.name, found.suite)] = f"{found.path.relative_to(run.path)}: {problem}"
        if not current:
            rows.append({**base, "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan})
    df = pd.DataFrame(rows)
    order = [variant_name(cfg, axes) for cfg in planned.values()] + sorted(df.variant)
    df.attrs["order"] = list(dict.fromkeys(order))
    df.attrs["stale"] = stale
    return df


def _eval_rows(base: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key:
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            rows.append({**base, "task": task, "metric": metric, "value": _num(value), "stderr": _num(stderr)})
    return rows


def varying(configs) -> list[str]:
    """Config fields whose values differ between runs: what the experiment varies. The seed is kept
    apart; fields that change nothing computed (operational), name the run (identity) or are set by
    ablate itself (derived, like the vocabulary from the tokenizer) are never an axis."""
    configs = list(configs)
    skip = ("seed", *OPERATIONAL, *IDENTITY, *DERIVED)
    keys = sorted({k for c in configs for k in c if not k.startswith(skip)})
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


def variant_name(cfg: dict[str, Any], axes: list[str]) -> str:
    """A short label: the choice itself for named choices (alibi, sandwich), the attention family
    for kv heads (mha, gqa2, mqa), key=value otherwise."""
    if not axes:
        return "all"
    return ", ".join(_label(cfg, k) for k in axes)


def _label(cfg: dict[str, Any], key: str) -> str:
    value, last = cfg.get(key), key.split(".")[-1]
    if key == "model.attention.n_kv_heads":
        return attention_family(cfg.get("model.attention.n_heads"), value)
    if last in ("kind", "placement") and isinstance(value, str):
        return value
    if isinstance(value, bool):
        return last if value else f"no {last}"
    return f"{last}={value}"


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ---- the table ----------------------------------------------------------------------------------
def main_metrics(df: pd.DataFrame) -> dict[str, str]:
    """task -> the metric that represents it (acc, else perplexity, ...); extrapolation rows keep perplexity."""
    chosen = {}
    for task, group in df[~df.task.isin(["train", "eval"])].groupby("task"):
        for metric in MAIN_METRICS:
            if metric in set(group.metric):
                chosen[task] = metric
                break
    return chosen


def summarize(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per variant (in the sweep's order): per task the mean over seeds with its spread,
    the average accuracy over tasks, validation loss, costs; run counts by status.

    Spread: with several seeds, the standard error of the mean over seeds; with one seed, the
    item-level standard error lm-eval reports. A difference to the baseline is marked not
    significant when |delta| < 1.96 x sqrt(se_variant^2 + se_baseline^2) (a two-sided z-test at 5%).
    The baseline is the first variant of the sweep unless `baseline` names another (ConfigError
    for a name that is not a variant). attrs["notes"][(variant, column)] says which runs a cell
    leaves out and why (failed, diverged, interrupted, missing, stale or no evaluation)."""
    metrics = main_metrics(df)
    present = set(df.variant)
    variants = [v for v in df.attrs.get("order", []) if v in present] or list(dict.fromkeys(df.variant))
    if baseline is None:
        baseline = variants[0]
    elif baseline not in variants:
        raise ConfigError("baseline", baseline, "not a variant of this experiment", valid=variants)
    table, notes = [], {}
    for variant in variants:
        part = df[df.variant == variant]
        runs = part.drop_duplicates("run")
        ok = runs[runs.status == "completed"]
        retried = part[(part.metric == "retried_after") & (part.status == "completed")].run.nunique()
        counts = ", ".join(f"{n} {s}" for s, n in runs.status.value_counts().items())
        row: dict[str, Any] = {"variant": variant, "seeds": len(ok),
                               "runs": counts + (f" ({retried} retried after diverging)" if retried else "")}
        scores = []
        for task, metric in metrics.items():
            used = part[(part.task == task) & (part.metric == metric) & (part.status == "completed")]
            mean, se = _mean_se(used)
            row[f"{task}|{metric}"], row[f"{task}|{metric}|se"] = mean, se
            notes[(variant, f"{task}|{metric}")] = _left_out(part, set(used.dropna(subset=["value"]).run), evals=True)
            if metric == "acc" and not math.isnan(mean):
                scores.append((mean, se))
        if scores:
            row["average|acc"] = float(np.mean([m for m, _ in scores]))
            row["average|acc|se"] = float(math.sqrt(sum(s**2 for _, s in scores if not math.isnan(s)))) / len(scores)
        for key in ("val_loss", *COST):
            used = part[(part.task == "train") & (part.metric == key) & (part.status == "completed")]
            mean, se = _mean_se(used)
            row[f"train|{key}"], row[f"train|{key}|se"] = mean, se
            notes[(variant, f"train|{key}")] = _left_out(part, set(used.dropna(subset=["value"]).run), evals=False)
        table.append(row)
    out = pd.DataFrame(table).set_index("variant")
    out.attrs["baseline"] = baseline
    out.attrs["notes"] = {k: v for k, v in notes.items() if v}
    return out


def _left_out(part: pd.DataFrame, used: set[str], evals: bool) -> str:
    """Why the runs of a variant that a cell does not average are left out, e.g. "1 diverged, 1 stale eval"."""
    reasons = []
    for run, group in part.groupby("run", sort=True):
        if run in used:
            continue
        status = group.status.iloc[0]
        if status != "completed":
            reasons.append(status)
        elif evals:
            reasons.append("stale eval" if group.metric.str.startswith("stale:").any() else "no eval")
    return ", ".join(f"{n} {r}" for r, n in pd.Series(reasons, dtype=object).value_counts().items())


def _mean_se(rows: pd.DataFrame) -> tuple[float, float]:
    values = rows.value.dropna()
    if values.empty:
        return math.nan, math.nan
    if len(values) > 1:
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    return float(values.iloc[0]), float(rows.stderr.iloc[0]) if not rows.stderr.empty else math.nan


def deltas(summary: pd.DataFrame) -> pd.DataFrame:
    """For each score column: variant - baseline, and whether it is significant (see summarize)."""
    base = summary.attrs["baseline"]
    out = {}
    scores = [c for c in summary.columns if (c.count("|") == 1 and not c.startswith("train|")) or c == "train|val_loss"]
    for col in scores:
        se = summary.get(col + "|se", pd.Series(math.nan, index=summary.index)).fillna(0.0)
        d = summary[col] - summary.loc[base, col]
        out[col] = d
        out[col + "|sig"] = d.abs() > Z95 * np.sqrt(se**2 + se.loc[base] ** 2)
    return pd.DataFrame(out, index=summary.index)


HIGHER_IS_BETTER = {"acc": True, "perplexity": False, "word_perplexity": False, "val_loss": False}


def render(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Strings for the table (mean ± se, delta, best in bold, † where not significant) and the legend."""
    d = deltas(summary)
    base, notes = summary.attrs["baseline"], summary.attrs.get("notes", {})
    cols = [c for c in d.columns if not c.endswith("|sig")]
    shown = pd.DataFrame(index=summary.index)
    shown["runs"] = summary["runs"]
    for col in cols:
        metric = col.split("|")[-1]
        better = HIGHER_IS_BETTER.get(metric, True)
        values = summary[col]
        best = values.max() if better else values.min()
        cells = []
        for variant in summary.index:
            v, se = values[variant], summary.get(col + "|se", pd.Series(math.nan, index=summary.index))[variant]
            note = notes.get((variant, col))
            if math.isnan(v):
                cells.append(f"n/a ({note})" if note else "n/a")
                continue
            text = f"{_fmt(v)} ± {_fmt(se)}" if not math.isnan(se) else _fmt(v)
            if variant != base:
                text += f" ({d.loc[variant, col]:+.3g}{'' if d.loc[variant, col + '|sig'] else '†'})"
            if v == best and values.notna().sum() > 1:
                text = f"**{text}**"
            cells.append(text + (f" [without {note}]" if note else ""))
        shown[col.replace("|", " ")] = cells
    for key, name in COST.items():
        shown[name] = [_fmt(x) for x in summary[f"train|{key}"]]
    legend = (f"Mean over completed seeds ± standard error (over seeds; lm-eval's item stderr for a single "
              f"seed). (delta) is the difference to the baseline `{base}`; † marks a difference not larger "
              f"than noise: |delta| < 1.96 sqrt(se² + se_baseline²), a two-sided z-test at 5%. Bold: best. "
              f"`average acc` is the mean accuracy over tasks, as BigScience reported. [without ...] names the "
              f"runs a cell leaves out: failed, diverged, interrupted or missing runs, and completed runs whose "
              f"evaluation is stale (it measured another checkpoint) or absent.")
    return shown, legend


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) >= 1e5:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


# ---- plots --------------------------------------------------------------------------------------
def plot(experiment_dir: Path, df: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    df, note = plotted(df)
    runs = df.drop_duplicates("run").set_index("run")
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, group in runs.groupby("variant", sort=False):
        curves = [_loss_curve(RunDir(experiment_dir / run)) for run in group.index]
        curves = [c for c in curves if c is not None]
        if not curves:
            continue
        merged = pd.concat(curves, axis=1).sort_index()
        mean, lo, hi = merged.mean(axis=1), merged.min(axis=1), merged.max(axis=1)
        ax.plot(mean.index, mean.values, label=variant)
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
    ax.set(xlabel="tokens", ylabel="training loss", title="Loss (mean, band: min-max over seeds)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "loss.png", note))

    extra = df[df.task.str.startswith("extrapolation_") & (df.metric == "perplexity")]
    if not extra.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        lengths = {t: float(t.split("_")[-1].rstrip("x")) for t in extra.task.unique()}
        for variant, group in extra.groupby("variant", sort=False):
            pts = group.groupby("task").value.mean().rename(index=lengths).sort_index()
            ax.plot(pts.index, pts.values, marker="o", label=variant)
        ax.set(xscale="log", yscale="log", xlabel="evaluation length / training length",
               ylabel="perplexity", title="Length extrapolation (n/a points omitted)")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "extrapolation.png", note))

    if "average|acc" in summary:
        fig, ax = plt.subplots(figsize=(7, 4))
        se = summary["average|acc|se"].fillna(0.0)
        ax.bar(summary.index, summary["average|acc"], yerr=Z95 * se, capsize=4)
        ax.set(ylabel="average accuracy", title="Average accuracy over tasks (95% interval)")
        ax.tick_params(axis="x", rotation=30)
        paths.append(_save(fig, out / "scores.png"))
    return paths


def plotted(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of completed runs (the only ones plots draw), and a note naming the others."""
    runs = df.drop_duplicates("run")
    others = runs[runs.status != "completed"]
    note = "not drawn: " + ", ".join(f"{r} ({s})" for r, s in zip(others.run, others.status)) if len(others) else ""
    return df[df.status == "completed"], note


def _loss_curve(run: RunDir) -> pd.Series | None:
    rows = run.metrics()
    points = {r["tokens"]: _num(r["loss"]) for r in rows}
    return pd.Series(points, dtype=float) if points else None


def _save(fig, path: Path, note: str = "") -> Path:
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---- writing ------------------------------------------------------------------------------------
def report(experiment_dir: str | Path, baseline: str | None = None) -> dict[str, Path]:
    """Build the tables and plots of an experiment; returns the files written."""
    experiment_dir = Path(experiment_dir)
    df = collect(experiment_dir)
    out = ExperimentDir(experiment_dir).report_dir
    out.mkdir(exist_ok=True)
    for run, status in df.drop_duplicates("run")[["run", "status"]].itertuples(index=False):
        if status != "completed":
            warnings.warn(f"{run}: {status}; left out of the means", stacklevel=2)
    for (run, _), why in df.attrs.get("stale", {}).items():
        warnings.warn(f"{run}: {why}; not used", stacklevel=2)
    for run in df[(df.task == "eval") & (df.metric == "missing") & (df.status == "completed")].run.unique():
        warnings.warn(f"{run}: no evaluation of its final checkpoint", stacklevel=2)
    summary = summarize(df, baseline)
    shown, legend = render(summary)
    written = {"csv": out / "table.csv", "md": out / "table.md", "tex": out / "table.tex"}
    summary.to_csv(written["csv"])
    written["md"].write_text(shown.to_markdown() + "\n\n" + legend + "\n")
    tex = shown.map(lambda cell: str(cell).replace("**", "")).to_latex(escape=True)  # booktabs rules
    written["tex"].write_text(tex.replace("±", r"$\pm$").replace("†", r"$^\dagger$"))
    for path in plot(experiment_dir, df, summary, out):
        written[path.stem] = path
    print(shown.to_markdown())
    print("\n" + legend)
    return written


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        args = key_values(argv, ("experiment", "path", "results_dir", "baseline"))
        root = Path(args.get("results_dir", "results"))
        if "experiment" not in args and "path" not in args:
            raise ConfigError("argument", sorted(args), "say experiment=NAME or path=DIR")
        target = Path(args["path"]) if "path" in args else root / args["experiment"]
        if not target.is_dir():
            there = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ConfigError("experiment", str(target), "no such directory", valid=there or None)
        for name, path in report(target, args.get("baseline")).items():
            print(f"{name}: {path}")
        return 0

    return command(__doc__, argv, body)


if __name__ == "__main__":
    sys.exit(main())
