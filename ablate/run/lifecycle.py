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

Each first derives what the config leaves to be derived (`derive`: a ladder's rung sets the
model's shape and the token budget from ladder.size, `apply_rung`), then checks. Each returns the
config it was given.
"""

from __future__ import annotations

import math
from typing import Any

from ablate.config import RunConfig
from ablate.registry import ConfigError

PHASES = ("plan", "train", "load")
LOGGERS = ("jsonl", "tensorboard", "wandb", "trackio")
EVAL_DEVICES = ("auto", "cpu", "cuda")
# the fields a ladder's rung sets: they differ between rungs by design, never between the arms of one
RUNG_FIELDS = ("ladder.size", "model.dim", "model.attention.n_heads", "model.n_layers", "train.tokens")


def derive(cfg: RunConfig) -> RunConfig:
    """What follows from other fields: a ladder rung's shape and budget (apply_rung)."""
    return apply_rung(cfg)


def apply_rung(cfg: RunConfig) -> RunConfig:
    """Set the rung's shape and budget from `ladder.size` (no-op without one). Returns cfg."""
    lad = cfg.ladder
    if lad.size is None:
        return cfg
    if lad.size % lad.head_dim and lad.size > lad.head_dim:
        raise ConfigError("ladder.size", lad.size, f"must be a multiple of ladder.head_dim={lad.head_dim}")
    cfg.model.dim = lad.size
    cfg.model.attention.n_heads = max(1, lad.size // lad.head_dim)
    cfg.model.attention.head_dim = None
    cfg.model.n_layers = max(lad.min_layers, round(lad.size / lad.aspect))
    if lad.tokens_per_param is not None:
        from ablate.model.facts import model_facts

        params = model_facts(cfg.model, cfg.seq_len).non_embedding_params
        batches = math.ceil(lad.tokens_per_param * params / cfg.train.batch_tokens)
        cfg.train.tokens = max(1, batches) * cfg.train.batch_tokens
    return cfg


def rung_label(cfg: dict[str, Any]) -> str:
    """A rung as a table names it: `size=256` (and its tokens per parameter)."""
    ratio = cfg.get("ladder.tokens_per_param")
    return f"size={cfg.get('ladder.size')}" + (f", {ratio:g} tok/param" if ratio is not None else "")


def check_loggers(loggers: list[str]) -> None:
    """ConfigError for an unknown logger, or for one whose package is not installed (naming the extra)."""
    import importlib.util

    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError("train.loggers", name, "unknown logger", valid=LOGGERS)
        # each tracker's package and its extra are named alike
        if name != "jsonl" and importlib.util.find_spec(name) is None:
            raise ConfigError("train.loggers", name, f"needs the {name} package: pip install 'ablate[{name}]'")


def for_load(cfg: RunConfig) -> RunConfig:
    """The checks a stored config passes to be loaded: its numbers (RunConfig.validate), its model
    choices beside their registries, its data source."""
    from ablate.data.sources import check_data
    from ablate.model import check_model

    derive(cfg)
    cfg.validate()
    if cfg.eval.device not in EVAL_DEVICES:
        raise ConfigError("eval.device", cfg.eval.device, "unknown choice", valid=EVAL_DEVICES)
    check_model(cfg.model, "model")
    check_data(cfg.data, "data")
    return cfg


def for_train(cfg: RunConfig) -> RunConfig:
    """for_load, and what training needs beside the config: the distillation teacher (there and
    finished) and the trackers' packages."""
    from ablate.run.teacher import teacher_info

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
