"""Figures: matplotlib without a display, and saving with the note of the runs a figure leaves
out."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, note: str = "") -> Path:
    """Write `fig` to `path` (the note, if any, at its foot) and close it."""
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip("."))
        os.replace(tmp, path)  # a reader never sees half a figure
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)
    return path
