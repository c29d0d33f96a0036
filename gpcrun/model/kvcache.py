"""KV-cache bytes per token, layer by layer, as llama.cpp allocates them (llama_hparams: n_embd_k_gqa, is_swa,
is_mla, n_embd_r / n_embd_s for recurrent state)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .ggml import GGML_QUANT_SIZES, GGML_TYPE_NAMES
from .layouts import DSV4, indexer_layers, indexer_row_elems, layout

KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@dataclass(frozen=True)
class LayerKV:
    """KV cache cost of one layer, per token (attention) or per sequence (recurrent state)."""

    layer: int
    kind: str  # "full" | "swa" | "mla" | "recurrent" | "none" | "dsv4"
    k_bytes_per_token: int
    v_bytes_per_token: int
    window: int | None  # tokens held by an SWA layer
    state_bytes_per_seq: int  # recurrent layers: conv + ssm state (f32); dsv4: its compressor states
    compress_ratio: int = 0  # dsv4: cells per compressed cell (4: CSA + indexer, 128: HCA, 0: window only)
    compressed_k_bytes: int = 0  # dsv4: bytes of one compressed cell (its K, plus the indexer's on CSA layers)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        if not self.compress_ratio:
            d.pop("compress_ratio")
            d.pop("compressed_k_bytes")
        return d


def _per_layer(v: Any, n_layer: int) -> list | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return list(v)[:n_layer] + [v[-1]] * max(0, n_layer - len(v)) if v else None
    return [v] * n_layer


_TYPE_IDS = {name: t for t, name in GGML_TYPE_NAMES.items()}


def _type_row_bytes(cache_type: str, n: int) -> int:
    t = _TYPE_IDS.get(cache_type.upper())
    if t is None or cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r} (one of {', '.join(KV_CACHE_TYPES)})")
    block, size = GGML_QUANT_SIZES[t]
    return -(-n // block) * size


def kv_cache_layers(facts: Mapping[str, Any], type_k: str = "f16", type_v: str = "f16") -> tuple[LayerKV, ...]:
    """Per-layer KV cost following llama.cpp's llama_hparams (n_embd_k_gqa, is_swa, is_mla, n_embd_r/s), with which
    layers hold a KV cache and which recurrent state from layouts.layout (llama.cpp's create_memory filters). A
    layer in both caches (falcon-h1) is its attention kind with state_bytes_per_seq > 0."""
    n_layer = facts.get("block_count")
    if not n_layer:
        return ()
    lay = layout(facts)
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
    elif window and facts.get("architecture") == "lfm2":  # lfm2.cpp:26-31: every attention layer is SWA
        is_swa = [True] * n_layer
    else:
        is_swa = [False] * n_layer
    if facts.get("architecture") in DSV4:
        return _dsv4_layers(facts, lay, heads_kv, hk_swa, type_k)
    mla = bool(facts.get("key_length_mla") and facts.get("value_length_mla"))
    state = lay.state_bytes_per_seq
    # an indexer's keys (DSA, k-pool, QSA) live in cells of their own cache, as many as the layer's: counted with its K
    lid_on = indexer_layers(facts)
    lid_bytes = _type_row_bytes(type_k, indexer_row_elems(facts)) if any(lid_on) else 0
    out = []
    for il in range(n_layer):
        st = state if lay.recurrent[il] else 0
        if not lay.kv[il]:
            out.append(LayerKV(il, "recurrent" if st else "none", 0, 0, None, st))
        elif is_swa[il]:
            out.append(LayerKV(il, "swa", _type_row_bytes(type_k, heads_kv[il] * hk_swa),
                               _type_row_bytes(type_v, heads_kv[il] * hv_swa), window, st))
        elif mla:  # the V cache is a view of K: no V bytes
            k = _type_row_bytes(type_k, heads_kv[il] * hk) + (lid_bytes if lid_on[il] else 0)
            out.append(LayerKV(il, "mla", k, 0, None, st))
        else:
            k = _type_row_bytes(type_k, heads_kv[il] * hk) + (lid_bytes if lid_on[il] else 0)
            out.append(LayerKV(il, "full", k, _type_row_bytes(type_v, heads_kv[il] * hv), None, st))
    return tuple(out)


def _dsv4_layers(facts, lay, heads_kv, hk_swa: int, type_k: str) -> tuple[LayerKV, ...]:
    """llama_kv_cache_dsv4 (llama-kv-cache-dsv4.cpp:1213-1335), every block (its hparams drop n_layer_nextn): a
    K-only sliding-window cache of the raw keys, then by the layer's compress ratio a K-only cache of compressed keys
    (4: CSA, with the lightning indexer's keys beside it; 128: HCA) and f32 compressor states (kv and score planes
    of state x width per sequence: CSA 8 x 2 key_length, HCA 128 x key_length, indexer 8 x 2 indexer key_length)."""
    ratios = facts.get("compress_ratios") or ()
    hk = facts.get("key_length") or 0
    ihs = facts.get("indexer_key_length") or 0
    window = facts.get("sliding_window")
    out = []
    for il in range(len(lay.kv)):
        if not lay.kv[il]:
            out.append(LayerKV(il, "none", 0, 0, None, 0))
            continue
        r = int(ratios[il]) if il < len(ratios) else 0
        comp = _type_row_bytes(type_k, hk) + (_type_row_bytes(type_k, ihs) if r == 4 else 0) if r else 0
        state = {4: 2 * 4 * (8 * 2 * hk + 8 * 2 * ihs), 128: 2 * 4 * 128 * hk}.get(r, 0)
        out.append(LayerKV(il, "dsv4", _type_row_bytes(type_k, heads_kv[il] * hk_swa), 0, window, state, r, comp))
    return tuple(out)
