import inspect
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# Tiers: `python -m pytest -q -m "not slow"` while changing code (about a minute), the whole suite
# before a commit (what CI runs). A test is slow when it trains, tokenizes a corpus or starts an
# interpreter: it asks for a fixture that trains (SLOW_FIXTURES), calls one of SLOW_CALLS, or is
# marked @pytest.mark.slow by hand (long simulations, compilation).
SLOW_FIXTURES = {"cache_dir", "any_teacher", "completed", "small_disk"}
SLOW_CALLS = ("run_cli(", "cli_in_process(", "train_in_process(", "plan_in_process(", "subprocess.", "_start(")
# The suite runs on two workers (pytest-xdist, `-n 2 --dist loadgroup`), each with one thread. Tests
# that hold a shared resource run on one worker, one after another: the Slurm cluster's one node,
# and torchrun's fixed ports.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, 2 // WORKERS)


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(c in source for c in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif "torch.distributed.run" in source or "test_parallel import" in source:
            item.add_marker(pytest.mark.xdist_group("torchrun"))
    # the serialised groups first: each runs on one worker from the start while the others take
    # the rest, rather than at the end on one worker while the others wait
    first = {"slurm": 0, "torchrun": 1}
    items.sort(key=lambda item: first.get(next((m.args[0] for m in item.iter_markers("xdist_group")), ""), 2))


def pairwise(columns: list[list]) -> set[tuple]:
    """A small set of rows of the full grid over `columns` in which every pair of values of any two
    columns occurs at least once (greedy): the fast tier's cut of an axis grid."""
    grid = list(itertools.product(*columns))
    needed = {(i, a, j, b) for i, j in itertools.combinations(range(len(columns)), 2)
              for a in columns[i] for b in columns[j]}
    chosen = set()
    while needed:
        row = max(grid, key=lambda r: sum((i, r[i], j, r[j]) in needed
                                          for i, j in itertools.combinations(range(len(r)), 2)))
        chosen.add(row)
        needed -= {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}
    return chosen


@pytest.fixture(autouse=True)
def _deterministic():
    """Two threads (the CI machine has two cores; more oversubscribes), one per worker when two
    workers share them, and a fixed seed per test."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the session: the tiny corpus is tokenized once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def any_teacher(tmp_path_factory, cache_dir) -> Path:
    """A completed run (2 steps) to name as a distillation teacher where only its existence
    matters (plans: the tokenizer is checked when training starts)."""
    results = tmp_path_factory.mktemp("teacher")
    return train_in_process(cache_dir, results, "teacher", "train.tokens=2048")


def tiny_overrides(cache: Path, results: Path, *extra: str) -> list[str]:
    """A run that takes seconds: a 64-wide, 2-layer model on a 60k-word synthetic corpus, in fp32
    (the same numbers on every CPU; `auto` would pick bf16 on CPUs with native bf16)."""
    return ["model.dim=64", "model.n_layers=2", "model.max_seq_len=64", "data.synthetic_words=60000",
            "data.vocab_size=512", "data.val_tokens=2048", f"data.cache_dir={cache}", f"results_dir={results}",
            "train.tokens=40960", "train.batch_tokens=1024", "train.micro_batch=8", "train.log_every=1",
            "train.eval_every=10", "train.checkpoint_every=10", "train.progress=lines", "optim.warmup_steps=5",
            "train.precision=fp32", *([f"train.threads={THREADS}"] if WORKERS > 1 else []), *extra]


def train_in_process(cache: Path, results: Path, name: str, *extra: str) -> Path:
    """Train the tiny run `name` (tiny_overrides + extra) in this process, as ablate-train would;
    returns its run directory. For tests where the command line is not what is under test."""
    from ablate.cli import compose_root
    from ablate.config import RunConfig
    from ablate.run.lifecycle import for_train
    from ablate.train import train

    cfg = for_train(RunConfig.from_dict(compose_root(tiny_overrides(cache, results, *extra))))
    cfg.run_name = name
    train(cfg)
    return Path(cfg.results_dir) / cfg.experiment / name


def run_cli(module: str, *args: str, check: bool = True, env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repository root, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_in_process(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m module args` run in this process (runpy, as `-m` runs it: the same argv, the same
    exit status, stdout and stderr captured), for tests where what the command does is under
    test, not the start of an interpreter (about 4 s each: torch, Hydra, lm-eval). Not for
    commands that are signalled, killed or given another environment: those need their own process."""
    import contextlib
    import io
    import runpy

    argv, out, err, code = sys.argv, io.StringIO(), io.StringIO(), 0
    # the command's log lines reach its stderr, as they would alone (pytest's handlers on the root
    # logger make a command's own logging.basicConfig a no-op here)
    root, handler, level = logging.getLogger(), logging.StreamHandler(err), logging.getLogger().level
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # warnings as a fresh interpreter shows them: on stderr, under Python's default filters
            # (pytest records warnings by replacing this hook; catch_warnings restores it on exit)
            warnings.showwarning = warnings._showwarning_orig
            warnings._showwarnmsg_impl = lambda message: err.write(warnings._formatwarnmsg(message))
            warnings.simplefilter("default")
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", quiet)
            # runpy's note that the module was imported before (by an earlier test), which `-m` never meets
            warnings.filterwarnings("ignore", r".* found in sys\.modules after import of package", RuntimeWarning)
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
        root.removeHandler(handler)
        root.setLevel(level)
    proc = subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {code}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def plan_in_process(*args: str) -> str:
    """`ablate-train -m ARGS --plan` in this process (the sweeper plans every job, checks its
    confounds and writes runs.jsonl, trains nothing); returns what it printed. For tests where the
    plan is under test, not the interpreter's start: a plan that fails raises its SystemExit."""
    import contextlib
    import io

    from ablate import train

    argv, out = sys.argv, io.StringIO()
    sys.argv = ["ablate-train", "-m", *args, "--plan"]
    try:
        with contextlib.redirect_stdout(out):
            try:
                train._main()
            except SystemExit as stop:
                if stop.code not in (0, None):
                    raise
    finally:
        sys.argv = argv
    return out.getvalue()


def rewound(run: Path, to: Path, step: int) -> Path:
    """A copy of `run` as a kill right after its checkpoint of `step` leaves it: later checkpoints
    gone, the summary still saying running."""
    copy = to / "default" / run.name
    shutil.copytree(run, copy)
    for ckpt in (copy / "checkpoints").iterdir():
        if int(ckpt.name.removeprefix("step_").removesuffix(".pt")) > step:
            shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()
    s = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**s, "status": "running", "step": step}))
    return copy
