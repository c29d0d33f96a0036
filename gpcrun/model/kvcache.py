"""KV-cache bytes per token, layer by layer, as llama.cpp allocates them (llama_hparams: n_embd_k_gqa, is_swa,
is_mla, n_embd_r / n_embd_s for recurrent state)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .ggml import _C, GGML_QUANT_SIZES

KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@dataclass(frozen=True)
class LayerKV:
    """KV cache cost of one layer, per token (attention) or per sequence (recurrent state)."""

    layer: int
    kind: str  # "full" | "swa" | "mla" | "recurrent" | "none"
    k_bytes_per_token: int
    v_bytes_per_token: int
    window: int | None  # tokens held by an SWA layer
    state_bytes_per_seq: int  # recurrent layers: conv + ssm state (f32)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _per_layer(v: Any, n_layer: int) -> list | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return list(v)[:n_layer] + [v[-1]] * max(0, n_layer - len(v)) if v else None
    return [v] * n_layer


def _type_row_bytes(cache_type: str, n: int) -> int:
    t = getattr(_C.GGMLQuantizationType, cache_type.upper(), None)
    if t is None or cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r} (one of {', '.join(KV_CACHE_TYPES)})")
    block, size = GGML_QUANT_SIZES[int(t)]
    return -(-n // block) * size


def kv_cache_layers(facts: Mapping[str, Any], type_k: str = "f16", type_v: str = "f16") -> tuple[LayerKV, ...]:
    """Per-layer KV cost following llama.cpp's llama_hparams (n_embd_k_gqa, is_swa, is_mla, n_embd_r/s)."""
    n_layer = facts.get("block_count")
    if not n_layer:
        return ()
    heads_kv = _per_layer(facts.get("head_count_kv"), n_layer) or [0] * n_layer
    hk, hv = facts.get("key_length") or 0, facts.get("value_length") or 0
    hk_swa = facts.get("key_length_swa") or hk
    hv_swa = facts.get("value_length_swa") or hv
    window = facts.get("sliding_window")
    pat = facts.get("sliding_window_pattern")
    if window and isinstance(pat, tuple) and pat:  # an empty array: no pattern
        is_swa = [bool(x) for x in _per_layer(pat, n_layer)]
    elif window and isinstance(pat, int):
        is_swa = [pat == 0 or (il % pat < pat - 1) for il in range(n_layer)]
    else:
        is_swa = [False] * n_layer
    mla = bool(facts.get("key_length_mla") and facts.get("value_length_mla"))
    state = _recurrent_state_bytes(facts)
    out = []
    for il in range(n_layer):
        recurrent = facts.get("recurrent") or (state and heads_kv[il] == 0)
        if recurrent:
            out.append(LayerKV(il, "recurrent", 0, 0, None, state))
        elif heads_kv[il] == 0:
            out.append(LayerKV(il, "none", 0, 0, None, 0))
        elif is_swa[il]:
            out.append(LayerKV(il, "swa", _type_row_bytes(type_k, heads_kv[il] * hk_swa),
                               _type_row_bytes(type_v, heads_kv[il] * hv_swa), window, 0))
        elif mla:  # the V cache is a view of K: no V bytes
            out.append(LayerKV(il, "mla", _type_row_bytes(type_k, heads_kv[il] * hk), 0, None, 0))
        else:
            out.append(LayerKV(il, "full", _type_row_bytes(type_k, heads_kv[il] * hk),
                               _type_row_bytes(type_v, heads_kv[il] * hv), None, 0))
    return tuple(out)


def _recurrent_state_bytes(facts: Mapping[str, Any]) -> int:
    # f32 states: llama_hparams::n_embd_r() (conv) + n_embd_s() (ssm / wkv)
    n_embd = facts.get("embedding_length") or 0
    if facts.get("wkv_head_size"):
        r = (facts.get("token_shift_count") or 2) * n_embd
        s = n_embd * facts["wkv_head_size"]
        return 4 * (r + s)
    d_conv, d_inner = facts.get("ssm_conv_kernel") or 0, facts.get("ssm_inner_size") or 0
    d_state, n_group = facts.get("ssm_state_size") or 0, facts.get("ssm_group_count") or 0
    if not d_inner:
        return 0
    r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    s = d_state * d_inner
    return 4 * (r + s)
