#!/usr/bin/env python3
"""Generate tiny random-weight GGUF models (dense llama, qwen3moe) in f16, Q8_0 and Q4_K_M.

Deterministic: fixed seeds, so the same script + vocab + llama-quantize give byte-identical files.
Output: OUT/<key>/<name>.gguf, key = sha256(script, vocab, llama-quantize)[:16]; an existing full set is reused.
Prints a JSON manifest {"dir": ..., "models": {name: path}} on stdout; progress goes to stderr.

Usage: scripts/gen_models.py [--out DIR] [--quantize PATH] [--vocab PATH] [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import numpy as np

N_VOCAB = 8192
STD = 0.02
QUANTS = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}

# name -> hparams; dims are multiples of 256 so k-quants apply to every matrix.
SPECS = {
    "tiny-llama": dict(arch="llama", seed=1, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                       n_ff=512, n_ctx=4096, rope_base=10000.0),
    "tiny-qwen3moe": dict(arch="qwen3moe", seed=2, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                          n_ff=512, n_ctx=4096, rope_base=1000000.0, n_expert=8, n_expert_used=2, n_ff_exp=256),
}
MODEL_NAMES = [f"{base}-{q}" for base in SPECS for q in ("f16", *QUANTS)]


def log(msg: str) -> None:
    print(f"[gen_models] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(vocab_path: Path, quantize_bin: Path) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(sha256_file(vocab_path).encode())
    h.update(sha256_file(quantize_bin).encode())
    # numpy does not promise the same random stream across versions; gguf writes the files
    h.update(f"numpy {np.__version__} gguf {importlib.metadata.version('gguf')}".encode())
    return h.hexdigest()[:16]


def load_vocab(vocab_path: Path) -> list[tuple[str, object, object, object]]:
    """tokenizer.ggml.* fields as (key, value, vtype, sub_type), arrays trimmed to N_VOCAB."""
    reader = gguf.GGUFReader(vocab_path)
    out = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            idx = field.data[:N_VOCAB]
            if sub == gguf.GGUFValueType.STRING:
                # Raw bytes, not decoded str, so odd tokens round-trip exactly.
                val = [bytes(field.parts[i]) for i in idx]
            else:
                val = [field.parts[i].item() for i in idx]
            out.append((key, val, vtype, sub))
        else:
            val = field.contents()
            if key.endswith("_token_id") and val >= N_VOCAB:
                raise ValueError(f"{vocab_path}: {key}={val} does not fit a {N_VOCAB}-token vocab")
            out.append((key, val, vtype, None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ValueError(f"{vocab_path}: no tokenizer.ggml.tokens")
    return out


def tensors_for(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape, kind) in writing order; numpy shapes are ggml dims reversed.

    kind: "norm" (f32 ones), "f32" (random, kept f32 like convert_hf_to_gguf does) or "f16" (random).
    """
    e, hd, nh, nkv = spec["n_embd"], spec["head_dim"], spec["n_head"], spec["n_head_kv"]
    moe = spec["arch"] == "qwen3moe"
    ts = [("token_embd.weight", (N_VOCAB, e), "f16")]
    for i in range(spec["n_layer"]):
        b = f"blk.{i}"
        ts += [
            (f"{b}.attn_norm.weight", (e,), "norm"),
            (f"{b}.attn_q.weight", (nh * hd, e), "f16"),
            (f"{b}.attn_k.weight", (nkv * hd, e), "f16"),
            (f"{b}.attn_v.weight", (nkv * hd, e), "f16"),
            (f"{b}.attn_output.weight", (e, nh * hd), "f16"),
        ]
        if moe:
            ne, ff = spec["n_expert"], spec["n_ff_exp"]
            ts += [
                (f"{b}.attn_q_norm.weight", (hd,), "norm"),
                (f"{b}.attn_k_norm.weight", (hd,), "norm"),
                (f"{b}.ffn_norm.weight", (e,), "norm"),
                (f"{b}.ffn_gate_inp.weight", (ne, e), "f32"),
                (f"{b}.ffn_gate_exps.weight", (ne, ff, e), "f16"),
                (f"{b}.ffn_down_exps.weight", (ne, e, ff), "f16"),
                (f"{b}.ffn_up_exps.weight", (ne, ff, e), "f16"),
            ]
        else:
            ff = spec["n_ff"]
            ts += [
                (f"{b}.ffn_norm.weight", (e,), "norm"),
                (f"{b}.ffn_gate.weight", (ff, e), "f16"),
                (f"{b}.ffn_down.weight", (e, ff), "f16"),
                (f"{b}.ffn_up.weight", (ff, e), "f16"),
            ]
    ts += [("output_norm.weight", (e,), "norm"), ("output.weight", (N_VOCAB, e), "f16")]
    return ts


def write_f16(path: Path, name: str, spec: dict, vocab: list) -> None:
    arch = spec["arch"]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(N_VOCAB)
    w.add_context_length(spec["n_ctx"])
    w.add_embedding_length(spec["n_embd"])
    w.add_block_count(spec["n_layer"])
    w.add_feed_forward_length(spec["n_ff"])
    w.add_head_count(spec["n_head"])
    w.add_head_count_kv(spec["n_head_kv"])
    w.add_key_length(spec["head_dim"])
    w.add_value_length(spec["head_dim"])
    w.add_rope_dimension_count(spec["head_dim"])
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "qwen3moe":
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
        w.add_expert_feed_forward_length(spec["n_ff_exp"])
    for key, val, vtype, sub in vocab:
        w.add_key_value(key, val, vtype, sub)

    rng = np.random.default_rng(spec["seed"])
    for tname, shape, kind in tensors_for(spec):
        if kind == "norm":
            # llama.cpp wants norm weights in f32; 1.0 keeps activations well scaled.
            w.add_tensor(tname, np.ones(shape, dtype=np.float32))
            continue
        data = rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)
        # The MoE router stays f32, as in real conversions; llama-quantize never touches it.
        w.add_tensor(tname, data if kind == "f32" else data.astype(np.float16))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(quantize_bin: Path, src: Path, dst: Path, qtype: str) -> None:
    # One thread per job: jobs run in parallel instead, and the output does not depend on it.
    r = subprocess.run([str(quantize_bin), str(src), str(dst), qtype, "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{quantize_bin} {src.name} {qtype} failed (rc {r.returncode}):\n{r.stdout[-4000:]}")


def manifest(final: Path) -> dict:
    return {"dir": str(final), "models": {n: str(final / f"{n}.gguf") for n in MODEL_NAMES}}


def complete(d: Path) -> bool:
    return all((d / f"{n}.gguf").is_file() for n in MODEL_NAMES)


def generate(out_dir, quantize_bin, vocab_path, force: bool = False) -> dict:
    """Build the model set under out_dir/<key>/ (reused when complete) and return the manifest."""
    out_dir, quantize_bin, vocab_path = Path(out_dir), Path(quantize_bin), Path(vocab_path)
    final = out_dir / cache_key(vocab_path, quantize_bin)
    if complete(final) and not force:
        log(f"cached: {final}")
        return manifest(final)

    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob(".tmp-*"), *out_dir.glob(".old-*")]:
        # Left by a killed run; an hour is far beyond any live run's age.
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    # Build beside the destination so os.replace is a same-filesystem atomic rename.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=out_dir))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is meant to be shared like any other dir
    try:
        vocab = load_vocab(vocab_path)
        for base, spec in SPECS.items():
            write_f16(tmp / f"{base}-f16.gguf", base, spec, vocab)
            log(f"wrote {base}-f16.gguf ({time.monotonic() - t0:.1f}s)")
        jobs = [(tmp / f"{b}-f16.gguf", tmp / f"{b}-{q}.gguf", qt) for b in SPECS for q, qt in QUANTS.items()]
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            for f in [pool.submit(quantize, quantize_bin, *j) for j in jobs]:
                f.result()
        log(f"quantized {len(jobs)} files ({time.monotonic() - t0:.1f}s)")

        if final.exists():
            if complete(final) and not force:
                # Another run finished first; its files are identical.
                return manifest(final)
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=out_dir))
            os.replace(final, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"done: {final} ({time.monotonic() - t0:.1f}s)")
    return manifest(final)


def default_out() -> Path:
    from gpcrun.paths import cache_dir

    return cache_dir() / "models"


def default_quantize() -> Path:
    from gpcrun.launch.binary import find_tool

    return find_tool("llama-quantize")


def default_vocab() -> Path:
    script = Path(__file__).resolve().with_name("build_llama.py")
    r = subprocess.run([sys.executable, str(script), "--source-only"], stdout=subprocess.PIPE, text=True, check=True)
    return Path(r.stdout.strip().splitlines()[-1]) / "models" / "ggml-vocab-llama-spm.gguf"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="root dir; files go to OUT/<key>/ (default: $GPCRUN_CACHE/models)")
    p.add_argument("--quantize", help="llama-quantize binary (default: found like llama-server)")
    p.add_argument("--vocab", help="vocab-only GGUF (default: llama.cpp source models/ggml-vocab-llama-spm.gguf)")
    p.add_argument("--force", action="store_true", help="regenerate even if the set exists")
    args = p.parse_args(argv)

    from gpcrun.errors import GpcrunError

    try:
        out = Path(args.out).expanduser() if args.out else default_out()
        qbin = Path(args.quantize).expanduser() if args.quantize else default_quantize()
        vocab = Path(args.vocab).expanduser() if args.vocab else default_vocab()
    except (GpcrunError, subprocess.CalledProcessError) as e:
        p.error(str(e))
    for what, path in (("llama-quantize", qbin), ("vocab", vocab)):
        if not path.is_file():
            p.error(f"{what} not found: {path}")
    try:
        result = generate(out, qbin, vocab, force=args.force)
    except (ValueError, RuntimeError) as e:
        print(f"gen_models: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
