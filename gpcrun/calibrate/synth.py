"""Synthetic GGUFs for calibration: dense llama models whose every weight matrix has one ggml type, sized well
above the last-level cache so decode streams them from RAM, as a real model's weights are.

Valid data in every type llama.cpp can quantize to, without quantizing hundreds of MB in Python: a one-layer
seed model (f32 random normal weights) goes through llama.cpp's own `llama-quantize --pure TYPE`, and the big
model is that quantized layer repeated n_layer times (same bytes per layer, so the CPU reads every byte of
every layer per token like any model). The vocabulary is llama.cpp's "no_vocab" with a vocab_size (dummy
tokens, src/llama-vocab.cpp), which is all llama-bench needs (random token ids).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_EMBD = 2048
N_FF = 5632
N_HEAD = 16
N_VOCAB = 256  # tiny: token_embd/output stay a rounding error next to the layers


@dataclass(frozen=True)
class SynthModel:
    path: Path
    ggml_type: str
    n_layer: int
    layer_bytes: int  # bytes of one layer's weights: what decode reads per layer per token
    tensor_bytes: int  # all tensors (layers + embeddings + output)
    n_params: int  # all weights
    prefill_params: float = 0.0  # the weights every prompt batch token computes with (plan/prefill.py)
    one_token_bytes: int = 0  # the bytes only the batch's output token reads (plan/prefill.py one_token)


@dataclass(frozen=True)
class Shape:
    """A synthetic model's shape: dense llama, or qwen3moe when n_expert > 0."""
    n_embd: int = N_EMBD
    n_ff: int = N_FF
    n_head: int = N_HEAD
    n_head_kv: int = N_HEAD
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0

    @property
    def arch(self) -> str:
        return "qwen3moe" if self.n_expert else "llama"

    def tag(self) -> str:
        return f"{self.arch}-{self.n_embd}-{self.n_ff}-{self.n_head_kv}-{self.n_expert}x{self.n_expert_used}-{self.n_ff_exp}"


CALIBRATION = Shape()


def _kvs(shape: Shape, n_layer: int) -> dict:
    a, hd = shape.arch, shape.n_embd // shape.n_head
    kv = {"general.name": "gpcrun-synthetic", f"{a}.context_length": 32768, f"{a}.embedding_length": shape.n_embd,
          f"{a}.block_count": n_layer, f"{a}.feed_forward_length": shape.n_ff,
          f"{a}.attention.head_count": shape.n_head, f"{a}.attention.head_count_kv": shape.n_head_kv,
          f"{a}.rope.dimension_count": hd, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
          f"{a}.vocab_size": N_VOCAB, "tokenizer.ggml.model": "no_vocab"}
    if shape.n_expert:
        kv |= {f"{a}.expert_count": shape.n_expert, f"{a}.expert_used_count": shape.n_expert_used,
               f"{a}.expert_feed_forward_length": shape.n_ff_exp, f"{a}.attention.key_length": hd,
               f"{a}.attention.value_length": hd}
    return kv


def _shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """numpy shapes (reverse of ggml ne) of one layer's matrices."""
    e, hd = shape.n_embd, shape.n_embd // shape.n_head
    kvw = shape.n_head_kv * hd
    s = {"attn_q": (e, e), "attn_k": (kvw, e), "attn_v": (kvw, e), "attn_output": (e, e)}
    if shape.n_expert:
        x, f = shape.n_expert, shape.n_ff_exp
        s |= {"ffn_gate_inp": (x, e), "ffn_gate_exps": (x, f, e), "ffn_up_exps": (x, f, e),
              "ffn_down_exps": (x, e, f)}
    else:
        s |= {"ffn_gate": (shape.n_ff, e), "ffn_up": (shape.n_ff, e), "ffn_down": (e, shape.n_ff)}
    return s


def _write(path: Path, shape: Shape, n_layer: int, layer: dict[str, tuple[np.ndarray, int]], other: dict,
           kvs: dict | None = None, tokenizer=None) -> None:
    """other/layer: name -> (data as stored, raw ggml type id); layer tensors are repeated n_layer times. kvs:
    metadata over _kvs' (a key set to None is left out); tokenizer(writer): a vocabulary instead of no_vocab."""
    from gguf import GGUFWriter
    w = GGUFWriter(str(path), shape.arch)
    for k, v in (_kvs(shape, n_layer) | (kvs or {})).items():
        if v is None:
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    if tokenizer is not None:
        tokenizer(w)
    for name, (data, t) in other.items():
        w.add_tensor(name, data, raw_dtype=t)
    for il in range(n_layer):
        for name, (data, t) in layer.items():
            w.add_tensor(f"blk.{il}.{name}", data, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _seed(path: Path, shape: Shape) -> None:
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(0)
    e = shape.n_embd
    rand = lambda s: ((0.02 * rng.standard_normal(s, dtype=np.float32)), Q.F32)  # noqa: E731
    layer = {f"{n}.weight": rand(s) for n, s in _shapes(shape).items()}
    layer |= {n: (np.ones(e, np.float32), Q.F32) for n in ("attn_norm.weight", "ffn_norm.weight")}
    if shape.n_expert:  # qwen3moe's per-head Q/K norms
        layer |= {n: (np.ones(e // shape.n_head, np.float32), Q.F32) for n in ("attn_q_norm.weight",
                                                                               "attn_k_norm.weight")}
    other = {"token_embd.weight": rand((N_VOCAB, e)), "output_norm.weight": (np.ones(e, np.float32), Q.F32),
             "output.weight": rand((N_VOCAB, e))}
    _write(path, shape, 1, layer, other)


def write_synth(directory: Path, ggml_type: str, target_bytes: int, quantize: Path,
                shape: Shape = CALIBRATION) -> SynthModel:
    """A model of ggml_type (llama-quantize --pure) with about target_bytes of layer weights, cached by name in
    directory: its one quantized layer repeated."""
    from ..model import load_model
    directory.mkdir(parents=True, exist_ok=True)
    seed = directory / f"seed-{shape.tag()}-f32.gguf"
    if not seed.exists():
        _seed(seed.with_suffix(".tmp"), shape)
        seed.with_suffix(".tmp").rename(seed)
    one = directory / f"one-{shape.tag()}-{ggml_type}.gguf"
    if not one.exists():
        tmp = one.with_suffix(".tmp")
        p = subprocess.run([str(quantize), "--pure", str(seed), str(tmp), ggml_type], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"llama-quantize --pure {ggml_type}: " + (p.stderr.strip().splitlines() or ["?"])[-1])
        tmp.rename(one)
    info = load_model(str(one))
    layer_bytes = sum(t.n_bytes for t in info.tensors if t.layer == 0)
    n_layer = max(1, round(target_bytes / layer_bytes))
    out = directory / f"synth-{shape.tag()}-{ggml_type}-{n_layer}L.gguf"
    data = {}
    with open(one, "rb") as f:
        for t in info.tensors:
            f.seek(t.file_offset)
            raw = np.frombuffer(f.read(t.n_bytes), dtype=np.uint8)
            rows = 1
            for d in t.shape[1:]:
                rows *= d
            nd = tuple(reversed(t.shape[1:]))
            data[t.name] = (raw.reshape(*nd, -1) if len(t.shape) > 1 else raw, t.ggml_type)
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        _write(tmp, shape, n_layer, {k[len("blk.0."):]: v for k, v in data.items() if k.startswith("blk.0.")},
               {k: v for k, v in data.items() if not k.startswith("blk.")})
        tmp.rename(out)
    other = sum(t.n_bytes for t in info.tensors if t.layer is None)
    params = sum(t.n_elements for t in info.tensors if t.layer == 0) * n_layer + \
        sum(t.n_elements for t in info.tensors if t.layer is None)
    from ..plan.prefill import batch_work
    big = load_model(str(out))
    f = big.facts
    params_b, once = batch_work(big.tensors, n_layer, f.get("expert_count") or 0, f.get("expert_used_count") or 0,
                                "output.weight" not in {t.name for t in big.tensors})
    return SynthModel(out, ggml_type, n_layer, layer_bytes, layer_bytes * n_layer + other, params,
                      params_b[0], sum(once[0].values()))
