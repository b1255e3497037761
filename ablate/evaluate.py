"""`ablate-eval`: zero-shot evaluation of runs with lm-evaluation-harness, and length extrapolation.

    ablate-eval run=results/default/<run>                 the default suites (probes, extrapolation)
    ablate-eval experiment=quickstart suite=probes        every run of an experiment
    ablate-eval run=... suite=bigscience eval.limit=200
    ablate-eval run=... tasks=hellaswag,piqa              any lm-eval tasks (written as custom.json)
    ablate-eval run=... eval.local_data.piqa=/data/piqa_validation.jsonl   a built-in task on a local file
    ablate-eval --prefetch suite=bigscience               download a suite's datasets into the HF cache
    ablate-eval --samples ...                             also write every request and answer

Results: <run>/eval/<suite>.json in lm-eval's format (results with stderr, configs, versions),
and <run>/eval/<suite>_samples.jsonl with --samples.
"""

from __future__ import annotations

import datetime
import difflib
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ablate.config import EvalConfig, RunConfig, SuiteConfig
from ablate.data.tokens import cached_dir, prepare
from ablate.lm import AblateLM, RunError, load_run
from ablate.model import Transformer
from ablate.registry import ConfigError

log = logging.getLogger("ablate.eval")
PROBE_TASKS = {"ablate_agreement": "agreement", "ablate_recall": "recall", "ablate_copy": "copy",
               "ablate_heldout": "heldout"}
TASK_DIR = Path(__file__).resolve().parent / "tasks"


# ---- runs ---------------------------------------------------------------------------------------
def evaluate_run(run_dir: str | Path, eval_cfg: EvalConfig | None = None) -> dict[str, Path]:
    """Evaluate one run on each suite of `eval_cfg` (default: the run's own eval config); returns
    the results file of each suite."""
    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_run(run_dir)
    eval_cfg = eval_cfg or cfg.eval
    if not eval_cfg.suites:
        raise ConfigError("eval.suites", {}, "no suite to run", valid=["probes", "extrapolation", "bigscience",
                                                                      "blimp"])
    check_tasks([t for s in eval_cfg.suites.values() for t in s.tasks])
    lm = AblateLM(model=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size)
    written = {}
    for name, suite in eval_cfg.suites.items():
        log.info("evaluating %s on %s", run_dir, name)
        results = _empty_results(run_dir, name)
        if suite.tasks:
            results = run_tasks(lm, suite.tasks, eval_cfg, cfg.data.cache_dir, run_dir, name)
        if suite.lengths:
            val = prepare(cfg.data).val
            _merge(results, extrapolation(model, val, cfg.seq_len, suite.lengths, eval_cfg, name))
        written[name] = write_results(run_dir / "eval" / f"{name}.json", results)
    return written


def run_tasks(lm: AblateLM, tasks: list[str], eval_cfg: EvalConfig, cache_dir: str, run_dir: Path,
              suite: str) -> dict[str, Any]:
    """lm-eval's simple_evaluate on `tasks`, probe and local-file tasks pointed at their files."""
    import lm_eval

    with tempfile.TemporaryDirectory(prefix="ablate-tasks-") as overrides:
        files = dict(eval_cfg.local_data)
        if any(t in PROBE_TASKS for t in tasks):
            probes = probe_dir(cache_dir, eval_cfg.probe_seed, eval_cfg.probe_items)
            files.update({t: str(probes / f"{PROBE_TASKS[t]}.jsonl") for t in tasks if t in PROBE_TASKS})
        manager = task_manager(files, Path(overrides))
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=eval_cfg.limit,
                                          log_samples=eval_cfg.samples, bootstrap_iters=1000,
                                          batch_size=eval_cfg.batch_size)
    if eval_cfg.samples:
        samples = results.pop("samples", {})
        path = run_dir / "eval" / f"{suite}_samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as out:
            for task, rows in samples.items():
                for row in rows:
                    out.write(json.dumps({"task": task, **row}, default=_plain) + "\n")
    results.pop("samples", None)
    results["config"] = {**results.get("config", {}), "model": "ablate", "run": str(run_dir)}
    return results


def write_results(path: Path, results: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    tmp.replace(path)
    return path


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _empty_results(run_dir: Path, suite: str) -> dict[str, Any]:
    return {"results": {}, "versions": {}, "higher_is_better": {}, "n-samples": {},
            "config": {"model": "ablate", "run": str(run_dir), "suite": suite},
            "date": datetime.datetime.now().timestamp()}


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key in ("results", "versions", "higher_is_better", "n-samples"):
        into.setdefault(key, {}).update(extra.get(key, {}))


# ---- tasks: names, probe files, local files ---------------------------------------------------------
def task_manager(files: dict[str, str], directory: Path):
    """A TaskManager that knows ablate's tasks and, for each task in `files`, a copy of it reading
    that local file (include the task's YAML, dataset_path: json, data_files on its evaluation
    split, the splits not given nulled)."""
    from lm_eval.tasks import TaskManager

    base = TaskManager(include_path=str(TASK_DIR))
    for task, file in files.items():
        entry = base.task_index.get(task)
        if entry is None or not entry.yaml_path:
            raise ConfigError(f"eval.local_data.{task}", file, "not a single lm-eval task with a YAML file",
                              valid=_close(task, base.all_subtasks))
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"eval.local_data.{task}", file, "no such file")
        (directory / f"{task}.yaml").write_text(local_task_yaml(task, Path(entry.yaml_path), path))
    return TaskManager(include_path=[str(TASK_DIR), str(directory)])


def local_task_yaml(task: str, yaml_path: Path, data_file: Path) -> str:
    """The override YAML that points built-in task `task` at `data_file`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(yaml_path, resolve_func=False, recursive=True)
    split = cfg.get("test_split") or cfg.get("validation_split")
    if not split:
        raise ConfigError(f"eval.local_data.{task}", str(data_file), "the task names no test or validation split")
    lines = [
        f"include: {json.dumps(str(yaml_path))}",
        f"task: {task}",
        "dataset_path: json",
        "dataset_name: null",
        f"dataset_kwargs: {{data_files: {{{split}: {json.dumps(str(data_file))}}}}}",
        "training_split: null",
        "fewshot_split: null",
        f"test_split: {split if cfg.get('test_split') else 'null'}",
        f"validation_split: {split if not cfg.get('test_split') else 'null'}",
    ]
    return "\n".join(lines) + "\n"


def check_tasks(tasks: list[str]) -> None:
    """Every name must be an lm-eval task, group or tag (or ablate's); the error suggests close names."""
    if not tasks:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=str(TASK_DIR)).all_tasks)
    for task in tasks:
        if task not in known:
            raise ConfigError("eval task", task, "unknown to lm-eval and to ablate",
                              valid=_close(task, sorted(known)) or ["see `lm-eval ls tasks`"])


def _close(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=8, cutoff=0.6)


def probe_dir(cache_dir: str, seed: int, n: int) -> Path:
    """The probe items (and held-out documents) of the built-in language, built once per seed and size."""
    from ablate.data.synthetic import documents, write_probes

    def build(tmp: Path) -> None:
        write_probes(tmp, seed=seed, n=n)
        docs = list(documents(seed + 1, n_words=max(20_000, 40 * n)))
        (tmp / "heldout.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    return cached_dir(Path(cache_dir) / f"probes-v1-seed{seed}-n{n}", build)


# ---- length extrapolation -----------------------------------------------------------------------
@torch.no_grad()
def extrapolation(model: Transformer, tokens: np.ndarray, train_len: int, lengths: list[float],
                  eval_cfg: EvalConfig, suite: str = "extrapolation") -> dict[str, Any]:
    """Perplexity on held-out tokens cut into non-overlapping windows of each length (every token
    predicted from its own window only, as Press et al. evaluate). Positions a learned table does
    not cover are reported as not applicable."""
    tokens = tokens[: eval_cfg.extrapolation_tokens + 1]
    out: dict[str, Any] = {"results": {}, "versions": {}, "higher_is_better": {}, "n-samples": {}}
    for multiple in lengths:
        L = max(1, int(round(multiple * train_len)))
        name = f"{suite}_{multiple:g}x"
        row: dict[str, Any] = {"alias": f"{multiple:g}x train length ({L} tokens)", "seq_len": L,
                               "train_seq_len": train_len}
        limit = model.position.max_len
        n = (len(tokens) - 1) // L
        if limit is not None and L > limit:
            row.update({"perplexity,none": None, "perplexity_stderr,none": None,
                        "not_applicable": f"{model.cfg.position.kind} positions cover {limit} tokens"})
        elif n == 0:
            row.update({"perplexity,none": None, "perplexity_stderr,none": None,
                        "not_applicable": f"fewer than {L + 1} held-out tokens"})
        else:
            nll = _window_nlls(model, tokens, L, n)
            mean, se = float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            row.update({"perplexity,none": math.exp(mean), "perplexity_stderr,none": math.exp(mean) * se,
                        "nll,none": mean, "nll_stderr,none": se, "windows": n})
        out["results"][name] = row
        out["versions"][name] = 1
        out["higher_is_better"][name] = {"perplexity": False, "nll": False}
        out["n-samples"][name] = {"original": n, "effective": n}
    return out


def _window_nlls(model: Transformer, tokens: np.ndarray, L: int, n: int) -> np.ndarray:
    """Mean token NLL of each of the first n windows of length L."""
    per_batch = max(1, 16_384 // L)
    device = next(model.parameters()).device
    nlls = []
    for start in range(0, n, per_batch):
        idx = range(start, min(n, start + per_batch))
        block = torch.from_numpy(np.stack([np.asarray(tokens[i * L: i * L + L + 1], dtype=np.int64) for i in idx]))
        logits = model(block[:, :-1].to(device)).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1).to(device),
                               reduction="none")
        nlls.append(loss.view(len(idx), L).mean(dim=1).cpu().numpy())
    return np.concatenate(nlls)


# ---- prefetch -----------------------------------------------------------------------------------
def prefetch(eval_cfg: EvalConfig) -> list[str]:
    """Download the datasets of every lm-eval task in the suites into the HF cache (on a machine
    with network), so that compute nodes can run with HF_DATASETS_OFFLINE=1."""
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = [t for s in eval_cfg.suites.values() for t in s.tasks if t not in PROBE_TASKS]
    check_tasks(tasks)
    get_task_dict(tasks, TaskManager(include_path=str(TASK_DIR)))  # loading a task downloads its data
    return tasks


# ---- command line -------------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[dict[str, Any], EvalConfig]:
    """key=value arguments: run=, experiment=, results_dir=, suite= (or eval=), tasks=, --samples,
    --prefetch; the rest are Hydra overrides of the eval config (eval.limit=100, eval.local_data.X=...)."""
    from ablate.config import compose_root, from_dict

    opts: dict[str, Any] = {"prefetch": False, "samples": False, "run": None, "experiment": None,
                            "results_dir": "results", "suite": None, "tasks": None}
    overrides = []
    for arg in argv:
        if arg in ("--prefetch", "--samples"):
            opts[arg[2:]] = True
            continue
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError("argument", arg, "expected key=value", valid=["run=PATH", "experiment=NAME",
                                                                            "suite=NAME", "tasks=A,B"])
        if key in ("run", "experiment", "results_dir", "tasks"):
            opts[key] = value
        elif key in ("suite", "eval"):
            opts["suite"] = value
        else:
            arg = arg if key.lstrip("+") .startswith("eval.") else f"eval.{arg}"
            # a task added to local_data is a new key: ++ adds or replaces it
            overrides.append("++" + arg.lstrip("+") if arg.lstrip("+").startswith("eval.local_data.") else arg)
    suites = opts["suite"].split(",") if opts["suite"] else ([] if opts["tasks"] else ["default"])
    merged = from_dict(EvalConfig, compose_root([f"eval={(suites or ['probes'])[0]}", *overrides])["eval"], "eval")
    if not suites:
        merged.suites = {}
    for name in suites[1:]:
        merged.suites.update(from_dict(EvalConfig, compose_root([f"eval={name}", *overrides])["eval"], "eval").suites)
    if opts["tasks"]:
        merged.suites["custom"] = SuiteConfig(tasks=opts["tasks"].split(","))
    merged.samples = merged.samples or opts["samples"]
    return opts, merged


def runs_of(opts: dict[str, Any]) -> list[Path]:
    if opts["run"]:
        return [Path(opts["run"])]
    if opts["experiment"]:
        root = Path(opts["results_dir"]) / opts["experiment"]
        runs = sorted(p for p in root.iterdir() if (p / "config.yaml").exists()) if root.is_dir() else []
        if not runs:
            there = sorted(p.name for p in Path(opts["results_dir"]).iterdir()) if Path(opts["results_dir"]).is_dir() \
                else []
            raise RunError(f"no runs under {root}" + (f"; experiments in {opts['results_dir']}: {', '.join(there)}"
                                                      if there else ""))
        return runs
    raise RunError("say which run: run=PATH (a run directory) or experiment=NAME (all of its runs)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        opts, eval_cfg = parse(argv)
        if opts["prefetch"]:
            print("cached:", ", ".join(prefetch(eval_cfg)))
            return 0
        runs = runs_of(opts)
        failed = []
        for run in runs:
            try:
                for suite, path in evaluate_run(run, eval_cfg).items():
                    print(f"{run}: {suite} -> {path}")
            except RunError as err:
                if len(runs) == 1:
                    raise
                failed.append(run)
                print(f"skipped {run}: {err}", file=sys.stderr)
        return 1 if failed else 0
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
