"""Files on disk are neither all trusted nor all whole: a checkpoint never runs code, one process
at a time holds a run directory, damaged caches and metrics are found, a full disk is named, paths
stay inside, and a user's mistake is one line."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_in_process, rewound, tiny_overrides, train_in_process

MARK = "ablate-pwned"  # what the malicious checkpoint's unpickling would create


class _Payload:
    """Unpickling this runs a shell command (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _no_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr that says `error: ...`, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def completed(cache_dir, tmp_path_factory) -> Path:
    """A completed tiny run (20 steps), trained in this process."""
    return train_in_process(cache_dir, tmp_path_factory.mktemp("done"), "done", "train.tokens=20480")


# ---- checkpoints that cannot run code -----------------------------------------------------------
def _malicious_copy(run: Path, to: Path, marker: Path) -> Path:
    """A copy of `run` whose final checkpoint, when unpickled unsafely, runs `touch marker`."""
    copy = to / run.name
    shutil.copytree(run, copy)
    final = sorted((copy / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(final, weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, final)
    return copy


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(completed, cache_dir, tmp_path):
    """ablate-eval (the final checkpoint and checkpoint=), ablate-export, a distillation teacher and
    a resume: each refuses with one line naming the file and what it asked for, and nothing ran."""
    from ablate.evaluate.export import export_run
    from ablate.run.checkpoint import UnsafeCheckpointError, latest

    marker = tmp_path / MARK
    bad = _malicious_copy(completed, tmp_path / "bad", marker)
    final = sorted((bad / "checkpoints").glob("step_*.pt"))[-1]
    for args in ([f"run={bad}"], [f"run={bad}", f"checkpoint={final.name}"]):
        line = _one_error_line(cli_in_process("ablate.evaluate", *args, "suite=extrapolation", check=False))
        assert str(final) in line and "would call posix.system" in line
    teacher = cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=student",
                                                             "train.tokens=2048", f"train.distill.teacher={bad}",
                                                             "train.distill.weight=0.5"), check=False)
    assert "would call posix.system" in _one_error_line(teacher)
    with pytest.raises(UnsafeCheckpointError, match="would call posix.system"):
        export_run(bad)
    with pytest.raises(UnsafeCheckpointError):  # resume: refused, never moved aside for an older one
        latest(bad / "checkpoints")
    assert final.exists() and not marker.exists()


def test_sharded_checkpoint_metadata_that_would_run_code_is_refused(tmp_path):
    from ablate.run.checkpoint import UnsafeCheckpointError, load, restore, save_sharded

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    where = save_sharded(tmp_path, 7, model, opt, {"state": {"step": 7}}, keep=2, is_main=True)
    fresh = torch.nn.Linear(4, 3)
    restore(load(where), fresh)  # the safe reader reads what the writer wrote
    assert torch.equal(fresh.weight, model.weight)
    marker = tmp_path / MARK
    (where / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="would call posix.system"):
        load(where)
    assert not marker.exists()


def test_a_checkpoint_of_an_older_ablate_still_loads_and_resumes_exactly(completed, cache_dir, tmp_path):
    """Written with numpy's RNG state as an array (before RNG states were stored as tensors): it
    loads through the allowlist of numpy's array types, and the resumed run ends as a straight one."""
    from ablate.run.checkpoint import load

    extra = ("train.tokens=20480", "train.checkpoint_every=10")
    straight = train_in_process(cache_dir, tmp_path / "a", "r", *extra)
    old = rewound(straight, tmp_path / "b", 10)
    path = old / "checkpoints" / "step_00000010.pt"
    state = load(path)
    kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)  # the old format
    torch.save(state, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    train_in_process(cache_dir, tmp_path / "b", "r", *extra)
    assert _no_timing(_metrics(old)) == _no_timing(_metrics(straight))


# ---- one process per run directory ---------------------------------------------------------------
def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:] if proc.poll() else ""
        time.sleep(0.02)


def test_two_processes_started_at_once_train_once(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "run_name=twice", "train.tokens=61440")
    procs = [_start(args), _start(args)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    line = _one_error_line(subprocess.CompletedProcess([], 2, "", loser))
    assert "is in use by pid" in line and "wrote nothing" in line
    steps = [m["step"] for m in _metrics(tmp_path / "default" / "twice")]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert "attempts" not in _summary(tmp_path / "default" / "twice")


def test_a_second_start_mid_run_stops_and_a_requeue_waits(cache_dir, tmp_path):
    """Mid-run, a second start stops at once naming the holder and writes nothing; a requeued
    Slurm job (SLURM_RESTART_COUNT set) waits for the holder to exit instead, then sees it done."""
    args = tiny_overrides(cache_dir, tmp_path, "run_name=busy", "train.tokens=122880", "train.checkpoint_every=40")
    run = tmp_path / "default" / "busy"
    first = _start(args)
    _wait_for(lambda: (run / "metrics.jsonl").exists() and len(_metrics(run)) >= 3, first)
    second = subprocess.run([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, capture_output=True, text=True)
    line = _one_error_line(second)
    assert f"pid {first.pid} on " in line
    # the holder paused until the requeued job is seen waiting for it: no race with the holder's end
    first.send_signal(signal.SIGSTOP)
    log = tmp_path / "requeued.log"
    with log.open("w") as out:
        requeued = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, text=True, stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, "SLURM_RESTART_COUNT": "1"})
    try:
        _wait_for(lambda: "waiting up to" in log.read_text(), requeued)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0 and requeued.wait(timeout=600) == 0
    said = log.read_text()
    assert "already completed" in said
    steps = [m["step"] for m in _metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 120
    assert "attempts" not in _summary(run)  # no false "killed" attempt


def test_a_dead_holder_is_taken_over_and_its_temporary_files_removed(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "run_name=dead", "train.tokens=81920", "train.checkpoint_every=20")
    run = tmp_path / "default" / "dead"
    proc = _start(args)
    _wait_for(lambda: (run / "checkpoints" / "step_00000020.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [run / "checkpoints" / ".step_x1.tmp", run / ".summary.json.x2.tmp"]
    for path in left:
        path.write_bytes(b"half")
    (run / "checkpoints" / ".step_00000040.tmp").mkdir()  # a sharded checkpoint cut short
    out = cli_in_process("ablate.train", *args)
    said = out.stdout + out.stderr
    assert f"took over the lock of pid {proc.pid} on" in said and "removed 3 temporary file(s)" in said
    assert not any(p.exists() for p in left) and not (run / "checkpoints" / ".step_00000040.tmp").exists()
    assert _summary(run)["status"] == "completed"


def test_an_evaluation_or_export_of_a_run_in_use_stops(completed, tmp_path):
    from ablate.evaluate import evaluate_run
    from ablate.run.rundir import RunDir, RunDirError

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ablate.run.rundir import RunDir\n"
                               f"with RunDir({str(completed)!r}).lock():\n print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid}"):
            evaluate_run(completed)
        with pytest.raises(RunDirError, match="in use by"), RunDir(completed).lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(completed).lock(), RunDir(completed).lock():  # re-entrant in one process; free once it died
        pass


# ---- damaged files are found ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated, even size", "odd size", "empty", "bytes changed", "meta.json cut"])
def test_a_damaged_token_cache_is_found_and_rebuilt(damage, tmp_path, caplog):
    from ablate.config import DataConfig
    from ablate.data.tokens import prepare

    cfg = DataConfig(synthetic_words=20000, vocab_size=512, val_tokens=1024, cache_dir=str(tmp_path))
    first = prepare(cfg)
    train, val, entry = np.array(first.train), np.array(first.val), first.directory
    tokens, meta = entry / "tokens.bin", entry / "meta.json"
    size = tokens.stat().st_size
    if damage == "truncated, even size":
        os.truncate(tokens, size - 2 * 4000)
    elif damage == "odd size":
        os.truncate(tokens, size - 3)
    elif damage == "empty":
        os.truncate(tokens, 0)
    elif damage == "bytes changed":
        with open(tokens, "r+b") as handle:
            handle.seek(size // 2)
            handle.write(b"\x00\x01" * 8)
    else:
        meta.write_text(meta.read_text()[:20])
    again = prepare(cfg)
    assert np.array_equal(np.array(again.train), train) and np.array_equal(np.array(again.val), val)
    assert "is damaged" in caplog.text and len(list(tmp_path.glob(f"{entry.name}.damaged-*"))) == 1


def test_a_half_line_in_metrics_is_dropped_on_resume_and_named(cache_dir, tmp_path, caplog):
    extra = ("train.tokens=40960", "train.checkpoint_every=10")
    straight = train_in_process(cache_dir, tmp_path / "a", "m", *extra)
    cut = rewound(straight, tmp_path / "b", 30)  # the last two checkpoints are kept: 30 and 40
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text + '{"step": 31, "loss": 4.1')  # a full disk cut it there
    train_in_process(cache_dir, tmp_path / "b", "m", *extra)
    assert "left out 1 line(s) that cannot be read: line 41" in caplog.text
    assert _no_timing(_metrics(cut)) == _no_timing(_metrics(straight))


def test_the_report_warns_about_a_bad_metrics_line_and_an_unreadable_summary(completed, tmp_path):
    from ablate.report import collect

    experiment = tmp_path / "exp"
    for name in ("a", "b"):
        shutil.copytree(completed, experiment / name)
    with open(experiment / "a" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')
    summary = experiment / "b" / "summary.json"
    summary.write_text(summary.read_text()[:50])
    out = cli_in_process("ablate.report", f"path={experiment}")
    assert "left out 1 line(s) that cannot be read" in out.stdout + out.stderr
    assert (experiment / "report" / "index.html").exists() and list((experiment / "report").glob("*.png"))
    statuses = collect(experiment).rows.groupby("run")["status"].first().to_dict()
    assert statuses == {"a": "completed", "b": "unreadable summary"}


# ---- a full disk is named ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_named_recorded_and_resumed_from(small_disk, cache_dir, tmp_path):
    """A 3 MiB disk holds one checkpoint of the tiny run, not two: the run stops with one line naming
    the file and "no space left on device", its summary says failed with the same words; once space
    is freed it resumes, and ends exactly as a run that never ran out."""
    args = tiny_overrides(cache_dir, small_disk, "run_name=full", "train.tokens=40960", "train.checkpoint_every=10")
    line = _one_error_line(cli_in_process("ablate.train", *args, check=False))
    run = small_disk / "default" / "full"
    assert f"cannot write {run}/checkpoints/step_00000020.pt: no space left on device" in line
    s = _summary(run)
    assert s["status"] == "failed" and "no space left on device" in s["error"]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    cli_in_process("ablate.train", *args)
    straight = train_in_process(cache_dir, tmp_path / "straight", "full", "train.tokens=40960",
                                "train.checkpoint_every=10")
    assert _no_timing(_metrics(run)) == _no_timing(_metrics(straight))
    assert [a["status"] for a in _summary(run)["attempts"]] == ["failed"]


def test_a_summary_is_never_left_running_when_the_disk_is_full(completed, small_disk):
    """With no free block left, the failed summary is written over the old one in place."""
    from ablate.run.rundir import RunDir

    run = RunDir(small_disk / "run")
    run.path.mkdir()
    shutil.copy(completed / "summary.json", run.summary_file)
    with open(small_disk / "filler", "wb", buffering=0) as handle:  # fill the disk to the last block
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    with pytest.raises(OSError):
        (small_disk / "another").write_text("x" * 8192)
    run.write_summary({**_summary(completed), "status": "failed", "error": "no space left on device"})
    assert run.status() == "failed"


# ---- paths stay inside, mistakes are one line ----------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "../../escape", "/tmp/ablate-escape", ".."])
def test_a_run_name_cannot_leave_the_experiment(name, cache_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, work / "results",
                                                                          f"run_name={name}"), check=False))
    assert "run_name=" in line and "without '..') inside" in line
    assert not (work / "results").exists() and not Path("/tmp/ablate-escape").exists()
    assert not (ROOT / "escape").exists() and not (tmp_path / "escape").exists()


def test_a_checkpoint_named_by_a_relative_path_stays_in_the_run(completed, tmp_path):
    from ablate.evaluate.lm import load_run
    from ablate.run.rundir import RunDir, RunError

    elsewhere = tmp_path / "copy.pt"
    shutil.copy(sorted((completed / "checkpoints").glob("step_*.pt"))[-1], elsewhere)
    with pytest.raises(RunError, match="leads out of"):
        RunDir(completed).checkpoint_of(os.path.relpath(elsewhere))
    assert load_run(completed, str(elsewhere)).step == 20  # an absolute path may be anywhere


def test_mistakes_on_the_command_line_are_one_line_and_write_nothing(cache_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"plain words here.\n\n" * 2000 + b"\xff\xfe\x00binary")
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "data=files",
                                                                          f"data.paths=[{corpus}]"), check=False))
    assert str(corpus) in line and f"byte {19 * 2000} is 0xff" in line
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n' * 10 + b'{"text": "\xc3\x28"}\n')
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "data=files",
                                                                          f"data.paths=[{jsonl}]"), check=False))
    assert str(jsonl) in line and "byte 180 is 0xc3" in line
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "model/position=rotary"),
                                          check=False))
    assert "model/position='rotary': no such option (valid: alibi, learned" in line
    line = _one_error_line(cli_in_process("ablate.train", "-m", "model/position=rope,rotary", "--plan", check=False))
    assert "no such option" in line
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "model.dim=[64,"),
                                          check=False))
    assert "cannot be parsed" in line
    line = _one_error_line(cli_in_process("ablate.evaluate", "run=x", "eval.limit=[1,", check=False))
    assert "cannot be parsed" in line
    line = _one_error_line(cli_in_process("ablate.evaluate", "run=x", "suite=probez", check=False))
    assert "eval='probez': no such option" in line
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path,
                                                                          "train.batch_tokens=1000"), check=False))
    assert "must be a multiple of seq_len" in line
    line = _one_error_line(cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "eval.device=gpu"),
                                          check=False))
    assert "eval.device='gpu': unknown choice (valid: auto, cpu, cuda)" in line
    assert not (tmp_path / "default").exists()  # no run directory, no .hydra skeleton, for any of them


def test_a_finished_run_loads_without_its_trackers_or_its_teacher(completed, tmp_path, monkeypatch):
    """Evaluation and export need the model, not what training needed: a run that logged to W&B
    loads where wandb cannot be imported, and a distilled one after its teacher has gone."""
    import yaml

    from ablate.config import RunConfig
    from ablate.evaluate.lm import load_run
    from ablate.registry import ConfigError
    from ablate.run.lifecycle import for_train

    copy = tmp_path / "logged"
    shutil.copytree(completed, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["train"]["loggers"] = ["jsonl", "wandb"]
    config["train"]["distill"].update(teacher=str(tmp_path / "moved-away"), weight=0.5)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    with pytest.raises(ImportError):
        import wandb  # noqa: F401
    with pytest.raises(ConfigError):  # training it would need both
        for_train(RunConfig.from_dict(config))
    loaded = load_run(copy)
    assert loaded.step == 20 and loaded.cfg.train.loggers == ["jsonl", "wandb"]


def test_a_run_begun_before_a_field_existed_still_resumes(cache_dir, tmp_path):
    """A field added to the config since a run began (absent from its config.yaml) computes its
    default, so the run resumes; a real difference is still refused."""
    import yaml

    from ablate.run.rundir import RunDirError

    run = train_in_process(cache_dir, tmp_path, "old", "train.tokens=4096")
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["data"]["holdout"]  # as an older ablate wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = _summary(run)
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    train_in_process(cache_dir, tmp_path, "old", "train.tokens=4096")
    assert _summary(run)["status"] == "completed"
    config["data"]["val_tokens"] = 4096
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(RunDirError, match="data.val_tokens: 4096 -> 2048"):
        train_in_process(cache_dir, tmp_path, "old", "train.tokens=4096")
