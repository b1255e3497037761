"""Sweeps through the real Slurm scheduler (the local cluster of slurm/local-cluster.sh in CI):
a 3-variant multirun completes, a requeued job resumes to the same final loss, and a bad sweep is
rejected before anything is queued. Skipped where no Slurm cluster answers."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_in_process, run_cli, tiny_overrides


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster answers")]
SLURM_ENV = {"ABLATE_SLURM_CPUS": "1", "ABLATE_SLURM_MEM_GB": "2", "ABLATE_SLURM_TIME_MIN": "20"}


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _queued() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()


def test_three_variant_sweep_on_slurm(cache_dir, tmp_path):
    watch = ("train.loggers=[jsonl,tensorboard,wandb]", "train.wandb_mode=offline")
    run_cli("ablate.train", "-m", "hydra/launcher=slurm", "model/position=learned,rope,alibi",
            *tiny_overrides(cache_dir, tmp_path, "train.tokens=10240", "train.threads=1", *watch), env=SLURM_ENV)
    runs = sorted(p for p in (tmp_path / "default").iterdir() if (p / "summary.json").exists())
    assert [r.name.split("-")[1] for r in runs] == ["alibi", "learned", "rope"]
    assert all(_summary(r)["status"] == "completed" for r in runs)
    # one tracker run per arm: a TensorBoard directory each under the experiment's, a W&B id each
    assert sorted(p.name for p in (tmp_path / "default" / "tensorboard").iterdir()) == [r.name for r in runs]
    ids = {json.loads((r / "trackers.json").read_text())["id"] for r in runs}
    assert len(ids) == 3 and all(len(list((r / "wandb").glob("offline-run-*"))) == 1 for r in runs)
    assert list((tmp_path / "default" / ".submitit").iterdir()), "the jobs went through submitit"
    # the same sweep again: everything completed, nothing is queued
    out = run_cli("ablate.train", "-m", "hydra/launcher=slurm", "model/position=learned,rope,alibi",
                  *tiny_overrides(cache_dir, tmp_path, "train.tokens=10240", "train.threads=1", *watch), env=SLURM_ENV)
    assert "to run: 0 jobs" in out.stdout


def test_lr_tuning_then_the_seeds_on_slurm(cache_dir, tmp_path):
    """+tune=lr through submitit: the tuning jobs, then (the sweeper waiting on them) the seeds at
    each arm's chosen LR."""
    run_cli("ablate.train", "-m", "hydra/launcher=slurm", "model/position=rope,alibi", "+tune=lr",
            "tune.lr_multipliers=[0.5,2]", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096", "train.threads=1"),
            env=SLURM_ENV)
    root = tmp_path / "default"
    chosen = {a["arm"]: a["lr"] for a in json.loads((root / "tune.json").read_text())["arms"]}
    assert set(chosen) == {"rope", "alibi"} and len(list((root / "tune").iterdir())) == 4
    runs = sorted(p for p in root.iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2 and all(_summary(r)["status"] == "completed" for r in runs)
    for run in runs:
        assert f"lr={chosen[run.name.split('-')[1]]:g}-" in run.name
    tasks = [p for p in (root / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]  # <array job>_<task>
    assert len(tasks) == 6, "all six jobs went through submitit"


def test_jobs_that_train_and_evaluate_end_on_slurm(cache_dir, tmp_path):
    """Each job trains, then evaluates under submitit's signal handlers (which ignore SIGTERM),
    with metrics whose stderr lm-eval bootstraps in a forked pool: both jobs end, both evaluated."""
    run_cli("ablate.train", "-m", "hydra/launcher=slurm", "model/position=rope,alibi", "train.eval_at_end=true",
            "eval=probes", "eval.probe_items=40",
            *tiny_overrides(cache_dir, tmp_path, "train.tokens=10240", "train.threads=1"), env=SLURM_ENV)
    runs = sorted(p for p in (tmp_path / "default").iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2 and all(_summary(r)["status"] == "completed" for r in runs)
    for run in runs:
        probes = json.loads((run / "eval" / "probes.json").read_text())
        assert probes["provenance"]["final"] and probes["results"]["ablate_copy"]["perplexity_stderr,none"] > 0


def test_requeued_job_resumes_to_the_same_loss(cache_dir, tmp_path):
    common = ("train.tokens=204800", "train.checkpoint_every=50", "train.threads=1", "train.log_every=50",
              "train.eval_every=0")
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=straight", *common))
    # it logs to TensorBoard and W&B (offline) as well: one tracker run across the requeue
    watch = ("train.loggers=[jsonl,tensorboard,wandb]", "train.wandb_mode=offline")
    args = ["-m", "hydra/launcher=slurm", "run_name=requeued",
            *tiny_overrides(cache_dir, tmp_path, *common, *watch)]
    sweep = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, **SLURM_ENV})
    run = tmp_path / "default" / "requeued"
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").exists() else True:
        assert time.time() < deadline and sweep.poll() is None, sweep.stdout.read() if sweep.poll() else "timeout"
        time.sleep(0.2)
    (job,) = [p.name for p in (tmp_path / "default" / ".submitit").iterdir() if p.name.isdigit()]
    subprocess.run(["scontrol", "requeue", job], check=True)
    output, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, output[-3000:]
    s, straight = _summary(run), _summary(tmp_path / "default" / "straight")
    assert s["status"] == "completed" and s["steps_total"] == 200
    assert (s["train_loss"], s["val_loss"]) == (straight["train_loss"], straight["val_loss"])
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown, "the job really was requeued"
    tracker_id = json.loads((run / "trackers.json").read_text())["id"]
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and {p.name.rsplit("-", 1)[1] for p in offline} == {tracker_id}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "default" / "tensorboard" / "requeued"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(50, 201, 50))  # each step once


def test_bad_sweep_queues_nothing(cache_dir, tmp_path):
    out = run_cli("ablate.train", "-m", "hydra/launcher=slurm", "model.attention.n_kv_heads=1,3",
                  *tiny_overrides(cache_dir, tmp_path), env=SLURM_ENV, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.attention.n_kv_heads=3: must divide n_heads=4" in out.stderr and "nothing was launched" in out.stderr
    # nothing submitted: submitit writes its folder before it submits anything (the queue itself is
    # no witness: an earlier test's requeued job may leave and re-enter it meanwhile)
    assert not (tmp_path / "default" / ".submitit").exists()


def test_sbatch_template_checkpoints_and_requeues_on_signal(cache_dir, tmp_path):
    """slurm/train.sbatch (torchrun): SIGUSR2 to the batch shell, as Slurm sends before the time
    limit -> ablate checkpoints and exits -> the job requeues itself and resumes to completion."""
    args = tiny_overrides(cache_dir, tmp_path, "run_name=sig", "train.tokens=204800", "train.threads=1",
                          "train.checkpoint_every=50", "train.eval_every=0", "train.log_every=50")
    job = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G",
                          f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / "train.sbatch"), *args],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "default" / "sig"
    deadline = time.time() + 300
    while not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("step_*.pt")):
        assert time.time() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", "--batch", job], check=True)
    while not (run / "summary.json").exists() or _summary(run)["status"] != "completed":
        assert time.time() < deadline + 300, (tmp_path / f"slurm-{job}.out").read_text()[-3000:]
        time.sleep(1)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "checkpointing before exit" in log and "resuming" in log
    assert "Restarts=1" in subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def test_multinode_template_trains_one_run_over_srun_tasks(cache_dir, tmp_path):
    """slurm/train-multinode.sbatch: srun starts one task per process (2 on the one node here, gloo
    on CPU); ablate builds its process group from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the
    node list, and the run completes as one run of world size 2."""
    args = tiny_overrides(cache_dir, tmp_path, "run_name=mn", "train.tokens=8192", "train.threads=1",
                          "train.eval_every=0")
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
                          "--cpus-per-task=1", "--mem=4G", f"--output={tmp_path}/slurm-%j.out",
                          str(ROOT / "slurm" / "train-multinode.sbatch"), *args],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "default" / "mn"
    deadline = time.time() + 300
    while job in _queued():
        assert time.time() < deadline, (tmp_path / f"slurm-{job}.out").read_text()[-3000:]
        time.sleep(1)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    summary = _summary(run)
    assert summary["status"] == "completed", log[-3000:]
    assert summary["world_size"] == 2 and summary["tokens_seen"] == 8192
    state = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True).stdout
    assert "COMPLETED" in state or not state.strip()  # sacct may have no accounting storage


def test_two_jobs_on_one_run_dir_train_it_once(cache_dir, tmp_path):
    """The same run submitted twice at once (a sweep launched twice, a requeue racing its earlier
    job): one job holds the run directory and trains it, the other stops at once with one line
    naming the holder's host and pid, and every step is logged once."""
    args = tiny_overrides(cache_dir, tmp_path, "run_name=twice", "train.tokens=204800", "train.threads=1",
                          "train.checkpoint_every=50", "train.eval_every=0", "train.log_every=10")
    def submit() -> str:
        return subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G",
                               f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / "train.sbatch"), *args],
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    # the first is suspended (scontrol suspend: its processes stopped, its lock held) once it trains,
    # and resumed once the second has come and gone: the two overlap whatever the queue's latency
    run = tmp_path / "default" / "twice"
    jobs, deadline = [submit()], time.time() + 600
    while not (run / "metrics.jsonl").exists():
        assert time.time() < deadline and jobs[0] in _queued()
        time.sleep(0.2)
    subprocess.run(["scontrol", "suspend", jobs[0]], check=True)
    try:
        jobs.append(submit())
        while jobs[1] in _queued():
            assert time.time() < deadline
            time.sleep(0.5)
    finally:
        subprocess.run(["scontrol", "resume", jobs[0]], check=True)
    while any(j in _queued() for j in jobs):
        assert time.time() < deadline
        time.sleep(1)
    logs = [(tmp_path / f"slurm-{j}.out").read_text() for j in jobs]
    refused = [log for log in logs if "is in use by pid" in log]
    assert len(refused) == 1, [log[-2000:] for log in logs]
    line = next(x for x in refused[0].splitlines() if "is in use by pid" in x)
    assert line.startswith("error: ") and "wrote nothing" in line and refused[0] is logs[1]
    assert _summary(run)["status"] == "completed" and "attempts" not in _summary(run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 200
