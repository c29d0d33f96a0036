"""KV cache and recurrent state: the context llama.cpp actually allocates and its bytes per device."""
from __future__ import annotations

from .constants import CTX_PAD
from .layout import LayoutTable, _layer_device
from .types import Placement


def _pad(n: int, to: int = CTX_PAD) -> int:
    return -(-n // to) * to


def kv_size_tokens(pl: Placement) -> int:
    """n_ctx after llama.cpp's rounding (llama-context.cpp:292-306): padded to 256, and to whole slots."""
    n_ctx = _pad(pl.ctx)
    if pl.kv_unified or pl.parallel <= 1:
        return n_ctx
    return _pad(n_ctx // pl.parallel) * pl.parallel


def context_bytes_by_device(table: LayoutTable, pl: Placement, n_gpus: int) -> list[int]:
    """KV cache and recurrent state bytes per device index (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp)."""
    out = [0] * (n_gpus + 1)
    n_seq = max(1, pl.parallel)
    n_ctx = kv_size_tokens(pl)
    n_stream = 1 if pl.kv_unified else n_seq
    n_ctx_seq = n_ctx if pl.kv_unified else n_ctx // n_seq
    for l in table.kv_layers(pl.type_k, pl.type_v):
        dev = 0 if pl.no_kv_offload else _layer_device(l.layer, table.n_layer, pl.ngl, n_gpus, pl.splits)
        # recurrent state: one f32 row per sequence, mem_size = max(1, n_seq_max) whether or not the KV is unified
        # (llama-model.cpp create_memory, llama-memory-recurrent.cpp); a layer may hold state and KV (falcon-h1)
        out[dev] += l.state_bytes_per_seq * n_seq
        if l.kind in ("recurrent", "none"):
            continue
        if l.kind == "dsv4":  # llama_kv_cache_dsv4: per-sequence streams whether or not the KV is unified
            raw = n_ctx_seq if pl.swa_full or not l.window else _pad(min(n_ctx_seq, l.window + pl.n_ubatch))
            comp = _pad(max(1, -(-n_ctx_seq // l.compress_ratio))) if l.compress_ratio else 0
            out[dev] += (l.k_bytes_per_token * raw + l.compressed_k_bytes * comp) * n_seq
            continue
        cells = n_ctx_seq
        if l.kind == "swa" and l.window and not pl.swa_full:
            # iswa: PAD(min(n_ctx_seq, n_swa * (unified ? n_seq : 1) + n_ubatch), 256) cells per stream
            cells = _pad(min(n_ctx_seq, l.window * (n_seq if pl.kv_unified else 1) + pl.n_ubatch))
        out[dev] += (l.k_bytes_per_token + l.v_bytes_per_token) * cells * n_stream
    return out
