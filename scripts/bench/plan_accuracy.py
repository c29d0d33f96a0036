#!/usr/bin/env python3
"""Plan accuracy against the real llama-server, planning speed against llama-fit-params, decode forecast
against a measured completion.

1. Memory: every generated tiny model (and SmolLM2) on a grid of contexts, KV types, -np, flash attention,
   ubatch and placements (-ngl 0 / partial / all, --n-cpu-moe, an -ot expert override) on a GPU-like device:
   ggml-rpc-server on localhost, which llama.cpp treats like a GPU (device RPC0). Each configuration starts
   llama-server once (-lv 4 --no-repack --fit off --no-warmup -t 1 -tb 1), the per-buffer lines (model / KV /
   RS / compute / output, 2-decimal MiB) are parsed per device, and compared with gpcrun.plan.memory_map for
   the same Placement on a Target whose one GPU is named RPC0.
   Targets: weights exact (print rounding only), context within 1 MiB, total (self) within 64 MiB or 2 %.
   llama.cpp's CPU_Mapped size is the mmap span from the first to the last CPU tensor in the file; where CPU
   tensors are not contiguous (partial -ngl, --n-cpu-moe, -ot) it exceeds the tensor bytes the plan counts, and
   the script reproduces the span to show that this is the only difference.
2. Planning time: `llama-fit-params -m MODEL -c CTX` (median of 3) vs in-process make_plan (median of many)
   and the whole `gpcrun plan MODEL --ctx CTX --json` process (median of 3); both verdicts side by side.
3. Decode: measured timings.predicted_per_second (n_predict 64, ~100-token prompt, -t 1, ngl 0) vs the
   uncalibrated forecast on the host bandwidth from `gpcrun profile` (bandwidth.cpu_memory.bytes_per_s).

CUDA compute buffers cannot be measured here (no GPU): the RPC0 figures are the CPU backend's graph
allocation for the offloaded part, which is what the planner's compute estimate is fitted on.

Usage: .venv/bin/python scripts/bench/plan_accuracy.py [--quick] [--only memory,timing,forecast]
                                                       [--dump FILE.jsonl] [--models NAME,...] [--errors all|worst]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import stop_group  # noqa: E402
from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.model import load_model  # noqa: E402
from gpcrun.plan import (EXPS_REGEX, MIB, DeviceTarget, LayoutTable, Placement, Request, Target,  # noqa: E402
                         forecast, make_plan, memory_map, output_buffer_bytes)

READY_TIMEOUT_S = 60
COLUMNS = ("model", "context", "compute", "output")
WEIGHT_TOL_MIB = 0.0051  # llama.cpp prints %.2f MiB: half a unit in the last place, plus float slack
CONTEXT_TOL_MIB = 1.0
TOTAL_TOL_MIB, TOTAL_TOL_FRAC = 64.0, 0.02
PROMPT = ("The history of the printing press begins in the fifteenth century, when movable metal type, oil-based "
          "inks and a screw press adapted from wine making came together in the workshop of Johannes Gutenberg in "
          "Mainz. Within fifty years presses were running in more than two hundred towns across Europe, and the "
          "price of books fell so far that ordinary merchants could own a small library. Pamphlets, calendars "
          "and broadsheets followed, and with them the first newspapers, printed weekly for readers in the trading "
          "cities of the north.")


# ----------------------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then reap; SIGKILL after a bounded wait."""
    stop_group(proc, 10)


class RpcServer:
    """ggml-rpc-server on 127.0.0.1: a CPU device llama.cpp places layers on as if it were a GPU."""

    def __init__(self, bin_path: Path, workdir: Path, threads: int = 1):
        self.bin_path, self.workdir, self.threads = bin_path, workdir, threads
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        self._log = open(self.workdir / f"rpc-{self.port}.log", "wb")
        self.proc = subprocess.Popen([str(self.bin_path), "-H", "127.0.0.1", "-p", str(self.port), "-t", str(self.threads)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ggml-rpc-server exited {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError("ggml-rpc-server did not listen within 10 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self._log.close()
            self.proc = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


def run_until_ready(argv: list[str], log_path: Path, timeout_s: float = READY_TIMEOUT_S,
                    on_ready=None) -> tuple[str, float]:
    """Start llama-server, wait for 'model loaded' (or exit), run on_ready(port) if given, stop it; (log, s)."""
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = t0 + timeout_s
            while True:
                text = log_path.read_text(errors="replace")
                if "llama_server: model loaded" in text or "listening on http" in text:
                    if on_ready is not None:
                        on_ready()
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited {proc.returncode}:\n{text[-1500:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama-server not ready in {timeout_s} s")
                time.sleep(0.02)
        finally:
            _stop(proc)
    return log_path.read_text(errors="replace"), time.monotonic() - t0


# ----------------------------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    model: str
    ngl: int
    ctx: int
    kv: str = "f16"
    np: int = 1
    fa: str = "auto"
    ub: int = 512
    ncmoe: int = 0
    ot: tuple[tuple[str, str], ...] = ()
    kvu: bool = False

    def label(self) -> str:
        s = f"ngl={self.ngl} c={self.ctx} kv={self.kv} np={self.np}"
        if self.kvu:
            s += " kvu"
        if self.fa != "auto":
            s += f" fa={self.fa}"
        if self.ub != 512:
            s += f" ub={self.ub}"
        if self.ncmoe:
            s += f" ncmoe={self.ncmoe}"
        if self.ot:
            s += " ot=" + ",".join(p for p, _ in self.ot)
        return s

    def server_args(self) -> list[str]:
        a = ["-ngl", str(self.ngl), "-c", str(self.ctx), "-ctk", self.kv, "-ctv", self.kv, "-np", str(self.np),
             "-fa", self.fa, "-ub", str(self.ub), "-b", str(max(self.ub, 2048))]
        if self.ncmoe:
            a += ["--n-cpu-moe", str(self.ncmoe)]
        for pat, buft in self.ot:
            a += ["-ot", f"{pat}={buft}"]
        return a + (["-kvu"] if self.kvu else [])

    def placement(self) -> Placement:
        return Placement(ngl=self.ngl, n_cpu_moe=self.ncmoe, ctx=self.ctx, type_k=self.kv, type_v=self.kv,
                         parallel=self.np, kv_unified=self.kvu, flash_attn=self.fa, n_ubatch=self.ub, overrides=self.ot)


def model_set() -> dict[str, Path]:
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gen_models.py"), "--quantize",
                          str(find_tool("llama-quantize"))], capture_output=True, text=True, check=True, timeout=1800)
    models = {k: Path(v) for k, v in json.loads(out.stdout)["models"].items()}
    smol = subprocess.run([sys.executable, str(ROOT / "scripts/fetch_demo_model.py")], capture_output=True,
                          text=True, check=True, timeout=600).stdout.strip().splitlines()[-1]
    models["smollm2-135m-q4_1"] = Path(smol)
    return models


def grid(models: dict[str, Path], quick: bool) -> list[Config]:
    """Placements x contexts with f16 KV, then KV type / -np / fa / ubatch variants at 2048 per placement."""
    out: list[Config] = []
    for name, path in models.items():
        info = load_model(path)
        f = info.facts
        L = int(f["block_count"])
        train = f.get("context_length") or 4096
        ctxs = [c for c in ((512, 2048) if quick else (512, 2048, 8192)) if c <= train]
        mid = 2048 if 2048 <= train else ctxs[-1]
        moe = bool(f.get("expert_count"))
        places = [dict(ngl=0), dict(ngl=L // 2 + 1), dict(ngl=L + 1)]
        if moe:
            places += [dict(ngl=L + 1, ncmoe=L // 2),
                       dict(ngl=L + 1, ot=((r"blk\.[12]\.ffn_(up|down|gate)_exps", "CPU"),))]
        if quick:
            places = places[::2] if not moe else [places[0], places[2], places[3]]
        for p in places:
            for c in ctxs:
                out.append(Config(name, ctx=c, **p))
            out.append(Config(name, ctx=mid, kv="q8_0", fa="on", **p))
            out.append(Config(name, ctx=mid, np=2, **p))
            if not quick:
                out.append(Config(name, ctx=mid, fa="off", **p))
                out.append(Config(name, ctx=mid, ub=128, **p))
                out.append(Config(name, ctx=mid, np=2, kv="q8_0", fa="on", ub=128, **p))
                out.append(Config(name, ctx=mid, np=2, kvu=True, **p))
    return out


# ----------------------------------------------------------------------------------------------- measure / plan

_BUF_RE = re.compile(r"(\S+)\s+(model|KV|RS|compute|output|DSV4 \w+ state) buffer size =\s+([\d.]+) MiB")
_COL = {"model": "model", "KV": "context", "RS": "context", "compute": "compute", "output": "output"}


def parse_buffers(log: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """({device: {column: MiB}}, {device: {column: lines}}) from llama.cpp's per-buffer lines; RPC* is RPC0."""
    out: dict[str, dict[str, float]] = {d: dict.fromkeys(COLUMNS, 0.0) for d in ("CPU", "RPC0")}
    n: dict[str, dict[str, int]] = {d: dict.fromkeys(COLUMNS, 0) for d in ("CPU", "RPC0")}
    for buf, kind, mib in _BUF_RE.findall(log):
        dev = "RPC0" if buf.startswith("RPC") else "CPU"
        col = "context" if kind.startswith("DSV4") else _COL[kind]  # deepseek4's compressor states
        out[dev][col] += float(mib)
        n[dev][col] += 1
    return out, n


def cpu_mapped_span_mib(info, cfg: Config) -> float:
    """llama.cpp's CPU_Mapped 'model buffer' is the mmap range from the first to the last CPU tensor in the file
    (llama_model_loader::get_mapping_range), gaps included; this reproduces it from the tensor placement rules."""
    L = int(info.facts["block_count"])
    start = max(L + 1 - cfg.ngl, 0)
    ots = [(re.compile(pat), buft.upper().startswith("CPU")) for pat, buft in cfg.ot]
    spans: dict[int, list[int]] = {}
    for t in info.tensors:
        hit = next((cpu for rx, cpu in ots if rx.search(t.name)), None)
        if hit is not None:
            on_cpu = hit
        elif t.layer is not None and t.layer < L:
            on_cpu = t.layer < start or (t.layer < cfg.ncmoe and bool(re.search(EXPS_REGEX, t.name)))
        elif t.name.startswith("output"):
            on_cpu = cfg.ngl == 0
        else:
            on_cpu = True  # input layer
        if on_cpu:
            lo_hi = spans.setdefault(t.shard, [t.offset, t.offset + t.n_bytes])
            lo_hi[0] = min(lo_hi[0], t.offset)
            lo_hi[1] = max(lo_hi[1], t.offset + t.n_bytes)
    return sum(hi - lo for lo, hi in spans.values()) / MIB


def rpc_target(host_bw: float | None = None) -> Target:
    big = 1 << 40
    return Target(DeviceTarget("CPU", "host", big, host_bw), (DeviceTarget("RPC0", "gpu", big, None),))


_TABLES: dict = {}


def plan_buffers(path: Path, cfg: Config) -> dict[str, dict[str, float]]:
    key = (str(path), cfg.ot)
    if key not in _TABLES:
        _TABLES[key] = LayoutTable(load_model(path), cfg.ot, 1)
    table = _TABLES[key]
    pl = cfg.placement()
    mem = memory_map(table, rpc_target(), pl, Request())
    out = {}
    for m in mem:
        out[m.device] = {"model": m.model_bytes / MIB, "context": m.context_bytes / MIB,
                         "compute": m.compute_bytes / MIB,
                         "output": output_buffer_bytes(table, pl) / MIB if m.kind == "host" else 0.0}
    return out


def run_memory(models: dict[str, Path], cfgs: list[Config], bins: dict[str, Path], work: Path,
               dump: Path | None) -> list[dict]:
    rpc = RpcServer(bins["ggml-rpc-server"], work)
    rows: list[dict] = []
    t0 = time.monotonic()
    dumpf = open(dump, "w") if dump else None
    try:
        for i, cfg in enumerate(cfgs):
            if not rpc.alive():
                rpc.start()
            argv = [str(bins["llama-server"]), "-m", str(models[cfg.model]), "--host", "127.0.0.1", "--port",
                    str(free_port()), "-t", "1", "-tb", "1", "-lv", "4", "--no-repack", "--fit", "off",
                    "--no-warmup", "--rpc", rpc.endpoint, *cfg.server_args()]
            try:
                log, _ = run_until_ready(argv, work / "server.log")
            except (RuntimeError, TimeoutError) as e:
                print(f"  FAILED {cfg.model} {cfg.label()}: {str(e).splitlines()[0]}", file=sys.stderr)
                rpc.stop()  # a half-served client can leave the RPC server in a bad state: start a fresh one
                continue
            meas, nlines = parse_buffers(log)
            plan = plan_buffers(models[cfg.model], cfg)
            span = cpu_mapped_span_mib(_TABLES[(str(models[cfg.model]), cfg.ot)].model, cfg)
            rows.append({"cfg": cfg, "meas": meas, "nlines": nlines, "plan": plan, "span": span})
            if dumpf:
                dumpf.write(json.dumps({"model": cfg.model, **{k: v for k, v in cfg.__dict__.items() if k != "ot"},
                                        "ot": [list(o) for o in cfg.ot], "meas": meas, "plan": plan, "span": span}) + "\n")
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{len(cfgs)} configurations, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        rpc.stop()
        if dumpf:
            dumpf.close()
    return rows


def _fmt_table(rows: list[list], header: list[str], align: str) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w[i]) if align[i] == "l" else c.rjust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def report_memory(rows: list[dict], show: str) -> bool:
    err_rows = []
    worst: dict[str, tuple[float, str]] = {}
    tot_fail = []
    span_explained = []
    weight_miss = []
    worst_adj: dict[str, float] = {}
    n_cells = 0
    for r in rows:
        cfg, meas, plan, nl = r["cfg"], r["meas"], r["plan"], r["nlines"]
        for dev in ("CPU", "RPC0"):
            m, p = meas[dev], plan[dev]
            spanned = False
            for col in (*COLUMNS, "self"):
                if col == "self":
                    mv = m["model"] + m["context"] + m["compute"]
                    pv = p["model"] + p["context"] + p["compute"]
                else:
                    mv, pv = m[col], p[col]
                d = pv - mv
                n_cells += 1
                if abs(d) > worst.get(col, (-1.0, ""))[0]:
                    worst[col] = (abs(d), f"{cfg.model} {cfg.label()} {dev}")
                rounding = WEIGHT_TOL_MIB * max(1, nl[dev].get(col, 1))  # each printed line rounds on its own
                tol = {"model": rounding, "context": CONTEXT_TOL_MIB, "output": rounding}.get(col)
                note = ""
                if col == "model" and abs(d) > tol:
                    if dev == "CPU" and abs(r["span"] - mv) <= rounding:
                        span_explained.append((cfg, d))
                        note = f"mmap span {r['span']:.2f}"
                    else:
                        weight_miss.append((cfg, dev, d))
                if col == "self" and abs(d) > max(TOTAL_TOL_MIB, TOTAL_TOL_FRAC * mv):
                    tot_fail.append((cfg, dev, mv, pv))
                bad = tol is not None and abs(d) > tol and not note
                if col == "model" and note:
                    adj = abs(r["span"] - mv)  # the print, reproduced from the same placement
                    spanned = True
                elif col == "self" and spanned:
                    adj = abs(d - p["model"] + r["span"])
                else:
                    adj = abs(d)
                if adj > worst_adj.get(col, -1.0):
                    worst_adj[col] = adj
                if show == "all" or bad or (col == "compute" and abs(d) > 1.0):
                    err_rows.append([cfg.model, cfg.label(), dev, col, f"{mv:.2f}", f"{pv:.2f}", f"{d:+.2f}", note])
    print(f"\n== memory: {len(rows)} llama-server runs, {n_cells} device x column cells ==")
    title = ("all cells" if show == "all" else
             "cells off target (weights/output beyond print rounding, context > 1 MiB) and compute > 1 MiB off")
    print(f"-- {title} (MiB) --")
    if err_rows:
        print(_fmt_table(err_rows, ["model", "config", "device", "column", "llama.cpp", "plan", "diff", "why"],
                         "lllrrrrl"))
    else:
        print("(none)")
    print("\n-- summary: max |plan - llama.cpp| per column (MiB) --")
    ok = {"model": not weight_miss, "context": worst.get("context", (0, ""))[0] <= CONTEXT_TOL_MIB,
          "output": worst.get("output", (0, ""))[0] <= WEIGHT_TOL_MIB, "self": not tot_fail}
    target = {"model": "exact (print rounding)", "context": "<= 1 MiB", "output": "exact (print rounding)",
              "compute": "(no target)", "self": "<= max(64 MiB, 2 %)"}
    srows = []
    for col in (*COLUMNS, "self"):
        w, where = worst.get(col, (0.0, "-"))
        srows.append([col, f"{w:.3f}", f"{worst_adj.get(col, 0.0):.3f}", target[col],
                      "-" if col not in ok else ("HOLDS" if ok[col] else "MISSED"), where])
    print(_fmt_table(srows, ["column", "max abs err", "w/ mmap span", "target", "status", "worst case"], "lrrlll"))
    if span_explained:
        print(f"model: {len(span_explained)} CPU cells differ from llama.cpp's print only by the mmap span "
              f"(CPU_Mapped = first..last CPU tensor in the file, gaps included; reproduced to the print rounding; "
              f"up to {max(abs(d) for _, d in span_explained):.2f} MiB): the plan counts tensor bytes")
    if weight_miss:
        print(f"model: {len(weight_miss)} cells off beyond rounding and not explained by the mmap span")
    rel = [(r["plan"][d]["compute"] - r["meas"][d]["compute"]) / r["meas"][d]["compute"]
           for r in rows for d in ("CPU", "RPC0") if r["meas"][d]["compute"] > 0.5]
    under = [r["meas"][d]["compute"] - r["plan"][d]["compute"] for r in rows for d in ("CPU", "RPC0")]
    if rel:
        print(f"compute: relative error {100 * min(rel):+.1f} % .. {100 * max(rel):+.1f} % (buffers > 0.5 MiB, "
              f"n={len(rel)}); largest underestimate {max(under):.2f} MiB")
    return all(ok.values())


# ----------------------------------------------------------------------------------------------- timing

def _median_time(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_timing(models: dict[str, Path], names: list[str], bins: dict[str, Path], ctx: int = 4096) -> None:
    from gpcrun.hardware.profile import get_profile
    from gpcrun.targets import target_from_profile

    target = target_from_profile(get_profile().to_json())
    gpcrun_exe = str(Path(sys.executable).with_name("gpcrun"))
    rows = []
    ratios_inproc, ratios_proc = [], []
    agree_all = True
    for name in names:
        path = str(models[name])
        c = min(ctx, load_model(path).facts.get("context_length") or ctx)
        fp_rc: list[int] = []
        fp_out: list[str] = []

        def fit():
            p = subprocess.run([str(bins["llama-fit-params"]), "-m", path, "-c", str(c)], capture_output=True,
                               text=True, timeout=120)
            fp_rc.append(p.returncode)
            fp_out.append(p.stdout.strip())

        t_fit = _median_time(fit, 3)
        info = load_model(path)
        req = Request(ctx=c)
        plan = make_plan(info, target, req)
        n = 50
        t_plan = _median_time(lambda: make_plan(info, target, req), n)
        plan_rc: list[int] = []

        def plan_proc():
            p = subprocess.run([gpcrun_exe, "plan", path, "--ctx", str(c), "--json"], capture_output=True,
                               text=True, timeout=120)
            plan_rc.append(p.returncode)

        t_proc = _median_time(plan_proc, 3)
        fit_ok = fp_rc[-1] == 0 and bool(fp_out[-1])
        plan_ok = plan.verdict == "ship" and plan_rc[-1] == 0
        agree_all &= fit_ok == plan_ok
        ratios_inproc.append(t_fit / t_plan)
        ratios_proc.append(t_fit / t_proc)
        rows.append([name, c, f"{1000 * t_fit:.0f}", f"{1000 * t_plan:.2f}", f"{1000 * t_proc:.0f}",
                     f"{t_fit / t_plan:.0f}x", f"{t_fit / t_proc:.2f}x", "fits" if fit_ok else "no",
                     "ship" if plan_ok else plan.verdict, "yes" if fit_ok == plan_ok else "NO",
                     fp_out[-1] or "-"])
    print("\n== planning time: llama-fit-params vs gpcrun (CPU-only target: this machine) ==")
    print(_fmt_table(rows, ["model", "ctx", "fit-params ms", "make_plan ms", "gpcrun plan ms", "fit/make_plan",
                            "fit/gpcrun plan", "fit-params", "gpcrun", "agree", "fit-params flags"],
                     "lrrrrrrllll"))
    print(f"median time ratio (> 1: gpcrun faster) fit-params / make_plan in-process: "
          f"{statistics.median(ratios_inproc):.0f}x; fit-params / `gpcrun plan --json` whole process: "
          f"{statistics.median(ratios_proc):.2f}x; "
          f"verdicts agree on all: {agree_all}")


# ----------------------------------------------------------------------------------------------- forecast

def run_forecast(models: dict[str, Path], names: list[str], bins: dict[str, Path], work: Path) -> None:
    import requests

    from gpcrun.hardware.profile import get_profile
    from gpcrun.targets import target_from_profile

    doc = get_profile().to_json()
    bw = ((doc.get("bandwidth") or {}).get("cpu_memory") or {}).get("bytes_per_s")
    target = replace(target_from_profile(doc), gpus=())  # ngl 0: CPU only
    rows = []
    n_predict = 64
    for name in names:
        path = models[name]
        port = free_port()
        argv = [str(bins["llama-server"]), "-m", str(path), "--host", "127.0.0.1", "--port", str(port),
                "-t", "1", "-tb", "1", "-ngl", "0", "-c", "2048", "-np", "1", "--fit", "off"]
        runs: list[dict] = []

        def complete():
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # 'model loaded' is logged just before the HTTP loop answers
                try:
                    if requests.get(url + "/health", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.05)
            for _ in range(3):  # best of 3: other load on a 2-core box only ever slows a run down
                r = requests.post(url + "/completion", json={"prompt": PROMPT, "n_predict": n_predict,
                                                              "cache_prompt": False, "ignore_eos": True,
                                                              "temperature": 0}, timeout=300)
                r.raise_for_status()
                runs.append(r.json()["timings"])

        load = os.getloadavg()[0]
        run_until_ready(argv, work / "forecast.log", on_ready=complete)
        table = LayoutTable(load_model(path))
        pl = Placement(ngl=0, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16")
        prompt_n = runs[0]["prompt_n"]
        fill = int(prompt_n + n_predict // 2)  # mean KV fill over the generated tokens
        fc = forecast(table, target, pl, Request(decode_at_tokens=fill))
        speeds = sorted(t["predicted_per_second"] for t in runs)
        meas = speeds[-1]
        lo, hi = fc.decode_band_tok_s
        rows.append([name, prompt_n, f"{meas:.1f}", f"{statistics.median(speeds):.1f}", f"{fc.decode_tok_s:.1f}",
                     f"{lo:.1f}-{hi:.1f}", f"{fc.decode_ceiling_tok_s:.1f}", f"{fc.decode_tok_s / meas:.2f}",
                     "yes" if lo <= meas <= hi else "no", f"{load:.1f}"])
    print(f"\n== decode: measured vs uncalibrated forecast (ngl 0, -t 1, n_predict {n_predict}; host bandwidth "
          f"{bw / 1e9 if bw else float('nan'):.1f} GB/s from gpcrun profile) ==")
    print(_fmt_table(rows, ["model", "prompt tok", "best of 3 tok/s", "median tok/s", "forecast tok/s", "band",
                            "ceiling", "forecast/best", "in band", "load avg"], "lrrrrrrrlr"))


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset: fewer models, contexts and variants")
    ap.add_argument("--only", default="memory,timing,forecast", help="sections to run (comma-separated)")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: all)")
    ap.add_argument("--dump", type=Path, default=None, help="write every memory measurement as JSON lines")
    ap.add_argument("--errors", choices=("worst", "all"), default="worst",
                    help="print only off-target cells (default) or every cell")
    args = ap.parse_args()
    sections = set(args.only.split(","))
    bins = {n: find_tool(n) for n in ("llama-server", "llama-fit-params", "llama-quantize")}
    bins["ggml-rpc-server"] = bins["llama-server"].with_name("ggml-rpc-server")
    if "memory" in sections and not bins["ggml-rpc-server"].exists():
        print("ggml-rpc-server missing: rebuild llama.cpp with -DGGML_RPC=ON (scripts/build_llama.py)",
              file=sys.stderr)
        return 2
    models = model_set()
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    elif args.quick:
        keep = ("tiny-llama-q8_0", "tiny-qwen3moe-q4_k_m", "tiny-gemma3-f16", "tiny-deepseek2-q8_0",
                "tiny-mamba-q8_0", "tiny-qwen2moe-q8_0", "smollm2-135m-q4_1")
        models = {k: v for k, v in models.items() if k in keep}
    ok = True
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plan-accuracy-") as tmp:
        work = Path(tmp)
        if "memory" in sections:
            cfgs = grid(models, args.quick)
            print(f"memory: {len(cfgs)} configurations on {len(models)} models", file=sys.stderr)
            rows = run_memory(models, cfgs, bins, work, args.dump)
            ok &= report_memory(rows, args.errors)
            print(f"(memory section: {time.monotonic() - t0:.0f} s)")
        if "timing" in sections:
            names = list(models) if not args.quick else [n for n in models if n.startswith(("smollm2", "tiny-llama"))]
            run_timing(models, names, bins)
        if "forecast" in sections:
            names = [n for n in ("smollm2-135m-q4_1", "tiny-llama-f16", "tiny-qwen3moe-q8_0") if n in models]
            if not names:
                names = list(models)[:3]
            run_forecast(models, names, bins, work)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
