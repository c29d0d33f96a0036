"""Architecture facts from GGUF metadata: the hparams llama.cpp reads (llama-model.cpp, load_hparams), by name,
with llama.cpp's own defaults where the GGUF carries none."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..errors import GGUFError
from .ggml import FILE_TYPE_NAMES
from .info import KVField, TensorInfo

# llama.cpp hard-codes these SWA patterns where the GGUF carries none (llama-model.cpp, set_swa_pattern).
_DEFAULT_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "exaone4": 4}
# Architectures whose every layer is recurrent (fixed state per sequence, no KV cache).
_RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}

_INT_TYPES = frozenset(("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64"))
# llama.cpp's LLAMA_MAX_LAYERS is 512; this looser bound only keeps per-layer work finite.
MAX_BLOCK_COUNT = 1 << 16
# src/llama-hparams.h
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
UINT32_MAX = (1 << 32) - 1


def _int_value(md: Mapping[str, KVField], key: str, path: str, bools: bool = False) -> Any:
    """An integer hparam (scalar or kept array), or None if absent; wrong types raise like llama.cpp does."""
    f = md.get(key)
    if f is None:
        return None
    t = f.elem_type if f.type == "ARRAY" else f.type
    if t not in _INT_TYPES and not (bools and t == "BOOL"):
        desc = f"ARRAY of {f.elem_type}" if f.type == "ARRAY" else f.type
        raise GGUFError(path, f"key {key!r} has type {desc}, expected an integer or an array of integers")
    if f.type == "ARRAY" and f.value is None:
        raise GGUFError(path, f"key {key!r} is an array of {f.count} elements, too long for a per-layer value")
    if any(v < 0 for v in (f.value if f.type == "ARRAY" else (f.value,))):
        raise GGUFError(path, f"key {key!r} has a negative value")
    return f.value


def derive_facts(md: Mapping[str, KVField], tensors: Iterable[TensorInfo], path: str = "<metadata>") -> dict[str, Any]:
    """Facts from the metadata; raises GGUFError (naming `path`) for hparams of the wrong type or out of range."""
    def g(key: str) -> Any:
        f = md.get(key)
        return None if f is None else f.value

    arch_f = md.get("general.architecture")
    if arch_f is not None and arch_f.type != "STRING":
        raise GGUFError(path, f"key 'general.architecture' has type {arch_f.type}, expected STRING")
    arch = g("general.architecture")
    a = (lambda k, bools=False: _int_value(md, f"{arch}.{k}", path, bools)) if arch else (lambda k, bools=False: None)
    tensors = list(tensors)
    ftype = g("general.file_type")
    n_layer = a("block_count")
    if isinstance(n_layer, tuple) or (n_layer is not None and n_layer > MAX_BLOCK_COUNT):
        raise GGUFError(path, f"{arch}.block_count is {n_layer!r}, expected an integer <= {MAX_BLOCK_COUNT}")
    n_embd = a("embedding_length")
    n_head = a("attention.head_count")
    n_head_kv = a("attention.head_count_kv")
    n_head_scalar = max(n_head) if isinstance(n_head, tuple) and n_head else n_head
    key_length = a("attention.key_length")
    if key_length is None and n_embd and n_head_scalar:
        key_length = n_embd // n_head_scalar
    value_length = a("attention.value_length")
    if value_length is None:
        value_length = key_length
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (tokens.count if tokens is not None else None)
    if vocab is None:
        emb = next((t for t in tensors if t.name == "token_embd.weight"), None)
        vocab = emb.shape[1] if emb is not None and len(emb.shape) > 1 else None
    swa_pattern = a("attention.sliding_window_pattern", bools=True)
    n_layer_dense = a("leading_dense_block_count")
    facts: dict[str, Any] = {
        "architecture": arch,
        "name": g("general.name"),
        "file_type": ftype,
        "file_type_name": FILE_TYPE_NAMES.get(ftype) if isinstance(ftype, int) else None,
        "quantization_version": g("general.quantization_version"),
        "context_length": a("context_length"),
        "embedding_length": n_embd,
        "block_count": n_layer,
        "feed_forward_length": a("feed_forward_length"),
        "head_count": n_head,
        "head_count_kv": n_head_kv if n_head_kv is not None else n_head,
        "key_length": key_length,
        "value_length": value_length,
        "key_length_swa": a("attention.key_length_swa"),
        "value_length_swa": a("attention.value_length_swa"),
        "rope_dimension_count": a("rope.dimension_count"),
        "vocab_size": vocab,
        "expert_count": a("expert_count"),
        "expert_used_count": a("expert_used_count"),
        "expert_shared_count": a("expert_shared_count"),
        "expert_feed_forward_length": a("expert_feed_forward_length"),
        "expert_shared_feed_forward_length": a("expert_shared_feed_forward_length"),
        "leading_dense_block_count": n_layer_dense,
        "sliding_window": a("attention.sliding_window"),
        "sliding_window_pattern": swa_pattern if swa_pattern is not None else _DEFAULT_SWA_PATTERN.get(arch),
        "q_lora_rank": a("attention.q_lora_rank"),
        "kv_lora_rank": a("attention.kv_lora_rank"),
        "key_length_mla": a("attention.key_length_mla"),
        "value_length_mla": a("attention.value_length_mla"),
        "ssm_conv_kernel": a("ssm.conv_kernel"),
        "ssm_inner_size": a("ssm.inner_size"),
        "ssm_state_size": a("ssm.state_size"),
        "ssm_time_step_rank": a("ssm.time_step_rank"),
        "ssm_group_count": a("ssm.group_count"),
        "wkv_head_size": a("wkv.head_size"),
        "token_shift_count": a("token_shift_count"),
        "nextn_predict_layers": a("nextn_predict_layers"),
        "full_attention_interval": a("full_attention_interval"),
        "recurrent_layers": a("attention.recurrent_layers", bools=True),
        "kda_head_dim": a("kda.head_dim"),
        "shortconv_l_cache": a("shortconv.l_cache"),
        "indexer_key_length": a("attention.indexer.key_length"),
        "indexer_types": a("attention.indexer.types", bools=True),
        "compress_ratios": a("attention.compress_ratios"),
        "indexer_kpool": a("attention.indexer.kpool"),
        "recurrent": arch in _RECURRENT_ARCHS if arch else None,
        "tensor_count": len(tensors),
    }
    check_facts(facts, md, tensors, path)
    return facts


def _scalar_max(v) -> int | None:
    if isinstance(v, (list, tuple)):
        return max(v) if v else None
    return v


def check_facts(facts: Mapping[str, Any], md: Mapping[str, KVField], tensors: Iterable[TensorInfo],
                path: str) -> None:
    """Headers that parse but make no sense: refused (GGUFError, exit 4) with the field named, before anything is
    planned. llama.cpp's own checks are the reference (llama-model.cpp load_hparams: 0 < block_count <=
    LLAMA_MAX_LAYERS, expert_count <= LLAMA_MAX_EXPERTS, expert_used_count <= expert_count, > 0 when there are
    experts and 0 when not; n_ctx_train is a uint32), plus what would divide by zero or mean nothing here: an
    attention model with no heads, expert tensors without an expert count, a non-finite float hyper-parameter."""
    arch = facts.get("architecture")
    if not arch:
        return
    n_layer = facts.get("block_count")
    if n_layer is not None and not 0 < n_layer <= LLAMA_MAX_LAYERS:
        raise GGUFError(path, f"{arch}.block_count is {n_layer}: llama.cpp needs 1 to {LLAMA_MAX_LAYERS}"
                              " (llama-model.cpp load_hparams)")
    nextn = facts.get("nextn_predict_layers")
    if n_layer is not None and nextn is not None and not isinstance(nextn, tuple) and nextn > n_layer:
        raise GGUFError(path, f"{arch}.nextn_predict_layers is {nextn}, more than {arch}.block_count {n_layer}"
                              " (llama-model.cpp:1332 asserts it)")
    n_exp = facts.get("expert_count") or 0
    used = _scalar_max(facts.get("expert_used_count")) or 0
    if n_exp > LLAMA_MAX_EXPERTS:
        raise GGUFError(path, f"{arch}.expert_count is {n_exp}: llama.cpp allows at most {LLAMA_MAX_EXPERTS}")
    if used > n_exp:
        raise GGUFError(path, f"{arch}.expert_used_count is {used}, more than {arch}.expert_count {n_exp}")
    if n_exp and not used:
        raise GGUFError(path, f"{arch}.expert_used_count is 0 (or missing) with {n_exp} experts: no expert would run")
    if not n_exp and any(t.name.endswith("_exps.weight") for t in tensors):
        raise GGUFError(path, f"expert tensors (*_exps.weight) but {arch}.expert_count is 0 or missing")
    heads = facts.get("head_count")
    if n_layer and heads is not None and not isinstance(heads, (list, tuple)) and heads == 0 \
            and not facts.get("recurrent"):
        raise GGUFError(path, f"{arch}.attention.head_count is 0: no attention head (the head size divides by it)")
    ctx = facts.get("context_length")
    if ctx is not None and not 0 < ctx <= UINT32_MAX:
        raise GGUFError(path, f"{arch}.context_length is {ctx}: llama.cpp reads it as a uint32 > 0")
    for key, f in md.items():
        if not key.startswith(arch + "."):
            continue
        t = f.elem_type if f.type == "ARRAY" else f.type
        if t in ("FLOAT32", "FLOAT64") and f.value is not None:
            vals = f.value if f.type == "ARRAY" else (f.value,)
            if any(not math.isfinite(v) for v in vals):
                raise GGUFError(path, f"key {key!r} is not a finite number ({f.value!r})")
