#!/usr/bin/env python3
"""Faults, one table: each row injects one fault into a real `gpcrun` command and prints the outcome, the exit
code (expected / got), the seconds until gpcrun ended, and what was lost (must be nothing: run.json is whole
JSON where a run started, no planted secret in any file under GPCRUN_HOME or a batch output nor on gpcrun's
console, no process left behind, and what a row checks besides).

Faults come from tests/fake_server.py (a stand-in llama-server with fault modes), a foreign listener on the
port, SIGSTOP, signals, special files, the hostile header corpus (tests/data/nasty/), hostile job files and
receipts; faults_env.py adds full and read-only mounts, memory cgroups (small, page cache, a sibling hog), a
100 MB burst of log, planted links and signals while planning, benchmarking and batching (root: mount(2) and
a writable cgroup hierarchy; a row whose mechanism is missing says so and is skipped). The real llama-server of
the build cache serves the tiny model where a real one is needed.

    .venv/bin/python scripts/bench/faults.py [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.launch.run import free_port  # noqa: E402

FAKE = ROOT / "tests" / "fake_server.py"
SECRETS = {"--api-key": "sk-fault-0042abcdef", "HF_TOKEN": "hf_FaultToken123456789"}


class Home:
    """A fresh GPCRUN_HOME per row; everything under it is checked for planted secrets afterwards."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.env = dict(os.environ, GPCRUN_HOME=str(self.dir), HF_TOKEN=SECRETS["HF_TOKEN"], PYTHONUNBUFFERED="1",
                        GPCRUN_CALIBRATE="off")
        self.also: list[Path] = []  # more directories the row's gpcrun wrote (a batch output): searched too
        self.console_secret = False  # a planted secret seen on gpcrun's stderr

    def lost(self) -> str:
        problems = []
        for top in (self.dir, *self.also):
            for p in top.rglob("*"):
                if p.is_file() and not p.is_symlink() and any(v.encode() in p.read_bytes() for v in SECRETS.values()):
                    problems.append(f"secret in {p.relative_to(top)}")
        for run in (self.dir / "runs").glob("*") if (self.dir / "runs").exists() else ():
            if not (run / "run.json").exists() and not (run / "events.jsonl").exists():
                continue  # nothing started there (a plan that could not be written): nothing to lose
            try:
                json.loads((run / "run.json").read_text())
            except (OSError, ValueError):
                problems.append(f"{run.name}/run.json missing or partial")
        left = _leftovers()
        if left:
            problems.append(f"processes left: {left}")
        if self.console_secret:
            problems.append("secret on the console")
        return "; ".join(problems) or "nothing"


def _leftovers(wait_s: float = 2.0) -> list[int]:
    """Fake servers still alive (a row's server must be gone when gpcrun has ended)."""
    import psutil
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if str(FAKE) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(p.info["pid"])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def shim(d: Path, mode: str, *extra: str) -> Path:
    p = d / f"fake-{mode}"
    p.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode {mode} --max-lifetime-s 60 {' '.join(extra)}"
                 " \"$@\"\n")
    p.chmod(0o755)
    return p


def gpcrun(home: Home, *args: str, after_start=None, timeout_s: float = 120, prefix: tuple[str, ...] = ()
           ) -> tuple[int, float, str]:
    """Run `gpcrun ARGS` (under `prefix`, e.g. a shell that joins a cgroup first); its stderr goes to a file in the
    row's home (a burst of log never sits in this process); the last line of it comes back."""
    t0 = time.monotonic()
    err_path = Path(tempfile.gettempdir()) / f"gpcrun-faults-{os.getpid()}-{home.dir.name}.stderr"  # never on
    # the row's own (full, read-only) filesystem: gpcrun's console must work for its one line to be seen
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "gpcrun", *args], cwd=ROOT, env=home.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        if after_start:
            after_start(proc, home)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -1, time.monotonic() - t0, "TIMED OUT"
    with open(err_path, "rb") as f:
        while chunk := f.read(1 << 20):  # (a burst row's echo is 100 MB: read in pieces)
            home.console_secret |= any(v.encode() in chunk for v in SECRETS.values())
        f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
        last = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    os.unlink(err_path)
    return proc.returncode, time.monotonic() - t0, (last[-1] if last else "")


def server_pid(home: Home, timeout_s: float = 30) -> int | None:
    """The llama-server pid from the run's events.jsonl (state loading, note 'pid N')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ev in (home.dir / "runs").glob("*/events.jsonl") if (home.dir / "runs").exists() else ():
            for line in ev.read_text().splitlines():
                e = json.loads(line)
                if e["to_state"] == "loading" and e["note"].startswith("pid "):
                    return int(e["note"].split()[1])
        time.sleep(0.05)
    return None


def wait_state(home: Home, state: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ev in (home.dir / "runs").glob("*/events.jsonl") if (home.dir / "runs").exists() else ():
            if any(json.loads(x)["to_state"] == state for x in ev.read_text().splitlines()):
                return True
        time.sleep(0.05)
    return False


def rows(work: Path, model: str, server: str) -> list[dict]:
    out = []

    def row(name: str, expect: int, args: list[str], after_start=None, timeout_s: float = 120,
            root: Path | None = None, home: Home | None = None, prefix: tuple[str, ...] = (), check=None) -> None:
        """check(home) -> "" when what the row must also show holds, else what is wrong (counted as lost)."""
        home = home or Home(root or work, name.replace(" ", "_").replace("/", "_"))
        rc, took, line = gpcrun(home, *args, after_start=after_start, timeout_s=timeout_s, prefix=prefix)
        lost = home.lost()
        extra = check(home) if check else ""
        if extra:
            lost = extra if lost == "nothing" else f"{lost}; {extra}"
        out.append({"fault": name, "expected": expect, "got": rc, "seconds": round(took, 2), "last_line": line,
                    "lost": lost, "ok": rc == expect})
        print(f"{name:44s} exit {rc:>3} (want {expect:>3})  {took:6.2f} s  lost: {out[-1]['lost']:8s}  {line[:90]}",
              flush=True)

    def serve(mode: str, *extra: str, fake: tuple[str, ...] = ()) -> list[str]:
        return ["serve", model, "--no-plan", "--quiet", "--server-bin", str(shim(work, mode, *fake)), *extra, "--",
                "--port", str(free_port()), "--api-key", SECRETS["--api-key"]]

    row("server dies while loading", 11, serve("die-loading"))
    row("server SIGILL", 11, serve("sigill"))
    row("server allocation failure (log)", 11, serve("oom-log"))
    row("GGML_ASSERT then hang (deaf to SIGTERM)", 11, serve("assert-hang", "--ready-timeout", "60"))
    row("never ready (load timeout 2 s)", 14, serve("never-ready", "--ready-timeout", "2"))

    with socket.socket() as held:  # a foreign process owns the port
        held.bind(("127.0.0.1", 0))
        held.listen()
        args = ["serve", model, "--no-plan", "--quiet", "--server-bin", server, "--", "--port",
                str(held.getsockname()[1])]
        row("foreign process on the port", 11, args)

    def stop_it(proc, home):
        if wait_state(home, "ready"):
            os.kill(server_pid(home), signal.SIGSTOP)
    row("server SIGSTOPped after ready", 17, serve("ok", "--liveness-timeout", "2", "--grace", "1"),
        after_start=stop_it)

    def leak_avail() -> int:
        from gpcrun.hardware.host import read_host_memory
        return read_host_memory().effective_available_bytes >> 20
    avail = leak_avail()
    row("memory leak 1 GB/s", 13, serve("leak", "--min-host-available", str(avail - 400), "--kill-host-available",
                                        str(avail - 1100), fake=("--leak-progress", str(work / "leak1.txt"))))
    row("memory leak, deaf to SIGTERM", 13, serve("leak", "--min-host-available", str(avail - 300),
                                                  "--kill-host-available", str(avail - 700),
                                                  fake=("--ignore-sigterm", "--leak-progress",
                                                        str(work / "leak2.txt"))))

    def hup_while_loading(proc, home):
        if server_pid(home):
            time.sleep(0.3)
            proc.send_signal(signal.SIGHUP)
    row("SIGHUP while loading", 130, serve("never-ready", "--ready-timeout", "30"), after_start=hup_while_loading)

    def term_when_ready(proc, home):
        if wait_state(home, "ready"):
            proc.send_signal(signal.SIGUSR1)
    row("SIGUSR1 after ready (real server)", 0,
        ["serve", model, "--quiet", "--server-bin", server, "--", "--port", str(free_port()), "-t", "1", "-tb", "1",
         "--api-key", SECRETS["--api-key"]], after_start=term_when_ready)

    fifo = work / "model-fifo.gguf"
    os.mkfifo(fifo)
    row("FIFO as the model", 3, ["inspect", str(fifo)], timeout_s=30)
    row("/dev/zero as the model", 3, ["inspect", "/dev/zero"], timeout_s=30)

    nasty = sorted((ROOT / "tests" / "data" / "nasty").glob("*.gguf"))
    t0 = time.monotonic()
    codes = {}
    for f in nasty:
        r = subprocess.run([sys.executable, "-m", "gpcrun", "inspect", str(f)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        codes.setdefault(r.returncode, []).append(f.stem)
    took = time.monotonic() - t0
    good = set(codes) <= {3, 4}
    out.append({"fault": f"hostile headers ({len(nasty)} files)", "expected": "3/4", "got": sorted(codes),
                "seconds": round(took, 2), "ok": good, "lost": "nothing",
                "last_line": ", ".join(f"exit {c}: {len(v)}" for c, v in sorted(codes.items()))})
    print(f"{out[-1]['fault']:44s} exits {sorted(codes)} (want 3/4)  {took:6.2f} s total  {out[-1]['last_line']}")

    bin_jobs = work / "jobs.bin.toml"
    bin_jobs.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)))
    row("binary job file", 7, ["batch", str(bin_jobs)], timeout_s=30)
    huge = work / "huge.toml"
    huge.write_text("[[models]]\npath = 'x'\n[matrix]\nctx = " + str(list(range(1000))) + "\nparallel = "
                    + str(list(range(1, 1001))) + "\n")
    row("10^6-job matrix", 7, ["batch", str(huge), "--dry-run"], timeout_s=60)
    nan = work / "nan.toml"
    nan.write_text("[batch]\ntimeout_s = nan\n[[models]]\npath = 'x'\n")
    row("job file timeout_s = nan", 7, ["batch", str(nan)], timeout_s=30)
    row("--floor nan", 2, ["plan", model, "--floor", "nan"], timeout_s=30)
    row("-c -1", 2, ["plan", model, "--", "-c", "-1"], timeout_s=30)

    full = work / "full"  # GPCRUN_HOME on a full filesystem: a 64 KiB tmpfs, filled (needs mount(2))
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode == 0:
        try:
            (full / "fill").write_bytes(b"\0" * (64 << 10))
            row("GPCRUN_HOME on a full disk (serve)", 18, ["serve", model, "--quiet", "--", "--port", str(free_port())],
                root=full)
        finally:
            subprocess.run(["umount", str(full)], capture_output=True)
    else:
        print("GPCRUN_HOME on a full disk: skipped (cannot mount a tmpfs here)")

    home = Home(work, "damaged_receipts")
    rec = home.dir / "receipts"
    rec.mkdir()
    (rec / "r20250102T000000Z-0000000b.json").write_text("[" * 200000 + "]" * 200000)
    (rec / "r20250103T000000Z-0000000c.json").write_text(json.dumps({"id": "r20250103T000000Z-0000000c",
                                                                     "measured": {"decode_tok_s": {"x": [1]}}}))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gpcrun", "receipt", "ls"], cwd=ROOT, env=home.env,
                       capture_output=True, text=True, timeout=60)
    out.append({"fault": "damaged receipt files", "expected": 0, "got": r.returncode,
                "seconds": round(time.monotonic() - t0, 2), "ok": r.returncode == 0 and "skipped" in r.stderr,
                "lost": "nothing", "last_line": (r.stderr.strip().splitlines() or [""])[-1]})
    print(f"{'damaged receipt files':44s} exit {r.returncode:>3} (want   0)  {out[-1]['last_line'][:90]}")

    from faults_env import env_rows  # the rows that need mounts, cgroups, a batch or a burst of output
    env_rows(work, model, server, row, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    server = str(find_tool("llama-server"))
    model = subprocess.run([sys.executable, "scripts/gen_models.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    model = json.loads(model)["models"]["tiny-llama-q8_0"]
    with tempfile.TemporaryDirectory(prefix="gpcrun-faults-") as d:
        out = rows(Path(d), model, server)
    held = sum(r["ok"] and r["lost"] == "nothing" for r in out)
    print(f"faults: {held} of {len(out)} rows hold (outcome and exit as documented, nothing lost)")
    if a.json:
        print(json.dumps(out, indent=1))
    return 0 if held == len(out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
