#!/usr/bin/env python3
"""Models for the GPU check (scripts/gpu_check), written without llama-quantize (the CUDA tarball has none): a
qwen3moe or dense llama of random Q4_0 weights, block by block (an f16 scale and 16 bytes of nibbles, ggml's
block_q4_0), through gpcrun/calibrate/synth.py's shapes, with a small SPM vocabulary (llama-server needs one;
the calibration models have none). One layer's bytes are repeated n_layer times, so 8 GB is written at disk
speed.

Usage: scripts/gpu_models.py OUT.gguf [--moe] [--layers N] [--small]   (--small: a tiny shape for tests)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpcrun.calibrate.synth import Shape, _shapes, _write  # noqa: E402

N_VOCAB = 512  # <unk> <s> </s>, the 256 byte tokens of SPM's byte fallback, then plain pieces

# Qwen3-30B-A3B-like (../shared/gpu-facts.md): 48 layers of this make 17.5 GB; 24 make ~8.2 GB
MOE = Shape(n_embd=2048, n_ff=6144, n_head=32, n_head_kv=4, n_expert=128, n_expert_used=8, n_ff_exp=768)
DENSE = Shape(n_embd=4096, n_ff=11008, n_head=32, n_head_kv=8)
SMALL_MOE = Shape(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_expert=8, n_expert_used=2, n_ff_exp=128)
SMALL_DENSE = Shape(n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
Q4_0, F32 = 2, 0  # ggml type ids


def q4_0(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random but valid block_q4_0 rows for a numpy-shaped (..., rows, cols) matrix: uint8 (..., rows, cols/32*18)."""
    *lead, cols = shape
    blocks = int(np.prod(lead)) * (cols // 32)
    raw = rng.integers(0, 256, size=(blocks, 18), dtype=np.uint8)
    raw[:, :2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)  # a small scale: finite activations
    return raw.reshape(*lead, cols // 32 * 18)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(N_VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259)  # unknown, control, byte, normal (llama-vocab.h)
    return tokens, [0.0] * 259 + [-float(i) for i in range(N_VOCAB - 259)], types


def _tokenizer(w) -> None:
    tokens, scores, types = _vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def write_model(path: Path, shape: Shape, n_layer: int, seed: int = 0) -> int:
    """The model at `path`; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    e = shape.n_embd
    layer = {f"{n}.weight": (q4_0(s, rng), Q4_0) for n, s in _shapes(shape).items() if n != "ffn_gate_inp"}
    if shape.n_expert:  # the router stays f32 (as converters write it) and small
        layer["ffn_gate_inp.weight"] = (0.02 * rng.standard_normal((shape.n_expert, e), dtype=np.float32), F32)
        layer |= {n: (np.ones(e // shape.n_head, np.float32), F32) for n in ("attn_q_norm.weight",
                                                                             "attn_k_norm.weight")}
    layer |= {n: (np.ones(e, np.float32), F32) for n in ("attn_norm.weight", "ffn_norm.weight")}
    other = {"token_embd.weight": (q4_0((N_VOCAB, e), rng), Q4_0),
             "output_norm.weight": (np.ones(e, np.float32), F32), "output.weight": (q4_0((N_VOCAB, e), rng), Q4_0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    _write(tmp, shape, n_layer, layer, other, {f"{shape.arch}.vocab_size": N_VOCAB, "tokenizer.ggml.model": None},
           _tokenizer)
    tmp.rename(path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--moe", action="store_true")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--small", action="store_true")
    a = ap.parse_args(argv)
    shape = (SMALL_MOE if a.moe else SMALL_DENSE) if a.small else (MOE if a.moe else DENSE)
    size = write_model(Path(a.out), shape, a.layers)
    print(f"{a.out}: {shape.tag()} x {a.layers} layers, {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
