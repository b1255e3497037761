"""The sweeper through Hydra's local launcher (no cluster needed): a re-run sweep evaluates what
is missing and nothing else, and an unknown eval task stops a sweep before anything runs."""

import json

from conftest import run_cli, tiny_overrides


def test_a_rerun_sweep_only_evaluates_what_is_missing(cache_dir, tmp_path):
    sweep = ["-m", "model/position=rope,alibi", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096")]
    evaluate = ["train.eval_at_end=true", "eval=probes", "eval.probe_items=40", "eval.limit=10"]
    run_cli("ablate.train", *sweep)  # trained, not evaluated
    runs = sorted(p for p in (tmp_path / "default").iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2
    trained = {r: (r / "metrics.jsonl").read_text() for r in runs}
    plan = run_cli("ablate.train", *sweep, *evaluate, "--plan")
    assert plan.stdout.count("to evaluate") == 2 and "to run: 2 jobs, 0 GPU-hours" in plan.stdout
    run_cli("ablate.train", *sweep, *evaluate)
    for run in runs:
        provenance = json.loads((run / "eval" / "probes.json").read_text())["provenance"]
        assert provenance["final"] and provenance["step"] == 4
        assert (run / "metrics.jsonl").read_text() == trained[run]  # evaluated, not trained again
    assert "to run: 0 jobs" in run_cli("ablate.train", *sweep, *evaluate, "--plan").stdout


def test_an_unknown_eval_task_stops_the_sweep_before_anything_runs(cache_dir, tmp_path):
    out = run_cli("ablate.train", "-m", "model/position=rope,alibi", "train.eval_at_end=true",
                  "+eval.suites.mine.tasks=[hellaswg]", *tiny_overrides(cache_dir, tmp_path), check=False)
    assert out.returncode != 0 and "eval task='hellaswg': unknown" in out.stderr and "hellaswag" in out.stderr
    assert "nothing was launched" in out.stderr
    assert not (tmp_path / "default").exists()  # not even a run directory
