"""The run directory: every file name and on-disk format of a run lives here, and nowhere else.

    results/<experiment>/<run>/
        config.yaml          the resolved RunConfig
        summary.json         status, step, costs, losses, and how every earlier attempt ended
        metrics.jsonl        a line per logged step (metrics.attemptN.jsonl: an attempt a retry replaced)
        tokenizer.json       the tokenizer the run was trained with
        checkpoints/         step_NNNNNNNN.pt, or step_NNNNNNNN/ when sharded (see ablate.run.checkpoint)
        eval/<suite>.json    an evaluation of the final checkpoint of the completed run
        eval/step_NNNNNNNN/<suite>.json   an evaluation of any other checkpoint (named explicitly)
        hf/                  ablate-export's transformers model
        .lock                who holds the run (host, pid, since): one process at a time trains,
                             evaluates or exports into a run directory (RunDir.lock)

Every evaluation records which checkpoint it measured (its provenance); `eval_problem` says whether
an evaluation still describes the run, so that a table never mixes a half-trained model's scores
with a finished run's loss.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.config import OPERATIONAL
from ablate.files import WriteError, write_text
from ablate.run import checkpoint as ckpt


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used as asked; the message says what exists."""


class RunDirError(RuntimeError):
    """The run directory holds something this run must not touch."""


log = logging.getLogger("ablate.run.rundir")
UNREADABLE = "unreadable summary"  # the status of a run whose summary.json exists but cannot be read
_HELD: dict[Path, list] = {}  # run directory -> [open lock file, depth]: a process re-enters its own lock


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1, default=_plain) + "\n")


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _holder_text(handle, default: str = "another process") -> str:
    """Who the lock file says holds the run: 'pid 123 on node7 since ... (ablate-train ...)'."""
    handle.seek(0)
    try:
        h = json.loads(handle.read() or "null")
    except ValueError:
        return default
    if not isinstance(h, dict):
        return default
    return f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')} ({h.get('command', '')})"


def _plain(obj: Any) -> Any:
    """JSON for what lm-eval's results hold besides plain types (numpy scalars, sets, callables)."""
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of the fields of a config that change what a run computes."""
    computed = {k: v for k, v in flatten(config).items() if not k.startswith(OPERATIONAL)}
    return hashlib.sha256(json.dumps(computed, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class EvalFile:
    """One evaluation results file of a run and what it says it measured."""

    path: Path
    suite: str
    results: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        return self.results.get("provenance") or {}


class RunDir:
    """One run's directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def hf_dir(self) -> Path:
        return self.path / "hf"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    # ---- one process at a time -------------------------------------------------------------------
    @contextmanager
    def lock(self, wait_s: float = 0.0, create: bool = False) -> Iterator[None]:
        """Hold the run directory for this process: an exclusive flock on `.lock`, which records
        the holder (host, pid, since, command). Another process that holds it: RunDirError naming
        it, after waiting up to `wait_s` seconds for it to let go (nothing written meanwhile). The
        kernel releases the lock of a process that dies however it dies (and NFS that of a dead
        node when its lease ends); the next holder logs the takeover and removes the temporary
        files the dead one left. Re-entrant within a process. A directory that does not exist is
        made with `create` (a new run), else left alone: there is nothing to hold."""
        if not create and not self.path.is_dir():
            yield
            return
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")
        try:
            self._acquire(handle, wait_s)
        except BaseException:
            handle.close()
            raise
        _HELD[key] = [handle, 1]
        try:
            yield
        finally:
            del _HELD[key]
            handle.seek(0)
            handle.truncate()  # an empty file: released cleanly
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _acquire(self, handle, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    log.warning("%s: this file system does not support locks (%s); nothing stops a second process "
                                "from using the run", self.lock_file, err.strerror)
                    return
                holder = _holder_text(handle, default="")
                for _ in range(20):  # the holder has just taken it and is writing who it is
                    if holder:
                        break
                    time.sleep(0.05)
                    holder = _holder_text(handle, default="")
                holder = holder or "another process"
                if time.monotonic() >= deadline:
                    raise RunDirError(f"{self.path} is in use by {holder}; this process stopped and wrote nothing "
                                      "there (wait for it to end, or stop it)") from None
                if not said:
                    log.warning("%s is in use by %s; waiting up to %.0f s for it to let go", self.path, holder, wait_s)
                    said = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        before = _holder_text(handle, default="")
        if before:
            log.warning("%s: took over the lock of %s, which no longer holds it (killed, or its node is gone)",
                        self.path, before)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:300]}))
        handle.flush()
        self.remove_temporary_files()

    def remove_temporary_files(self) -> list[Path]:
        """What a killed process left half-written: temporary checkpoints (files and sharded
        directories) and the temporary files of atomic writes. Only called with the lock held."""
        found = [*self.checkpoint_dir.glob(".step_*.tmp"), *self.path.glob(".*.tmp"), *self.eval_dir.glob("**/.*.tmp")]
        for path in found:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if found:
            log.warning("%s: removed %d temporary file(s) a killed process left: %s", self.path, len(found),
                        ", ".join(str(p.relative_to(self.path)) for p in found))
        return found

    def is_run(self) -> bool:
        """A run has been set up here (its config is written before its first step)."""
        return self.config_file.exists()

    # ---- config --------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(self.config_file))

    def write_config(self, config: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        write_text(self.config_file, OmegaConf.to_yaml(OmegaConf.create(config)))

    def config_hash(self) -> str:
        """A hash of what the stored config computes: operational settings (threads, logging,
        evaluation, ...) left out, so that resuming with other ones keeps the hash."""
        return config_hash(self.read_config())

    # ---- status --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any] | None:
        """The summary, or None when there is none or it cannot be read (see status)."""
        found = read_json(self.summary_file)
        return found if isinstance(found, dict) else None

    def status(self) -> str:
        """`new` when nothing has run here, `unreadable summary` when summary.json exists but is not
        a summary (a disk fault, a copy cut short); else the summary's status."""
        summary = self.summary()
        if summary is None:
            return UNREADABLE if self.summary_file.exists() else "new"
        return str(summary.get("status", "unknown"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Atomically; when the disk is too full for a new file, in place over the old one (a
        summary's few hundred bytes fit in the blocks it already has), so that a run's status is
        not left at `running` by a failed write."""
        text = json.dumps(summary, indent=1, default=_plain) + "\n"
        try:
            write_text(self.summary_file, text)
        except WriteError:
            if not self.summary_file.exists():
                raise
            with open(self.summary_file, "r+") as handle:
                handle.write(text)
                handle.truncate()

    # ---- metrics -------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_file, "a") as out:
                out.write(json.dumps(record) + "\n")
        except OSError as err:
            raise WriteError(self.metrics_file, err) from err

    def metrics(self) -> list[dict[str, Any]]:
        """The logged records; lines that cannot be read (half a line from a full disk) are left
        out with a warning naming them."""
        return [record for _, record in self._metric_lines()]

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.metrics_file.exists():
            return []
        found, bad = [], []
        for n, line in enumerate(self.metrics_file.read_text(errors="replace").splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
            if isinstance(record, dict) and "step" in record:
                found.append((line, record))
            elif line.strip():
                bad.append(n)
        if bad:
            log.warning("%s: left out %d line(s) that cannot be read: line %s", self.metrics_file, len(bad),
                        ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""))
        return found

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines logged after `step` (a resumed run logs them again) and any line that
        cannot be read (named in a warning)."""
        if self.metrics_file.exists():
            kept = [line for line, record in self._metric_lines() if record["step"] <= step]
            write_text(self.metrics_file, "".join(line + "\n" for line in kept))

    def archive_metrics(self, attempt: int) -> Path | None:
        """Keep the metrics of an attempt that a retry will truncate, as metrics.attempt<N>.jsonl."""
        if not self.metrics_file.exists():
            return None
        return write_text(self.path / f"metrics.attempt{attempt}.jsonl", self.metrics_file.read_text())

    def clear_metrics(self) -> None:
        self.metrics_file.unlink(missing_ok=True)

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Readable-looking checkpoints (files and sharded directories), oldest first."""
        return ckpt.checkpoints(self.checkpoint_dir)

    def checkpoint_of(self, name: str | Path) -> Path:
        """A checkpoint named by step (160), by file name (step_00000160.pt), by a relative path
        that stays inside the run (results/x/run/checkpoints/step_00000160.pt), or by an absolute
        path, which may be anywhere (a checkpoint copied elsewhere, measured as this run's).
        RunError for a relative path that leads out of the run."""
        name = str(name)
        if name.isdigit():
            return self.step_checkpoint(int(name))
        path = Path(name)
        if path.is_absolute():
            return path
        if path.parent == Path("."):
            return self.checkpoint_dir / name
        inside = self.path.resolve()
        if inside not in path.resolve().parents:
            raise RunError(f"checkpoint={name} leads out of {self.path}; name one of its checkpoints (a step, or a "
                           "file name in checkpoints/), or give an absolute path to measure a file from elsewhere")
        return path

    def final_checkpoint(self) -> Path | None:
        """The checkpoint a completed run ended with; None for any other run."""
        summary = self.summary() or {}
        if summary.get("status") != "completed":
            return None
        return self.step_checkpoint(int(summary["step"]))

    def step_checkpoint(self, step: int) -> Path:
        """The checkpoint of `step`: a file, or a sharded directory where only that exists."""
        sharded = self.checkpoint_dir / ckpt.sharded_name(step)
        return sharded if sharded.is_dir() else self.checkpoint_dir / ckpt.file_name(step)

    # ---- evaluations ---------------------------------------------------------------------------
    def eval_file(self, suite: str, step: int | None = None) -> Path:
        """Where the evaluation of `suite` goes: eval/<suite>.json for the final checkpoint, else
        eval/step_NNNNNNNN/<suite>.json, so that no other checkpoint overwrites the final one."""
        where = self.eval_dir if step is None else self.eval_dir / ckpt.file_name(step).removesuffix(".pt")
        return where / f"{suite}.json"

    def samples_file(self, suite: str, step: int | None = None) -> Path:
        return self.eval_file(suite, step).with_name(f"{suite}_samples.jsonl")

    def items_file(self, suite: str, step: int | None = None) -> Path:
        """Per-item results of an evaluation (what paired comparisons between runs need)."""
        return self.eval_file(suite, step).with_name(f"{suite}_items.jsonl")

    def write_items(self, suite: str, items: dict[str, dict[str, list]], step: int | None = None) -> Path:
        """items: task -> {"doc_id": [...], metric: [...]} (one value per item, doc_id order)."""
        return write_text(self.items_file(suite, step),
                          "".join(json.dumps({"task": task, **rows}) + "\n" for task, rows in items.items()))

    def items(self, suite: str) -> dict[str, dict[str, list]]:
        """The per-item results of the final model's evaluation of `suite` ({} when not kept)."""
        path = self.items_file(suite)
        if not path.exists():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return {row.pop("task"): row for row in rows}

    def provenance(self, checkpoint: Path, step: int, tokens: int) -> dict[str, Any]:
        """What an evaluation of `checkpoint` (taken at `step`, after `tokens`) measured."""
        from ablate import __version__

        summary = self.summary() or {}
        final = self.final_checkpoint()
        return {"run": self.name, "checkpoint": os.path.relpath(checkpoint, self.path), "step": step,
                "tokens": tokens, "final": final is not None and final.resolve() == Path(checkpoint).resolve(),
                "run_status": summary.get("status", "new"), "run_steps_total": summary.get("steps_total"),
                "config_hash": self.config_hash(), "ablate_version": __version__}

    def evals(self) -> list[EvalFile]:
        """Every evaluation results file of the run (of the final checkpoint and of others)."""
        if not self.eval_dir.is_dir():
            return []
        paths = sorted(self.eval_dir.glob("*.json")) + sorted(self.eval_dir.glob("step_*/*.json"))
        return [EvalFile(p, p.stem, read_json(p) or {}) for p in paths]

    def eval_problem(self, found: EvalFile) -> str | None:
        """None when `found` measured the final checkpoint of this completed run under its
        current config; otherwise why it does not describe the run."""
        p = found.provenance
        if "step" not in p:
            return "it records no checkpoint (written by an older ablate)"
        summary = self.summary() or {}
        status = summary.get("status", "new")
        if status != "completed":
            return f"it measured step {p['step']} of a run that is {status}"
        if int(p["step"]) != int(summary.get("step", -1)):
            return f"it measured step {p['step']}; the run ended at step {summary.get('step')}"
        if p.get("config_hash") != self.config_hash():
            return "it measured the run under another config"
        return None

    def current_eval(self, suite: str) -> EvalFile | None:
        """The evaluation of `suite` that describes the final model, if there is one."""
        path = self.eval_file(suite)
        if not path.exists():
            return None
        found = EvalFile(path, suite, read_json(path) or {})
        return found if self.eval_problem(found) is None else None


class ExperimentDir:
    """An experiment's directory: its runs, and what a sweep writes beside them.

        jobs.txt        one line of overrides per job (what a Slurm job array reads)
        runs.jsonl      every run the sweep expects, with its config, in the sweep's order
        multirun.yaml   the sweep's composed config
        fairness.json   what the arms hold equal and every confound the plan found
        tune/, tune.json  +tune=lr: the tuning runs, and each arm's chosen LR
        report/         ablate-report's tables and plots
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def jobs_file(self) -> Path:
        return self.path / "jobs.txt"

    @property
    def planned_file(self) -> Path:
        return self.path / "runs.jsonl"

    @property
    def sweep_config_file(self) -> Path:
        return self.path / "multirun.yaml"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def fairness_file(self) -> Path:
        """What the arms hold equal and every confound, as the sweep's plan found them."""
        return self.path / "fairness.json"

    @property
    def tune_file(self) -> Path:
        """+tune=lr: the LR grid, every tuning run's result and each arm's choice."""
        return self.path / "tune.json"

    @property
    def tune_dir(self) -> Path:
        """+tune=lr: the tuning runs (an experiment directory of its own)."""
        return self.path / "tune"

    def fairness(self) -> dict[str, Any] | None:
        return read_json(self.fairness_file)

    def tuning(self) -> dict[str, Any] | None:
        return read_json(self.tune_file)

    def runs(self) -> list[RunDir]:
        """The run directories, by name."""
        if not self.path.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.path.iterdir()) if RunDir(p).is_run()]

    def write_jobs(self, lines: list[str]) -> None:
        """jobs.txt alone: what can run now, one line of overrides per job."""
        write_text(self.jobs_file, "".join(line + "\n" for line in lines))

    def write_plan(self, jobs: list[tuple[str, str, dict[str, Any]]]) -> None:
        """The sweep's jobs, in its order: (overrides as one shell line, run name, config)."""
        self.write_jobs([line for line, _, _ in jobs])
        write_text(self.planned_file, "".join(json.dumps({"run": run, "config": config}) + "\n"
                                              for _, run, config in jobs))

    def planned(self) -> dict[str, dict[str, Any]]:
        """Run name -> config of every run the last sweep expects, in the sweep's order."""
        if not self.planned_file.exists():
            return {}
        rows = [json.loads(line) for line in self.planned_file.read_text().splitlines() if line]
        return {r["run"]: r["config"] for r in rows}


def runs_in(experiment_dir: str | Path) -> list[RunDir]:
    """The run directories of an experiment, by name."""
    return ExperimentDir(experiment_dir).runs()
