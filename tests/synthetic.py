"""Synthetic ModelInfo objects shaped like real models (no file), for planner tests at real scale."""
from __future__ import annotations

from types import MappingProxyType

from gpcrun.model import GGML_QUANT_SIZES, GGML_TYPE_NAMES, KVField, ModelInfo, ShardInfo, TensorInfo, derive_facts, tensor_role

_T = {name: t for t, name in GGML_TYPE_NAMES.items()}


def _tensor(name: str, shape: tuple[int, ...], type_name: str, offset: int) -> TensorInfo:
    t = _T[type_name]
    block, size = GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    return TensorInfo(name, t, type_name, shape, n, n // block * size, offset, offset, 0, layer, tensor_role(name))


def moe_model(arch="qwen3moe", n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128,
              n_expert_used=8, n_ff_exp=768, n_vocab=151936, ctx_train=40960, expert_type="Q4_0",
              other_type="Q8_0", tied=False) -> ModelInfo:
    """Default: shaped like Qwen3-30B-A3B (the model of shared/gpu-facts.md)."""
    tensors = []
    off = 0

    def add(name, shape, ty):
        nonlocal off
        t = _tensor(name, shape, ty, off)
        off += -(-t.n_bytes // 32) * 32
        tensors.append(t)

    add("token_embd.weight", (n_embd, n_vocab), other_type)
    for il in range(n_layer):
        p = f"blk.{il}."
        add(p + "attn_norm.weight", (n_embd,), "F32")
        add(p + "attn_q.weight", (n_embd, n_head * head_dim), other_type)
        add(p + "attn_k.weight", (n_embd, n_head_kv * head_dim), other_type)
        add(p + "attn_v.weight", (n_embd, n_head_kv * head_dim), other_type)
        add(p + "attn_output.weight", (n_head * head_dim, n_embd), other_type)
        add(p + "attn_q_norm.weight", (head_dim,), "F32")
        add(p + "attn_k_norm.weight", (head_dim,), "F32")
        add(p + "ffn_norm.weight", (n_embd,), "F32")
        add(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32")
        add(p + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), expert_type)
        add(p + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), expert_type)
        add(p + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), expert_type)
    add("output_norm.weight", (n_embd,), "F32")
    if not tied:
        add("output.weight", (n_embd, n_vocab), other_type)
    md = {
        "general.architecture": KVField("STRING", arch),
        f"{arch}.block_count": KVField("UINT32", n_layer),
        f"{arch}.context_length": KVField("UINT32", ctx_train),
        f"{arch}.embedding_length": KVField("UINT32", n_embd),
        f"{arch}.attention.head_count": KVField("UINT32", n_head),
        f"{arch}.attention.head_count_kv": KVField("UINT32", n_head_kv),
        f"{arch}.attention.key_length": KVField("UINT32", head_dim),
        f"{arch}.attention.value_length": KVField("UINT32", head_dim),
        f"{arch}.expert_count": KVField("UINT32", n_expert),
        f"{arch}.expert_used_count": KVField("UINT32", n_expert_used),
        f"{arch}.expert_feed_forward_length": KVField("UINT32", n_ff_exp),
        f"{arch}.vocab_size": KVField("UINT32", n_vocab),
    }
    shard = ShardInfo("synthetic.gguf", off, 3, "little", 32, 0, off, 0, len(tensors), len(md), True)
    return ModelInfo("synthetic.gguf", (shard,), MappingProxyType(md), tuple(tensors),
                     MappingProxyType(derive_facts(md, tensors)))
