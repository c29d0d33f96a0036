#!/usr/bin/env python3
"""Swap latency of llama-server's router, side by side: the bare router vs the same router under `gpcrun serve`
(planned models, the watchdog sampling each child), on three generated tiny models, --models-max 1 on both so
that every request to another model unloads one and loads the next. Alternating runs; per model, the median
request time (load included) of each, and gpcrun's ratio; beside them the bare router with --fit off (what the
plan writes), so that gpcrun's own cost shows.

Usage: .venv/bin/python scripts/bench/router_swap.py [--runs N] [--requests N]
"""
from __future__ import annotations

import argparse
import json
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

MODELS = {"gemma": "tiny-gemma3-f16", "llama": "tiny-llama-f16", "qwen3moe": "tiny-qwen3moe-f16"}


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except OSError:
        return 0


def _post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        return r.status


def _one_run(argv: list[str], port: int, env: dict, n: int) -> dict[str, list[float]]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while _get(base + "/models") != 200:
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"{argv[0]} did not start")
            time.sleep(0.02)
        out: dict[str, list[float]] = {m: [] for m in MODELS}
        names = list(MODELS)
        for i in range(n):
            name = names[i % len(names)]
            t = time.monotonic()
            if _post(base + "/completion", {"model": name, "prompt": "Hi", "n_predict": 1}) != 200:
                raise RuntimeError(f"request to {name} failed")
            out[name].append(time.monotonic() - t)
        return out
    finally:
        stop_group(proc, 30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=60)
    args = ap.parse_args()
    server = find_tool("llama-server")
    manifest = json.loads(subprocess.run([sys.executable, str(ROOT / "scripts/gen_models.py"), "--quantize",
                                          str(server.parent / "llama-quantize")], capture_output=True, text=True,
                                         check=True).stdout)
    d = Path(tempfile.mkdtemp(prefix="gpcrun-router-bench-"))
    for name, key in MODELS.items():
        (d / f"{name}.gguf").symlink_to(manifest["models"][key])
    env = {**os.environ, "GPCRUN_HOME": str(d / "home"), "GPCRUN_CALIBRATE": "cached"}
    common = ["--models-dir", str(d), "--models-max", "1", "-t", "1", "-tb", "1"]
    # "bare --fit off": gpcrun's plan writes --fit off for every model (llama.cpp's load-time fit would redo it,
    # with a dry run per load); beside it, gpcrun's own cost (supervision, per-child sampling) shows on its own
    times: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODELS}
                                                for k in ("bare router", "gpcrun serve", "bare --fit off")}
    for _ in range(args.runs):
        for kind in times:
            port = free_port()
            argv = ([str(server), *common, "--port", str(port)] if kind == "bare router" else
                    [str(server), *common, "--port", str(port), "--fit", "off"] if kind == "bare --fit off" else
                    [sys.executable, "-m", "gpcrun", "serve", "--quiet", "--", *common, "--port", str(port)])
            for m, ts in _one_run(argv, port, env, args.requests).items():
                times[kind][m] += ts
    print(f"router swap latency, --models-max 1, {args.runs} alternating runs x {args.requests} round-robin requests"
          " (median request s, load included):")
    rows = {**{m: {k: statistics.median(v[m]) for k, v in times.items()} for m in MODELS},
            "all": {k: statistics.median([t for ts in v.values() for t in ts]) for k, v in times.items()}}
    for m, r in rows.items():
        print(f"  {m:10s} bare {r['bare router']:.3f} s   gpcrun {r['gpcrun serve']:.3f} s (ratio"
              f" {r['gpcrun serve'] / r['bare router']:.2f})   bare --fit off {r['bare --fit off']:.3f} s (gpcrun's"
              f" own ratio {r['gpcrun serve'] / r['bare --fit off']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
