"""Checkpoints: the full training state, written atomically, the last K kept.

A checkpoint is `checkpoints/step_00001200.pt`, written to a temporary file in the same directory,
flushed, then renamed: a crash leaves either the old set or the new one, never a torn file. A file
that cannot be read all the same (a disk fault, a copy cut short) is moved aside as
`step_00001200.pt.unreadable` when a run resumes, and the one before it is used.

A run trained with train.parallel=fsdp writes `checkpoints/step_00001200/` instead: the sharded
weights and AdamW state through torch.distributed.checkpoint (each process writes its shards; any
number of processes reads them back, resharding as it loads) and `extra.pt` (step, counters, RNG,
config). It is written as `.step_00001200.tmp/` and renamed when complete. Both kinds load into a
single-process model (evaluation, export) with `restore`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
EXTRA = "extra.pt"  # in a sharded checkpoint: everything but weights and optimizer state
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
        remove(old)
    return final


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save_sharded(directory: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 extra: dict[str, Any], keep: int, is_main: bool) -> Path:
    """Every process: write the checkpoint of `step` with torch.distributed.checkpoint (see the
    module doc); the main process then names it and deletes all but the newest `keep`."""
    import torch.distributed as td
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = directory / sharded_name(step)
    tmp = directory / f".{final.name}.tmp"
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
    if is_main:
        with open(tmp / EXTRA, "wb") as handle:
            torch.save(extra, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step written again (a resumed run that stopped there)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints(directory)[:-keep]:
            remove(old)
    if td.is_initialized():
        td.barrier()
    return final


def file_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def sharded_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoints (files and sharded directories), oldest first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: (step_of(p), p.name))


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents. For a sharded one: its extra state with `sharded` set to the path
    (weights and optimizer state stay on disk until `restore`)."""
    try:
        if path.is_dir():
            if not (path / ".metadata").is_file():
                raise FileNotFoundError(f"{path / '.metadata'} is missing")
            return {**torch.load(path / EXTRA, map_location="cpu", weights_only=False), "sharded": str(path)}
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first})") from err


def restore(saved: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
    """Load a checkpoint's weights (and optimizer state) into `model` (and `opt`), whatever wrote
    it: one file, or torch.distributed.checkpoint shards resharded to this process count. A model
    sharded by FSDP reads only sharded checkpoints."""
    if "sharded" not in saved:
        if any(hasattr(p, "device_mesh") for p in model.parameters()):
            raise CheckpointError("this checkpoint was written by an unsharded run (train.parallel=ddp or one "
                                  "process); resume it with train.parallel=ddp")
        model.load_state_dict(saved["model"])
        if opt is not None:
            opt.load_state_dict(saved["optimizer"])
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as states

    try:
        if opt is None:
            state = {"model": states.get_model_state_dict(model)}  # one process reads it all (evaluation, export)
            dcp.load(state, checkpoint_id=saved["sharded"], no_dist=True)
            states.set_model_state_dict(model, state["model"])
        else:
            model_state, optim_state = states.get_state_dict(model, opt)
            state = {"model": model_state, "optimizer": optim_state}
            dcp.load(state, checkpoint_id=saved["sharded"])
            states.set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        where = saved["sharded"]
        raise CheckpointError(f"{where} is not a readable checkpoint ({type(err).__name__}: {first})") from err


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
