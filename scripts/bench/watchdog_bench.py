#!/usr/bin/env python3
"""What supervision costs: (a) the watchdog thread's CPU at fixed poll intervals against a real idle llama-server,
(b) `gpcrun serve` time-to-ready next to a bare llama-server on the same model, alternating runs.

Time-to-ready is seen from outside, the same way for both: from the process start until a client gets
/health 200 and a 1-token completion. Everything binds 127.0.0.1 and runs with -t 1 -tb 1.

    python scripts/bench/watchdog_bench.py [--model PATH] [--server-bin PATH] [--runs 5] [--seconds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.launch.run import free_port  # noqa: E402
from gpcrun.launch.supervisor import Supervisor  # noqa: E402
from gpcrun.launch.sampling import make_sampler  # noqa: E402
from gpcrun.launch.watchdog import GIB, Limits, Watchdog  # noqa: E402


def default_model() -> Path:
    out = subprocess.run([sys.executable, "scripts/fetch_demo_model.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=1800).stdout
    return Path(out.strip().splitlines()[-1])


def ready_from_outside(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> float | None:
    """Seconds until /health 200 and a 1-token completion; None if the process died or the time ran out."""
    deadline = time.monotonic() + timeout_s
    with requests.Session() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            try:
                if s.get(url + "/health", timeout=1).status_code == 200:
                    r = s.post(url + "/completion", json={"prompt": "Hi", "n_predict": 1, "cache_prompt": False},
                               timeout=30)
                    if r.status_code == 200 and "content" in r.json():
                        return time.monotonic()
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.01)
    return None


def stop(proc: subprocess.Popen, sig: int, group: bool) -> None:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait()


def cpu_cost(server_bin: Path, model: Path, intervals: list[float], seconds: float, tmp: Path) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sup = Supervisor([str(server_bin), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "1",
                      "-tb", "1"], tmp / "cpu-server.log")
    rows = []
    try:
        sup.start()
        if not sup.wait_ready(url, 120):
            raise RuntimeError(f"llama-server not ready: {sup.log_path.read_text()[-2000:]}")
        for iv in intervals:
            lim = Limits(host_term_available_bytes=GIB, host_kill_available_bytes=0, poll_min_s=iv, poll_max_s=iv)
            wd = Watchdog(lim, make_sampler(lambda: sup.pid), lambda a: None)
            t0 = time.monotonic()
            wd.start()
            time.sleep(seconds)  # the measured span itself
            wd.stop()
            wall = time.monotonic() - t0
            n = wd.envelope.samples
            rows.append({"interval_s": iv, "samples": n, "cpu_s": wd.cpu_s, "wall_s": wall,
                         "core_pct": 100 * wd.cpu_s / wall, "ms_per_sample": 1000 * wd.cpu_s / max(n, 1)})
    finally:
        sup.stop("bench done", grace_s=5)
    return rows


def ready_times(server_bin: Path, model: Path, runs: int, tmp: Path) -> dict[str, list[float]]:
    env = dict(os.environ, GPCRUN_HOME=str(tmp / "home"))
    gp = [sys.executable, "-m", "gpcrun", "serve", str(model), "--quiet", "--server-bin", str(server_bin)]

    def gpcrun(extra: list[str]) -> tuple[float | None, list[str]]:
        port = free_port()
        t0 = time.monotonic()
        p = subprocess.Popen([*gp, *extra, "--", "--port", str(port), "-t", "1", "-tb", "1"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = ready_from_outside(f"http://127.0.0.1:{port}", p)
        stop(p, signal.SIGINT, group=False)
        runs_dir = sorted((tmp / "home" / "runs").glob("*"), key=lambda d: d.stat().st_mtime)[-1]
        argv = json.loads((runs_dir / "argv.json").read_text())
        return (None if t is None else t - t0), argv

    def bare(args: list[str]) -> float | None:
        port = free_port()
        t0 = time.monotonic()
        p = subprocess.Popen([str(server_bin), *args, "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t = ready_from_outside(f"http://127.0.0.1:{port}", p)
        stop(p, signal.SIGTERM, group=True)
        return None if t is None else t - t0

    _, planned = gpcrun([])  # warm-up (page cache, imports); its argv is what the plan passes
    planned_args = _strip_host_port(planned[1:])
    out: dict[str, list[float]] = {"bare (planned args)": [], "gpcrun serve": [], "bare (user args)": [],
                                   "gpcrun serve --no-plan": []}
    user_args = ["-m", str(model), "-t", "1", "-tb", "1"]
    for _ in range(runs):  # alternating, so drift on this machine hits both sides alike
        out["bare (planned args)"].append(bare(planned_args))
        out["gpcrun serve"].append(gpcrun([])[0])
        out["bare (user args)"].append(bare(user_args))
        out["gpcrun serve --no-plan"].append(gpcrun(["--no-plan"])[0])
    return out


def _strip_host_port(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--host", "--port"):
            skip = True
            continue
        out.append(a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: the SmolLM2 demo model)")
    ap.add_argument("--server-bin", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="per poll interval in (a)")
    ap.add_argument("--intervals", default="0.1,0.25,0.5,1.0")
    a = ap.parse_args()
    model = a.model or default_model()
    server_bin = a.server_bin or find_tool("llama-server")
    intervals = [float(x) for x in a.intervals.split(",")]
    print(f"model {model.name}, {server_bin}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="gpcrun-wd-bench-") as td:
        tmp = Path(td)
        rows = cpu_cost(server_bin, model, intervals, a.seconds, tmp)
        print("\n(a) watchdog thread CPU against an idle llama-server")
        print(f"{'poll s':>7} {'samples':>8} {'cpu ms':>8} {'% core':>7} {'ms/sample':>10}")
        for r in rows:
            print(f"{r['interval_s']:>7.2f} {r['samples']:>8d} {1000 * r['cpu_s']:>8.1f} {r['core_pct']:>7.2f}"
                  f" {r['ms_per_sample']:>10.2f}")
        times = ready_times(server_bin, model, a.runs, tmp)
    print(f"\n(b) time to ready (/health 200 + a 1-token completion), {a.runs} alternating runs each")
    print(f"{'':<24} {'median s':>9} {'min s':>7} {'max s':>7}")
    med = {}
    for k, v in times.items():
        ok = [x for x in v if x is not None]
        med[k] = statistics.median(ok) if ok else float("nan")
        fails = f"  ({len(v) - len(ok)} failed)" if len(ok) < len(v) else ""
        print(f"{k:<24} {med[k]:>9.3f} {min(ok, default=float('nan')):>7.3f} {max(ok, default=float('nan')):>7.3f}"
              f"{fails}")
    print(f"ratio gpcrun serve / bare (planned args): {med['gpcrun serve'] / med['bare (planned args)']:.2f}"
          f"  (+{med['gpcrun serve'] - med['bare (planned args)']:.3f} s)")
    print(f"ratio gpcrun serve --no-plan / bare (user args): "
          f"{med['gpcrun serve --no-plan'] / med['bare (user args)']:.2f}"
          f"  (+{med['gpcrun serve --no-plan'] - med['bare (user args)']:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
