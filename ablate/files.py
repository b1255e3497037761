"""Writing files so that a reader never sees half of one, and a failed write says why in one line.

    write_text(path, text)   atomically: a temporary sibling, then a rename
    WriteError               the path and the reason ("no space left on device", with what is free)
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

UMASK = os.umask(0)
os.umask(UMASK)


class WriteError(OSError):
    """A file that could not be written: the path and why, in one line ("no space left on device")."""

    def __init__(self, path: Path | str, err: OSError) -> None:
        why = "no space left on device" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
        free = ""
        try:
            free = f", {shutil.disk_usage(Path(path).parent).free / 2**20:,.1f} MiB free there"
        except OSError:
            pass
        super().__init__(err.errno, f"cannot write {path}: {why}{free}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically: a temporary file in the same directory, then a rename.
    WriteError (the path, and "no space left on device" when that is why) if it cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~UMASK)  # as open() would have made it (mkstemp's is private to the owner)
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path
