"""server.log never grows past its cap (head + rotating tail, joined at the end), the live log is read in bounded
chunks, and a slow console never slows llama-server: the pure sink, a real child through the supervisor's pipe,
and `gpcrun serve` under a 100 MB burst (issue 13)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from gpcrun.launch.logcap import CappedLog, ConsoleEcho
from gpcrun.launch.run import free_port
from gpcrun.launch.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_server.py")


def _lines(n: int) -> bytes:
    return b"".join(f"line {i:08d}\n".encode() for i in range(n))


def test_below_the_cap_the_log_is_the_output_unchanged(tmp_path):
    data = _lines(1000)
    log = CappedLog(tmp_path / "server.log", 1 << 20)
    for i in range(0, len(data), 777):
        log.write(data[i:i + 777])
    log.close()
    assert (tmp_path / "server.log").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log"]


def test_over_the_cap_head_and_tail_are_kept_and_the_gap_is_said(tmp_path):
    cap = 64 << 10
    data = _lines(200_000)  # 2.8 MB through a 64 KiB log
    log = CappedLog(tmp_path / "server.log", cap)
    rng = random.Random(7)
    i = 0
    while i < len(data):
        n = rng.randint(1, 40_000)
        log.write(data[i:i + n])
        i += n
        assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= cap  # never more on disk, at any moment
    log.close()
    out = (tmp_path / "server.log").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log"]
    head, marker, tail = out.partition(b"\n=== gpcrun: ")
    assert head == data[:log.head_bytes]
    assert data.endswith(tail.split(b" ===\n", 1)[1])  # the newest output, whole
    dropped = int(marker and tail.split(b" bytes", 1)[0])
    kept_tail = len(tail.split(b" ===\n", 1)[1])
    assert log.head_bytes + dropped + kept_tail == len(data)  # every byte is either kept or counted
    assert kept_tail >= log.segment_bytes
    assert len(out) <= cap + 200


def test_listeners_and_recent_text_see_every_chunk(tmp_path):
    log = CappedLog(tmp_path / "server.log", 8192)
    seen = []
    stop = log.listen(seen.append)
    log.write(b"a" * 10000)
    log.write(b"GGML_ASSERT(x) failed\n")
    stop()
    log.write(b"after\n")
    assert b"".join(seen) == b"a" * 10000 + b"GGML_ASSERT(x) failed\n"
    assert log.recent_text().endswith("failed\nafter\n")
    log.mark()
    assert log.recent_text() == ""
    log.close()


def test_a_stuck_console_drops_output_instead_of_blocking(tmp_path):
    gate = threading.Event()
    shown = []

    def slow_write(text: str) -> None:
        gate.wait(10)
        shown.append(text)
    echo = ConsoleEcho(slow_write, buffer_bytes=1 << 20)
    t0 = time.monotonic()
    for _ in range(100):
        echo(b"y" * 65536)  # 6.4 MB at a console that does not move
    assert time.monotonic() - t0 < 2.0  # the writer (the log pump) never waited on the console
    gate.set()
    echo.close(10)
    text = "".join(shown)
    assert "bytes of llama-server output not shown" in text
    assert text.count("y") <= (1 << 20) + 2 * 65536


def test_a_chatty_child_through_the_supervisor_pipe_stays_under_the_cap(tmp_path):
    cap = 1 << 20
    code = ("import sys\nout = sys.stdout.buffer\nfor i in range(400000): out.write(b'chatter %08d\\n' % i)\n"
            "out.write(b'the last words\\n')")
    log = CappedLog(tmp_path / "server.log", cap)
    sup = Supervisor([sys.executable, "-c", code], tmp_path / "server.log", sink=log)
    sup.start()
    sup.proc.wait(60)
    sup.stop("done", 1)
    log.close()
    out = (tmp_path / "server.log").read_bytes()
    assert out.startswith(b"chatter 00000000\n")
    assert out.endswith(b"chatter 00399999\nthe last words\n")
    assert len(out) <= cap + 200
    assert log.total_bytes == 400000 * 17 + 15


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_serve_under_a_100_mb_burst_keeps_memory_and_disk_bounded(tmp_path, tiny_models):
    """The issue's case: a burst of output (600 MB took gpcrun to 1.28 GB RSS). 100 MB here, echoed to a
    console: gpcrun's peak RSS stays far below the burst, server.log stays under --log-max-mib."""
    home = tmp_path / "home"
    shim = tmp_path / "fake-spam"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode ok --spam-mb 100 --max-lifetime-s 120 \"$@\"\n")
    shim.chmod(0o755)
    console = open(tmp_path / "console.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "serve", str(tiny_models["tiny-llama-q8_0"]), "--no-plan", "--server-bin",
                             str(shim), "--log-max-mib", "4", "--", "--port", str(free_port())], cwd=ROOT,
                            env=dict(os.environ, GPCRUN_HOME=str(home)), stdin=subprocess.DEVNULL, stdout=console,
                            stderr=console)
    peak_kib = 0
    deadline = time.monotonic() + 120
    done = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
            logs = list(home.glob("runs/*/server.log*"))
            if any(b"fake: spam done" in p.read_bytes()[-4096:] for p in logs if p.exists()):
                done = True
                break
            time.sleep(0.2)
        peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
        proc.terminate()
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        console.close()
    assert done, (tmp_path / "console.txt").read_bytes()[-2000:]
    assert rc == 0
    run = next(home.glob("runs/*"))
    log = (run / "server.log").read_bytes()
    assert len(log) <= (4 << 20) + 400
    assert b"bytes of llama-server output left out here" in log
    assert log.rstrip().endswith(b"fake: SIGTERM, exiting")  # the newest output, to the end
    assert json.loads((run / "run.json").read_text())["outcome"]["kind"] == "clean_stop"
    assert peak_kib < 300 * 1024, f"gpcrun peaked at {peak_kib >> 10} MiB RSS during a 100 MB burst"
    assert (tmp_path / "console.txt").stat().st_size > 1 << 20  # the console saw the burst (what it kept up with)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(shim) in " ".join(p.info["cmdline"] or ())]
