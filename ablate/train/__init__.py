"""`ablate-train`: the Hydra app. `train(RunConfig)` is the same run without Hydra.

    ablate-train                                   the small default on the built-in corpus (CPU)
    ablate-train model=gemma2 model/position=alibi train.tokens=5e6
    ablate-train --cfg job                         the composed config, nothing run

A run lives in results/<experiment>/<run_name>/: config.yaml, metrics.jsonl, summary.json,
checkpoints/. Started again there, it resumes from its latest checkpoint; once completed, it is skipped.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablate import naming
from ablate.cli import hydra_app, remove_if_empty
from ablate.config import OPERATIONAL, RunConfig
from ablate.data.batches import Batches
from ablate.data.tokens import TokenData, prepare
from ablate.files import WriteError
from ablate.model import Transformer, model_facts
from ablate.registry import ConfigError
from ablate.run import checkpoint
from ablate.run.rundir import UNREADABLE, RunDir, RunDirError, flatten
from ablate.stats import GRAD_SPIKE, LOSS_SPIKE, SPIKE_MIN_HISTORY, SPIKE_WINDOW
from ablate.train import distill
from ablate.train.devices import (
    compile_blocks,
    is_compiled,
    mfu,
    peak_tflops,
    pick_device,
    set_threads,
    uncompile_blocks,
)
from ablate.train.distill import Teacher, check_same_tokenizer, distillation_loss, load_teacher, objective
from ablate.train.distributed import Dist, full, local, setup_distributed
from ablate.train.experts import after_step
from ablate.train.measure import cross_entropy, max_attention_logit, validation_bytes_per_token, validation_loss
from ablate.train.optimizer import build_optimizer, lr_at, step_unless_not_finite
from ablate.train.trackers import Trackers

log = logging.getLogger("ablate.train")
VOCAB_MULTIPLE = 64  # the model's vocabulary is the tokenizer's, padded up to a multiple of this
REQUEUE_WAIT_S = 300.0  # how long a requeued Slurm job waits for its earlier process to let go of the run


@dataclass
class State:
    """What a checkpoint restores besides weights and optimiser."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    last_loss: float = math.nan
    val_loss: float = math.nan
    rates: list[float] = field(default_factory=list)
    loss_spikes: int = 0
    grad_spikes: int = 0
    recent_losses: list[float] = field(default_factory=list)  # the last SPIKE_WINDOW steps
    recent_grads: list[float] = field(default_factory=list)
    live_eval_s: float = 0.0  # seconds spent evaluating the live model (train.eval_every_tokens)

    def note_step(self, loss: float, grad_norm: float) -> None:
        """Count loss and gradient-norm spikes against the running medians (ablate.stats: LOSS_SPIKE)."""
        for value, recent, factor, counter in ((loss, self.recent_losses, LOSS_SPIKE, "loss_spikes"),
                                               (grad_norm, self.recent_grads, GRAD_SPIKE, "grad_spikes")):
            if len(recent) >= SPIKE_MIN_HISTORY and value > factor * statistics.median(recent):
                setattr(self, counter, getattr(self, counter) + 1)
            recent.append(value)
            del recent[:-SPIKE_WINDOW]


# ---- the run, as a table of contents ------------------------------------------------------------
def train(cfg: RunConfig) -> dict[str, Any]:
    """Train (or resume) one run and return its summary. A completed run is not trained again (with
    train.eval_at_end, its missing evaluations are run); a diverged one stays diverged unless
    train.retry_diverged is set."""
    dist = setup_distributed()
    set_threads(cfg, dist)
    run = RunDir(Path(cfg.results_dir) / cfg.experiment / cfg.run_name)
    with holding(run, dist):
        return train_held(cfg, dist, run)


@contextmanager
def holding(run: RunDir, dist: Dist) -> Iterator[None]:
    """The run directory's lock for the whole run, taken by the main process (RunDir.lock); every
    process stops when it cannot be had. A job that Slurm requeued waits up to REQUEUE_WAIT_S for
    its earlier self, which may still be writing its checkpoint, to exit. A run that stops before
    its first write (its config) leaves no directory behind."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    with ExitStack() as stack:
        error = None
        if dist.is_main:
            fresh = not run.path.exists() or not any(run.path.iterdir())  # Hydra may have made it, empty
            try:
                stack.enter_context(run.lock(REQUEUE_WAIT_S if requeued else 0.0, create=True))
            except RunDirError as err:
                error = err
            else:
                stack.callback(_remove_if_unused, run, fresh)  # on the way out, before the lock is let go
                stack.enter_context(log_file(run.path / "train.log"))
        if dist.any(error is not None):
            raise error or RunDirError(f"{run.path} is in use by another process (the main process says which)")
        yield


def _remove_if_unused(run: RunDir, fresh: bool) -> None:
    """After a run that made its directory but stopped before writing its config: remove what it
    made (its lock file and log), and the directory when nothing else is there."""
    if fresh and not run.is_run():
        for name in ("train.log", ".lock"):
            (run.path / name).unlink(missing_ok=True)
        remove_if_empty(run.path)


@contextmanager
def log_file(path: Path) -> Iterator[None]:
    """ablate's log lines also go to `path` (appended: one file across resumes) while the run is held."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def train_held(cfg: RunConfig, dist: Dist, run: RunDir) -> dict[str, Any]:
    """train(), with the run directory held by this run."""
    data = prepare(cfg.data)
    cfg.model.vocab_size = padded_vocab(data.vocab_size)
    check_run_dir(run, cfg)
    previous = run.summary()
    status = previous["status"] if previous else "new"
    if run.status() == UNREADABLE:
        log.warning("%s cannot be read; the run goes on from its checkpoints (how earlier attempts ended is lost)",
                    run.summary_file)
    if status == "completed":
        log.info("%s already completed; skipping (delete the directory to train it again)", run.path)
        maybe_evaluate_at_end(run, cfg, dist)
        return previous
    if status == "diverged" and not cfg.train.retry_diverged:
        log.warning("%s diverged at step %s; it stays diverged (train.retry_diverged=true trains it again from its "
                    "last good checkpoint)", run.path, previous.get("diverged_at_step"))
        return previous
    if cfg.train.eval_at_end:  # an unknown task fails now, not after training (the index is reused then)
        from ablate.evaluate import prepare_tasks

        prepare_tasks(cfg.eval, cfg.data.cache_dir)
    attempts = earlier_attempts(previous)
    if status == "diverged" and dist.is_main:
        run.archive_metrics(len(attempts))  # the retry truncates the lines that recorded the divergence
    device, autocast = pick_device(cfg)
    teacher = load_teacher(cfg.train.distill, cfg.seq_len, device)
    if teacher is not None:
        check_same_tokenizer(teacher, data.tokenizer.inner.get_vocab(), data.tokenizer.name)
        check_same_teacher(run, previous, teacher)
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model).to(device)
    compile_blocks(model, cfg.train.compile, device)
    net = dist.wrap(model, cfg.train.parallel, bf16=isinstance(autocast, torch.autocast))
    if dist.sharded and cfg.train.eval_every_tokens:
        raise ConfigError("train.eval_every_tokens", cfg.train.eval_every_tokens,
                          "evaluating during training needs the whole model in one process: not with "
                          "train.parallel=fsdp on several processes (use ddp, or evaluate checkpoints)")
    opt = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    state = maybe_resume(run, model, opt, dist)
    if dist.is_main:
        run.write_config(cfg.to_dict())
        data.tokenizer.inner.save(str(run.tokenizer_file))
    summary = Runner(cfg, run, dist, data, model, net, opt, state, device, autocast, attempts, teacher).run()
    if summary["status"] == "completed":
        maybe_evaluate_at_end(run, cfg, dist)
    return summary


def maybe_evaluate_at_end(run: RunDir, cfg: RunConfig, dist: Dist) -> None:
    """With train.eval_at_end, evaluate the final model on each suite that has no current results
    (after the run has handed its signal handlers back)."""
    if cfg.train.eval_at_end and dist.is_main:
        from ablate.evaluate import evaluate_run

        evaluate_run(run.path, cfg.eval, only_missing=True)


def earlier_attempts(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """How each earlier attempt at this run ended, oldest first: the summary keeps them all."""
    if previous is None:
        return []
    last = {"status": "killed" if previous.get("status") == "running" else previous.get("status"),
            "step": previous.get("step")}
    last.update({k: previous[k] for k in ("diverged_at_step", "signal", "error") if k in previous})
    return [*previous.get("attempts", []), last]


class Runner:
    """The training loop and what it writes.

    A step leaves its loss and gradient norm on the device; they are read (one host-device sync
    for all the steps since the last read) every `read_every` steps and wherever the loop needs
    them: at a log line, an evaluation, a checkpoint, the last step. On a GPU that is every
    train.log_every steps, so the device never waits for the host in between; on a CPU, where
    reading costs nothing, every step. A NaN or inf is caught at the read: the run stops there and
    reports the first bad step, and no update was applied from it (the fused optimizer skips the
    update on the device; elsewhere the step is skipped by reading the flag)."""

    def __init__(self, cfg: RunConfig, run: RunDir, dist: Dist, data: TokenData, model: Transformer,
                 net: nn.Module, opt: torch.optim.Optimizer, state: State, device: torch.device, autocast,
                 attempts: list[dict[str, Any]] = (), teacher: Teacher | None = None) -> None:
        self.cfg, self.rundir, self.dist, self.data, self.state = cfg, run, dist, data, state
        self.attempts = list(attempts)
        self.model, self.net, self.opt, self.device, self.autocast = model, net, opt, device, autocast
        self.router: dict[str, float] = {}  # mixture of experts: the last step's load entropy and balancing loss
        self.batches = Batches(data.train, cfg.seq_len, cfg.data.seed)
        self.batch_seqs = cfg.train.batch_tokens // cfg.seq_len
        self.total_steps = cfg.train.tokens // cfg.train.batch_tokens
        self.facts = model_facts(cfg.model, cfg.seq_len)
        self.teacher = teacher
        # what a token costs: the student's training and, when distilling, the teacher's forward
        self.flops_per_token = self.facts.flops_per_token + (teacher.info.forward_flops_per_token if teacher else 0)
        self.peak = peak_tflops(device, cfg.train.peak_tflops)
        self.read_every = 1 if device.type == "cpu" else cfg.train.log_every
        self.val_bytes_per_token = validation_bytes_per_token(data, cfg.seq_len)
        self.pending: list[dict[str, Any]] = []  # steps whose loss and gradient norm are still on the device
        self.trackers = Trackers(cfg, run, naming.axes(flatten(cfg.to_dict())), state.step) if dist.is_main else None
        self.signalled: int | None = None
        self.compile_checked = False

    def run(self) -> dict[str, Any]:
        self.write_summary("running")
        previous = self.catch_signals()
        progress = Progress(self.cfg.train.progress, self.total_steps, self.state.step, self.dist.is_main)
        try:
            clock = time.perf_counter()
            while self.state.step < self.total_steps:
                self.pending.append(self.train_step() if self.compile_checked else self.first_step())
                if not self.due(self.state.step):
                    continue
                records = self.read(since=clock)
                for record in records:
                    if not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])):
                        return self.diverged(record)
                    if record is records[-1]:
                        self.maybe_evaluate(record)
                    self.log(record, progress)
                self.maybe_evaluate_live()
                if self.dist.any(self.signalled is not None):
                    return self.interrupted(previous)
                if not self.maybe_checkpoint():
                    return self.diverged({**records[-1], "loss": math.nan})
                clock = time.perf_counter()
            return self.finish()
        except BaseException as err:
            if not isinstance(err, SystemExit):
                try:
                    self.write_summary("failed", error=str(err) if isinstance(err, WriteError)
                                       else f"{type(err).__name__}: {err}")
                except OSError as again:  # the disk is still full: the error itself is what matters
                    log.error("could not record the failure in %s: %s", self.rundir.summary_file, again)
            raise
        finally:
            progress.close()
            self.restore_signals(previous)
            if self.trackers is not None:
                self.trackers.close()

    def due(self, step: int) -> bool:
        """Whether the loop reads the device after `step` (see the class doc)."""
        t = self.cfg.train
        return (step % self.read_every == 0 or step == 1 or step == self.total_steps
                or step % t.log_every == 0 or step % t.checkpoint_every == 0
                or bool(t.eval_every and step % t.eval_every == 0) or self.live_due(step))

    def live_due(self, step: int) -> bool:
        """Whether `step` crosses a multiple of train.eval_every_tokens."""
        every, batch = self.cfg.train.eval_every_tokens, self.cfg.train.batch_tokens
        return bool(every) and step * batch // every > (step - 1) * batch // every

    def maybe_evaluate_live(self) -> None:
        """train.eval_every_tokens: the eval suite's tasks on the live model (rank 0; no checkpoint),
        a metrics line {"step", "tokens", "live": {task: metric}, "live_s"} and the trackers."""
        if not self.live_due(self.state.step):
            return
        if self.dist.is_main:
            from ablate.evaluate import evaluate_live

            start = time.perf_counter()
            found = evaluate_live(self.model, self.data.tokenizer, self.cfg, self.cfg.train.eval_suite)
            seconds = time.perf_counter() - start
            self.state.live_eval_s += seconds
            line = {"step": self.state.step, "tokens": self.state.tokens, "live": found, "live_s": round(seconds, 3)}
            self.rundir.append_metrics(line)
            self.trackers.log(line)
            log.info("step %d: %s (%.1f s)", self.state.step,
                     ", ".join(f"{k} {v:.3f}" for k, v in found.items()), seconds)
        self.dist.barrier()

    def first_step(self) -> dict[str, Any]:
        """The first step of this process, where a compiled model compiles: if that fails, say so
        once and train uncompiled (train.compile=false skips the attempt)."""
        self.compile_checked = True
        try:
            return self.train_step()
        except Exception as err:  # the compiler's own error types vary with the backend
            if not is_compiled(self.model):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("torch.compile failed (%s: %s); training uncompiled (train.compile=false skips compiling)",
                        type(err).__name__, first)
            uncompile_blocks(self.model)
            self.opt.zero_grad(set_to_none=True)
            return self.train_step()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; its loss and gradient norm stay on the device (see the class doc)."""
        cfg, step = self.cfg, self.state.step
        lr = lr_at(step, self.total_steps, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        micro = list(self.batches.micro_batches(step, self.batch_seqs, cfg.train.micro_batch,
                                                self.dist.rank, self.dist.world))
        d = cfg.train.distill
        loss_sum = torch.zeros((), device=self.device)
        kd_sum = torch.zeros((), device=self.device) if self.teacher is not None else None
        for i, (x, y) in enumerate(micro):
            sync = self.dist.sync_grads(self.net, last=i == len(micro) - 1)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with sync, self.autocast:
                logits = self.net(x)
                loss = cross_entropy(logits, y)
                kd = None
                if self.teacher is not None:  # over the tokenizer's vocabulary: padding rows left out
                    vocab = self.data.vocab_size
                    kd = distillation_loss(logits[..., :vocab], self.teacher(x)[..., :vocab], d.temperature, d.top_k)
                    kd_sum += kd.detach()
                aux = self.model.auxiliary_loss()  # mixture of experts: the weighted balancing loss
            total = objective(loss, kd, d.weight) + (aux if aux is not None else 0.0)
            (total / len(micro)).backward()
            loss_sum += loss.detach()
            if aux is not None:  # per layer, unweighted: 1 when balanced
                self.router["aux_loss"] = float(aux.detach()) / cfg.model.mlp.moe.aux_loss_weight / cfg.model.n_layers
        loss = loss_sum / len(micro)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = full(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        step_unless_not_finite(self.opt, finite if kd_sum is None else finite & torch.isfinite(kd_sum))
        self.opt.zero_grad(set_to_none=True)
        if self.model.experts():  # load entropy for the log; balance=bias moves its biases
            self.router["load_entropy"] = after_step(self.model.experts(), self.dist, self.device,
                                                     cfg.model.mlp.moe.bias_rate)
        s = self.state
        s.step, s.tokens = step + 1, s.tokens + cfg.train.batch_tokens
        record = {"step": s.step, "tokens": s.tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  **{f"router_{k}": v for k, v in self.router.items()}}
        return record if kd_sum is None else {**record, "distill_loss": kd_sum / len(micro)}

    def read(self, since: float) -> list[dict[str, Any]]:
        """The pending steps' records with their numbers read from the device (the loss averaged over
        processes), the rate measured over them, and the state's counters brought up to date."""
        records, self.pending = self.pending, []
        distilled = self.teacher is not None
        losses = self.dist.mean(torch.stack([r["loss"] for r in records]
                                            + ([r["distill_loss"] for r in records] if distilled else [])).float())
        values = torch.cat([losses, torch.stack([r["grad_norm"] for r in records]).float()]).tolist()
        grads = values[len(values) - len(records):]
        seconds = time.perf_counter() - since  # the steps read, up to the end of the device's work
        s, n = self.state, len(records)
        rate = n * self.cfg.train.batch_tokens / seconds
        used = mfu(self.flops_per_token, rate, self.peak, self.dist.world)
        for i, record in enumerate(records):
            loss, grad_norm = values[i], grads[i]
            if distilled:
                record["distill_loss"] = values[n + i]
            s.elapsed_s += seconds / n
            s.last_loss = loss
            s.rates.append(rate)
            s.note_step(loss, grad_norm)
            record.update(loss=loss, grad_norm=grad_norm, tokens_per_s=round(rate, 1), elapsed_s=round(s.elapsed_s, 3))
            if used is not None:
                record["mfu"] = float(f"{used:.4g}")  # 4 significant digits, however small
        return records

    def maybe_evaluate(self, record: dict[str, Any]) -> None:
        every = self.cfg.train.eval_every
        if self.state.step == self.total_steps or (every and self.state.step % every == 0):
            self.state.val_loss = validation_loss(self.model, self.data, self.cfg, self.device, self.autocast)
            record["val_loss"] = self.state.val_loss

    def log(self, record: dict[str, Any], progress: Progress) -> None:
        if not self.dist.is_main:
            return
        every = self.cfg.train.log_every
        if record["step"] % every == 0 or "val_loss" in record or record["step"] == self.total_steps:
            self.rundir.append_metrics(record)
            self.trackers.log(record)
        progress.update(record)

    def maybe_checkpoint(self) -> bool:
        """Checkpoint on schedule; False (nothing written) if the weights are no longer finite."""
        step = self.state.step
        if step % self.cfg.train.checkpoint_every == 0 and step < self.total_steps:
            finite = all(bool(torch.isfinite(local(p)).all()) for p in self.model.parameters())
            if self.dist.any(not finite):
                return False
            self.save()
        return True

    def save(self) -> None:
        if self.trackers is not None:
            self.trackers.flush()
        extra = {"state": self.state.__dict__, "rng": checkpoint.rng_state(), "config": self.cfg.to_dict()}
        keep = self.cfg.train.keep_checkpoints
        if self.cfg.train.parallel == "fsdp":
            checkpoint.save_sharded(self.rundir.checkpoint_dir, self.state.step, self.model, self.opt, extra,
                                    keep=keep, is_main=self.dist.is_main)
        elif self.dist.is_main:
            checkpoint.save(self.rundir.checkpoint_dir, self.state.step, {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), **extra}, keep=keep)
        self.dist.barrier()

    def finish(self) -> dict[str, Any]:
        self.save()
        logit = max_attention_logit(self.model, self.data, self.cfg, self.device, self.autocast)
        return self.write_summary("completed", max_attn_logit=logit)

    def diverged(self, record: dict[str, Any]) -> dict[str, Any]:
        """A NaN / inf loss: stop, keep the last good checkpoint, say where."""
        log.error("loss is %s at step %d: run diverged; the last good checkpoint is kept", record["loss"],
                  record["step"])
        if self.dist.is_main:
            self.rundir.append_metrics({**record, "loss": str(record["loss"]), "grad_norm": str(record["grad_norm"])})
        return self.write_summary("diverged", diverged_at_step=record["step"])

    def interrupted(self, previous: dict[int, Any]) -> dict[str, Any]:
        """SIGTERM / SIGUSR2 (Slurm before a time limit, preemption, scontrol requeue): checkpoint,
        then leave without a result. SIGUSR2 goes on to the launcher's own handler where there is one
        (submitit's requeues the job); otherwise the process exits with 128 + the signal, so that a
        requeued job runs again and resumes, and nobody mistakes the run for finished."""
        signum = self.signalled or signal.SIGUSR2  # a rank that got none follows the one that did
        log.warning("signal %d at step %d: checkpointing before exit", signum, self.state.step)
        self.save()
        self.write_summary("interrupted", signal=signum)
        handler = previous.get(signum)
        if signum == signal.SIGUSR2 and callable(handler):
            handler(signum, None)
        raise SystemExit(128 + signum)

    def catch_signals(self) -> dict[int, Any]:
        previous = {}

        def note(signum, frame):
            self.signalled = signum

        for sig in (signal.SIGTERM, signal.SIGUSR2):
            try:
                previous[sig] = signal.signal(sig, note)
            except ValueError:  # not the main thread: the launcher owns signals
                pass
        return previous

    def restore_signals(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        s, cfg = self.state, self.cfg
        rates = s.rates[1:] or s.rates  # the first step pays for warm-up
        rate = sum(rates) / len(rates) if rates else math.nan
        summary = {
            "status": status, "experiment": cfg.experiment, "run": cfg.run_name, "seed": cfg.seed,
            "step": s.step, "steps_total": self.total_steps, "tokens_seen": s.tokens,
            **{k: v for k, v in self.facts.to_dict().items() if k != "dtype"},
            "train_loss": s.last_loss, "val_loss": s.val_loss,
            "val_ppl": math.exp(s.val_loss) if math.isfinite(s.val_loss) else math.nan,
            "val_bpb": s.val_loss / math.log(2) / self.val_bytes_per_token,
            "tokens_per_s": rate, "wall_time_s": s.elapsed_s, "peak_tflops": self.peak,
            "mfu": mfu(self.flops_per_token, rate, self.peak, self.dist.world) if rates else None,
            "axes": naming.axes(flatten(cfg.to_dict())), "device": str(self.device), "world_size": self.dist.world,
            "precision": "bf16" if isinstance(self.autocast, torch.autocast) else "fp32",
            "loss_spikes": s.loss_spikes, "grad_spikes": s.grad_spikes, **extra,
        }
        if cfg.train.eval_every_tokens:  # what evaluating during training cost, beside the training itself
            summary["live_eval_s"] = s.live_eval_s
            summary["live_eval_share"] = s.live_eval_s / (s.live_eval_s + s.elapsed_s) if s.elapsed_s else 0.0
        if self.teacher is not None:  # its forward is part of what a token costs (mfu counts it too)
            summary["teacher"] = distill.identity(self.teacher)
            summary["teacher_flops_per_token"] = self.teacher.info.forward_flops_per_token
        if self.attempts:
            summary["attempts"] = self.attempts
        if self.router:  # mixture of experts: the last step's routing (no capacity: nothing dropped)
            summary["router"] = {**self.router, "dropped_tokens": 0}
        if self.dist.is_main:
            self.rundir.write_summary(summary)
        return summary


# ---- the pieces ---------------------------------------------------------------------------------
def padded_vocab(n: int) -> int:
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def check_same_teacher(run: RunDir, previous: dict[str, Any] | None, teacher: Teacher) -> None:
    """Refuse to go on distilling a run from a teacher that has changed since it started (a teacher
    retrained in place: another config hash)."""
    before = (previous or {}).get("teacher")
    now = distill.identity(teacher)
    if before and {k: before.get(k) for k in now} != now:
        raise RunDirError(f"{run.path} was distilled from {before} but the teacher is now {now}; it was left "
                          "untouched. Start a fresh run (another run_name or experiment) to distil from this teacher.")


def check_run_dir(run: RunDir, cfg: RunConfig) -> None:
    """Refuse to resume a run whose stored config computes something else."""
    if not run.is_run():
        return
    stored, current = flatten(run.read_config()), flatten(cfg.to_dict())
    defaults = flatten(RunConfig().to_dict())  # a field added since the run began computes its default
    differ = sorted(k for k in stored.keys() | current.keys()
                    if stored.get(k, defaults.get(k)) != current.get(k) and not k.startswith(OPERATIONAL))
    if differ:
        changes = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise RunDirError(f"{run.path} holds a run with another config ({changes}); it was left untouched. "
                          "To start a fresh run, pick another name (run_name=... or experiment=...) or delete "
                          "that directory.")


def maybe_resume(run: RunDir, model: Transformer, opt: torch.optim.Optimizer, dist: Dist) -> State:
    """The state of the newest readable checkpoint (see checkpoint.latest), or a fresh one."""
    saved = checkpoint.latest(run.checkpoint_dir)
    if saved is None:
        if dist.is_main:
            run.clear_metrics()  # lines of a run that never checkpointed
        return State()
    checkpoint.restore(saved, model, opt)
    checkpoint.set_rng_state(saved["rng"])
    state = State(**saved["state"])
    if dist.is_main:
        run.truncate_metrics(state.step)
    log.info("resuming %s from step %d", run.path, state.step)
    return state


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, mode: str, total: int, start: int, active: bool) -> None:
        self.bar = None
        self.active = active
        if active and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        elif "val_loss" in record or record["step"] % 10 == 0:
            val = f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""
            log.info("step %d tokens %d loss %.4f lr %.2e %.0f tok/s%s", record["step"], record["tokens"],
                     record["loss"], record["lr"], record["tokens_per_s"], val)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _main() -> None:
    hydra_app(train)


if __name__ == "__main__":
    _main()
