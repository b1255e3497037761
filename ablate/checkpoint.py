"""Checkpoints: the full training state, written atomically, the last K kept.

A checkpoint is `checkpoints/step_00001200.pt`, written to a temporary file in the same directory,
flushed, then renamed: a crash leaves either the old set or the new one, never a torn file. A file
that cannot be read all the same (a disk fault, a copy cut short) is moved aside as
`step_00001200.pt.unreadable` when a run resumes, and the one before it is used.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")
log = logging.getLogger("ablate.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of `step`, then delete all but the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / file_name(step)
    fd, tmp = tempfile.mkstemp(prefix=".step_", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def file_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first})") from err


def latest(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint's state, or None when there is none. Unreadable ones are
    moved aside (never deleted) with a warning; CheckpointError when none of them can be read."""
    found = checkpoints(directory)
    aside = []
    for path in reversed(found):
        try:
            return load(path)
        except CheckpointError as err:
            log.warning("%s; moved aside as %s.unreadable, trying the one before", err, path.name)
            try:
                os.replace(path, path.with_name(path.name + ".unreadable"))
            except FileNotFoundError:  # another process of the same run moved it first
                pass
            aside.append(path.name)
    if aside:
        raise CheckpointError(f"no readable checkpoint in {directory} (moved aside: {', '.join(aside)}); "
                              f"delete the run directory to start the run over")
    return None
