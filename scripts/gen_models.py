#!/usr/bin/env python3
"""Generate tiny random-weight GGUF models: dense llama and qwen3moe in f16, Q8_0 and Q4_K_M; gemma3 (SWA),
qwen2moe (shared experts), deepseek2 (MLA, dense-first + MoE), deepseek32 (deepseek2 + DSA lightning indexer),
glm-dsa (deepseek32 with the indexer on some layers only) and mamba2 (recurrent) in f16 and Q8_0; and, in f16
and Q8_0, hybrids that hold both a KV cache and recurrent state (layouts in gen_models_hybrid.py): qwen35 (Gated
DeltaNet + gated attention), granitehybrid (Mamba-2 + attention), falcon-h1 (both in every layer), lfm2 (short
conv + attention), nemotron_h (Mamba-2, attention and MLP-only layers), jamba (Mamba-1 + attention, MoE), qwen3next
(Gated DeltaNet + gated attention, MoE + shared expert), kimi-linear (Kimi Delta Attention + K-only MLA, MoE) and
minimax-01 (lightning attention + softmax attention, MoE); in f16, glm5-next (Kimi Delta Attention + nope MLA with a
k-pool DSA indexer, mHC, MoE; gen_models_sparse.py).

Deterministic: fixed seeds, so the same script + vocab + llama-quantize give byte-identical files.
Output: OUT/<key>/<name>.gguf, key = sha256(scripts, vocab, llama-quantize)[:16]; an existing full set is reused.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_models_hybrid as hybrid  # noqa: E402
import gen_models_sparse as sparse  # noqa: E402
from _util import sha256_file  # noqa: E402

N_VOCAB = 8192
STD = 0.02
QUANTS = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}

# name -> hparams. Matrix rows (ggml ne0) are multiples of 256 wherever a k-quant is asked for, and of 32
# (one Q8_0 block) everywhere else; llama-quantize leaves a tensor it cannot quantize in its source type.
# Metadata and tensor layout follow what convert_hf_to_gguf writes for each architecture.
SPECS = {
    "tiny-llama": dict(arch="llama", seed=1, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                       n_ff=512, n_ctx=4096, rope_base=10000.0, quants=("q8_0", "q4_k_m")),
    "tiny-qwen3moe": dict(arch="qwen3moe", seed=2, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                          n_ff=512, n_ctx=4096, rope_base=1000000.0, n_expert=8, n_expert_used=2, n_ff_exp=256,
                          quants=("q8_0", "q4_k_m")),
    # Sliding-window attention: gemma3's built-in pattern of 6 makes layers 0-4 SWA and layer 5 full.
    # MQA with a Q width (n_head*head_dim) above n_embd, and tied embeddings (no output.weight), as in Gemma 3.
    "tiny-gemma3": dict(arch="gemma3", seed=3, n_embd=256, n_layer=6, n_head=4, n_head_kv=1, head_dim=128,
                        n_ff=512, n_ctx=32768, rope_base=1000000.0, rope_base_swa=10000.0, sliding_window=128,
                        quants=("q8_0",)),
    # MoE with a gated shared expert (ffn_*_shexp, ffn_gate_inp_shexp) and Q/K/V biases; no key_length
    # key, like a converted Qwen1.5-MoE: the head size comes from n_embd / n_head.
    "tiny-qwen2moe": dict(arch="qwen2moe", seed=4, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                          n_ff=512, n_ctx=4096, rope_base=1000000.0, n_expert=8, n_expert_used=2, n_ff_exp=256,
                          n_ff_shexp=512, quants=("q8_0",)),
    # DeepSeek-V3 layout: MLA with q_lora, absorbed attn_k_b / attn_v_b, one leading dense block, then MoE with
    # one shared expert and sigmoid routing with exp_probs_b. KV is stored as MQA of width kv_lora_rank + rope.
    "tiny-deepseek2": dict(arch="deepseek2", seed=5, n_embd=256, n_layer=4, n_head=4, n_ff=512, n_ctx=4096,
                           rope_base=10000.0, q_lora_rank=128, kv_lora_rank=128, qk_rope_head_dim=32,
                           qk_nope_head_dim=64, v_head_dim=64, n_dense_lead=1, n_expert=8, n_expert_used=2,
                           n_ff_exp=256, n_expert_shared=1, expert_weights_scale=2.5, quants=("q8_0",)),
    # Mamba-2: recurrent, no attention; 8 heads of 64 (time_step_rank = d_inner / head_dim), 2 groups.
    "tiny-mamba": dict(arch="mamba2", seed=6, n_embd=256, n_layer=4, n_ctx=1048576, d_inner=512, d_state=64,
                        d_conv=4, head_dim=64, n_group=2, quants=("q8_0",)),
    # Hybrids (gen_models_hybrid.py). layout: per layer "M" recurrent, "*" attention, "-" MLP only.
    # Qwen3.5: layers 3 and 7 are gated attention (q + gate, head_dim 128, interleaved MRoPE on n_rot = 32),
    # the rest Gated DeltaNet with 2 key heads and 4 value heads of 64 (d_inner = d_state * dt_rank); dense FFN.
    "tiny-qwen35": dict(arch="qwen35", seed=7, n_embd=256, n_layer=8, full_attention_interval=4, n_head=4,
                        n_head_kv=2, head_dim=128, n_rot=32, rope_sections=[6, 5, 5, 0], n_ff=512, n_ctx=262144,
                        rope_base=10000000.0, d_conv=4, d_state=64, n_group=2, dt_rank=4, d_inner=256,
                        quants=("q8_0",)),
    # Granite 4.0-H: Mamba-2 (8 heads of 64, 1 group) with NoPE attention at layers 2 and 5, dense shared MLP.
    "tiny-granitehybrid": dict(arch="granitehybrid", seed=8, n_embd=256, n_layer=6, layout="MM*MM*", n_head=4,
                               n_head_kv=2, n_ff=512, n_ctx=1048576, rope_base=10000.0, d_inner=512, d_state=64,
                               n_group=1, d_conv=4, ssm_head_dim=64, quants=("q8_0",)),
    # Falcon-H1: attention and Mamba-2 (6 heads of 64, d_inner 1.5 x n_embd) side by side in every layer.
    "tiny-falcon-h1": dict(arch="falcon-h1", seed=9, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64,
                           n_ff=512, n_ctx=16384, rope_base=1e11, d_inner=384, d_state=64, n_group=1, d_conv=4,
                           ssm_head_dim=64, quants=("q8_0",)),
    # LFM2: short-conv layers (L_cache 3) with attention at layers 2 and 5, no sliding window, tied output.
    "tiny-lfm2": dict(arch="lfm2", seed=10, n_embd=256, n_layer=6, layout="MM*MM*", n_head=4, n_head_kv=2,
                      n_ff=512, n_ctx=128000, rope_base=1000000.0, l_cache=3, quants=("q8_0",)),
    # Nemotron-H: Mamba-2 at 0, 2, 5, NoPE attention at 3, squared-ReLU MLP at 1 and 4 (pattern "M-M*-M").
    "tiny-nemotron-h": dict(arch="nemotron_h", seed=11, n_embd=256, n_layer=6, layout="M-M*-M", n_head=4,
                            n_head_kv=2, head_dim=64, n_ff=1024, n_ctx=1048576, rope_base=10000.0, d_inner=512,
                            d_state=64, n_group=2, d_conv=4, ssm_head_dim=64, quants=("q8_0",)),
    # Jamba: Mamba-1 (d_inner 2 x n_embd, dt_rank 32) with attention at layer 2; MoE FFN (4 experts, top 2) on odd
    # layers, dense elsewhere.
    "tiny-jamba": dict(arch="jamba", seed=12, n_embd=256, n_layer=4, layout="MM*M", moe_layers=(1, 3), n_head=4,
                       n_head_kv=2, n_ff=512, n_ctx=262144, d_inner=512, d_state=16, dt_rank=32, d_conv=4,
                       n_expert=4, n_expert_used=2, quants=("q8_0",)),
    # Qwen3-Next: qwen35's mixers (layers 3 and 7 gated attention, head_dim 128 with partial rotary n_rot = 32, NEOX;
    # the rest Gated DeltaNet, 2 key heads and 4 value heads of 64, fused ssm_ba) with an MoE FFN in every layer
    # (8 experts of 128, top 2) plus a sigmoid-gated shared expert of 128; no NextN block.
    "tiny-qwen3next": dict(arch="qwen3next", seed=13, n_embd=256, n_layer=8, full_attention_interval=4, n_head=4,
                           n_head_kv=2, head_dim=128, n_rot=32, n_ff=512, n_ctx=262144, rope_base=10000000.0,
                           d_conv=4, d_state=64, n_group=2, dt_rank=4, d_inner=256, n_expert=8, n_expert_used=2,
                           n_ff_exp=128, n_ff_shexp=128, quants=("q8_0",)),
    # Kimi-Linear: Kimi Delta Attention (4 heads of kda.head_dim 64, short conv 4) at layers 0-2, MLA at layer 3
    # (3 KDA : 1 MLA, as in Kimi-Linear-48B) stored as MQA: one KV head of kv_lora_rank + rope, K only. No q_lora. One
    # leading dense block, then MoE (8 experts of 128, top 2, sigmoid + exp_probs_b) with one shared expert.
    "tiny-kimi-linear": dict(arch="kimi-linear", seed=14, n_embd=256, n_layer=4, layout="MMM*", n_head=4,
                             n_head_kv=1, n_ff=512, n_ctx=1048576, kda_head_dim=64, d_conv=4, kv_lora_rank=128,
                             qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64, n_dense_lead=1, n_expert=8,
                             n_expert_used=2, n_ff_exp=128, n_expert_shared=1, expert_weights_scale=2.446,
                             quants=("q8_0",)),
    # MiniMax-Text-01: lightning attention at layers 0-6, softmax attention (GQA, head_dim 64, n_rot 32) at layer 7
    # (the built-in interval of 8); MoE in every layer (8 experts of n_ff 128, top 2). residual_scale is the DeepNorm
    # alpha (2 * n_layer) ** 0.25, as MiniMax-Text-01's 3.5566 for 80 layers.
    "tiny-minimax-01": dict(arch="minimax-01", seed=15, n_embd=256, n_layer=8, full_attention_interval=8, n_head=4,
                            n_head_kv=2, head_dim=64, n_rot=32, n_ff=128, n_ctx=1048576, rope_base=10000000.0,
                            residual_scale=2.0, n_expert=8, n_expert_used=2, quants=("q8_0",)),
    # DeepSeek-V3.2: tiny-deepseek2's layout plus the DSA lightning indexer in every layer (src/models/deepseek32.cpp):
    # 4 indexer heads of 64 (one shared MQA key, cached in a second KV cache by llama_kv_cache_dsa) score the cache,
    # and MLA attends to the top 64 cells only. indexer_head_size >= n_rot (asserted: the indexer head is
    # [rope | nope]) and a multiple of 64 (the Hadamard rotation llama_kv_cache always builds for the indexer).
    "tiny-deepseek32": dict(arch="deepseek32", seed=16, n_embd=256, n_layer=4, n_head=4, n_ff=512, n_ctx=4096,
                            rope_base=10000.0, q_lora_rank=128, kv_lora_rank=128, qk_rope_head_dim=32,
                            qk_nope_head_dim=64, v_head_dim=64, n_dense_lead=1, n_expert=8, n_expert_used=2,
                            n_ff_exp=256, n_expert_shared=1, expert_weights_scale=2.5, indexer_n_head=4,
                            indexer_head_size=64, indexer_top_k=64, quants=("q8_0",)),
    # GLM-5 (glm-dsa, src/models/glm-dsa.cpp): tiny-deepseek32's MLA + MoE + DSA layout, but the indexer runs only on
    # "full" layers, given per layer by "glm-dsa.attention.indexer.types" (1 = full: own indexer tensors and a cell in
    # the indexer cache; 0 = reuses the previous full layer's top-k, no indexer tensors, as GLM-5.2). Layer 0 must be
    # full. n_ctx < 1048576 is the loader's "pre-5.2" branch (default all full), overridden by the key.
    "tiny-glm-dsa": dict(arch="glm-dsa", seed=17, n_embd=256, n_layer=4, n_head=4, n_ff=512, n_ctx=4096,
                         rope_base=10000.0, q_lora_rank=128, kv_lora_rank=128, qk_rope_head_dim=32,
                         qk_nope_head_dim=64, v_head_dim=64, n_dense_lead=1, n_expert=8, n_expert_used=2,
                         n_ff_exp=256, n_expert_shared=1, expert_weights_scale=2.5, indexer_n_head=4,
                         indexer_head_size=64, indexer_top_k=64, indexer_types=(1, 0, 1, 1), quants=("q8_0",)),
    # GLM-5.3-Flash shape (glm5-next, gen_models_sparse.py): Kimi Delta Attention at layers 0 and 2, nope-only MLA
    # (q_lora 128, kv_lora 128) with a k-pool DSA indexer (4 heads of 64, top 64, pool 4) at layers 1 and 3, the
    # indexer "full" on layer 1 only (types 1,1,1,0); mHC with 4 streams; one leading dense block, then MoE (8 experts
    # of 128, top 2, one shared). f16 only: the mHC projections stay f32.
    "tiny-glm5-next": dict(arch="glm5-next", seed=18, n_embd=256, n_layer=4, layout="M*M*", n_head=4, n_ff=512,
                           n_ctx=4096, kda_head_dim=64, d_conv=4, q_lora_rank=128, kv_lora_rank=128,
                           key_length_mla=64, v_head_dim=64, n_dense_lead=1, n_expert=8, n_expert_used=2,
                           n_ff_exp=128, n_expert_shared=1, indexer_n_head=4, indexer_head_size=64,
                           indexer_top_k=64, indexer_kpool=4, indexer_types=(1, 1, 1, 0), quants=()),
    # qwen4exp (gen_models_sparse.py): tiny-qwen35's mixers (attention at layers 3 and 7, head_dim 128, n_rot 32 with
    # MRoPE sections; Gated DeltaNet elsewhere) under 4 low-rank (16) hyper-connection streams, MoE (8 x 128, top 2)
    # with a gated shared expert, and QSA on the attention layers: 4 indexer heads of 64, top 64, compress ratio 4.
    "tiny-qwen4exp": dict(arch="qwen4exp", seed=19, n_embd=256, n_layer=8, full_attention_interval=4, n_head=4,
                          n_head_kv=2, head_dim=128, n_rot=32, rope_sections=[6, 5, 5, 0], n_ff=512, n_ctx=262144,
                          rope_base=10000000.0, d_conv=4, d_state=64, n_group=2, dt_rank=4, d_inner=256, hc=4,
                          hc_low_rank=16, n_expert=8, n_expert_used=2, n_ff_exp=128, n_ff_shexp=128,
                          indexer_n_head=4, indexer_head_size=64, indexer_top_k=64, compress_ratio=4, quants=()),
    # DeepSeek-V4 (deepseek4, gen_models_sparse.py): 4 heads of 128 over one shared KV head (n_rot 64), q_lora 128,
    # output in 2 groups of rank 64, a 128-token window, compress ratios 4, 128, 4, 0 (CSA with a lightning
    # indexer of 4 x 64, HCA, CSA, window only); mHC; MoE (8 x 128, top 2, sqrt-softplus) with one shared expert.
    # (An indexer head as wide as the attention head crashes this llama.cpp: the raw cache then takes the indexer's
    # Hadamard rotation, and llama_kv_cache's rotation-size loop divides by zero; real checkpoints use 512 vs 128.)
    "tiny-deepseek4": dict(arch="deepseek4", seed=20, n_embd=256, n_layer=4, n_head=4, head_dim=128, n_rot=64,
                           q_lora_rank=128, o_groups=2, o_lora_rank=64, n_swa=128, compress_ratios=(4, 128, 4, 0),
                           n_ff=512, n_ctx=8192, n_expert=8, n_expert_used=2, n_ff_exp=128, n_expert_shared=1,
                           indexer_n_head=4, indexer_head_size=64, indexer_top_k=64, quants=()),
}
MODEL_NAMES = [f"{base}-{q}" for base, spec in SPECS.items() for q in ("f16", *spec["quants"])]


def log(msg: str) -> None:
    print(f"[gen_models] {msg}", file=sys.stderr, flush=True)




def cache_key(vocab_path: Path, quantize_bin: Path) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(hybrid.__file__).read_bytes())
    h.update(Path(sparse.__file__).read_bytes())
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


# Tensor kinds (what tensors_for returns and write_f16 fills in):
#   "f16"  random N(0, STD), stored f16 (every matrix llama-quantize may quantize)
#   "f32"  random N(0, STD), kept f32 as convert_hf_to_gguf does (routers, biases, conv1d)
#   "norm" ones, f32
#   "ssm_a", "ssm_dt_b": SSM A (negative decay rates) and dt bias (inverse softplus of dt), f32; used by Mamba-1/2
#                        and Gated DeltaNet alike
def _attn_qkvo(b: str, e: int, nh: int, nkv: int, hd: int, bias: bool = False) -> list:
    ts = [(f"{b}.attn_q.weight", (nh * hd, e), "f16"),
          (f"{b}.attn_k.weight", (nkv * hd, e), "f16"),
          (f"{b}.attn_v.weight", (nkv * hd, e), "f16")]
    if bias:
        ts += [(f"{b}.attn_q.bias", (nh * hd,), "f32"),
               (f"{b}.attn_k.bias", (nkv * hd,), "f32"),
               (f"{b}.attn_v.bias", (nkv * hd,), "f32")]
    return ts + [(f"{b}.attn_output.weight", (e, nh * hd), "f16")]


def _ffn(b: str, e: int, ff: int, suffix: str = "") -> list:
    return [(f"{b}.ffn_gate{suffix}.weight", (ff, e), "f16"),
            (f"{b}.ffn_down{suffix}.weight", (e, ff), "f16"),
            (f"{b}.ffn_up{suffix}.weight", (ff, e), "f16")]


_experts = hybrid._experts  # one expert layout for every MoE model here


def tensors_for(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape, kind) in writing order; numpy shapes are ggml dims reversed (see the kinds above)."""
    arch, e = spec["arch"], spec["n_embd"]
    ts = [("token_embd.weight", (N_VOCAB, e), "f16")]
    if arch in sparse.ARCHS:
        for i in range(spec["n_layer"]):
            ts += sparse.layer_tensors(spec, i)
        return ts + sparse.output_tensors(spec) + [("output.weight", (N_VOCAB, e), "f16")]
    if arch in hybrid.ARCHS:
        for i in range(spec["n_layer"]):
            ts += hybrid.layer_tensors(spec, i)
        ts.append((hybrid.output_norm_name(arch), (e,), "norm"))
        if arch not in hybrid.TIED_OUTPUT:
            ts.append(("output.weight", (N_VOCAB, e), "f16"))
        return ts
    for i in range(spec["n_layer"]):
        b = f"blk.{i}"
        ts.append((f"{b}.attn_norm.weight", (e,), "norm"))
        if arch in ("llama", "qwen3moe"):
            hd, nh, nkv = spec["head_dim"], spec["n_head"], spec["n_head_kv"]
            ts += _attn_qkvo(b, e, nh, nkv, hd)
            if arch == "qwen3moe":
                ts += [(f"{b}.attn_q_norm.weight", (hd,), "norm"),
                       (f"{b}.attn_k_norm.weight", (hd,), "norm"),
                       (f"{b}.ffn_norm.weight", (e,), "norm")]
                ts += _experts(b, e, spec["n_expert"], spec["n_ff_exp"])
            else:
                ts += [(f"{b}.ffn_norm.weight", (e,), "norm")] + _ffn(b, e, spec["n_ff"])
        elif arch == "gemma3":
            hd, nh, nkv = spec["head_dim"], spec["n_head"], spec["n_head_kv"]
            ts += _attn_qkvo(b, e, nh, nkv, hd)
            ts += [(f"{b}.attn_q_norm.weight", (hd,), "norm"),
                   (f"{b}.attn_k_norm.weight", (hd,), "norm"),
                   (f"{b}.post_attention_norm.weight", (e,), "norm"),
                   (f"{b}.ffn_norm.weight", (e,), "norm")]
            ts += _ffn(b, e, spec["n_ff"])
            ts += [(f"{b}.post_ffw_norm.weight", (e,), "norm")]
        elif arch == "qwen2moe":
            hd, nh, nkv = spec["head_dim"], spec["n_head"], spec["n_head_kv"]
            ts += _attn_qkvo(b, e, nh, nkv, hd, bias=True)
            ts += [(f"{b}.ffn_norm.weight", (e,), "norm")]
            ts += _experts(b, e, spec["n_expert"], spec["n_ff_exp"])
            # shared_expert_gate is a Linear(hidden, 1): ggml {n_embd, 1}, kept f32 like the router
            ts += [(f"{b}.ffn_gate_inp_shexp.weight", (1, e), "f32")]
            ts += _ffn(b, e, spec["n_ff_shexp"], "_shexp")
        elif arch in ("deepseek2", "deepseek32", "glm-dsa"):
            nh, qr, kvr = spec["n_head"], spec["q_lora_rank"], spec["kv_lora_rank"]
            rope, nope, vd = spec["qk_rope_head_dim"], spec["qk_nope_head_dim"], spec["v_head_dim"]
            ts += [(f"{b}.attn_q_a_norm.weight", (qr,), "norm"),
                   (f"{b}.attn_kv_a_norm.weight", (kvr,), "norm"),
                   (f"{b}.attn_q_a.weight", (qr, e), "f16"),
                   (f"{b}.attn_q_b.weight", (nh * (nope + rope), qr), "f16"),
                   (f"{b}.attn_kv_a_mqa.weight", (kvr + rope, e), "f16"),
                   # kv_b_proj split for the absorbed MLA path: k_b transposed, ggml {nope, kv_lora, n_head};
                   # v_b as ggml {kv_lora, v_head_dim, n_head}
                   (f"{b}.attn_k_b.weight", (nh, kvr, nope), "f16"),
                   (f"{b}.attn_v_b.weight", (nh, vd, kvr), "f16"),
                   (f"{b}.attn_output.weight", (e, nh * vd), "f16"),
                   (f"{b}.ffn_norm.weight", (e,), "norm")]
            if arch == "deepseek32" or (arch == "glm-dsa" and spec["indexer_types"][i]):
                # DSA lightning indexer (deepseek32.cpp load_arch_tensors): k_norm is a LayerNorm (weight + bias)
                # over the single key head; proj gives per-head weights, ggml {n_embd, indexer_n_head}; attn_q_b
                # reads the q_lora latent, ggml {q_lora_rank, indexer_n_head * indexer_head_size}
                inh, ihs = spec["indexer_n_head"], spec["indexer_head_size"]
                ts += [(f"{b}.indexer.k_norm.weight", (ihs,), "norm"),
                       (f"{b}.indexer.k_norm.bias", (ihs,), "f32"),
                       (f"{b}.indexer.proj.weight", (inh, e), "f16"),
                       (f"{b}.indexer.attn_k.weight", (ihs, e), "f16"),
                       (f"{b}.indexer.attn_q_b.weight", (inh * ihs, qr), "f16")]
            if i < spec["n_dense_lead"]:
                ts += _ffn(b, e, spec["n_ff"])
            else:
                ts += _experts(b, e, spec["n_expert"], spec["n_ff_exp"])
                ts += [(f"{b}.exp_probs_b.bias", (spec["n_expert"],), "f32")]
                ts += _ffn(b, e, spec["n_ff_exp"] * spec["n_expert_shared"], "_shexp")
        elif arch == "mamba2":
            ts += hybrid.mamba2_mixer(b, e, spec, spec["d_inner"] // spec["head_dim"])
        else:
            raise ValueError(f"no tensor layout for arch {arch}")
    ts.append(("output_norm.weight", (e,), "norm"))
    if arch != "gemma3":  # gemma3 ties the output to token_embd
        ts.append(("output.weight", (N_VOCAB, e), "f16"))
    return ts


def write_metadata(w: "gguf.GGUFWriter", spec: dict) -> None:
    arch = spec["arch"]
    w.add_vocab_size(N_VOCAB)
    w.add_context_length(spec["n_ctx"])
    w.add_embedding_length(spec["n_embd"])
    w.add_block_count(spec["n_layer"])
    if arch in hybrid.ARCHS:
        hybrid.write_metadata(w, spec)
        return
    if arch in sparse.ARCHS:
        sparse.write_metadata(w, spec)
        return
    if arch == "mamba2":
        # as convert_hf_to_gguf's Mamba2Model: no attention, n_ff and n_head written as 0
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_ssm_conv_kernel(spec["d_conv"])
        w.add_ssm_inner_size(spec["d_inner"])
        w.add_ssm_state_size(spec["d_state"])
        w.add_ssm_time_step_rank(spec["d_inner"] // spec["head_dim"])
        w.add_ssm_group_count(spec["n_group"])
        w.add_layer_norm_rms_eps(1e-5)
        return
    w.add_feed_forward_length(spec["n_ff"])
    w.add_head_count(spec["n_head"])
    if arch in ("deepseek2", "deepseek32", "glm-dsa"):
        kvr, rope = spec["kv_lora_rank"], spec["qk_rope_head_dim"]
        # MLA is stored as MQA over the compressed latent: one KV head of kv_lora_rank + rope (K),
        # V a view of its first kv_lora_rank values; the *_mla lengths are the decompressed head sizes.
        w.add_head_count_kv(1)
        w.add_leading_dense_block_count(spec["n_dense_lead"])
        w.add_q_lora_rank(spec["q_lora_rank"])
        w.add_kv_lora_rank(kvr)
        w.add_key_length(kvr + rope)
        w.add_value_length(kvr)
        w.add_key_length_mla(spec["qk_nope_head_dim"] + rope)
        w.add_value_length_mla(spec["v_head_dim"])
        w.add_expert_feed_forward_length(spec["n_ff_exp"])
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
        w.add_expert_shared_count(spec["n_expert_shared"])
        w.add_expert_weights_scale(spec["expert_weights_scale"])
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_rope_dimension_count(rope)
        w.add_rope_freq_base(spec["rope_base"])
        w.add_layer_norm_rms_eps(1e-6)
        if arch in ("deepseek32", "glm-dsa"):
            # "%s.attention.indexer.{head_count,key_length,top_k}" (src/llama-arch.cpp), all required
            w.add_indexer_head_count(spec["indexer_n_head"])
            w.add_indexer_key_length(spec["indexer_head_size"])
            w.add_indexer_top_k(spec["indexer_top_k"])
        if arch == "glm-dsa":
            # per-layer 1 (full) / 0 (shared top-k); the loader reads it with get_key_or_arr, n_layer long
            w.add_key_value(f"{arch}.attention.indexer.types", [int(t) for t in spec["indexer_types"]],
                            gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
        return
    w.add_head_count_kv(spec["n_head_kv"])
    if arch != "qwen2moe":
        w.add_key_length(spec["head_dim"])
        w.add_value_length(spec["head_dim"])
    if arch in ("llama", "qwen3moe"):
        w.add_rope_dimension_count(spec["head_dim"])
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "gemma3":
        w.add_rope_freq_base_swa(spec["rope_base_swa"])
        w.add_sliding_window(spec["sliding_window"])
    if arch in ("qwen3moe", "qwen2moe"):
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
        w.add_expert_feed_forward_length(spec["n_ff_exp"])
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(spec["n_ff_shexp"])


def tensor_data(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "norm":
        # llama.cpp wants norm weights in f32; 1.0 keeps activations well scaled.
        return np.ones(shape, dtype=np.float32)
    if kind == "ssm_a":
        # A = -exp(A_log), A_log ~ log U(1, 16), as Mamba-2 initialises it
        return -np.exp(rng.uniform(0.0, np.log(16.0), shape)).astype(np.float32)
    if kind == "ssm_dt_b":
        # dt ~ log-uniform in [1e-3, 1e-1]; the bias is its inverse softplus
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    data = rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)
    # Routers, biases and conv1d stay f32, as in real conversions; llama-quantize never touches them.
    return data if kind == "f32" else data.astype(np.float16)


def write_f16(path: Path, name: str, spec: dict, vocab: list) -> None:
    w = gguf.GGUFWriter(path, spec["arch"])
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    write_metadata(w, spec)
    for key, val, vtype, sub in vocab:
        w.add_key_value(key, val, vtype, sub)

    rng = np.random.default_rng(spec["seed"])
    for tname, shape, kind in tensors_for(spec):
        w.add_tensor(tname, tensor_data(rng, shape, kind))

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
        jobs = [(tmp / f"{b}-f16.gguf", tmp / f"{b}-{q}.gguf", QUANTS[q])
                for b, spec in SPECS.items() for q in spec["quants"]]
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
