"""`ablate-report experiment=NAME` (or a path): runs -> one tidy table -> a verdict, tables and
plots whose every mark survives seed noise and multiple comparisons.

    ablate-report experiment=positions [results_dir=results] [baseline=rope] [target_flops=1e21]
                  [primary=train|val_loss,ablate_recall|acc]

Writes results/<experiment>/report/: table.md (what the arms hold equal and any confound, from the
sweep's fairness.json; the verdict; each arm's chosen LR under +tune=lr; then a narrow table of the
main metrics and costs, length extrapolation, stability, noise), table.csv and table.tex (every
column), comparisons.csv (each variant against the baseline, per metric: the difference, its
interval, p, Holm-adjusted p, the test), noise.csv (per metric: the noise of a run by source,
signal-to-noise, the smallest difference the seeds could detect), loss.png, extrapolation.png,
scores.png, deltas.png, lr_sensitivity.png (+tune=lr), during_training.png, and index.html (all of
it in one page); prints table.md. Works on any run directories, complete or not: failed, diverged,
running and missing runs, stale evaluations and runs without one appear as such and are never
averaged in. A ladder (a sweep over ladder.size) also gets ladder.csv (fits of loss against
compute per variant, with the prediction at target_flops), decisions.csv (each pair of variants at
each rung, and whether it agrees with the largest), scaling.png and ranks.png, and a Ladder
section.

The package is one flow: `collect` (run directories -> a Collection), `analyse` (-> an Analysis:
means and intervals), `comparisons` and `noise` (the tests), the `sections` (each a part of the
page), the `writers` (md, csv, tex, html).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ablate import ladder
from ablate.cli import command, key_values
from ablate.registry import ConfigError
from ablate.report.analysis import Analysis, Column, analyse
from ablate.report.collect import Collection, Items, collect, plotted
from ablate.report.comparisons import Comparisons, comparisons, primary_family
from ablate.report.keys import MetricKey
from ablate.report.noise import noise
from ablate.report.parts import Context
from ablate.report.sections import sections
from ablate.report.sections.verdict import extrapolation_verdict, verdict
from ablate.report.writers import write_report
from ablate.run.rundir import ExperimentDir

__all__ = ["ARGUMENTS", "Analysis", "Collection", "Column", "Comparisons", "Items", "MetricKey", "analyse",
           "collect", "comparisons", "extrapolation_verdict", "main", "noise", "primary_family", "report",
           "verdict"]

ARGUMENTS = ("experiment", "path", "results_dir", "baseline", "target_flops", "primary")  # of ablate-report


def build(experiment_dir: str | Path, baseline: str | None = None, target_flops: float | None = None,
          primary: list[MetricKey | str] | None = None) -> tuple[str, list, Path]:
    """Collect, analyse, test, and build every section: (the title, the parts, the output directory)."""
    experiment = ExperimentDir(experiment_dir)
    found = collect(experiment.path)
    _warn(found)
    a = analyse(found, baseline, primary)
    comps = comparisons(a)
    out = experiment.report_dir
    out.mkdir(exist_ok=True)
    rungs = ladder.analyse(found.rows, target_flops) if "rung" in found.rows else {}
    ctx = Context(experiment, found, a, comps, noise(a, comps), out, target_flops, plotted(found)[1], rungs)
    count = f"{len(a.variants)} variant" + ("s" if len(a.variants) != 1 else "")
    return f"{experiment.path.name}: {count}", [s.build(ctx) for s in sections()], out


def report(experiment_dir: str | Path, baseline: str | None = None, target_flops: float | None = None,
           primary: list[MetricKey | str] | None = None) -> dict[str, Path]:
    """Build the verdict, tables and plots of an experiment (and, for a ladder, its fits and
    decisions: ablate.ladder, predicting at `target_flops`), print table.md, and return the files
    written. `primary`: the primary family's metrics, over what the experiment declares
    (`report.primary`)."""
    title, parts, out = build(experiment_dir, baseline, target_flops, primary)
    written = write_report(out, title, parts)
    print(written["md"].read_text(), end="")
    return written


def _warn(found: Collection) -> None:
    df = found.rows
    for run, status in df.drop_duplicates("run")[["run", "status"]].itertuples(index=False):
        if status != "completed":
            warnings.warn(f"{run}: {status}; left out of the means", stacklevel=3)
    for (run, _), why in found.stale.items():
        warnings.warn(f"{run}: {why}; not used", stacklevel=3)
    for run in df[(df.task == "eval") & (df.metric == "missing") & (df.status == "completed")].run.unique():
        warnings.warn(f"{run}: no evaluation of its final checkpoint", stacklevel=3)


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        args = key_values(argv, ARGUMENTS)
        root = Path(args.get("results_dir", "results"))
        if "experiment" not in args and "path" not in args:
            raise ConfigError("argument", sorted(args), "say experiment=NAME or path=DIR")
        target = Path(args["path"]) if "path" in args else root / args["experiment"]
        if not target.is_dir():
            there = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ConfigError("experiment", str(target), "no such directory", valid=there or None)
        try:
            target_flops = float(args["target_flops"]) if "target_flops" in args else None
        except ValueError:
            raise ConfigError("target_flops", args["target_flops"], "must be a number of FLOPs, e.g. 1e21") from None
        primary = [k for k in args["primary"].split(",") if k] if "primary" in args else None
        for name, path in report(target, args.get("baseline"), target_flops, primary).items():
            print(f"{name}: {path}")
        return 0

    return command(__doc__, argv, body)


if __name__ == "__main__":
    sys.exit(main())
