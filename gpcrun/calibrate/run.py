"""Calibration with llama.cpp's own kernels: llama-bench on synthetic models (synth.py), one weight type each.

Measures, on the CPU backend (-ngl 0), for each weight type:
- decode: tokens/s of 16 generated tokens at each thread count that matters (1, powers of two, the physical
  cores), turned into effective bytes/s = layer bytes read per token x tok/s, the basis of every host-side
  term of the forecast;
- prefill: tokens/s of a 64-token prompt at the largest thread count.
Raw samples are kept. The document is cached per machine (the profile fingerprint) and llama.cpp build (the
llama-bench binary's identity) at $GPCRUN_HOME/calibration.json; `gpcrun profile --calibrate` redoes it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMA = "gpcrun.calibration/1"
TYPES = ("Q4_0", "Q4_K", "Q8_0", "F16")
DECODE_TOKENS = 16
from ..plan.constants import PREFILL_BATCH_TOKENS as PREFILL_TOKENS  # noqa: E402 - one number for both
REPS = 2
FILE = "calibration.json"


def thread_points(physical_cores: int) -> list[int]:
    """1, the powers of two below the physical core count, and the physical core count."""
    n = max(1, physical_cores)
    pts, t = [1], 2
    while t < n:
        pts.append(t)
        t *= 2
    return sorted(set(pts + [n]))


def target_bytes(llc_bytes: int | None) -> int:
    """Well above the last-level cache: 4x it, at least 256 MiB, at most 1 GiB."""
    return min(max(4 * (llc_bytes or 0), 256 << 20), 1 << 30)


def _bench(bench: Path, model: Path, args: list[str], timeout_s: float) -> list[dict]:
    p = subprocess.run([str(bench), "-m", str(model), "-ngl", "0", "-r", str(REPS), "-o", "json", *args],
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {p.returncode}): " + (p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout)


# Many thin layers: per-token time is mostly the per-layer fixed cost (graph nodes, thread syncs) on the CPU.
FIXED_LAYERS = 64


def calibrate(types: tuple[str, ...] = TYPES, physical_cores: int = 1, llc_bytes: int | None = None,
              progress=None, work_dir: Path | None = None, fixed: bool = True) -> dict:
    """Run the calibration now; returns the document (not cached: see load_or_calibrate)."""
    from ..launch.binary import find_tool
    from .synth import Shape, write_synth
    bench, quant = find_tool("llama-bench"), find_tool("llama-quantize")
    say = progress or (lambda msg: None)
    threads = thread_points(physical_cores)
    t0 = time.monotonic()
    decode, prefill, models, layer_fixed = [], [], {}, []
    with tempfile.TemporaryDirectory(prefix="gpcrun-calib-", dir=work_dir) as d:
        if fixed:
            say(f"calibrating the per-layer cost: {FIXED_LAYERS} thin Q8_0 layers at -t {','.join(map(str, threads))}")
            thin = Shape(n_embd=256, n_ff=768, n_head=4, n_head_kv=4)
            one = write_synth(Path(d), "Q8_0", 1, quant, thin)
            m = write_synth(Path(d), "Q8_0", one.layer_bytes * FIXED_LAYERS, quant, thin)
            for r in _bench(bench, m.path, ["-p", "0", "-n", str(4 * DECODE_TOKENS), "-t",
                                            ",".join(map(str, threads))], 120):
                layer_fixed.append({"threads": r["n_threads"], "tok_s": r["avg_ts"], "n_layer": m.n_layer,
                                    "bytes_per_token": m.layer_bytes * m.n_layer, "type": "Q8_0"})
        for ty in types:
            say(f"calibrating {ty}: writing a {target_bytes(llc_bytes) >> 20} MiB model")
            m = write_synth(Path(d), ty, target_bytes(llc_bytes), quant)
            read = m.layer_bytes * m.n_layer
            models[ty] = {"n_layer": m.n_layer, "layer_bytes": m.layer_bytes, "tensor_bytes": m.tensor_bytes,
                          "n_params": m.n_params}
            say(f"calibrating {ty}: decode at -t {','.join(map(str, threads))}, prefill at -t {threads[-1]}")
            for r in _bench(bench, m.path, ["-p", "0", "-n", str(DECODE_TOKENS), "-t", ",".join(map(str, threads))],
                            120):
                decode.append({"type": ty, "threads": r["n_threads"], "tok_s": r["avg_ts"],
                               "samples_tok_s": r.get("samples_ts"), "bytes_per_token": read,
                               "bytes_per_s": read * r["avg_ts"]})
            for r in _bench(bench, m.path, ["-p", str(PREFILL_TOKENS), "-n", "0", "-t", str(threads[-1])], 120):
                prefill.append({"type": ty, "threads": r["n_threads"], "tok_s": r["avg_ts"],
                                "samples_tok_s": r.get("samples_ts"), "n_params": m.n_params})
    return {"schema": SCHEMA, "measured_at_unix": int(time.time()), "seconds": round(time.monotonic() - t0, 1),
            "llama_bench": str(bench), "method": f"llama-bench -ngl 0 -r {REPS}: decode -p 0 -n {DECODE_TOKENS},"
            f" prefill -p {PREFILL_TOKENS} -n 0, on synthetic dense llama models of one weight type each"
            " (gpcrun/calibrate/synth.py)", "threads": threads, "models": models, "decode": decode,
            "prefill": prefill, "layer_fixed": layer_fixed}


def cache_key(fingerprint: str) -> str:
    from ..launch.binary import find_tool
    from ..server_args.grammar import _identity
    return f"{fingerprint}:{_identity(find_tool('llama-bench'))}"


def load_cached(fingerprint: str, home: Path | None = None) -> dict | None:
    from ..paths import gpcrun_home
    path = (home or gpcrun_home()) / FILE
    try:
        doc = json.loads(path.read_text())
        key = cache_key(fingerprint)
    except (OSError, ValueError, Exception):  # noqa: BLE001 - no cache, or no llama-bench to key it by
        return None
    return doc if doc.get("schema") == SCHEMA and doc.get("key") == key else None


def load_or_calibrate(fingerprint: str, physical_cores: int, llc_bytes: int | None, refresh: bool = False,
                      home: Path | None = None, quiet: bool = False, types: tuple[str, ...] = ()) -> dict:
    """The cached calibration for this machine and build, else measured now (progress on stderr) and cached.
    types: weight types of the model at hand; those not measured yet are measured now and added to the cache."""
    from ..atomic import write_text_atomic
    from ..paths import gpcrun_home
    cached = None if refresh else load_cached(fingerprint, home)
    have = {d["type"] for d in (cached or {}).get("decode") or ()}
    missing = tuple(t for t in dict.fromkeys((*TYPES, *types)) if t not in have)
    if cached is not None and not missing:
        return cached
    say = None if quiet else (lambda msg: print(f"gpcrun: {msg}", file=sys.stderr, flush=True))
    doc = calibrate(missing, physical_cores=physical_cores, llc_bytes=llc_bytes, progress=say,
                    fixed=cached is None)
    if cached is not None:  # add the new types' figures to what was measured before
        for k in ("decode", "prefill"):
            doc[k] = cached.get(k, []) + doc[k]
        doc["models"] = {**cached.get("models", {}), **doc["models"]}
        doc["layer_fixed"] = cached.get("layer_fixed", [])
        doc["seconds"] = round(cached.get("seconds", 0) + doc["seconds"], 1)
    doc["key"] = cache_key(fingerprint)
    write_text_atomic((home or gpcrun_home()) / FILE, json.dumps(doc, indent=1) + "\n")
    return doc
