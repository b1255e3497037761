"""`ablate-eval`: zero-shot evaluation of runs with lm-evaluation-harness, and length extrapolation.

    ablate-eval run=results/default/<run>                 the default suites (probes, extrapolation)
    ablate-eval run=... checkpoint=step_00000062.pt       a named checkpoint (needed for an unfinished run)
    ablate-eval experiment=quickstart suite=probes        every run of an experiment
    ablate-eval run=... suite=bigscience eval.limit=200
    ablate-eval run=... tasks=hellaswag,piqa              any lm-eval tasks (written as custom.json)
    ablate-eval run=... eval.local_data.piqa=/data/piqa_validation.jsonl   a built-in task on a local file
    ablate-eval --prefetch suite=bigscience               download a suite's datasets into the HF cache
    ablate-eval --samples ...                             also write every request and answer

Results: <run>/eval/<suite>.json in lm-eval's format (results with stderr, configs, versions) plus
`provenance` (the checkpoint measured, its step and tokens, the run's config hash, ablate's version),
and <run>/eval/<suite>_samples.jsonl with --samples. A checkpoint other than the final one of a
completed run writes to <run>/eval/step_NNNNNNNN/ instead, never over the final model's results.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import difflib
import json
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ablate.cli import command, compose_root
from ablate.config import EvalConfig, SuiteConfig
from ablate.data.synthetic import COPY_CHANCE
from ablate.data.tokens import cached_dir, prepare
from ablate.evaluate.lm import AblateLM, load_run
from ablate.model import Transformer
from ablate.registry import ConfigError
from ablate.run.checkpoint import CheckpointError
from ablate.run.lifecycle import EVAL_DEVICES
from ablate.run.rundir import RunDir, RunDirError, RunError, runs_in, write_json, write_text

log = logging.getLogger("ablate.eval")
PROBE_TASKS = {"ablate_agreement": "agreement", "ablate_recall": "recall", "ablate_copy": "copy",
               "ablate_length": "length", "ablate_nesting": "nesting", "ablate_heldout": "heldout"}
TASK_DIR = Path(__file__).resolve().parent / "tasks"


# ---- runs ---------------------------------------------------------------------------------------
def evaluate_run(run_dir: str | Path, eval_cfg: EvalConfig | None = None, checkpoint: str | Path | None = None,
                 only_missing: bool = False) -> dict[str, Path]:
    """Evaluate one run on each suite of `eval_cfg` (default: the run's own eval config); returns
    the results file written for each suite.

    Without `checkpoint` the run must be completed, and its final checkpoint is measured (results
    in eval/<suite>.json); a named checkpoint of any run is measured on request (results in
    eval/step_NNNNNNNN/<suite>.json unless it is the final one). Every results file records the
    checkpoint, its step and tokens, and the run's config hash. `only_missing` skips the suites
    that already have a current evaluation."""
    run = RunDir(run_dir)
    with run.lock():  # results are written into the run: one process at a time
        return _evaluate_held(run, eval_cfg, checkpoint, only_missing)


def _evaluate_held(run: RunDir, eval_cfg: EvalConfig | None, checkpoint: str | Path | None,
                   only_missing: bool) -> dict[str, Path]:
    if only_missing and checkpoint is None and eval_cfg is not None and run.status() == "completed":
        eval_cfg = dataclasses.replace(eval_cfg, suites={n: s for n, s in eval_cfg.suites.items()
                                                         if run.current_eval(n) is None})
        if not eval_cfg.suites:
            return {}
    loaded = load_run(run.path, checkpoint)
    eval_cfg = eval_cfg or loaded.cfg.eval
    if not eval_cfg.suites:
        raise ConfigError("eval.suites", {}, "no suite to run", valid=["probes", "extrapolation", "bigscience",
                                                                      "blimp"])
    manager = prepare_tasks(eval_cfg, loaded.cfg.data.cache_dir)
    step = None if loaded.final else loaded.step
    if not loaded.final:
        log.warning("%s: evaluating %s, not the final model of a completed run (the run is %s); the results go "
                    "to %s/ and ablate-report lists them as stale", run.path, loaded.checkpoint.name, run.status(),
                    run.eval_file("-", step).parent)
    device = eval_device(eval_cfg.device)
    provenance = {**run.provenance(loaded.checkpoint, loaded.step, loaded.tokens), "device": describe(device)}
    lm = AblateLM(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=eval_cfg.batch_size,
                  max_length=loaded.cfg.seq_len, device=str(device))
    written = {}
    for name, suite in eval_cfg.suites.items():
        log.info("evaluating %s on %s", run.path, name)
        results = _empty_results()
        if suite.tasks:
            results, items = run_tasks(lm, suite.tasks, eval_cfg, manager, run.samples_file(name, step))
            run.write_items(name, items, step)
        if suite.lengths:
            val = prepare(loaded.cfg.data).val
            _merge(results, extrapolation(loaded.model, val, loaded.cfg.seq_len, suite.lengths, eval_cfg, name))
        results["config"] = {**results.get("config", {}), "model": "ablate", "run": str(run.path), "suite": name}
        results["provenance"] = provenance
        written[name] = write_json(run.eval_file(name, step), results)
    return written


def evaluate_live(model: Transformer, tokenizer: Any, cfg: Any, suite: str) -> dict[str, float]:
    """The accuracy (or main metric) of each task of eval suite `suite` on a model being trained,
    in process, without a checkpoint; the model and every random state are left as they were."""
    from ablate.run import checkpoint

    eval_cfg = dataclasses.replace(cfg.eval, suites={suite: cfg.eval.suites[suite]}, samples=False)
    manager = prepare_tasks(eval_cfg, cfg.data.cache_dir)
    was_training, rng = model.training, checkpoint.rng_state()  # lm-eval seeds the global generators
    model.eval()
    try:
        device = str(next(model.parameters()).device)  # where it trains: never moved
        lm = AblateLM(model=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size, max_length=cfg.seq_len,
                      device=device)
        results, _ = run_tasks(lm, eval_cfg.suites[suite].tasks, eval_cfg, manager)
    finally:
        model.train(was_training)
        checkpoint.set_rng_state(rng)
    found = {}
    for task, metrics in results.get("results", {}).items():
        for metric in ("acc", "perplexity", "word_perplexity"):
            if f"{metric},none" in metrics:
                found[task] = float(metrics[f"{metric},none"])
                break
    return found


def _quiet_git_hash() -> str | None:
    """The commit of the working directory's git checkout; None outside one (nothing printed)."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except OSError:  # no git installed
        return None
    return out.stdout.strip() or None


def run_tasks(lm: AblateLM, tasks: list[str], eval_cfg: EvalConfig, manager: Any,
              samples_file: Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, list]]]:
    """lm-eval's simple_evaluate on `tasks` through `manager` (see task_manager). Returns its
    results, with `chance` (the accuracy of guessing, per task where known), and the per-item
    accuracies of each task (task -> {"doc_id": [...], "acc": [...]}) for paired comparisons."""
    import lm_eval
    import lm_eval.evaluator

    # lm-eval records the git commit of the working directory by running `git describe`, whose
    # "fatal: not a git repository" would reach the user's terminal outside a checkout: ask quietly
    lm_eval.evaluator.get_git_commit_hash = _quiet_git_hash
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=eval_cfg.limit,
                                      log_samples=True, bootstrap_iters=1000, batch_size=eval_cfg.batch_size)
    samples = results.pop("samples", None) or {}
    if eval_cfg.samples and samples_file is not None:
        write_text(samples_file, "".join(json.dumps({"task": task, **row}, default=str) + "\n"
                                         for task, rows in samples.items() for row in rows))
    items, chance = _items_and_chance(samples, results.get("configs", {}))
    results["chance"] = chance
    return results, items


def _items_and_chance(samples: dict[str, list], configs: dict[str, Any]) -> tuple[dict, dict]:
    """From lm-eval's logged samples: each task's per-item accuracies (with the clusters of items
    that share a context), and the accuracy of guessing per multiple-choice task (the copy probe's
    two: any source word, any lexicon word)."""
    items, chance = {}, {}
    for task, rows in samples.items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        if rows and "acc" in rows[0]:
            items[task] = {"doc_id": [r["doc_id"] for r in rows], "acc": [float(r["acc"]) for r in rows]}
            if all(isinstance(r.get("doc"), dict) and "cluster" in r["doc"] for r in rows):
                # items that share a context (the rows of one copied span, the queries of one table)
                items[task]["cluster"] = [r["doc"]["cluster"] for r in rows]
        if configs.get(task, {}).get("output_type") == "multiple_choice":
            chance[task] = {"acc": float(np.mean([1 / len(r["resps"]) for r in rows]))}
    if "ablate_copy" in samples:
        # copying's chance: any word of the source at random (a model that found the source but not
        # the next word), beside any word of the copy lexicon (one that did not find the source)
        rows = samples["ablate_copy"]
        source = [r["doc"].get("source_chance") for r in rows if isinstance(r.get("doc"), dict)]
        chance["ablate_copy"] = {"acc": float(np.mean(source)) if source and None not in source else COPY_CHANCE,
                                 "acc_lexicon": COPY_CHANCE}
    return items, chance


def _empty_results() -> dict[str, Any]:
    return {"results": {}, "versions": {}, "higher_is_better": {}, "n-samples": {},
            "date": datetime.datetime.now().timestamp()}


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key in ("results", "versions", "higher_is_better", "n-samples"):
        into.setdefault(key, {}).update(extra.get(key, {}))


# ---- tasks: names, probe files, local files ---------------------------------------------------------
# lm-eval's task index reads thousands of YAML files (seconds): it is built once per process and
# set of local files, and shared by every suite and run evaluated there.
_MANAGERS: dict[tuple[tuple[str, str], ...], Any] = {}


def prepare_tasks(eval_cfg: EvalConfig, cache_dir: str) -> Any:
    """The task manager for the suites of `eval_cfg`, their names checked (ConfigError for an
    unknown one) and the probe files generated: what an evaluation needs before it starts."""
    tasks = [t for s in eval_cfg.suites.values() for t in s.tasks]
    if not tasks:  # extrapolation alone needs no lm-eval task
        return None
    manager = task_manager(task_files(tasks, eval_cfg, cache_dir))
    check_tasks(tasks, manager)
    return manager


def task_files(tasks: list[str], eval_cfg: EvalConfig, cache_dir: str) -> dict[str, str]:
    """Task -> the local file it reads instead of its own data: eval.local_data, and the probe
    files (generated on first use) when a probe task is among `tasks`."""
    files = dict(eval_cfg.local_data)
    if any(t in PROBE_TASKS for t in tasks):
        probes = probe_dir(cache_dir, eval_cfg.probe_seed, eval_cfg.probe_items)
        files.update({t: str(probes / f"{name}.jsonl") for t, name in PROBE_TASKS.items()})
    return files


def task_manager(files: dict[str, str] | None = None) -> Any:
    """lm-eval's TaskManager, knowing ablate's tasks and, for each task in `files`, a copy of it
    that reads that local file instead (see local_task_yaml). Built once per process for each set
    of files; a task that is no single lm-eval task, or a missing file, raises ConfigError."""
    from lm_eval.tasks import TaskManager

    files = files or {}
    key = tuple(sorted((task, str(Path(file).expanduser().resolve())) for task, file in files.items()))
    if key in _MANAGERS:
        return _MANAGERS[key]
    include = [str(TASK_DIR)]
    if key:
        directory = Path(tempfile.mkdtemp(prefix="ablate-tasks-"))
        atexit.register(shutil.rmtree, directory, True)
        for task, file in key:
            if not Path(file).is_file():
                raise ConfigError(f"eval.local_data.{task}", files[task], "no such file")
            (directory / f"{task}.yaml").write_text(local_task_yaml(task, _task_yaml(task, file), Path(file)))
        include.append(str(directory))
    _MANAGERS[key] = TaskManager(include_path=include)
    return _MANAGERS[key]


def _task_yaml(task: str, file: str) -> Path:
    """The YAML file that defines `task` (ablate's own, or one of lm-eval's)."""
    if task in PROBE_TASKS:
        return TASK_DIR / f"{task}.yaml"
    entry = task_manager().task_index.get(task)
    if entry is None or not entry.yaml_path:
        raise ConfigError(f"eval.local_data.{task}", file, "not a single lm-eval task with a YAML file",
                          valid=_close(task, task_manager().all_subtasks))
    return Path(entry.yaml_path)


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


def check_tasks(tasks: list[str], manager: Any = None) -> None:
    """Every name must be an lm-eval task, group or tag (or ablate's); the error suggests close names."""
    if not tasks:
        return
    known = set((manager or task_manager()).all_tasks)
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

    return cached_dir(Path(cache_dir) / f"probes-v6-seed{seed}-n{n}", build)


# ---- length extrapolation -----------------------------------------------------------------------
@torch.inference_mode()
def extrapolation(model: Transformer, tokens: np.ndarray, train_len: int, lengths: list[float],
                  eval_cfg: EvalConfig, suite: str = "extrapolation") -> dict[str, Any]:
    """Perplexity on held-out tokens cut into non-overlapping windows of each multiple of the
    training length `train_len` (every token predicted from its own window only, as Press et al.
    evaluate). Learned positions beyond `train_len` are reported as not applicable: the table may
    be longer (model.max_seq_len), but rows past the training length were never trained.

    A causal model's outputs on a window's first L tokens do not depend on what follows, so a
    window of length L that starts where a longer window starts is read off that window's pass:
    with lengths that double, each length but the longest computes only half of its windows."""
    tokens = tokens[: eval_cfg.extrapolation_tokens + 1]
    out: dict[str, Any] = {"results": {}, "versions": {}, "higher_is_better": {}, "n-samples": {}}
    rows, todo = {}, []
    for multiple in lengths:
        L = max(1, round(multiple * train_len))
        n = (len(tokens) - 1) // L
        row: dict[str, Any] = {"alias": f"{multiple:g}x train length ({L} tokens)", "seq_len": L,
                               "train_seq_len": train_len}
        limit = model.position.max_len
        if limit is not None and L > min(limit, train_len):
            trained = min(limit, train_len)
            row["not_applicable"] = f"{model.cfg.position.kind} positions were trained on {trained} tokens"
        elif n == 0:
            row["not_applicable"] = f"fewer than {L + 1} held-out tokens"
        else:
            todo.append((L, n))
        rows[multiple] = (L, n, row)
    token_nlls = _token_nlls(model, tokens, todo)
    for multiple, (L, n, row) in rows.items():
        name = f"{suite}_{multiple:g}x"
        if "not_applicable" in row:
            row.update({"perplexity,none": None, "perplexity_stderr,none": None})
        else:
            nll = token_nlls[L].mean(axis=1)  # (n,) mean token NLL of each window
            mean, se = float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            row.update({"perplexity,none": math.exp(mean), "perplexity_stderr,none": math.exp(mean) * se,
                        "nll,none": mean, "nll_stderr,none": se, "windows": n})
        out["results"][name] = row
        out["versions"][name] = 1
        out["higher_is_better"][name] = {"perplexity": False, "nll": False}
        out["n-samples"][name] = {"original": n, "effective": n}
    return out


def _token_nlls(model: Transformer, tokens: np.ndarray, windows: list[tuple[int, int]]) -> dict[int, np.ndarray]:
    """For each (L, n): the token NLLs (n, L) of the first n windows of length L, longest first;
    a window that is the prefix of a longer one already computed is taken from it."""
    done: dict[int, np.ndarray] = {}
    for L, n in sorted(set(windows), reverse=True):
        nll = np.empty((n, L), dtype=np.float64)
        compute = []
        for j in range(n):
            longer = [M for M in done if (j * L) % M == 0 and (j * L) // M < len(done[M])]
            if longer:
                nll[j] = done[longer[0]][(j * L) // longer[0], :L]
            else:
                compute.append(j)
        if compute:
            nll[compute] = _window_nlls(model, tokens, L, compute)
        done[L] = nll
    return done


def _window_nlls(model: Transformer, tokens: np.ndarray, L: int, starts: list[int]) -> np.ndarray:
    """Token NLLs (len(starts), L) of the windows of length L numbered `starts`."""
    per_batch = max(1, 16_384 // L)
    device = next(model.parameters()).device
    nlls = []
    for b in range(0, len(starts), per_batch):
        idx = starts[b:b + per_batch]
        block = torch.from_numpy(np.stack([np.asarray(tokens[i * L: i * L + L + 1], dtype=np.int64) for i in idx]))
        logits = model(block[:, :-1].to(device)).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1).to(device),
                               reduction="none")
        nlls.append(loss.view(len(idx), L).double().cpu().numpy())
    return np.concatenate(nlls)


# ---- prefetch -----------------------------------------------------------------------------------
def prefetch(eval_cfg: EvalConfig) -> list[str]:
    """Download the datasets of every lm-eval task in the suites into the HF cache (on a machine
    with network), so that compute nodes can run with HF_DATASETS_OFFLINE=1."""
    tasks = [t for s in eval_cfg.suites.values() for t in s.tasks if t not in PROBE_TASKS]
    check_tasks(tasks)
    task_manager().load(tasks)  # loading a task downloads its data
    return tasks


def eval_device(setting: str) -> torch.device:
    """Where an evaluation runs: eval.device=auto takes a GPU when one is visible, else the CPU (in
    fp32 either way, without autocast)."""
    if setting not in EVAL_DEVICES:
        raise ConfigError("eval.device", setting, "unknown choice", valid=EVAL_DEVICES)
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device", setting, "no CUDA device is visible", valid=["auto", "cpu"])
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def describe(device: torch.device) -> str:
    """`cpu`, or `cuda (NVIDIA H100 80GB HBM3)`: what an evaluation's provenance records."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


# ---- command line -------------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[dict[str, Any], EvalConfig]:
    """key=value arguments: run=, checkpoint=, experiment=, results_dir=, suite= (or eval=), tasks=,
    --samples, --prefetch; the rest are Hydra overrides of the eval config (eval.limit=100,
    eval.local_data.X=...)."""
    from ablate.config import from_dict

    opts: dict[str, Any] = {"prefetch": False, "samples": False, "run": None, "checkpoint": None, "experiment": None,
                            "results_dir": "results", "suite": None, "tasks": None}
    overrides = []
    for arg in argv:
        if arg in ("--prefetch", "--samples"):
            opts[arg[2:]] = True
            continue
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError("argument", arg, "expected key=value", valid=["run=PATH", "checkpoint=FILE",
                                                                            "experiment=NAME", "suite=NAME",
                                                                            "tasks=A,B"])
        if key in ("run", "checkpoint", "experiment", "results_dir", "tasks"):
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
    if opts["checkpoint"] and not opts["run"]:
        raise ConfigError("checkpoint", opts["checkpoint"], "names a checkpoint of one run: give run=PATH with it")
    return opts, merged


def runs_of(opts: dict[str, Any]) -> list[Path]:
    if opts["run"]:
        return [Path(opts["run"])]
    if opts["experiment"]:
        root = Path(opts["results_dir"]) / opts["experiment"]
        runs = [r.path for r in runs_in(root)]
        if not runs:
            results = Path(opts["results_dir"])
            there = sorted(p.name for p in results.iterdir()) if results.is_dir() else []
            elsewhere = f"; experiments in {results}: {', '.join(there)}" if there else ""
            raise RunError(f"no runs under {root}{elsewhere}")
        return runs
    raise RunError("say which run: run=PATH (a run directory) or experiment=NAME (all of its runs)")


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        opts, eval_cfg = parse(argv)
        eval_device(eval_cfg.device)  # before any run is read
        if opts["prefetch"]:
            print("cached:", ", ".join(prefetch(eval_cfg)))
            return 0
        runs = runs_of(opts)
        skipped = []
        for run in runs:  # one process for all: lm-eval's task index is built once
            try:
                for suite, path in evaluate_run(run, eval_cfg, opts["checkpoint"]).items():
                    print(f"{run}: {suite} -> {path}")
            except (RunError, RunDirError, CheckpointError) as err:  # one run in use or broken: the others go on
                if len(runs) == 1:
                    raise
                skipped.append(run)
                print(f"skipped {run}: {err}", file=sys.stderr)
        return 1 if skipped else 0

    return command(__doc__, argv, body, needs_args=False)


if __name__ == "__main__":
    sys.exit(main())
