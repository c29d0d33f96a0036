"""A minimal real llama-server runner for tests (start, wait for /health, stop). Not a mock."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealServer:
    """Context manager: llama-server on 127.0.0.1 with -t 1 -tb 1 (2-core machines), log captured."""

    def __init__(self, bin_path: Path, model: Path, *extra: str, log_path: Path, ready_timeout_s: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [str(bin_path), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "-t", "1", "-tb", "1", *extra]
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "RealServer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise TimeoutError(f"llama-server not ready in {self.ready_timeout_s} s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def complete(self, prompt: str, n_predict: int = 8, **kw) -> dict:
        body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": False, "ignore_eos": True, **kw}
        r = requests.post(self.url + "/completion", json=body, timeout=120)
        r.raise_for_status()
        return r.json()
