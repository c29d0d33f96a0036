#!/usr/bin/env python3
"""GGUF header read speed, side by side: gguf.GGUFReader, a plain-stdlib struct walker, gpcrun's load_model
(in-process) and `gpcrun inspect FILE --json` as a whole process; checks that all agree.

Usage: .venv/bin/python scripts/bench/inspect_speed.py [MODEL.gguf ...] [--runs 7] [--skip-reader-over MB]
Files: llama.cpp's models/ggml-vocab-*.gguf (from scripts/build_llama.py --source-only) plus any given.
Targets (issue 2): gemma-4 vocab header <= 50 ms in-process, `gpcrun inspect` whole process <= 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.model import load_model  # noqa: E402

_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
          8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}


def stdlib_walk(path: str) -> tuple[dict, list]:
    """Reference: read the file and walk every value and every string with struct, no numpy."""
    with open(path, "rb") as f:
        buf = f.read()
    bo = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"
    u32, u64 = struct.Struct(bo + "I").unpack_from, struct.Struct(bo + "Q").unpack_from
    n_t, n_kv = struct.unpack_from(bo + "QQ", buf, 8)
    pos = 24
    kvs = {}
    for _ in range(n_kv):
        n = u64(buf, pos)[0]
        key = buf[pos + 8:pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        vt = u32(buf, pos)[0]
        pos += 4
        if vt == 9:
            et, count = u32(buf, pos)[0], u64(buf, pos + 4)[0]
            pos += 12
            if et == 8:
                for _ in range(count):  # the loop the fast paths avoid
                    pos += 8 + u64(buf, pos)[0]
            else:
                pos += count * struct.calcsize(_FMT[et])
            kvs[key] = ("ARRAY", _NAMES[et], count)
        elif vt == 8:
            pos += 8 + u64(buf, pos)[0]
            kvs[key] = ("STRING", None, None)
        else:
            pos += struct.calcsize(_FMT[vt])
            kvs[key] = (_NAMES[vt], None, None)
    tensors = []
    for _ in range(n_t):
        n = u64(buf, pos)[0]
        name = buf[pos + 8:pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        nd = u32(buf, pos)[0]
        dims = struct.unpack_from(f"{bo}{nd}Q", buf, pos + 4)
        pos += 4 + 8 * nd
        tensors.append((name, u32(buf, pos)[0], tuple(dims), u64(buf, pos + 4)[0]))
        pos += 12
    return kvs, tensors


def gpcrun_view(info) -> tuple[dict, list]:
    kvs = {k: (f.type, f.elem_type, f.count) for k, f in info.metadata.items()}
    return kvs, [(t.name, t.ggml_type, t.shape, t.offset) for t in info.tensors if t.shard == 0]


def reader_view(path: str) -> tuple[dict, list]:
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(path)
    kvs = {}
    for name, f in r.fields.items():  # touch every field
        if name.startswith("GGUF."):
            continue
        vt = GGUFValueType(int(f.parts[2][0]))
        if vt == GGUFValueType.ARRAY:
            kvs[name] = ("ARRAY", GGUFValueType(int(f.parts[3][0])).name, int(f.parts[4][0]))
        else:
            kvs[name] = (vt.name, None, None)
    tensors = [(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset) - r.data_offset)
               for t in r.tensors]
    return kvs, tensors


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def gpcrun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("gpcrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gpcrun"]


def process_ms(path: str, runs: int) -> tuple[float, float, int]:
    """Median wall ms and median CPU ms (user + sys: less sensitive to a busy machine) of whole runs."""
    ts, cpu, rc = [], [], 0
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        rc = subprocess.run(gpcrun_cmd() + ["inspect", path, "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        ts.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return statistics.median(ts) * 1000, statistics.median(cpu) * 1000, rc


def vocab_files() -> list[str]:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_llama.py"), "--source-only"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        print(f"(no llama.cpp source tree: {out.stderr.strip()[-200:]})", file=sys.stderr)
        return []
    d = Path(out.stdout.strip().splitlines()[-1]) / "models"
    return [str(p) for p in sorted(d.glob("ggml-vocab-*.gguf"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="extra GGUF files (first shard of a split model)")
    ap.add_argument("--runs", type=int, default=7, help="timed load_model runs after one warm-up (default 7)")
    ap.add_argument("--process-runs", type=int, default=5, help="gpcrun inspect runs, median (default 5)")
    ap.add_argument("--skip-reader-over", type=float, default=None, metavar="MB",
                    help="skip GGUFReader on files larger than MB (it takes ~1.3 s/MB)")
    ap.add_argument("--no-vocab", action="store_true", help="only the files given")
    args = ap.parse_args()

    files = ([] if args.no_vocab else vocab_files()) + args.models
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on "
          f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    head = (f"{'file':<34} {'MB':>6} {'GGUFReader s':>12} {'walk ms':>8} {'gpcrun ms best/med':>19} "
            f"{'reader/gpcrun':>13} {'process ms':>10} {'(cpu)':>6}  same")
    print(head)
    print("-" * len(head))
    bad = 0
    results = {}
    for path in files:
        size_mb = os.path.getsize(path) / 1e6
        load_model(path)  # warm-up: page cache, imports
        ts = []
        for _ in range(args.runs):
            t, info = timed(load_model, path)
            ts.append(t)
        best, med = min(ts) * 1000, statistics.median(ts) * 1000
        walk_s, ref = min((timed(stdlib_walk, path) for _ in range(3)), key=lambda x: x[0])
        mine = gpcrun_view(info)
        same = mine == ref
        if args.skip_reader_over is not None and size_mb > args.skip_reader_over:
            reader_s, reader_txt, ratio = None, "skipped", "-"
        else:
            reader_s, rv = timed(reader_view, path)
            same = same and rv == mine
            reader_txt, ratio = f"{reader_s:.2f}", f"{reader_s * 1000 / best:.0f}x"
        proc, proc_cpu, rc = process_ms(path, args.process_runs)
        same = same and rc == 0
        bad += not same
        results[Path(path).name] = (best, proc, proc_cpu)
        print(f"{Path(path).name[:34]:<34} {size_mb:6.1f} {reader_txt:>12} {walk_s * 1000:8.1f} "
              f"{best:9.1f} /{med:7.1f} {ratio:>13} {proc:10.0f} {proc_cpu:6.0f}  {'yes' if same else 'NO'}",
              flush=True)
    g = results.get("ggml-vocab-gemma-4.gguf")
    if g:
        print(f"target gemma-4 in-process <= 50 ms: {g[0]:.1f} ms {'PASS' if g[0] <= 50 else 'FAIL'}; "
              f"whole process <= 300 ms: {g[1]:.0f} ms wall ({g[2]:.0f} ms CPU) {'PASS' if g[1] <= 300 else 'FAIL'}")
    print(f"load now: {os.getloadavg()[0]:.2f} (timings are noisy when it exceeds the CPU count)")
    if bad:
        print(f"{bad} file(s) disagree", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
