#!/usr/bin/env python3
"""Time to ready, side by side: bare llama-server vs `gpcrun serve` (planned) vs `gpcrun serve --no-plan`, on
SmolLM2-135M, alternating runs; from the process start to the first HTTP 200 of /health. Prints the medians and
gpcrun's overhead over bare llama-server (target: planned serve within bare + 0.15 s).

Usage: .venv/bin/python scripts/bench/startup.py [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.launch.run import free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import stop_group  # noqa: E402


def _ready_s(argv: list[str], port: int, env: dict, timeout_s: float = 60.0) -> float:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while time.monotonic() - t0 < timeout_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode}")
            time.sleep(0.005)
        raise TimeoutError(" ".join(argv))
    finally:
        stop_group(proc, 15)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    model = subprocess.run([sys.executable, str(ROOT / "scripts/fetch_demo_model.py")], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    server = str(find_tool("llama-server"))
    home = tempfile.mkdtemp(prefix="gpcrun-startup-")
    env = {**os.environ, "GPCRUN_HOME": home, "GPCRUN_CALIBRATE": "cached"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have .pyc caches; the warm-up run below writes them
    common = ["-c", "2048", "-t", "1", "-tb", "1"]
    # one planned run first: the profile and calibration caches are what a second start of the day finds
    warm = free_port()
    _ready_s([sys.executable, "-m", "gpcrun", "serve", "--quiet", model, "--", *common, "--port", str(warm)], warm, env)
    # "bare --fit off": the plan writes --fit off (llama.cpp's own load-time fit would redo its work), which also
    # spares llama-server that fit's dry run; beside it, gpcrun's own cost shows without that saving
    times: dict[str, list[float]] = {"bare llama-server": [], "gpcrun serve": [], "gpcrun serve --no-plan": [],
                                     "bare --fit off": []}
    for _ in range(args.runs):
        for name in times:
            port = free_port()
            if name.startswith("bare"):
                argv = [server, "-m", model, *common, "--host", "127.0.0.1", "--port", str(port),
                        *(["--fit", "off"] if "fit" in name else [])]
            else:
                argv = [sys.executable, "-m", "gpcrun", "serve", "--quiet",
                        *(["--no-plan"] if "no-plan" in name else []), model, "--", *common, "--port", str(port)]
            times[name].append(_ready_s(argv, port, env))
    bare = statistics.median(times["bare llama-server"])
    print(f"time to ready on SmolLM2-135M, median of {args.runs} alternating runs (process start -> /health 200):")
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name == "bare llama-server" else f"  ({med - bare:+.3f} s vs bare)"
        print(f"  {name:24s} {med:.3f} s  [{min(ts):.3f}-{max(ts):.3f}]{extra}")
    over = statistics.median(times["gpcrun serve"]) - bare
    own = statistics.median(times["gpcrun serve"]) - statistics.median(times["bare --fit off"])
    print(f"gpcrun's own start-up (serve vs bare with the same --fit off): {own:+.3f} s")
    print(f"target: planned serve within bare + 0.150 s: {'MET' if over <= 0.15 else 'MISSED'} ({over:+.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
