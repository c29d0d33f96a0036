"""The termination signals gpcrun catches: every one whose default action ends the process and that a process
may catch. Each ends a run the way SIGTERM does (the server stopped, run.json and the receipt written), never
by dying with the server left behind. SIGPIPE stays ignored (Python's default) and SIGKILL/SIGSTOP cannot be
caught."""
from __future__ import annotations

import signal
from typing import Callable

_NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF",
          "SIGXCPU", "SIGXFSZ", "SIGPWR")
TERMINATION_SIGNALS = tuple(getattr(signal, n) for n in _NAMES if hasattr(signal, n))


def on_termination(handler: Callable) -> None:
    """Install `handler(signum, frame)` for every termination signal (main thread only)."""
    for s in TERMINATION_SIGNALS:
        signal.signal(s, handler)
