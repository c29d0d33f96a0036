#!/usr/bin/env python3
"""`gpcrun bench` (through llama-server's HTTP API) next to llama-bench (the library, no server) on the same
model, threads, prompt and generation lengths: decode and prefill tok/s from both and their ratio.

The two run alternately (gpcrun, llama-bench, gpcrun, llama-bench...) so that drift on a shared machine hits
both; medians over the rounds are compared. Target: decode within 10 %.

What differs by construction, and is printed next to the numbers:
- depth: the server decodes after a P-token prompt (KV cache at P..P+G); llama-bench's tgG runs on an empty
  cache. `tgG @ dP` (llama-bench -d P) is measured too, so the depth effect is separated from the rest;
- decode steps: llama-bench times G single-token decodes; llama-server generates G tokens with G-1 decode
  steps (the first token comes from the prompt's logits) and divides by G-1: both are per-step rates;
- sampling: the server samples (greedy) and detokenises every token, llama-bench only decodes;
- slots and context: the server holds a -c from the plan (n_ctx padded to 256, one slot); llama-bench's context
  is just P+G; attention only reads the used cells, so this shows as noise at small depths;
- HTTP: the server's timings are measured inside the server (HTTP is not in them); the streamed ITL is, and is
  printed for comparison;
- prompt tokens: gpcrun sends P random ordinary text tokens (no BOS); llama-bench uses random token ids.

    python scripts/bench/bench_vs_llama_bench.py [--model PATH ...] [--tiny] [--threads 1,2] [-p 128] [-n 64]
                                                  [-r 3] [--rounds 2]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.launch.binary import find_tool  # noqa: E402


def script_out(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=3600).stdout
    return out.strip().splitlines()[-1]


def default_models(tiny: bool) -> list[Path]:
    models = [Path(script_out("scripts/fetch_demo_model.py"))]
    if tiny:
        quant = find_tool("llama-quantize")
        manifest = json.loads(subprocess.run([sys.executable, "scripts/gen_models.py", "--quantize", str(quant)],
                                             cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        models.append(Path(manifest["models"]["tiny-llama-q8_0"]))
    return models


def run_gpcrun(home: Path, model: Path, p: int, n: int, reps: int, threads: int) -> dict:
    env = dict(os.environ, GPCRUN_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "gpcrun", "bench", str(model), "-p", str(p), "-n", str(n), "-r",
                        str(reps), "--json", "--quiet", "--", "-t", str(threads), "-tb", str(threads)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"gpcrun bench failed ({r.returncode}): {r.stderr[-2000:]}")
    m = json.loads(r.stdout)["measured"]
    return {"decode": m["decode_tok_s"]["samples"], "prefill": m["prefill_tok_s"]["samples"],
            "itl_p50_ms": m["itl_ms"]["p50"], "ctx": m["server"]["n_ctx"], "slots": m["server"]["total_slots"]}


def run_llama_bench(bench: Path, model: Path, p: int, n: int, reps: int, threads: int) -> dict:
    def one(*args: str) -> list[dict]:
        r = subprocess.run([str(bench), "-m", str(model), "-t", str(threads), "-r", str(reps), "-o", "json", *args],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"llama-bench failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout)
    rows = one("-p", str(p), "-n", str(n))
    pp = next(x for x in rows if x["n_prompt"] == p and x["n_gen"] == 0)
    tg = next(x for x in rows if x["n_gen"] == n and x["n_prompt"] == 0)
    tgd = one("-p", "0", "-n", str(n), "-d", str(p))[0]  # decode at the server's depth
    return {"prefill": pp["samples_ts"], "decode": tg["samples_ts"], "decode_at_depth": tgd["samples_ts"]}


def med(xs) -> float:
    return statistics.median(xs)


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", type=Path, help="GGUF (repeatable); default: SmolLM2-135M Q4_1")
    ap.add_argument("--tiny", action="store_true", help="also the generated tiny llama (q8_0)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="alternations of gpcrun and llama-bench")
    a = ap.parse_args()
    models = a.model or default_models(a.tiny)
    if a.model and a.tiny:
        models += default_models(True)[1:]
    bench = find_tool("llama-bench")
    threads = [int(x) for x in a.threads.split(",")]
    print(f"llama-bench {bench}; cores {os.cpu_count()}; load average {loadavg()}")
    print(f"-p {a.p} -n {a.n} -r {a.r}, {a.rounds} alternating rounds; gpcrun bench ... -- -t T -tb T;"
          f" llama-bench -t T (pp{a.p}, tg{a.n}, tg{a.n} @ d{a.p})")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpcrun-vs-") as tmp:
        home = Path(tmp)
        for model in models:
            for t in threads:
                g = {"decode": [], "prefill": [], "itl": []}
                lb = {"decode": [], "prefill": [], "decode_at_depth": []}
                ctx = slots = None
                for k in range(a.rounds):
                    t0 = time.monotonic()
                    # ABBA: who goes first alternates, so a drift in the machine's load hits both alike
                    for which in (("g", "l") if k % 2 == 0 else ("l", "g")):
                        if which == "g":
                            x = run_gpcrun(home, model, a.p, a.n, a.r, t)
                            g["decode"] += x["decode"]
                            g["prefill"] += x["prefill"]
                            g["itl"].append(x["itl_p50_ms"])
                            ctx, slots = x["ctx"], x["slots"]
                        else:
                            y = run_llama_bench(bench, model, a.p, a.n, a.r, t)
                            for key in lb:
                                lb[key] += y[key]
                    print(f"  {model.name} -t {t} round {k + 1}: gpcrun decode {med(x['decode']):.1f} prefill"
                          f" {med(x['prefill']):.1f} | llama-bench tg {med(y['decode']):.1f} tg@d"
                          f" {med(y['decode_at_depth']):.1f} pp {med(y['prefill']):.1f}"
                          f" ({time.monotonic() - t0:.0f} s, load {loadavg()})", flush=True)
                results.append((model, t, g, lb, ctx, slots))
    print()
    hdr = (f"{'model':32s} {'-t':>2s} {'stat':>6s} {'gpcrun dec':>10s} {'llb tg':>8s} {'llb tg@d':>8s} {'dec ratio':>9s}"
           f" {'@d ratio':>8s} {'gpcrun pp':>9s} {'llb pp':>8s} {'pp ratio':>8s} {'ITL p50':>8s}  verdict")
    print(hdr)
    print("-" * len(hdr))
    # the target is judged on real models; a generated tiny model (~0.3 ms/token) measures the server's per-token
    # overhead, not the model, and is shown for information
    worst = {(stat, ref): 0.0 for stat in ("median", "best") for ref in ("tg", "tg@d")}
    notes = []
    for model, t, g, lb, ctx, slots in results:
        judged = not model.name.startswith("tiny-")
        # median: the typical sample; best: the least disturbed one (contention only ever slows a run down)
        for stat, f in (("median", med), ("best", max)):
            gd, gp = f(g["decode"]), f(g["prefill"])
            ld, lp, ldd = f(lb["decode"]), f(lb["prefill"]), f(lb["decode_at_depth"])
            r_dec, r_dd, r_pp = gd / ld, gd / ldd, gp / lp
            ok = abs(r_dec - 1) <= 0.10  # the comparison: llama-bench -p P -n G, same threads
            if judged:
                worst[(stat, "tg")] = max(worst[(stat, "tg")], abs(r_dec - 1))
                worst[(stat, "tg@d")] = max(worst[(stat, "tg@d")], abs(r_dd - 1))
            itl = med(g["itl"]) if stat == "median" else min(g["itl"])
            print(f"{model.name[:32]:32s} {t:>2d} {stat:>6s} {gd:10.1f} {ld:8.1f} {ldd:8.1f} {r_dec:9.3f} {r_dd:8.3f}"
                  f" {gp:9.1f} {lp:8.1f} {r_pp:8.3f} {itl:6.2f}ms  {'within 10 %' if ok else 'OUTSIDE 10 %'}"
                  f"{'' if judged else ' (info only)'}")
        gd, ld, ldd = med(g["decode"]), med(lb["decode"]), med(lb["decode_at_depth"])
        r_dd = gd / ldd
        itl_tok_s = 1000 / med(g["itl"]) if med(g["itl"]) else float("nan")
        sse_note = ("; above ~2000 tok/s several SSE events arrive in one read and the gaps collapse"
                    if gd > 2000 else "")
        depth = ldd / ld - 1
        spread_g = statistics.pstdev(g["decode"]) / gd
        spread_l = statistics.pstdev(lb["decode"]) / ld
        if not judged:
            notes.append(f"{model.name} -t {t}: a token takes {1e3 / gd:.2f} ms in the server and {1e3 / ldd:.2f} ms in"
                         f" llama-bench at the same depth: the {1e3 / gd - 1e3 / ldd:.2f} ms difference is the server's"
                         f" per-token work (sampling over the vocabulary, detokenising, its task/result queues),"
                         f" {100 * (1 / gd - 1 / ldd) * 120:.1f} % of a token at a SmolLM2-like 120 tok/s")
        notes.append(f"{model.name} -t {t}: depth effect (llama-bench tg@d{a.p} vs tg) {100 * depth:+.1f} %;"
                     f" server vs same-depth llama-bench {100 * (r_dd - 1):+.1f} % (sampling + server loop);"
                     f" sample spread gpcrun {100 * spread_g:.1f} %, llama-bench {100 * spread_l:.1f} %;"
                     f" server ctx {ctx}, {slots} slot(s); streamed ITL p50 = {itl_tok_s:.1f} tok/s"
                     f" ({100 * (itl_tok_s / gd - 1):+.1f} % vs the server's own decode figure: HTTP + SSE"
                     f" per token{sse_note})")
    print()
    print("explanations:")
    for n in notes:
        print("  - " + n)
    print(f"  - load average at the end {loadavg()} on {os.cpu_count()} cores: other processes share these cores,"
          f" so single samples swing; the medians of alternating rounds are compared")
    for ref, what in (("tg", f"llama-bench tg{a.n} (empty KV cache, the issue's command)"),
                      ("tg@d", f"llama-bench tg{a.n} @ d{a.p} (the server's KV depth)")):
        for stat in ("median", "best"):
            w = worst[(stat, ref)]
            print(f"target: decode within 10 % of {what}, {stat} of samples: {'MET' if w <= 0.10 else 'NOT MET'}"
                  f" (worst |ratio - 1| = {100 * w:.1f} %)")
    return 0 if worst[("median", "tg@d")] <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
