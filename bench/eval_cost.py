"""Evaluation cost: `ablate-eval experiment=X` (the default suites: probes + extrapolation) over every
run of an experiment, with this checkout's code and with an earlier revision's, side by side in one
run, on copies of the same runs; then the numbers both wrote, compared.

    python bench/eval_cost.py [--experiment attention] [--before REV] [--results results]

The runs must exist (completed); without them, the script trains them first with
`ablate-train -m +experiment=attention train.tokens=400000` (9 runs of the default model, about
8 minutes on 2 cores). The earlier revision is checked out with `git worktree` into a temporary
directory; each side evaluates its own copy of the runs (checkpoints linked, not copied), so the
user's own eval/ files are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The last revision whose evaluation built lm-eval's task index three times per run.
BEFORE = "f5ce96b"


def copy_runs(experiment: Path, into: Path) -> None:
    """A copy of an experiment's runs without their evaluations; checkpoints are linked."""
    into.mkdir(parents=True)
    for run in sorted(p for p in experiment.iterdir() if (p / "config.yaml").exists()):
        (into / run.name).mkdir()
        for item in run.iterdir():
            if item.name == "checkpoints":
                (into / run.name / item.name).symlink_to(item.resolve())
            elif item.is_file():
                shutil.copy2(item, into / run.name / item.name)


def evaluate(code: Path, results: Path, experiment: str, threads: int) -> float:
    """Seconds that `ablate-eval experiment=...` takes with the ablate package found in `code`."""
    runner = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
              "runpy.run_module('ablate.evaluate', run_name='__main__', alter_sys=True)")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", runner, str(code), f"experiment={experiment}",
                           f"results_dir={results}"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"evaluation with {code} failed:\n{proc.stderr[-3000:]}")
    return seconds


def scores(experiment: Path) -> dict[tuple[str, str, str], float]:
    """(run, task, metric) -> value, from every eval/*.json of the experiment's runs."""
    out = {}
    for path in experiment.glob("*/eval/*.json"):
        for task, metrics in json.loads(path.read_text())["results"].items():
            for key, value in metrics.items():
                if "," in key and "stderr" not in key and isinstance(value, (int, float)):
                    out[(path.parent.parent.name, task, key.split(",")[0])] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="attention")
    parser.add_argument("--results", default="results")
    parser.add_argument("--before", default=BEFORE, help="the revision to compare with")
    parser.add_argument("--tokens", default="400000", help="train.tokens of the runs, if they must be trained")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    experiment = Path(args.results) / args.experiment
    if not experiment.is_dir() or not any(experiment.glob("*/summary.json")):
        subprocess.run([sys.executable, "-m", "ablate.train", "-m", f"+experiment={args.experiment}",
                        f"train.tokens={args.tokens}", f"results_dir={args.results}", "train.progress=lines"],
                       cwd=ROOT, check=True)
    runs = [p for p in experiment.iterdir() if (p / "summary.json").exists()]
    with tempfile.TemporaryDirectory(prefix="ablate-bench-") as tmp:
        tmp = Path(tmp)
        before_code = tmp / "before-code"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before_code), args.before], cwd=ROOT,
                       check=True)
        try:
            sides = {"before": (before_code, tmp / "before"), "after": (ROOT, tmp / "after")}
            seconds = {}
            for name, (code, results) in sides.items():
                copy_runs(experiment, results / args.experiment)
                seconds[name] = evaluate(code, results, args.experiment, args.threads)
            a, b = scores(tmp / "before" / args.experiment), scores(tmp / "after" / args.experiment)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_code)], cwd=ROOT, check=False)
    shared = sorted(a.keys() & b.keys())
    worst = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-12), k) for k in shared) if shared else (float("nan"), None)
    print(f"ablate-eval experiment={args.experiment}: {len(runs)} runs, default suites (probes + extrapolation), "
          f"{args.threads} threads")
    print(f"  before ({args.before}): {seconds['before']:7.1f} s")
    print(f"  after  (this checkout): {seconds['after']:7.1f} s")
    print(f"  after / before: {seconds['after'] / seconds['before']:.2f} ({seconds['before'] / seconds['after']:.2f}x "
          f"faster)")
    print(f"  {len(shared)} numbers written by both; largest relative difference {worst[0]:.2g} ({worst[1]})")


if __name__ == "__main__":
    main()
