#!/usr/bin/env python3
"""How well one receipt calibrates the decode forecast of other configurations of the same model on this CPU.

Per pair, in a fresh GPCRUN_HOME (the hardware profile is measured once and copied in, so every pair and the
uncalibrated baseline share the same bandwidth figure, hence the same ceilings):
  1. `gpcrun bench MODEL <A>`                   -> one receipt, the only one in the store
  2. `gpcrun plan MODEL <B> --json` for each B   -> the calibrated decode forecasts (before any B runs)
     (`gpcrun plan` in a home without receipts gives the uncalibrated forecasts, for comparison)
  3. `gpcrun bench MODEL <B>` for each B         -> measured decode
  4. error % = (forecast - measured) / measured
Target: |calibrated error| <= 10 %.

A: --ctx 2048, KV f16, 1 slot. B1: --ctx 8192, 2 slots (context and slots only); B2: --ctx 8192, KV q8_0,
2 slots. All -t 1 -tb 1 (or --threads), -p 512 (the plan forecasts decode at 512 tokens of KV) -n 64 -r 3.

Then a diagnosis with llama-bench alone: decode at depth 0 and at the bench's depth per KV type, i.e. what the
KV cache costs per cached position on this CPU, against what reading its bytes costs in the forecast's model.

    python scripts/bench/calibration_error.py [--model PATH] [--pairs 3] [-p 512] [-n 64] [-r 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.hardware.profile import CACHE_FILE  # noqa: E402
from gpcrun.launch.binary import find_tool  # noqa: E402

CONFIG_A = ["--ctx", "2048", "--kv-type", "f16", "--parallel", "1"]
CONFIGS_B = {"B1": ["--ctx", "8192", "--kv-type", "f16", "--parallel", "2"],
             "B2": ["--ctx", "8192", "--kv-type", "q8_0", "--parallel", "2"]}


def gpcrun(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GPCRUN_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)


def bench(home: Path, model: Path, config: list[str], p: int, n: int, r: int, threads: int) -> dict:
    res = gpcrun(home, "bench", str(model), *config, "-p", str(p), "-n", str(n), "-r", str(r), "--json", "--quiet",
                 "--", "-t", str(threads), "-tb", str(threads))
    if res.returncode != 0:
        raise SystemExit(f"gpcrun bench {' '.join(config)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def plan_forecast(home: Path, model: Path, config: list[str], threads: int) -> dict:
    res = gpcrun(home, "plan", str(model), *config, "--json", "--", "-t", str(threads), "-tb", str(threads))
    if res.returncode != 0:
        raise SystemExit(f"gpcrun plan failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout)["plan"]["forecast"]


def kv_type(config: list[str]) -> str:
    return config[config.index("--kv-type") + 1]


def attention_cost_s(bench_bin: Path, model: Path, kv: str, depth: int, n: int, threads: int) -> tuple[float, float, float]:
    """Seconds per decoded token per cached KV position with this KV type, from llama-bench alone (tg at depth 0
    and at `depth`): what a per-machine profile step could measure once, like the copy bandwidth."""
    r = subprocess.run([str(bench_bin), "-m", str(model), "-p", "0", "-n", str(n), "-d", f"0,{depth}", "-t",
                        str(threads), "-ctk", kv, "-ctv", kv, "-fa", "1", "-r", "3", "-o", "json"],
                       capture_output=True, text=True, timeout=1800, check=True)
    rows = json.loads(r.stdout)
    tg0 = statistics.median(next(x for x in rows if x["n_depth"] == 0)["samples_ts"])
    tgd = statistics.median(next(x for x in rows if x["n_depth"] == depth)["samples_ts"])
    return (1 / tgd - 1 / tg0) / depth, tg0, tgd


def err(fc: float, measured: float) -> float:
    return 100 * (fc - measured) / measured


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="default: SmolLM2-135M-Instruct Q4_1")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    model = a.model or Path(subprocess.run([sys.executable, "scripts/fetch_demo_model.py"], cwd=ROOT, check=True,
                                           capture_output=True, text=True).stdout.strip().splitlines()[-1])
    t = a.threads
    print(f"model {model.name}; -t {t} -tb {t}; -p {a.p} -n {a.n} -r {a.r};"
          f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  A  = {' '.join(CONFIG_A)}")
    for name, cfg in CONFIGS_B.items():
        print(f"  {name} = {' '.join(cfg)}")
    rows = []  # one per (pair, B)
    a_runs = []
    with tempfile.TemporaryDirectory(prefix="gpcrun-cal-") as tmp:
        tmp = Path(tmp)
        base = tmp / "uncalibrated"
        base.mkdir()
        unc = {name: plan_forecast(base, model, cfg, t) for name, cfg in CONFIGS_B.items()}  # measures the profile
        unc_a = plan_forecast(base, model, CONFIG_A, t)
        bytes_of = {name: sum(f["bytes_read_per_token"].values()) for name, f in unc.items()}
        bytes_of["A"] = sum(unc_a["bytes_read_per_token"].values())
        for i in range(a.pairs):
            home = tmp / f"pair{i + 1}"
            home.mkdir()
            shutil.copy(base / CACHE_FILE, home / CACHE_FILE)
            ra = bench(home, model, CONFIG_A, a.p, a.n, a.r, t)["measured"]
            dec_a = ra["decode_tok_s"]["mean"]
            a_runs.append({"dec": dec_a, "ceil": ra["ceiling_decode_tok_s"]})
            print(f"pair {i + 1}: A measured {dec_a:.1f} ± {ra['decode_tok_s']['sd']:.1f} tok/s = {dec_a / ra['ceiling_decode_tok_s']:.3f}"
                  f" of its ceiling {ra['ceiling_decode_tok_s']:.1f}", flush=True)
            fcs = {name: plan_forecast(home, model, cfg, t) for name, cfg in CONFIGS_B.items()}  # before any B runs
            for name, cfg in CONFIGS_B.items():
                mb = bench(home, model, cfg, a.p, a.n, a.r, t)["measured"]
                fb = fcs[name]
                row = {"pair": i + 1, "B": name, "A": dec_a, "meas": mb["decode_tok_s"]["mean"],
                       "sd": mb["decode_tok_s"]["sd"], "fc": fb["decode_tok_s"], "cal": fb["calibrated"],
                       "method": fb["method"], "band": fb["decode_band_tok_s"], "ceil": fb["decode_ceiling_tok_s"],
                       "fc_unc": unc[name]["decode_tok_s"]}
                row["err"] = err(row["fc"], row["meas"])
                row["err_unc"] = err(row["fc_unc"], row["meas"])
                rows.append(row)
                print(f"  {name}: forecast {row['fc']:.1f} [{row['band'][0]:.1f}-{row['band'][1]:.1f}]"
                      f" ({row['method'] if row['cal'] else 'UNCALIBRATED'}); measured {row['meas']:.1f} ±"
                      f" {row['sd']:.1f} = {row['meas'] / row['ceil']:.3f} of its ceiling {row['ceil']:.1f};"
                      f" error {row['err']:+.1f} % (uncalibrated {row['err_unc']:+.1f} %)", flush=True)
    print()
    print(f"{'pair':>4s} {'B':>3s} {'A tok/s':>8s} {'B tok/s':>8s} {'fc cal':>8s} {'err cal':>8s} {'fc unc':>8s}"
          f" {'err unc':>8s} {'in band':>7s}")
    for r in rows:
        inb = r["band"][0] <= r["meas"] <= r["band"][1]
        print(f"{r['pair']:>4d} {r['B']:>3s} {r['A']:8.1f} {r['meas']:8.1f} {r['fc']:8.1f} {r['err']:+7.1f}%"
              f" {r['fc_unc']:8.1f} {r['err_unc']:+7.1f}% {str(inb):>7s}")
    print()
    verdict = {}
    for name in CONFIGS_B:
        rs = [r for r in rows if r["B"] == name]
        worst = max(abs(r["err"]) for r in rs)
        verdict[name] = worst <= 10
        print(f"{name}: mean |error| calibrated {statistics.fmean(abs(r['err']) for r in rs):.1f} %, uncalibrated"
              f" {statistics.fmean(abs(r['err_unc']) for r in rs):.1f} %; worst calibrated {worst:.1f} % ->"
              f" target {'MET' if worst <= 10 else 'NOT MET'}; bytes/token A {bytes_of['A'] / 2**20:.2f} MiB,"
              f" {name} {bytes_of[name] / 2**20:.2f} MiB: forecast ratio {name}/A"
              f" {bytes_of['A'] / bytes_of[name]:.3f}, measured {statistics.fmean(r['meas'] / r['A'] for r in rs):.3f}")
    print(f"uncalibrated forecast for A: {unc_a['decode_tok_s']:.1f} tok/s, error"
          f" {statistics.fmean(err(unc_a['decode_tok_s'], x['dec']) for x in a_runs):+.1f} % vs A measured")

    # Why the KV type breaks it: on a CPU, attention over the cache costs compute per cached position (f16 is
    # converted and multiplied in f32; q8_0 uses int8 dot products), far more than reading its bytes; the forecast
    # counts only the bytes, and calibration folds everything into one factor on the bytes ceiling.
    bench_bin = find_tool("llama-bench")
    depth = a.p + (a.n - 1) // 2  # mean KV depth while the bench decodes
    costs = {}
    print()
    print(f"diagnosis (llama-bench -p 0 -n {a.n} -d 0,{depth} -fa 1 -t {t}; the mean depth while gpcrun bench decodes):")
    for kv in sorted({kv_type(CONFIG_A), *(kv_type(c) for c in CONFIGS_B.values())}):
        c, d0, dd = attention_cost_s(bench_bin, model, kv, depth, a.n, t)
        costs[kv] = c
        print(f"  KV {kv}: {d0:.1f} tok/s at depth 0 -> {dd:.1f} at depth {depth}: {1e6 * c:.2f} us per token per"
              f" cached position ({1e3 * depth * c:.2f} ms/token at depth {depth})")
    bw = a_runs[0]["ceil"] * bytes_of["A"]  # the profile's bandwidth in the forecast, bytes/s
    kv_a = kv_type(CONFIG_A)
    for name, cfg in CONFIGS_B.items():
        kv_b = kv_type(cfg)
        if kv_b == kv_a:
            continue
        d_bytes = bytes_of["A"] - bytes_of[name]
        print(f"  A vs {name}: the forecast's model: {d_bytes / 2**20:.2f} MiB/token less KV to read at"
              f" {bw / 1e9:.1f} GB/s = {1e3 * d_bytes / bw:.2f} ms/token; measured by llama-bench:"
              f" {1e3 * depth * (costs[kv_a] - costs[kv_b]):.2f} ms/token")
        print(f"  {name} forecast with an attention term, from A's receipt: 1 / (1/A_measured - depth * c_{kv_a}"
              f" + depth * c_{kv_b})")
        rs = [r for r in rows if r["B"] == name]
        for r in rs:
            fb = 1 / (1 / r["A"] - depth * costs[kv_a] + depth * costs[kv_b])
            r["err_attn"] = err(fb, r["meas"])
            print(f"    pair {r['pair']}: {fb:.1f} tok/s vs measured {r['meas']:.1f}: error {r['err_attn']:+.1f} %"
                  f" (now {r['err']:+.1f} %)")
        print(f"  worst |error| with the attention term: {max(abs(r['err_attn']) for r in rs):.1f} %")
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
