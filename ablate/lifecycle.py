"""A run's config through its life, derived and checked in one place, once per phase:

    for_plan(cfg)   a job of a sweep, before anything is submitted: everything training will need
                    (the numbers, the named choices of every registry, the data source, the
                    distillation teacher finished and readable, the trackers' packages installed)
    for_train(cfg)  the same, when a job starts (time has passed since the plan: a teacher may have
                    moved, a package been removed)
    for_load(cfg)   a finished run's stored config, to evaluate, export or report it: the numbers
                    and the named choices only; nothing that only training needed, so a run that
                    logged to W&B loads where wandb is not installed, and a distilled one after its
                    teacher has gone

Each first derives what the config leaves to be derived (a ladder's rung sets the model's shape
and the token budget from ladder.size), then checks. Each returns the config it was given.
"""

from __future__ import annotations

from ablate.config import RunConfig

PHASES = ("plan", "train", "load")


def derive(cfg: RunConfig) -> RunConfig:
    """What follows from other fields: a ladder rung's shape and budget (ablate.ladder.apply)."""
    from ablate.ladder import apply

    return apply(cfg)


def for_load(cfg: RunConfig) -> RunConfig:
    """The checks a stored config passes to be loaded: its numbers (RunConfig.validate), its model
    choices beside their registries, its data source."""
    from ablate.data.sources import check_data
    from ablate.model import check_model

    derive(cfg)
    cfg.validate()
    check_model(cfg.model, "model")
    check_data(cfg.data, "data")
    return cfg


def for_train(cfg: RunConfig) -> RunConfig:
    """for_load, and what training needs beside the config: the distillation teacher (there and
    finished) and the trackers' packages."""
    from ablate.distill import teacher_info
    from ablate.trackers import check_loggers

    for_load(cfg)
    teacher_info(cfg.train.distill, cfg.seq_len)  # a teacher that is not there, or not finished
    check_loggers(cfg.train.loggers)  # a tracker whose package is missing: the extra to install
    return cfg


def for_plan(cfg: RunConfig) -> RunConfig:
    """What a sweep checks of every job before submitting any: all that training will check."""
    return for_train(cfg)


def check(cfg: RunConfig, phase: str) -> RunConfig:
    """The checks of `phase` (plan, train or load)."""
    return {"plan": for_plan, "train": for_train, "load": for_load}[phase](cfg)
