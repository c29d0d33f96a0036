"""Liveness after ready: llama-server must keep answering. A stopped (SIGSTOP, a debugger) or deadlocked server
accepts TCP connections but never answers; without this gpcrun would wait on it silently forever."""
from __future__ import annotations

import threading
import time
from typing import Callable

from .endpoint import session_for


class Liveness:
    """A background thread: GET /health every interval; any HTTP answer (200, 503 ...) is alive. No answer for
    timeout_s -> on_dead(reason), once."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float, on_dead: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.api_key, self.timeout_s, self.on_dead, self.clock = url, api_key, timeout_s, on_dead, clock
        self.interval_s = max(0.2, min(5.0, timeout_s / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.timeout_s and self.timeout_s > 0:
            self._thread = threading.Thread(target=self._run, name="gpcrun-liveness", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import requests  # imported after start-up (launch/endpoint.py)
        last_ok = self.clock()
        with session_for(self.url, self.api_key) as session:
            while not self._stop.wait(self.interval_s):
                left = self.timeout_s - (self.clock() - last_ok)
                try:
                    session.get(self.url + "/health", timeout=max(0.2, min(10.0, left)))
                    last_ok = self.clock()
                except (requests.RequestException, OSError, ValueError):
                    pass
                silent = self.clock() - last_ok
                if silent >= self.timeout_s and not self._stop.is_set():
                    self.on_dead(f"llama-server stopped answering /health after it was ready: no answer for"
                                 f" {silent:.1f} s (stopped or deadlocked)")
                    return
