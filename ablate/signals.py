"""What a process forked inside ablate inherits of its parent's signal handlers: nothing.

Launchers install Python handlers for SIGTERM and SIGUSR1/2 (submitit's ignores SIGTERM and logs
"Bypassing signal SIGTERM"; ablate's training loop notes the signal and checkpoints). A worker
forked from such a process, e.g. by the multiprocessing pool lm-eval uses to bootstrap a
perplexity's stderr, would inherit them: the pool's terminate() then sends SIGTERM to a worker
that ignores it, and joins it forever, and the job never ends. Forked children therefore start
with the default action for these signals, whoever forks them.
"""

from __future__ import annotations

import os
import signal

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_registered = False


def _default_actions() -> None:
    for sig in _SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):  # not possible in this child: leave it as it was
            pass


def forked_children_take_default_signals() -> None:
    """Make every process forked from now on start with the default SIGTERM / SIGUSR1 / SIGUSR2
    actions (idempotent)."""
    global _registered
    if not _registered:
        os.register_at_fork(after_in_child=_default_actions)
        _registered = True
