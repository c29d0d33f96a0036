"""Calibration with llama.cpp's own kernels: llama-bench on synthetic models (synth.py), one weight type each.

Measures, on the CPU backend (-ngl 0, weights read into memory, the best of REPS repetitions), at each thread
count that matters (1, powers of two, the physical cores):
- decode: tokens/s of DECODE_TOKENS generated tokens per weight type, turned into effective bytes/s = layer
  bytes read per token x tok/s, the basis of every host-side term of the forecast;
- prefill: tokens/s of a PREFILL_TOKENS-token prompt per weight type, at the largest thread count;
- the per-layer cost: FIXED_LAYERS thin layers, whose time per token is mostly that cost;
- attention over the KV cache: decode at depth ATTN_DEPTH less decode at depth 0, per KV type and head size.
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

from ..plan.constants import PREFILL_BATCH_TOKENS as PREFILL_TOKENS  # one number for calibration and forecast

SCHEMA = "gpcrun.calibration/3"  # 2: per-token cost and crossings; 3: prefill by the weights a batch computes with
TYPES = ("Q4_0", "Q4_K", "Q8_0", "F16")
DECODE_TOKENS = 8
REPS = 3  # the best of 3: a busy neighbour only ever slows a run down
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
    """Well above the last-level cache: 4x it, at least 128 MiB, at most 1 GiB."""
    return min(max(4 * (llc_bytes or 0), 128 << 20), 1 << 30)


def _best(r: dict) -> float:
    """llama-bench's fastest repetition (its raw samples are kept beside it)."""
    return max(r.get("samples_ts") or [r["avg_ts"]])


HOST = ("-ngl", "0")  # every weight on the CPU backend


def _bench(bench: Path, model: Path, args: list[str], timeout_s: float, place: tuple[str, ...] = HOST) -> list[dict]:
    p = subprocess.run([str(bench), "-m", str(model), *place, "-r", str(REPS), "-o", "json", "-lm", "none", *args],
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {p.returncode}): " + (p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout)


ATTN_DEPTH = 2048
ATTN_HEADS = dict(n_head=4, n_head_kv=1)  # GQA 4, as most models have
HEAD_DIMS = (128,)  # measured always; a model's own head size is added (kernels differ by head size)
ATTN_LAYERS = 8
# Many thin layers: per-token time is mostly the per-layer fixed cost (graph nodes, thread syncs) on the CPU.
FIXED_LAYERS = 64
CROSS_OT = r"blk\.[0-9]*[02468]\.ffn_(up|gate|down)\.weight=CPU"  # llama-bench -ot: even layers' FFN on the CPU


def calibrate(types: tuple[str, ...] = TYPES, physical_cores: int = 1, llc_bytes: int | None = None,
              progress=None, work_dir: Path | None = None, fixed: bool = True,
              head_dims: tuple[int, ...] = HEAD_DIMS, device: str | None = None,
              place: tuple[str, ...] = HOST) -> dict:
    """Run the calibration now; returns the document (not cached: see load_or_calibrate).

    device/place: calibrate a device other than the host CPU instead, every layer on it -- e.g. "CUDA0" with
    ("-ngl", "99", "-dev", "CUDA0"), or a ggml-rpc-server standing in for a GPU: "RPC0" with ("-ngl", "99",
    "-rpc", "127.0.0.1:50052"). Its rates are those of the device (the host's -t hardly matters there)."""
    from ..launch.binary import find_tool
    from .synth import Shape, write_synth
    bench, quant = find_tool("llama-bench"), find_tool("llama-quantize")
    say = progress or (lambda msg: None)
    threads = thread_points(physical_cores) if device is None else [max(1, physical_cores)]
    where = "" if device is None else f" on {device}"
    t0 = time.monotonic()
    decode, prefill, models, layer_fixed, attention, token_fixed, crossing = [], [], {}, [], [], [], []
    prefill_fixed: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpcrun-calib-", dir=work_dir) as d:
        if fixed:
            say(f"calibrating the per-layer cost{where}: {FIXED_LAYERS} thin Q8_0 layers at -t"
                f" {','.join(map(str, threads))}")
            thin = Shape(n_embd=256, n_ff=768, n_head=4, n_head_kv=4)
            one = write_synth(Path(d), "Q8_0", 1, quant, thin)
            m = write_synth(Path(d), "Q8_0", one.layer_bytes * FIXED_LAYERS, quant, thin)
            for r in _bench(bench, m.path, ["-p", "0", "-n", str(4 * DECODE_TOKENS), "-t",
                                            ",".join(map(str, threads))], 120, place):
                layer_fixed.append({"threads": r["n_threads"], "tok_s": _best(r), "n_layer": m.n_layer,
                                    "bytes_per_token": m.layer_bytes * m.n_layer, "type": "Q8_0"})
            # one thin layer: what a token costs beyond its layers (graph, sampling, a device's launch/round trip)
            for r in _bench(bench, one.path, ["-p", "0", "-n", str(4 * DECODE_TOKENS), "-t",
                                              ",".join(map(str, threads))], 120, place):
                token_fixed.append({"threads": r["n_threads"], "tok_s": _best(r), "n_layer": one.n_layer,
                                    "bytes_per_token": one.layer_bytes * one.n_layer, "type": "Q8_0"})
            # the same thin models prefilled: the per-layer and per-batch costs of a prompt batch (plan/rates.py)
            for mm in (m, one):
                for r in _bench(bench, mm.path, ["-p", str(PREFILL_TOKENS), "-n", "0", "-t",
                                                 ",".join(map(str, threads))], 120, place):
                    prefill_fixed.append({"threads": r["n_threads"], "tok_s": _best(r), "n_layer": mm.n_layer,
                                          "n_params_prefill": mm.prefill_params, "type": "Q8_0",
                                          "one_token_bytes": mm.one_token_bytes})
            if device is not None:  # every other layer's FFN back on the CPU: 2 crossings per such layer
                say(f"calibrating {device}'s cost per crossing to the CPU and back: -ot {CROSS_OT}")
                for r in _bench(bench, m.path, ["-p", "0", "-n", str(4 * DECODE_TOKENS), "-ot", CROSS_OT, "-t",
                                                ",".join(map(str, threads))], 120, place):
                    crossing.append({"threads": r["n_threads"], "tok_s": _best(r), "n_layer": m.n_layer,
                                     "crossings": 2 * (m.n_layer // 2)})
        for hd in head_dims:
            attention += _attention(bench, quant, Path(d), threads, say, hd, place)
        for ty in types:
            say(f"calibrating {ty}{where}: writing a {target_bytes(llc_bytes) >> 20} MiB model")
            m = write_synth(Path(d), ty, target_bytes(llc_bytes), quant)
            read = m.layer_bytes * m.n_layer
            models[ty] = {"n_layer": m.n_layer, "layer_bytes": m.layer_bytes, "tensor_bytes": m.tensor_bytes,
                          "n_params": m.n_params}
            say(f"calibrating {ty}{where}: decode at -t {','.join(map(str, threads))}, prefill at -t {threads[-1]}")
            for r in _bench(bench, m.path, ["-p", "0", "-n", str(DECODE_TOKENS), "-t", ",".join(map(str, threads))],
                            120, place):
                decode.append({"type": ty, "threads": r["n_threads"], "tok_s": _best(r),
                               "samples_tok_s": r.get("samples_ts"), "bytes_per_token": read,
                               "bytes_per_s": read * _best(r)})
            for r in _bench(bench, m.path, ["-p", str(PREFILL_TOKENS), "-n", "0", "-t", str(threads[-1])], 120,
                            place):
                prefill.append({"type": ty, "threads": r["n_threads"], "tok_s": _best(r),
                                "samples_tok_s": r.get("samples_ts"), "n_params": m.n_params,
                                "n_params_prefill": m.prefill_params, "one_token_bytes": m.one_token_bytes})
    doc = {"schema": SCHEMA, "measured_at_unix": int(time.time()), "seconds": round(time.monotonic() - t0, 1),
           "llama_bench": str(bench), "method": f"llama-bench {' '.join(place)} -lm none, best of {REPS}: decode -p 0 -n {DECODE_TOKENS},"
            f" prefill -p {PREFILL_TOKENS} -n 0, on synthetic dense llama models of one weight type each"
            " (gpcrun/calibrate/synth.py)", "threads": threads, "models": models, "decode": decode,
            "prefill": prefill, "layer_fixed": layer_fixed, "attention": attention, "token_fixed": token_fixed,
            "crossing": crossing, "prefill_fixed": prefill_fixed}
    if device is not None:
        doc["device"] = device
    return doc


def _attention(bench: Path, quant: Path, d: Path, threads: list[int], say, head_dim: int = 128,
               place: tuple[str, ...] = HOST) -> list[dict]:
    """Attention over the KV cache: decode at depth 0 and ATTN_DEPTH per KV type (flash attention as llama-server
    defaults to on the CPU), on a few thin layers; the difference is the cost of attending to the cache, per unit
    = one depth token x one query head x (K + V head dims) x one layer (plan/rates.py)."""
    from .synth import Shape, write_synth
    shape = Shape(n_embd=ATTN_HEADS["n_head"] * head_dim, n_ff=1024, **ATTN_HEADS)
    one = write_synth(d, "Q8_0", 1, quant, shape)
    m = write_synth(d, "Q8_0", one.layer_bytes * ATTN_LAYERS, quant, shape)
    say(f"calibrating attention over the KV cache (head size {head_dim}): depth 0 and {ATTN_DEPTH}, KV f16 and q8_0")
    units = m.n_layer * shape.n_head * 2 * head_dim
    out = []
    for kv in ("f16", "q8_0"):
        for r in _bench(bench, m.path, ["-p", "0", "-n", str(DECODE_TOKENS), "-d", f"0,{ATTN_DEPTH}", "-ctk", kv,
                                        "-ctv", kv, "-t", ",".join(map(str, threads))], 300, place):
            out.append({"type": kv, "threads": r["n_threads"], "depth": r.get("n_depth", 0), "tok_s": _best(r),
                        "units_per_depth_token": units, "head_dim": head_dim})
    return out


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
    except Exception:  # noqa: BLE001 - no cache, a damaged one, or no llama-bench to key it by
        return None
    return doc if doc.get("schema") == SCHEMA and doc.get("key") == key else None


def device_place(name: str, rpc_endpoint: str | None = None) -> tuple[str, ...]:
    """llama-bench arguments that put every layer on device `name` (llama.cpp's device list: CUDA0, RPC0 ...)."""
    return ("-ngl", "99", "-rpc", rpc_endpoint) if rpc_endpoint else ("-ngl", "99", "-dev", name)


def load_or_calibrate(fingerprint: str, physical_cores: int, llc_bytes: int | None, refresh: bool = False,
                      home: Path | None = None, quiet: bool = False, types: tuple[str, ...] = (),
                      head_dims: tuple[int, ...] = (), devices: tuple[str, ...] = ()) -> dict:
    """The cached calibration for this machine and build, else measured now (progress on stderr) and cached.
    types: weight types of the model at hand; those not measured yet are measured now and added to the cache.
    devices: GPUs (llama.cpp names, CUDA0 ...) calibrated too, every layer on each, under doc["devices"][name]:
    the default types and the model's, at most once per machine and build (a failure is kept with its reason
    and not retried until --refresh; the host's figures stand either way)."""
    from ..atomic import write_text_atomic
    from ..paths import gpcrun_home
    cached = None if refresh else load_cached(fingerprint, home)
    have = {d["type"] for d in (cached or {}).get("decode") or ()}
    missing = tuple(t for t in dict.fromkeys((*TYPES, *types)) if t not in have)
    have_hd = {a.get("head_dim", 128) for a in (cached or {}).get("attention") or ()}
    missing_hd = tuple(h for h in dict.fromkeys((*HEAD_DIMS, *head_dims)) if h and h not in have_hd)
    new_devices = tuple(n for n in devices if n not in ((cached or {}).get("devices") or {}))
    if cached is not None and not missing and not missing_hd and not new_devices:
        return cached
    say = None if quiet else (lambda msg: print(f"gpcrun: {msg}", file=sys.stderr, flush=True))
    if cached is not None and not missing and not missing_hd:
        doc = dict(cached)
    else:
        doc = calibrate(missing, physical_cores=physical_cores, llc_bytes=llc_bytes, progress=say,
                        fixed=cached is None, head_dims=missing_hd)
    doc["devices"] = dict((cached or {}).get("devices") or {})
    for name in new_devices:
        # "RPC@HOST:PORT": a ggml-rpc-server, alone in the llama-bench process (so it is RPC0 there), the network's
        # latency and rate inside what it measures (crossings, streaming); else a local device by llama.cpp's name
        dev, place = ("RPC0", device_place("RPC0", name[4:])) if name.startswith("RPC@") else (name, device_place(name))
        try:
            doc["devices"][name] = calibrate(tuple(dict.fromkeys((*TYPES, *types))), physical_cores, llc_bytes,
                                             say, head_dims=tuple(dict.fromkeys((*HEAD_DIMS, *head_dims))),
                                             device=dev, place=place)
        except Exception as e:  # noqa: BLE001 - kept with its reason: the GPU's spec row stands in
            doc["devices"][name] = {"device": name, "error": str(e)[:300]}
            if say:
                say(f"calibrating {name} failed ({e}); its forecast uses the spec sheet")
    if cached is not None and (missing or missing_hd):  # add the new types' figures to what was measured before
        for k in ("decode", "prefill"):
            doc[k] = cached.get(k, []) + doc[k]
        doc["models"] = {**cached.get("models", {}), **doc["models"]}
        doc["layer_fixed"] = cached.get("layer_fixed", [])
        doc["token_fixed"] = cached.get("token_fixed", [])
        doc["prefill_fixed"] = cached.get("prefill_fixed", [])
        doc["attention"] = cached.get("attention", []) + doc["attention"]
        doc["seconds"] = round(cached.get("seconds", 0) + doc["seconds"], 1)
    doc["key"] = cache_key(fingerprint)
    write_text_atomic((home or gpcrun_home()) / FILE, json.dumps(doc, indent=1) + "\n")
    return doc
