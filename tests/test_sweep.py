"""The sweeper through Hydra's local launcher (no cluster needed): the plan launches nothing and
lists every job, jobs.txt and runs.jsonl say what the sweep is, completed runs are not launched
again, a re-run sweep evaluates what is missing and nothing else, and one bad job (or an unknown
eval task) stops the sweep before anything runs."""

import json
import re
import shlex

from conftest import cli_in_process, tiny_overrides


def statuses(plan: str) -> list[str]:
    """The status column of a plan's table."""
    return [m.group(1) for m in re.finditer(r"^ *\d+  +(\S+) ", plan, flags=re.M)]


def test_plan_then_sweep_then_nothing_left(cache_dir, tmp_path):
    sweep = ["-m", "model/position=rope,alibi", "seed=0,1", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096")]
    plan = cli_in_process("ablate.train", *sweep, "--plan")
    root = tmp_path / "default"
    assert "to run: 4 jobs" in plan.stdout and statuses(plan.stdout) == ["new"] * 4
    assert not [p for p in root.iterdir() if p.is_dir()], "a plan launches nothing"
    jobs = [shlex.split(line) for line in (root / "jobs.txt").read_text().splitlines()]
    planned = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()]
    assert len(jobs) == len(planned) == 4 and all("plan=true" not in job for job in jobs)
    assert {(j[0], j[1]) for j in jobs} == {(f"model/position={p}", f"seed={s}") for p in ("rope", "alibi")
                                            for s in (0, 1)}
    for job, row in zip(jobs, planned):  # the same jobs, in the same order, with their configs
        assert row["config"]["model"]["position"]["kind"] == job[0].split("=")[1]
        assert row["config"]["seed"] == int(job[1].split("=")[1]) and row["run"].endswith(f"-s{row['config']['seed']}")
        assert str(root / row["run"]) in plan.stdout
    cli_in_process("ablate.train", *sweep)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert sorted(r.name for r in runs) == sorted(row["run"] for row in planned)
    trained = {r: (r / "metrics.jsonl").read_text() for r in runs}
    again = cli_in_process("ablate.train", *sweep)
    assert "to run: 0 jobs" in again.stdout and statuses(again.stdout) == ["completed"] * 4
    assert {r: (r / "metrics.jsonl").read_text() for r in runs} == trained


def test_one_bad_job_stops_the_sweep_before_anything_runs(cache_dir, tmp_path):
    out = cli_in_process("ablate.train", "-m", "model.attention.n_kv_heads=1,3", *tiny_overrides(cache_dir, tmp_path),
                         check=False)
    assert out.returncode == 2 and "model.attention.n_kv_heads=3: must divide n_heads=4" in out.stderr
    assert "Traceback" not in out.stderr
    assert "nothing was launched" in out.stderr and not (tmp_path / "default").exists()


def test_a_rerun_sweep_only_evaluates_what_is_missing(cache_dir, tmp_path):
    sweep = ["-m", "model/position=rope,alibi", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096")]
    evaluate = ["train.eval_at_end=true", "eval=probes", "eval.probe_items=40", "eval.limit=10"]
    cli_in_process("ablate.train", *sweep)  # trained, not evaluated
    runs = sorted(p for p in (tmp_path / "default").iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2
    trained = {r: (r / "metrics.jsonl").read_text() for r in runs}
    plan = cli_in_process("ablate.train", *sweep, *evaluate, "--plan")
    assert plan.stdout.count("to evaluate") == 2 and "to run: 2 jobs, 0 GPU-hours" in plan.stdout
    cli_in_process("ablate.train", *sweep, *evaluate)
    for run in runs:
        provenance = json.loads((run / "eval" / "probes.json").read_text())["provenance"]
        assert provenance["final"] and provenance["step"] == 4
        assert (run / "metrics.jsonl").read_text() == trained[run]  # evaluated, not trained again
    assert "to run: 0 jobs" in cli_in_process("ablate.train", *sweep, *evaluate, "--plan").stdout


def test_an_unknown_eval_task_stops_the_sweep_before_anything_runs(cache_dir, tmp_path):
    out = cli_in_process("ablate.train", "-m", "model/position=rope,alibi", "train.eval_at_end=true",
                         "+eval.suites.mine.tasks=[hellaswg]", *tiny_overrides(cache_dir, tmp_path), check=False)
    assert out.returncode != 0 and "eval task='hellaswg': unknown" in out.stderr and "hellaswag" in out.stderr
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nothing was launched" in out.stderr
    assert not (tmp_path / "default").exists()  # not even a run directory


def test_plan_without_multirun_plans_and_trains_nothing(tmp_path):
    """`ablate-train plan=true` (or `--plan`) without -m is the plan of that one job, never a run."""
    for i, flag in enumerate(("plan=true", "--plan")):
        out = cli_in_process("ablate.train", flag, f"results_dir={tmp_path / str(i)}")
        assert "1 jobs" in out.stdout and "to run: 1 jobs" in out.stdout
        run = tmp_path / str(i) / "default" / "default-rope-mha-rmsnorm-pre-swiglu-s0"
        assert not run.exists() or not any(run.iterdir())


def test_run_names_are_short_readable_and_safe_for_a_file_system():
    """A run on local files with many overrides: the name keeps the preset and axes, holds no path,
    glob or bracket character, and fits on a line; a path value becomes a stem and a short hash, so
    two paths give two names."""
    import re

    from ablate.naming import run_name

    choices = {"model": "default", "model/position": "rope", "model/attention": "mha", "model/norm": "rmsnorm",
               "model/placement": "pre", "model/mlp": "swiglu", "data": "files"}
    many = ["data=files", "data.paths=[/data/corpora/wikitext2_raw_test.txt]", "data.vocab_size=2048",
            "model.dim=128", "model.n_layers=4", "model.max_seq_len=128", "model.attention.n_heads=4",
            "train.tokens=400000", "train.batch_tokens=2048"]
    names = [run_name(choices, many, 0), run_name(choices, ["data.paths=[/data/*.jsonl]"], 3),
             run_name(choices, ["data.paths=[/other/*.jsonl]"], 3), run_name(choices, ["model.dim=512"], 1)]
    for name in names:
        assert len(name) <= 100 and re.fullmatch(r"[A-Za-z0-9_.+=~-]+", name), name
        assert name.startswith("default-rope-mha-rmsnorm-pre-swiglu-files-")
    assert names[0].endswith("-batch_tokens=2048-s0")  # the overrides given last still read
    assert "paths=jsonl~" in names[1] and names[1] != names[2]
    assert names[3] == "default-rope-mha-rmsnorm-pre-swiglu-files-dim=512-s1"


def test_one_function_names_a_choice_in_the_run_name_the_axes_and_the_variant():
    """A choice reads the same wherever it is named: the run's directory, the axes it logs and the
    report's label of its arm."""
    from ablate import naming
    from ablate.config import RunConfig
    from ablate.run.rundir import flatten

    flat = flatten(RunConfig.from_dict({"model": {"position": {"kind": "alibi"}, "embedding_norm": False,
                                                  "attention": {"n_heads": 4, "n_kv_heads": 1}}}).to_dict())
    fields = ["model.position.kind", "model.attention.n_kv_heads", "model.embedding_norm", "model.dim"]
    assert naming.variant(flat, fields) == f"alibi, mqa, no embedding_norm, dim={flat['model.dim']}"
    axes = naming.axes(flat)
    assert (axes["position"], axes["attention"], axes["embedding_norm"]) == ("alibi", "mqa", "no embedding_norm")
    name = naming.run_name({"model": "default"}, ["model.position.kind=alibi", "model.embedding_norm=false",
                                                  f"model.dim={flat['model.dim']}"], 0)
    assert name == f"default-alibi-no_embedding_norm-dim={flat['model.dim']}-s0"


def test_latent_attention_is_named_as_its_own_family():
    """Latent attention keeps n_kv_heads unset (as MHA does): its family is still mla, in the axes
    and in an arm's label, beside MHA, GQA and MQA, and two latent ranks stay apart."""
    from ablate import naming
    from ablate.config import RunConfig
    from ablate.run.rundir import flatten

    def flat(**attention):
        return flatten(RunConfig.from_dict({"model": {"attention": {"n_heads": 4, **attention}}}).to_dict())

    arms = [flat(), flat(n_kv_heads=2), flat(n_kv_heads=1), flat(kv_lora_rank=64), flat(kv_lora_rank=32)]
    assert [naming.axes(a)["attention"] for a in arms] == ["mha", "gqa2", "mqa", "mla", "mla"]
    fields = ["model.attention.n_kv_heads", "model.attention.kv_lora_rank"]
    assert [naming.variant(a, fields) for a in arms] == ["mha", "gqa2", "mqa", "mla, kv_lora_rank=64",
                                                         "mla, kv_lora_rank=32"]
    assert [naming.variant(a, fields[1:]) for a in (arms[0], arms[3])] == ["mha", "mla, kv_lora_rank=64"]
    assert naming.run_name({"model": "default", "model/attention": "mla"}, ["model.attention.kv_lora_rank=32"],
                           0) == "default-mla-kv_lora_rank=32-s0"
