"""The sweeper behind `ablate-train -m`: Hydra's basic grid, plus three things a cluster needs.

1. Every job's config is composed and validated before anything is launched: one impossible
   combination stops the whole sweep, naming the job and the field, with nothing queued.
2. `plan=true` (or `--plan`) prints the jobs, their run directories, their state and an estimated
   cost (tokens x FLOPs/token -> GPU-hours at a stated MFU), writes the jobs' overrides to
   `<sweep dir>/jobs.txt` (one line per job: what a Slurm job array reads), and launches nothing.
3. Runs already completed are not launched again (unless train.eval_at_end asks for evaluations
   they lack: then the job only evaluates); unfinished ones are, and resume. A diverged run stays
   diverged unless train.retry_diverged=true.

It also prints (and writes to fairness.json) what the arms hold equal and every confound
(ablate.plan.fairness), and with `+tune=lr` runs each arm's LR grid first and the jobs at the LR each
arm chose (ablate.plan.tune).
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from ablate.cli import run_config, user_errors
from ablate.config import RunConfig
from ablate.model.facts import model_facts
from ablate.plan import fairness, tune
from ablate.registry import ConfigError
from ablate.run.rundir import ExperimentDir, RunDir, RunError, write_json
from ablate.train.distill import flops_per_token as run_flops_per_token

log = logging.getLogger("ablate.plan.sweep")


@dataclass
class AblateSweeperConf:
    _target_: str = "hydra_plugins.ablate_sweeper.AblateSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="ablate", node=AblateSweeperConf)


class Tuning(NamedTuple):
    """A tuning run: its arm, its stage (`tune` chooses the LR; `check`, on a muP ladder, runs the
    same grid at a larger rung to see whether the LR transfers) and its job."""

    arm: str
    stage: str
    job: Job


@dataclass
class Job:
    overrides: list[str]
    config: RunConfig
    run_dir: Path
    status: str  # new, completed, running, failed, diverged, interrupted; "to evaluate": completed, evals missing

    @property
    def launch(self) -> bool:
        return self.status != "completed" and (self.status != "diverged" or self.config.train.retry_diverged)

    @property
    def trains(self) -> bool:
        return self.launch and self.status != "to evaluate"


class PlanningSweeper(Sweeper):
    """A grid over `hydra.sweeper.params` and the command line's comma lists, as Hydra's basic
    sweeper builds it. (Not a subclass of it: Hydra loads its core plugins a second time while
    scanning, and a subclass of the first copy fails its own super() calls.)"""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        self.max_batch_size, self.params = max_batch_size, dict(params or {})
        self.hydra_context = self.config = self.launcher = None
        self.transfers: list[tune.Transfer] = []  # a muP ladder's check stage, once its runs are done

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        with user_errors():  # a bad job, an unknown task, an LR swept and tuned: one line, exit 2
            return self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        jobs = self._checked_jobs(arguments)
        sweep = ExperimentDir(self.config.hydra.sweep.dir)
        fair = fairness.check([j.overrides for j in jobs], [j.config for j in jobs])
        write_json(sweep.fairness_file, fair.to_dict())
        print("\n".join(fair.lines() or ["fairness: one arm, nothing to compare"]))
        tuning = self._tuning_jobs(jobs) if jobs[0].config.tune.lr_multipliers else []
        chosen = self._choices(tuning) if tuning and not any(t.job.launch for t in tuning) else None
        if tuning:
            print(plan_table([t.job for t in tuning], self.config, "LR tuning (one run per arm and LR)"))
        if chosen:
            jobs = self._at_chosen_lrs(jobs, chosen, sweep)
        print(plan_table(jobs, self.config, "after tuning, at each arm's chosen LR" if tuning and not chosen else ""))
        if self.config.get("plan", False):
            self._plan_only(sweep, jobs, tuning if tuning and not chosen else [])
            return []
        return self._run(sweep, jobs, tuning if tuning and not chosen else [])

    def _run(self, sweep: ExperimentDir, jobs: list[Job], tuning: list[Tuning]) -> list[Any]:
        """Launch: the tuning runs first where they have yet to run (then the jobs at the LRs they
        chose), then every job not completed or diverged."""
        returns, start = [], 0
        if tuning:
            returns += self._launch([t.job.overrides for t in tuning if t.job.launch], start)
            start = len(tuning)
            tuning = [t._replace(job=self._job(t.job.overrides)) for t in tuning]
            jobs = self._at_chosen_lrs(jobs, self._choices(tuning), sweep)
        self._write_plan(sweep, jobs)
        todo = [j.overrides for j in jobs if j.launch]
        skipped = len(jobs) - len(todo)
        if skipped:
            log.info("%d of %d runs completed or diverged: not launched again", skipped, len(jobs))
        OmegaConf.save(self.config, sweep.sweep_config_file)
        return returns + self._launch(todo, start)

    def _checked_jobs(self, arguments: list[str]) -> list[Job]:
        """Every job of the grid, each config checked as training will check it; then the sweep's
        evaluation tasks, and under +tune=lr that no tuning run is a reported replicate. Raises on
        the first problem, before anything is written."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        grid = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        jobs = [self._job(job) for job in grid]  # raises on the first bad combination
        check_eval_tasks(jobs)
        if jobs[0].config.tune.lr_multipliers:  # before anything is written
            tune.check_disjoint([j.config for j in jobs], jobs[0].config.tune)
        return jobs

    def _plan_only(self, sweep: ExperimentDir, jobs: list[Job], tuning: list[Tuning]) -> None:
        """--plan: the jobs written (a job array reads jobs.txt); where tuning has yet to run, only
        the tuning jobs, since the experiment's jobs wait for the chosen LRs."""
        if tuning:
            sweep.write_jobs([_line(t.job) for t in tuning])
            print(f"{sweep.jobs_file} lists the {len(tuning)} tuning jobs; once they have finished, --plan "
                  "again lists the experiment's jobs at the chosen LRs")
        else:
            self._write_plan(sweep, jobs)

    def _launch(self, todo: list[list[str]], start: int) -> list[Any]:
        returns, size = [], self.max_batch_size or len(todo) or 1
        for first in range(0, len(todo), size):
            batch = todo[first:first + size]
            results = self.launcher.launch(batch, initial_job_idx=start + first)
            for r in results:
                _ = r.return_value  # raise if a job failed
            returns.append(results)
        return returns

    def _write_plan(self, sweep: ExperimentDir, jobs: list[Job]) -> None:
        sweep.write_plan([(_line(j), j.run_dir.name, j.config.to_dict()) for j in jobs])

    # ---- +tune=lr ---------------------------------------------------------------------------------
    def _tuning_jobs(self, jobs: list[Job]) -> list[Tuning]:
        """A tuning run for every arm and LR of the grid; the runs go to <experiment>/tune/. On a
        muP ladder an arm spans its rungs: tuned at the smallest, checked at tune.check_size."""
        swept = fairness.swept([j.overrides for j in jobs])
        if "optim.lr" in swept:
            raise ConfigError("optim.lr", ",".join(swept["optim.lr"]), "is swept and tuned at once: +tune=lr picks "
                              "each arm's LR itself; sweep optim.lr without +tune=lr, or drop it from the sweep")
        stages = self._stages(jobs)
        names = fairness.arm_names([j.config for j in jobs], across_rungs=len(stages) > 1)
        out = []
        for stage, size in stages.items():
            at_rung = [(n, j) for n, j in zip(names, jobs) if size is None or j.config.ladder.size == size]
            firsts = {name: job for name, job in reversed(at_rung)}
            for name in dict.fromkeys(n for n, _ in at_rung):
                job = firsts[name]
                for lr in tune.lr_grid(job.config.optim.lr, job.config.tune):
                    overrides = tune.tuning_overrides(job.overrides, job.config.tune, lr)
                    run_name = self._job(overrides).config.run_name
                    out.append(Tuning(name, stage, self._job([*overrides, f"run_name='tune/{run_name}'"])))
        return out

    @staticmethod
    def _stages(jobs: list[Job]) -> dict[str, int | None]:
        """{stage: the rung it runs at}: `tune` at every job's own shape, or, on a ladder whose
        every job is muP, `tune` at the smallest rung and `check` at tune.check_size (the largest)."""
        sizes = sorted({j.config.ladder.size for j in jobs if j.config.ladder.size is not None})
        if len(sizes) < 2 or any(j.config.model.parametrization != "mup" for j in jobs):
            return {"tune": None}
        check = jobs[0].config.tune.check_size or sizes[-1]
        if check not in sizes[1:]:
            raise ConfigError("tune.check_size", check, "must be a rung of the ladder above the smallest, where the "
                              "LR tuned at the smallest is checked", valid=sizes[1:])
        return {"tune": sizes[0], "check": check}

    def _choices(self, tuning: list[Tuning]) -> dict[str, tune.Choice]:
        """Each arm's LR from its finished tuning runs (stage `tune`); RunError if one did not
        finish. The check stage's choices are `self.checked`."""
        unfinished = [str(t.job.run_dir) for t in tuning if t.job.status not in ("completed", "diverged")]
        if unfinished:
            raise RunError(f"tuning runs did not finish, so no LR can be chosen: {', '.join(unfinished)}; "
                           "run the sweep again to resume them")
        results: dict[tuple[str, str], list] = {}
        for t in tuning:
            summary = RunDir(t.job.run_dir).summary() or {}
            results.setdefault((t.stage, t.arm), []).append((t.job.config.optim.lr, t.job.status,
                                                             float(summary.get("val_loss", math.nan)),
                                                             t.job.run_dir.name))
        chosen = {arm: tune.choose(arm, found) for (stage, arm), found in results.items() if stage == "tune"}
        checked = {arm: tune.choose(arm, found) for (stage, arm), found in results.items() if stage == "check"}
        sizes = {t.stage: t.job.config.ladder.size for t in tuning}
        self.transfers = [tune.transfer(chosen[arm], c, sizes["tune"], sizes["check"]) for arm, c in checked.items()]
        return chosen

    def _at_chosen_lrs(self, jobs: list[Job], chosen: dict[str, tune.Choice], sweep: ExperimentDir) -> list[Job]:
        """The experiment's jobs at each arm's chosen LR; tune.json written, each choice printed."""
        transfers = self.transfers
        names = fairness.arm_names([j.config for j in jobs], across_rungs=bool(transfers))
        base = jobs[0].config
        write_json(sweep.tune_file, {"base_lr": base.optim.lr, "multipliers": base.tune.lr_multipliers,
                                     "tokens": base.tune.tokens or base.train.tokens, "seed": base.tune.seed,
                                     "data_seed": base.tune.data_seed, "holdout": "tuning",
                                     "arms": [c.to_dict() for c in chosen.values()],
                                     "transfer": [t.to_dict() for t in transfers]})
        print("chosen learning rates (lowest final validation loss):")
        print("\n".join(f"  {tune.describe(c)}" for c in chosen.values()))
        if transfers:
            print(f"muP ladder: tuned at size={transfers[0].tuned_at}, used at every rung; checked at "
                  f"size={transfers[0].checked_at}:")
            print("\n".join(f"  {tune.describe_transfer(t)}" for t in transfers))
        return [self._job([*j.overrides, f"optim.lr={chosen[name].lr:.6g}"]) for name, j in zip(names, jobs)]

    def _job(self, overrides: Sequence[str]) -> Job:
        """Compose and validate one job of the grid."""
        loader = self.hydra_context.config_loader
        cfg = loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        try:
            run = run_config(cfg, "plan")
        except ConfigError as err:
            raise ConfigError(err.field, err.value, f"{str(err).split(': ', 1)[1]} -- in the sweep job "
                              f"[{' '.join(overrides)}]; nothing was launched") from None
        run_dir = RunDir(Path(run.results_dir) / run.experiment / run.run_name)
        status = run_dir.status()
        if status == "completed" and run.train.eval_at_end and any(
                run_dir.current_eval(suite) is None for suite in run.eval.suites):
            status = "to evaluate"
        return Job(list(overrides), run, run_dir.path, status)


def _line(job: Job) -> str:
    """A job's overrides as one shell line (what jobs.txt holds)."""
    return " ".join(shlex.quote(o) for o in job.overrides if not o.startswith("plan="))


def check_eval_tasks(jobs: list[Job]) -> None:
    """The tasks of jobs that evaluate at the end must exist before anything is launched."""
    tasks = sorted({t for j in jobs if j.config.train.eval_at_end and j.launch
                    for suite in j.config.eval.suites.values() for t in suite.tasks})
    if tasks:
        from ablate.evaluate import check_tasks

        try:
            check_tasks(tasks)
        except ConfigError as err:
            raise ConfigError(err.field, err.value, f"{str(err).split(': ', 1)[1]} -- nothing was launched") from None


def planned_model(cfg: RunConfig) -> Any:
    """The model a job will train, as far as it is known before its tokenizer exists: a BPE trained
    here gives the vocabulary data.vocab_size (padded as training pads it), which model.vocab_size
    does not know yet; a named tokenizer's size is known only once it is loaded."""
    import dataclasses

    from ablate.train import padded_vocab

    if cfg.data.tokenizer != "bpe":
        return cfg.model
    return dataclasses.replace(cfg.model, vocab_size=padded_vocab(cfg.data.vocab_size))


def plan_table(jobs: list[Job], config: Any, title: str = "") -> str:
    """Jobs, run dirs, state and cost; the GPU-hours assume the stated GPU FLOP/s and MFU."""
    cost = config.get("cost", {})
    flops, mfu = float(cost.get("gpu_tflops", 989.0)) * 1e12, float(cost.get("mfu", 0.4))
    lines, total = [], 0.0
    for i, job in enumerate(jobs):
        f = model_facts(planned_model(job.config), job.config.seq_len)
        per_token = run_flops_per_token(job.config, planned_model(job.config))  # a teacher's forward included
        hours = job.config.train.tokens * per_token / (flops * mfu) / 3600
        total += hours if job.trains else 0.0
        status = job.status if job.launch or job.status == "completed" else f"{job.status} (kept)"
        lines.append(f"{i:>3}  {status:<11} {f.params / 1e6:8.2f}M  {f.active_params / 1e6:8.2f}M  {per_token:10.3g}  "
                     f"{f.kv_bytes_per_token:>8,}  {job.config.train.tokens:>12,}  {hours:9.3g}  {job.run_dir}")
    title = f"{title}: " if title else ""
    header = (f"{title}{len(jobs)} jobs; cost at {flops / 1e12:g} TFLOP/s per GPU and {mfu:.0%} MFU "
              f"(cost.gpu_tflops, cost.mfu)\n  #  status      params     active    FLOPs/tok  KV B/tok        tokens  "
              "GPU-hours  run dir")
    todo = sum(j.launch for j in jobs)
    kept = sum(j.status == "diverged" and not j.launch for j in jobs)
    note = f"; {kept} diverged runs kept as they are (train.retry_diverged=true retries them)" if kept else ""
    return "\n".join([header, *lines, f"to run: {todo} jobs, {total:.3g} GPU-hours{note}",
                      *rung_table(jobs, flops * mfu)])


def rung_table(jobs: list[Job], flops: float) -> list[str]:
    """A ladder's rungs, one line each: shape, parameters, tokens, training FLOPs and GPU-hours
    per run, and how many runs (nothing when the jobs are no ladder)."""
    rungs: dict[tuple, list[Job]] = {}
    for job in jobs:
        lad = job.config.ladder
        if lad.size is not None:
            rungs.setdefault((lad.size, lad.tokens_per_param), []).append(job)
    if len(rungs) < 2:
        return []
    lines = ["ladder rungs (per run):", "   size  layers  heads  non-emb. params        tokens  tokens/param"
             "  train FLOPs  GPU-hours  runs"]
    for (size, _), group in sorted(rungs.items(), key=lambda kv: kv[0][0]):
        cfg = group[0].config
        f = model_facts(planned_model(cfg), cfg.seq_len)
        total = cfg.train.tokens * f.flops_per_token
        lines.append(f"{size:>7}  {cfg.model.n_layers:>6}  {cfg.model.attention.n_heads:>5}  "
                     f"{f.non_embedding_params / 1e6:14.2f}M  {cfg.train.tokens:>12,}  "
                     f"{cfg.train.tokens / f.non_embedding_params:12.1f}  {total:11.3g}  {total / flops / 3600:9.3g}  "
                     f"{len(group):>4}")
    return lines
