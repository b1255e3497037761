"""Experiment trackers beside metrics.jsonl (train.loggers): TensorBoard, Weights & Biases, trackio.

Each is an optional extra (`pip install 'ablate[tensorboard]'`, `[wandb]`, `[trackio]`); naming one
that is not installed stops the run before training with the extra to install. Only rank 0 logs.

- Grouping: a sweep's runs share the experiment's name: W&B and trackio group (project
  `train.tracker_project`, group = experiment), TensorBoard one directory per experiment
  (results/<experiment>/tensorboard/<run>), so the tracker's own UI compares the arms. The run's
  axis choices and its config are the tracker run's config; the axes are also W&B tags.
- Resume: the tracker run's id is kept in the run directory (trackers.json), so a requeued or
  resumed run continues the same tracker run instead of starting a second one; TensorBoard drops
  the events past the resumed checkpoint (purge_step), so no step is logged twice; what was logged
  up to a checkpoint is flushed with it.
- Offline: TensorBoard writes files; W&B honours WANDB_MODE (or `train.wandb_mode`): `offline` writes
  results/<experiment>/<run>/wandb/, synced later with `wandb sync`; trackio is local-first.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

from ablate.config import RunConfig
from ablate.run.lifecycle import check_loggers
from ablate.run.rundir import RunDir, flatten, write_text

log = logging.getLogger("ablate.train.trackers")


class Trackers:
    """The trackers of one run (rank 0): log(record) sends a metrics line's numbers to each."""

    def __init__(self, cfg: RunConfig, run: RunDir, axes: dict[str, Any], resume_step: int) -> None:
        self.sinks: list[Any] = []
        names = [n for n in cfg.train.loggers if n != "jsonl"]
        if not names:
            return
        check_loggers(names)
        ids = _ids(run)
        config = {**flatten(cfg.to_dict()), **{f"axes.{k}": v for k, v in axes.items()}}
        tags = [f"{k}={v}" for k, v in axes.items() if v not in (None, False)]
        for name in names:
            self.sinks.append(_OPEN[name](cfg, run, ids, config, tags, resume_step))
        write_text(run.path / "trackers.json", json.dumps(ids, indent=1))

    def log(self, record: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in _flat(record).items() if isinstance(v, (int, float)) and k != "step"}
        self._each("log", numbers, int(record["step"]))

    def flush(self) -> None:
        """Make what was logged durable (at a checkpoint: a run killed after it resumes from there)."""
        self._each("flush")

    def close(self) -> None:
        self._each("close")
        self.sinks = []

    def _each(self, method: str, *args: Any) -> None:
        """Call `method` on every tracker. A tracker that fails (its service killed with the job, a
        full disk) is dropped with a warning: training and metrics.jsonl go on without it, and a
        signal's exit is never replaced by a tracker's error."""
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as err:  # each library raises its own types
                log.warning("%s failed (%s: %s); going on without it", type(sink).__name__.strip("_"),
                            type(err).__name__, err)
                self.sinks.remove(sink)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _ids(run: RunDir) -> dict[str, str]:
    """The tracker run id of this run, made once and kept in trackers.json."""
    path = run.path / "trackers.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"id": uuid.uuid4().hex[:12]}


class _TensorBoard:
    def __init__(self, cfg, run, ids, config, tags, resume_step):
        from torch.utils.tensorboard import SummaryWriter

        # events from the step after the checkpoint on are dropped: the resumed run logs them again
        where = run.path.parent / "tensorboard" / run.path.name  # one directory per experiment
        self.writer = SummaryWriter(str(where), purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log(self, numbers, step):
        for k, v in numbers.items():
            self.writer.add_scalar(k, v, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class _RunTracker:
    """A tracker whose library hands back a run object that logs and finishes (W&B, trackio)."""

    run: Any

    def log(self, numbers, step):
        self.run.log(numbers, step=step)

    def flush(self):
        pass  # both write as they go

    def close(self):
        self.run.finish()


class _WandB(_RunTracker):
    def __init__(self, cfg, run, ids, config, tags, resume_step):
        import wandb

        mode = cfg.train.wandb_mode or os.environ.get("WANDB_MODE") or None
        self.run = wandb.init(project=cfg.train.tracker_project, group=cfg.experiment, name=cfg.run_name,
                              id=ids["id"], resume="allow", config=config, tags=tags[:64], dir=str(run.path),
                              mode=mode, reinit="create_new")


class _Trackio(_RunTracker):
    def __init__(self, cfg, run, ids, config, tags, resume_step):
        import trackio

        self.run = trackio.init(project=cfg.train.tracker_project, name=f"{cfg.run_name}-{ids['id']}",
                                group=cfg.experiment, config=config, resume="allow")


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio}
