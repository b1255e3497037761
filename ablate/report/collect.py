"""Collect: the run directories of an experiment as one tidy table of rows, with what the rows
cannot hold (chance levels, lm-eval groups, per-item results, stale evaluations) beside it in a
typed `Collection`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ablate.plan.fairness import TOKENIZER_FIELDS, variant_name, varying
from ablate.registry import ConfigError
from ablate.run.lifecycle import rung_label
from ablate.run.rundir import ExperimentDir, flatten

COST = {"non_embedding_params": "params (non-emb.)", "flops_per_token": "FLOPs/token",
        "teacher_flops_per_token": "+ teacher FLOPs/token", "kv_bytes_per_token": "KV bytes/token",
        "tokens_per_s": "tokens/s", "mfu": "MFU", "wall_time_s": "wall time (s)",
        "live_eval_share": "eval during training (share of time)"}
# recorded per run, shown per variant, never tested (a count of rare events is no metric to rank by)
STABILITY = {"loss_spikes": "loss spikes", "grad_spikes": "grad-norm spikes", "max_attn_logit": "max attn logit",
             "router_load_entropy": "expert load entropy", "router_aux_loss": "balancing loss",
             "router_dropped_tokens": "dropped tokens"}


class Items(NamedTuple):
    """One run's per-item results on a task: doc ids, accuracy, and the cluster of each item (items
    that share a context; None: each item its own)."""

    ids: np.ndarray
    acc: np.ndarray
    cluster: np.ndarray | None = None


@dataclass
class Collection:
    """What collect() found.

    rows: run, status, seed, data_seed, variant, task, metric, value, stderr (and, for a ladder,
    rung and arm: the variant without its rung). order: the variants in the sweep's order (the
    first is the default baseline). stale: (run, suite) -> why that evaluation is stale. chance:
    task -> accuracy by guessing; chance_lexicon: task -> a second guessing baseline shown beside
    it (the copy probe's). groups: lm-eval group -> its subtasks. items: (run, task) -> per-item
    results where kept. primary: the primary family an experiment declares (`report.primary`).
    tokenizers: the fields that give the runs different tokenizers (then losses are compared per
    byte)."""

    rows: pd.DataFrame
    order: list[str] = field(default_factory=list)
    stale: dict[tuple[str, str], str] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    chance_lexicon: dict[str, float] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    items: dict[tuple[str, str], Items] = field(default_factory=dict)
    primary: list[str] | None = None
    tokenizers: list[str] = field(default_factory=list)
    arms: dict[str, str] = field(default_factory=dict)  # a ladder: variant -> its arm (the variant without its rung)

    def runs(self) -> pd.DataFrame:
        """One row per run (its status, seeds, variant), indexed by run."""
        return self.rows.drop_duplicates("run").set_index("run")


def collect(experiment_dir: str | Path) -> Collection:
    """Every run of an experiment as tidy rows (Collection.rows).

    `variant` names what differs between the runs' model / data / optim / train configs (the
    ablated axis, found, not declared); the init and data-order seeds are kept apart (runs of one
    variant). Runs planned by a sweep (ExperimentDir.planned) without a directory appear with
    status `missing`. Only evaluations of the final checkpoint of a completed run count; any other
    is a row with task `eval`, metric `stale:<suite>` and the step it measured as its value. A run
    retried after diverging has a `train` row `retried_after` (the number of diverged attempts)."""
    root = ExperimentDir(experiment_dir)
    runs = root.runs()
    planned = {name: flatten(cfg) for name, cfg in root.planned().items()}
    if not runs and not planned:
        raise ConfigError("experiment", str(root.path), "holds no runs")
    configs = {run.name: flatten(run.read_config()) for run in runs}
    missing = {name: cfg for name, cfg in planned.items() if name not in configs}
    axes = varying([*configs.values(), *missing.values()])
    if root.tuning() is not None:  # each arm at its own LR: the LR names no arm
        axes = [a for a in axes if a != "optim.lr"]
    who = _Namer(axes)
    found = Collection(pd.DataFrame())
    rows: list[dict[str, Any]] = [
        {"run": name, "status": "missing", "seed": cfg.get("seed", 0), "data_seed": cfg.get("data.seed", 0),
         **who(cfg), "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan}
        for name, cfg in missing.items()]
    for run in runs:
        rows += _run_rows(found, run, configs[run.name], who)
    found.rows = pd.DataFrame(rows)
    order = [variant_name(cfg, axes) for cfg in planned.values()] + sorted(found.rows.variant)
    found.order = list(dict.fromkeys(order))
    _group_chance(found)
    declared = next((cfg.get("report.primary") for cfg in configs.values() if cfg.get("report.primary")), None)
    found.primary = [str(k) for k in declared] if declared else None
    found.tokenizers = [a for a in axes if a in TOKENIZER_FIELDS]
    if "arm" in found.rows:
        found.arms = dict(zip(found.rows.variant, found.rows.arm))
    return found


class _Namer:
    """A run's names in the rows: its variant (what differs between the runs), and for a ladder
    its rung and its arm (the variant without its rung)."""

    def __init__(self, axes: list[str]) -> None:
        self.axes, self.arm_axes = axes, [a for a in axes if a != "ladder.size"]

    def __call__(self, cfg: dict[str, Any]) -> dict[str, Any]:
        named = {"variant": variant_name(cfg, self.axes)}
        if self.arm_axes != self.axes:
            named.update(rung=rung_label(cfg), arm=variant_name(cfg, self.arm_axes))
        return named


def _group_chance(found: Collection) -> None:
    """A group of multiple-choice tasks guesses as its subtasks do, on average."""
    for group, subtasks in found.groups.items():
        if group not in found.chance and subtasks and all(t in found.chance for t in subtasks):
            found.chance[group] = float(np.mean([found.chance[t] for t in subtasks]))


def _run_rows(found: Collection, run: Any, cfg: dict[str, Any], who: Any) -> list[dict[str, Any]]:
    """One run's rows: what training recorded, each current evaluation's metrics (kept in `found`
    beside them), a row per stale evaluation and, without any current one, a `missing` row."""
    summary = run.summary() or {"status": "never started" if run.status() == "new" else run.status()}
    base = {"run": run.name, "status": summary.get("status", "unknown"), "seed": cfg.get("seed", 0),
            "data_seed": cfg.get("data.seed", 0), **who(cfg)}
    summary = {**summary, **{f"router_{k}": v for k, v in summary.get("router", {}).items()}}  # experts
    rows = [{**base, "task": "train", "metric": key, "value": _num(summary[key]), "stderr": math.nan}
            for key in ("val_loss", "val_ppl", "val_bpb", "train_loss", "tokens_seen", *COST, *STABILITY)
            if key in summary]
    diverged = sum(a.get("status") == "diverged" for a in summary.get("attempts", []))
    if diverged:
        rows.append({**base, "task": "train", "metric": "retried_after", "value": diverged, "stderr": math.nan})
    current = 0
    for evaluation in run.evals():
        problem = run.eval_problem(evaluation)
        if problem is None:
            rows += _eval_rows(base, evaluation.results)
            current += 1
            _keep_evaluation(found, run, evaluation)
        else:
            step = evaluation.provenance.get("step", math.nan)
            rows.append({**base, "task": "eval", "metric": f"stale:{evaluation.suite}", "value": _num(step),
                         "stderr": math.nan})
            found.stale[(run.name, evaluation.suite)] = f"{evaluation.path.relative_to(run.path)}: {problem}"
    if not current:
        rows.append({**base, "task": "eval", "metric": "missing", "value": math.nan, "stderr": math.nan})
    return rows


def _keep_evaluation(found: Collection, run: Any, evaluation: Any) -> None:
    """What an evaluation holds beyond its rows: chance levels, groups, per-item results."""
    chance = evaluation.results.get("chance", {})
    found.chance.update({t: c["acc"] for t, c in chance.items() if "acc" in c})
    found.chance_lexicon.update({t: c["acc_lexicon"] for t, c in chance.items() if "acc_lexicon" in c})
    found.groups.update({g: list(sub) for g, sub in evaluation.results.get("group_subtasks", {}).items() if sub})
    for task, kept in run.items(evaluation.suite).items():
        found.items[(run.name, task)] = Items(np.asarray(kept["doc_id"]), np.asarray(kept["acc"], dtype=float),
                                              np.asarray(kept["cluster"]) if "cluster" in kept else None)


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


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def plotted(found: Collection) -> tuple[pd.DataFrame, str]:
    """The rows of completed runs (the only ones plots draw), and a note naming the others."""
    df = found.rows
    runs = df.drop_duplicates("run")
    others = runs[runs.status != "completed"]
    note = "not drawn: " + ", ".join(f"{r} ({s})" for r, s in zip(others.run, others.status)) if len(others) else ""
    return df[df.status == "completed"], note
