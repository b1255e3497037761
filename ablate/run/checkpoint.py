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

Loading never runs code from the file. A checkpoint is read with `torch.load(weights_only=True)`:
tensors, numbers, strings and containers only (the RNG states are stored as tensors and lists). A
checkpoint written before that stored numpy's RNG state as an array; it loads through an allowlist of
exactly numpy's array and dtype reconstruction. A sharded checkpoint's `.metadata` (which
torch.distributed.checkpoint would unpickle freely) and its non-tensor entries are read through an
unpickler that admits only the checkpoint format's own classes. A file that asks for anything else
(`posix.system`, `builtins.eval`, ...) is refused with one line naming what it asked for.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.files import UMASK, WriteError

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
EXTRA = "extra.pt"  # in a sharded checkpoint: everything but weights and optimizer state
log = logging.getLogger("ablate.run.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code when loaded: refused, never moved aside for an older checkpoint."""


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain lists (what a weights-only load reads)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]  # keys: a tensor, or (older files) a numpy array
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of `step`, then delete all but the newest `keep`."""
    final = directory / file_name(step)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".step_", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as raw:
            handle = _Recording(raw)
            try:
                torch.save(state, handle)
            except Exception:  # torch reports a failed write as its own RuntimeError ("unexpected pos")
                if handle.error is not None:
                    raise handle.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # as open() would have made it (mkstemp's is private to the owner)
        os.replace(tmp, final)
    except OSError as err:
        raise WriteError(final, err) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # frees what the failed write took
    for old in checkpoints(directory)[:-keep]:
        remove(old)
    return final


class _Recording:
    """A binary file whose write errors are kept, so that the OSError behind torch.save's failure
    (ENOSPC) can be named."""

    def __init__(self, handle) -> None:
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


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
    try:
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
        if is_main:
            with open(tmp / EXTRA, "wb") as handle:
                torch.save(extra, handle)
                handle.flush()
                os.fsync(handle.fileno())
            if final.exists():  # the same step written again (a resumed run that stopped there)
                shutil.rmtree(final)
            os.replace(tmp, final)
    except OSError as err:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(final, err) from err
    if is_main:
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


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


# what a checkpoint written by an older ablate needs beyond a weights-only load: numpy's RNG keys
_NUMPY_DTYPES = [np.dtypes.UInt32DType] if hasattr(np, "dtypes") else []
_LEGACY_NUMPY = [np.ndarray, np.dtype, *_NUMPY_DTYPES, (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct"),
                 (_numpy_reconstruct(), "numpy._core.multiarray._reconstruct")]
_LEGACY_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _LEGACY_NUMPY}


def _unsafe_globals(source: Path | io.BytesIO) -> list[str]:
    """The globals beyond the allowlist that a file asks for when unpickled (read, never called)."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # not a torch file at all: an ordinary unreadable checkpoint
        return []
    return [g for g in found if g not in _LEGACY_NAMES]


def safe_load(source: Path | io.BytesIO, what: str) -> Any:
    """torch.load without running code (see the module doc); CheckpointError naming `what` otherwise."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        asked = _unsafe_globals(source)
        if not asked:
            raise
        raise UnsafeCheckpointError(f"{what} is refused: loading it would call {', '.join(asked)}, and a checkpoint "
                                    "may only hold tensors, numbers and strings (ablate never writes such a file)"
                                    ) from None


class _MetadataUnpickler(pickle.Unpickler):
    """Reads a torch.distributed.checkpoint `.metadata` admitting only its own classes."""

    PLAIN = frozenset({("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                       ("builtins", "object"), ("copyreg", "_reconstructor"), ("torch.serialization", "_get_layout"),
                       ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                       ("pathlib", "PurePosixPath")})

    def find_class(self, module: str, name: str) -> Any:
        import importlib

        if (module, name) in self.PLAIN:
            return super().find_class(module, name)
        if "." not in name:
            if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                            torch.memory_format)):
                return getattr(torch, name)
            if module.startswith("torch.distributed.checkpoint."):
                found = getattr(importlib.import_module(module), name, None)
                if isinstance(found, type) and found.__module__ == module:
                    return found
        raise CheckpointError(f"loading it would call {module}.{name}")


def _checked_unpickle(data: bytes, what: str) -> Any:
    try:
        return _MetadataUnpickler(io.BytesIO(data)).load()
    except CheckpointError as err:
        raise UnsafeCheckpointError(f"{what} is refused: {err}, and a checkpoint may only hold tensors, numbers and "
                              "strings (ablate never writes such a file)") from None


def _safe_dcp():
    """torch.distributed.checkpoint's reader and planner, reading metadata and non-tensor entries
    without running code."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as handle:
                metadata = _checked_unpickle(handle.read(), str(path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            loaded = safe_load(value, f"{read_item.dest_index.fqn} in a sharded checkpoint")
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return Reader, Planner


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded without running code. For a sharded one: its extra state with
    `sharded` set to the path (weights and optimizer state stay on disk until `restore`)."""
    try:
        if path.is_dir():
            if not (path / ".metadata").is_file():
                raise FileNotFoundError(f"{path / '.metadata'} is missing")
            _checked_unpickle((path / ".metadata").read_bytes(), str(path / ".metadata"))
            return {**safe_load(path / EXTRA, str(path / EXTRA)), "sharded": str(path)}
        return safe_load(path, str(path))
    except CheckpointError:
        raise
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

    reader, planner = _safe_dcp()
    try:
        if opt is None:
            state = {"model": states.get_model_state_dict(model)}  # one process reads it all (evaluation, export)
            dcp.load(state, storage_reader=reader(saved["sharded"]), planner=planner(), no_dist=True)
            states.set_model_state_dict(model, state["model"])
        else:
            model_state, optim_state = states.get_state_dict(model, opt)
            state = {"model": model_state, "optimizer": optim_state}
            dcp.load(state, storage_reader=reader(saved["sharded"]), planner=planner())
            states.set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except CheckpointError:
        raise
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
        except UnsafeCheckpointError:
            raise
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
