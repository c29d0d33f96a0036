"""A termination signal before a command has its own handling (reading a hub header, planning) ends gpcrun like
Ctrl-C: exit 130 with one line naming the signal, no traceback, no silent death by signal (issue 13)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpcrun.exits import Exit

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_while_reading_a_hub_header_is_exit_130(tmp_path, sig):
    with socket.socket() as silent:  # a hub that accepts and never answers: gpcrun waits in a read
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = dict(os.environ, GPCRUN_HOME=str(tmp_path), HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}")
        p = subprocess.Popen([sys.executable, "-m", "gpcrun", "plan", "hf://someone/repo/model-Q4_0.gguf"], cwd=ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it is connected to the silent hub
            conns = [c for c in __import__("psutil").Process(p.pid).net_connections()
                     if c.raddr and c.raddr.port == silent.getsockname()[1]]
            if conns:
                break
            time.sleep(0.05)
        p.send_signal(sig)
        err = p.communicate(timeout=30)[1]
    assert p.returncode == Exit.INTERRUPTED.code, err
    assert err.strip().splitlines() == [f"gpcrun: interrupted by {sig.name}"]
