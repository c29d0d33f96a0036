"""The faults table's rows that need the machine itself: read-only and full mounts under GPCRUN_HOME and a batch's
output, real memory cgroups (v1 or v2) with a small limit, page cache and a sibling memory hog, a 100 MB burst of
log, planted links, signals while planning. Rows whose mechanism this machine lacks (mount(2), a writable
cgroup hierarchy) print why they are skipped and are not counted. Called by faults.py."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faults as F
from tests.proc_util import in_cgroup, make_child_cgroup, remove_cgroup


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Cgroup:
    """A fresh child memory cgroup with a limit (tests/proc_util.py makes it), or None with the reason printed;
    `prefix` runs a command inside it."""

    @classmethod
    def make(cls, name: str, limit_bytes: int) -> "Cgroup | None":
        made = make_child_cgroup(limit_bytes, f"gpcrun-faults-{name}")
        if isinstance(made, str):
            print(f"memory cgroup rows: {made}", flush=True)
            return None
        return cls(made[0])

    def __init__(self, d: str) -> None:
        self.dir = d
        self.prefix = in_cgroup(d)

    def close(self) -> None:
        remove_cgroup(self.dir)


def _skip(name: str, why: str) -> None:
    print(f"{name:44s} skipped: {why}", flush=True)


def _ready_then_term(seconds: float):
    """after_start: once the server is ready, let it serve `seconds` (the watchdog samples), then SIGTERM gpcrun."""
    def act(proc, home):
        if F.wait_state(home, "ready", 60):
            time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return act


def _wait_ready_in(out_dir: Path, proc, timeout_s: float = 60) -> None:
    """Until a batch job's server in out_dir is ready (or gpcrun ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if any('"ready"' in p.read_text() for p in out_dir.glob("runs/*/events.jsonl")):
            return
        time.sleep(0.05)


def _receipt_cause(home: F.Home) -> str | None:
    docs = [json.loads(p.read_text()) for p in (home.dir / "receipts").glob("*.json")]
    return docs[-1]["outcome"]["cause"] if docs else None


def _outcome(home: F.Home, want: str) -> str:
    runs = sorted((home.dir / "runs").glob("*/run.json")) if (home.dir / "runs").exists() else []
    if not runs:
        return "no run.json"
    got = json.loads(runs[-1].read_text())["outcome"]["kind"]
    return "" if got == want else f"outcome {got}, not {want}"


def env_rows(work: Path, model: str, server: str, row, out: list) -> None:
    port = F.free_port

    # ---------------------------------------------------------------- read-only GPCRUN_HOME
    home = F.Home(work, "read-only_GPCRUN_HOME")
    if _mount("--bind", str(home.dir), str(home.dir)) and _mount("-o", "remount,bind,ro", str(home.dir)):
        try:
            row("read-only GPCRUN_HOME (serve)", 18, ["serve", model, "--quiet", "--", "--port", str(port())],
                home=home)
        finally:
            _umount(home.dir)
    else:
        _skip("read-only GPCRUN_HOME (serve)", "cannot make a read-only bind mount here")

    # ---------------------------------------------------------------- a burst of llama-server output
    def spam_done(home):
        return any(b"fake: spam done" in p.read_bytes()[-4096:] for p in home.dir.glob("runs/*/server.log*"))
    peak = {}

    def burst(proc, home):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not spam_done(home):
            peak["kib"] = max(peak.get("kib", 0), _hwm_kib(proc.pid))
            time.sleep(0.1)
        peak["kib"] = max(peak.get("kib", 0), _hwm_kib(proc.pid))
        proc.send_signal(signal.SIGTERM)

    def burst_check(home):
        logs = list(home.dir.glob("runs/*/server.log"))
        size = logs[0].stat().st_size if logs else 0
        bad = [] if size <= (4 << 20) + 512 else [f"server.log {size} bytes"]
        if peak.get("kib", 1 << 30) > 300 * 1024:
            bad.append(f"gpcrun peak RSS {peak.get('kib', 0) >> 10} MiB")
        print(f"{'':44s} server.log {size / 2**20:.2f} MiB, gpcrun peak RSS {peak.get('kib', 0) / 1024:.0f} MiB",
              flush=True)
        return "; ".join(bad) or _outcome(home, "clean_stop")
    row("100 MB log burst, echoed (--log-max-mib 4)", 0,
        ["serve", model, "--no-plan", "--log-max-mib", "4", "--server-bin",
         str(F.shim(work, "ok", "--spam-mb", "100")), "--", "--port", str(port())], after_start=burst,
        check=burst_check)

    # ---------------------------------------------------------------- memory cgroups
    real = ["serve", model, "--quiet", "--server-bin", server, "--", "--port", str(port()), "-t", "1", "-tb", "1",
            "--api-key", F.SECRETS["--api-key"]]
    cg = Cgroup.make("small", 800 << 20)
    if cg is None:
        _skip("small memory cgroup (800 MiB)", "cannot make a memory cgroup here")
    else:
        try:
            row("small memory cgroup (800 MiB), real server", 0, real, prefix=cg.prefix,
                after_start=_ready_then_term(2.0),
                check=lambda h: _outcome(h, "clean_stop"))
        finally:
            cg.close()
    cg = Cgroup.make("cache", 1400 << 20)
    if cg is not None:
        big = work / "page-cache.bin"

        def read_big(proc, home):
            if F.wait_state(home, "ready", 60):
                subprocess.run([*cg.prefix, "sh", "-c", f"dd if=/dev/zero of={big} bs=1M count=1200 2>/dev/null"
                                f" && cat {big} > /dev/null"], timeout=120)
                time.sleep(2)  # the watchdog's samples see it
            proc.send_signal(signal.SIGTERM)
        try:
            row("1.2 GB of page cache in a 1.4 GiB cgroup", 0, real, prefix=cg.prefix, after_start=read_big,
                check=lambda h: _outcome(h, "clean_stop"))
        finally:
            cg.close()
            big.unlink(missing_ok=True)
    cg = Cgroup.make("hog", 1 << 30)
    if cg is not None:
        hog = None

        def sibling_hog(proc, home):
            nonlocal hog
            if F.wait_state(home, "ready", 60):
                hog = subprocess.Popen([*cg.prefix, sys.executable, "-c", _HOG])
        try:
            row("sibling memory hog in a 1 GiB cgroup", 13, real, prefix=cg.prefix, after_start=sibling_hog,
                timeout_s=90, check=lambda h: _outcome(h, "watchdog_abort"))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
            cg.close()

    # ---------------------------------------------------------------- batch output: full, read-only, planted links
    jobs = work / "jobs-env.toml"
    jobs.write_text(f"[batch]\nprompt_tokens = 16\ngen_tokens = 8\nrepetitions = 1\ntimeout_s = 60\n"
                    f"server_args = ['-t', '1', '-tb', '1', '--api-key', '{F.SECRETS['--api-key']}']\n"
                    f"[[models]]\npath = '{model}'\n")
    small = work / "small-out"
    small.mkdir()
    if _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)):
        try:
            _full_batch_rows(work, server, jobs, small, row)
        finally:
            _umount(small)
    else:
        _skip("batch output fills mid-job", "cannot mount a tmpfs here")

    planted = work / "planted-out"
    planted.mkdir()
    victim = work / "victim.txt"
    victim.write_text("precious\n")
    (planted / "state.sqlite").symlink_to(victim)
    home = F.Home(work, "planted_links")
    home.also.append(planted)
    row("links planted in the batch output", 8, ["batch", str(jobs), "--out", str(planted)], home=home,
        check=lambda h: "" if victim.read_text() == "precious\n" else "the victim file changed")

    # ---------------------------------------------------------------- signals during a benchmark and a batch job
    row("SIGTERM during a benchmark (real server)", 15,
        ["bench", model, "-p", "256", "-n", "64", "-r", "20", "--server-bin", server, "--", "-t", "1", "-tb", "1",
         "--api-key", F.SECRETS["--api-key"]], after_start=_ready_then_term(1.0),
        check=lambda h: "" if _receipt_cause(h) == "interrupted" else f"receipt cause {_receipt_cause(h)}")
    home = F.Home(work, "batch_sigterm")
    home.env["GPCRUN_LLAMA_SERVER"] = server
    out_dir = work / "sigterm-out"
    home.also.append(out_dir)
    long_jobs = work / "jobs-long.toml"
    long_jobs.write_text(jobs.read_text().replace("repetitions = 1", "repetitions = 50")
                         .replace("gen_tokens = 8", "gen_tokens = 256"))  # a minute of benchmark: stopped midway

    def term_mid_job(proc, home):
        _wait_ready_in(out_dir, proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)

    def left_pending(home):
        con = sqlite3.connect(out_dir / "state.sqlite")
        state = con.execute("SELECT state, attempts FROM jobs").fetchall()
        con.close()
        return "" if state == [("pending", 0)] else f"job state {state}, not pending with its retry unspent"
    row("SIGTERM during a batch job (real server)", 130, ["batch", str(long_jobs), "--out", str(out_dir)], home=home,
        after_start=term_mid_job, check=left_pending)

    # ---------------------------------------------------------------- signals while planning (a silent hub)
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            home = F.Home(work, f"signal_while_planning_{sig.name}")
            home.env["HF_ENDPOINT"] = f"http://127.0.0.1:{silent.getsockname()[1]}"

            def send(proc, home, sig=sig):
                time.sleep(2)
                proc.send_signal(sig)
            row(f"{sig.name} while reading a hub header", 130, ["serve", "hf://someone/repo/m-Q4_0.gguf", "--quiet"],
                home=home, after_start=send)


def _full_batch_rows(work: Path, server: str, jobs: Path, small: Path, row) -> None:
    home = F.Home(work, "batch_full")
    home.env["GPCRUN_LLAMA_SERVER"] = server
    home.also.append(small)
    filler = small / "filler"

    def fill_when_ready(proc, home):
        _wait_ready_in(small / "out", proc)
        with open(filler, "wb") as f:  # another writer fills the disk while the job benchmarks
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    row("batch output fills mid-job", 18, ["batch", str(jobs), "--out", str(small / "out")], home=home,
        after_start=fill_when_ready)
    filler.unlink(missing_ok=True)

    def resumed(home):
        con = sqlite3.connect(small / "out" / "state.sqlite")
        state = con.execute("SELECT state, attempts FROM jobs").fetchall()
        con.close()
        return "" if state == [("done", 1)] else f"job state {state}, not done after 1 counted attempt"
    row("  ... room again: the same command resumes", 0, ["batch", str(jobs), "--out", str(small / "out")],
        home=home, check=resumed)
    ro = work / "ro-out"
    ro.mkdir()
    if _mount("--bind", str(small / "out"), str(ro)) and _mount("-o", "remount,bind,ro", str(ro)):
        try:
            row("batch report of a read-only output", 0, ["batch", "report", str(ro)], home=home)
        finally:
            _umount(ro)


_HOG = """
import time
held = []
while len(held) < 900:  # 50 MB/s up to 900 MB: the cgroup's SIGTERM line (128 MiB left) is crossed first
    b = bytearray(1 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    held.append(b)
    time.sleep(0.02)
time.sleep(60)
"""


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0
