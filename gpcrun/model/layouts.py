"""Which layers hold a KV cache, which hold recurrent state, and how big that state is: llama.cpp's own rules, by
architecture (pure). The authority is the pinned llama.cpp source:
- src/llama-arch.cpp llm_arch_is_recurrent / llm_arch_is_hybrid;
- each architecture's load_hparams in src/models/<arch>.cpp (is_recr_impl, is_swa_impl);
- llama_model::create_memory in src/llama-model.cpp:2358-2898 (which memory class, with which layer filters);
- llama_hparams::n_embd_r / n_embd_s in src/llama-hparams.cpp (the state widths, f32, one row per sequence).

`block_count` counts NextN/MTP blocks too (llama-model.cpp:1329-1332); the trunk is the first
block_count - nextn_predict_layers (llama-hparams.cpp:349). Architectures whose context memory is a class this
module does not reproduce are flagged: `Layout.approximate` says so, and what they are counted as.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

RECURRENT = frozenset(("mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"))  # llm_arch_is_recurrent
# llm_arch_is_hybrid, by how a layer is marked recurrent:
# a recurrent_layers array, else every full_attention_interval-th layer attends (qwen3next.cpp:17-23,
# qwen35.cpp, qwen35moe.cpp:20-26, minimax-01.cpp:12-18); NextN blocks are in neither cache (llama-model.cpp:2705)
INTERVAL = {"qwen3next": 4, "qwen35": 4, "qwen35moe": 4, "qwen4exp": 4, "minimax-01": 8}
# n_head_kv(il) == 0 for il < n_layer() (jamba.cpp, plamo2.cpp, granite-hybrid.cpp, lfm2.cpp:11-13,
# lfm2moe.cpp:12-14, kimi-linear.cpp:17-19, kimi-k3.cpp:31-33, bailingmoe3.cpp:36-38); create_memory passes no
# filters, so the attention cache covers every block with heads, NextN blocks included (llama-memory-hybrid.cpp:47)
HKV_ZERO = frozenset(("jamba", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "kimi-linear", "kimi-k3",
                      "bailingmoe3"))
# nemotron-h.cpp: recurrent when n_head_kv == 0 and n_ff == 0; attention when not recurrent and n_ff == 0; a layer
# with an FFN holds neither (filters at llama-model.cpp:2695-2728)
NEMOTRON = frozenset(("nemotron_h", "nemotron_h_moe"))
BOTH = frozenset(("falcon-h1",))  # every layer in both caches (filter_attn = filter_recr = true)
# llama_memory_hybrid_idx for glm5-next (llama-model.cpp:2457-2500): KDA layers (n_head_kv == 0, glm5-next.cpp:21-23)
# recurrent, the others a K-only MLA cache, NextN blocks in neither; the indexer cache on the non-recurrent trunk
# layers whose attention.indexer.types entry is 1 (all when absent). qwen4exp (llama-model.cpp:2694-2770): its
# interval layout (INTERVAL), and the QSA indexer cache on every attention trunk layer when indexer.key_length > 0
HYBRID_IDX = frozenset(("glm5-next", "qwen4exp"))
# llama_kv_cache_dsv4 (deepseek4): every block, NextN included (its cache hparams set n_layer_nextn = 0), holds a
# sliding-window raw cache, and by its compress ratio compressed caches and compressor states (kvcache._dsv4_layers)
DSV4 = frozenset(("deepseek4",))
# context memory classes not reproduced here (llama-model.cpp create_memory): counted as a plain KV cache
NOT_MODELLED = {
    "minimax-m3": "an indexer cache (llama_kv_cache_msa)",
    "dots3note": "an indexer cache with sliding windows (llama_kv_cache_dsa_iswa)",
    "hy_v4": "an indexer cache (llama_kv_cache_dsa) when indexer_top_k > 0",
}
# llama_kv_cache_dsa (llama-kv-cache-dsa.cpp): beside the MLA cache, an indexer key cache of the same cells with
# one head of attention.indexer.key_length, type_k, no V (the hparams copy stays MLA), on the trunk layers
# filter_lid keeps (llama-model.cpp:2435-2440): every one for deepseek32, the "full" indexer layers for glm-dsa
# (hy_v4's indexer cache depends on indexer_top_k: not modelled)
DSA_INDEXER = frozenset(("deepseek32", "glm-dsa"))
# glm-dsa.cpp GLM_5_2_DEFAULT_INDEXER_TYPES: layers 0 and 1, then every 4th from 2, up to 78 layers
_GLM_5_2_INDEXER_TYPES = tuple([1, 1] + [1, 0, 0, 0] * 19)
# NextN/MTP blocks are not loaded unless llama-server runs MTP speculation (--spec-type draft-mtp): their tensors
# are TENSOR_SKIP (the `mtp_flags` of these models' load_tensors; common.cpp:1683 load_mtp)
MTP_SKIPPED = frozenset(("bailingmoe3", "cohere2moe", "deepseek2", "deepseek32", "deepseek4", "glm-dsa", "glm4moe",
                         "glm5-next", "hy_v3", "mimo2", "nemotron_h", "nemotron_h_moe", "qwen35", "qwen35moe",
                         "qwen3next", "qwen4exp", "step35"))


@dataclass(frozen=True)
class Layout:
    kv: tuple[bool, ...]  # per block: holds a KV cache in the main context
    recurrent: tuple[bool, ...]  # per block: holds recurrent state (r and s rows, f32, one per sequence)
    r_elems: int  # llama_hparams::n_embd_r(): conv / token-shift state per recurrent layer per sequence
    s_elems: int  # llama_hparams::n_embd_s(): ssm / wkv / delta-net state
    n_trunk: int  # block_count - nextn_predict_layers
    approximate: str | None = None  # why this layout is a guess; None when llama.cpp's rules are reproduced

    @property
    def state_bytes_per_seq(self) -> int:
        return 4 * (self.r_elems + self.s_elems)


def _at(v: Any, i: int, default: int = 0) -> int:
    if isinstance(v, (list, tuple)):
        return int(v[i]) if i < len(v) else (int(v[-1]) if v else default)
    return int(v) if v is not None else default


def indexer_layers(facts: Mapping[str, Any]) -> list[bool]:
    """Per block, whether it holds a DSA indexer key cache (llama-model.cpp:2435-2440 filter_lid: trunk layers,
    and for glm-dsa only those whose indexer is "full": attention.indexer.types, else every layer of a model
    trained below 1M tokens (GLM 5, 5.1), else GLM 5.2's default table (glm-dsa.cpp load_arch_hparams))."""
    arch = facts.get("architecture")
    n_all = int(facts.get("block_count") or 0)
    n = n_all - min(int(facts.get("nextn_predict_layers") or 0), n_all)
    if (arch not in DSA_INDEXER and arch not in HYBRID_IDX) or not facts.get("indexer_key_length"):
        return [False] * n_all
    if arch == "qwen4exp":
        kv = layout(facts).kv
        return [i < n and kv[i] for i in range(n_all)]
    if arch in HYBRID_IDX:
        given = facts.get("indexer_types")
        full = [bool(given[i]) if i < len(given) else True for i in range(n_all)] if isinstance(
            given, (list, tuple)) else [given is None or bool(given)] * n_all
        kv = layout(facts).kv
        return [i < n and kv[i] and full[i] for i in range(n_all)]
    if arch == "glm-dsa":
        given = facts.get("indexer_types")
        if isinstance(given, (list, tuple)):
            full = [bool(given[i]) if i < len(given) else False for i in range(n_all)]
        elif given is not None:
            full = [bool(given)] * n_all
        elif (facts.get("context_length") or 0) < 1048576:
            full = [True] * n_all
        else:
            full = [bool(_GLM_5_2_INDEXER_TYPES[i]) if i < len(_GLM_5_2_INDEXER_TYPES) else False
                    for i in range(n_all)]
    else:
        full = [True] * n_all
    return [i < n and full[i] for i in range(n_all)]


def indexer_row_elems(facts: Mapping[str, Any]) -> int:
    """Elements of one indexer cache row: one head of indexer.key_length, and for a k-pool indexer the raw key and
    the pooled key side by side (llama-memory-hybrid-idx.cpp:56-58): key | gate | pooled for glm5-next (whose k-pool
    is required), key | pooled for qwen4exp when a layer has a compress ratio (qwen4exp.cpp:63-83)."""
    k = int(facts.get("indexer_key_length") or 0)
    arch = facts.get("architecture")
    if arch == "glm5-next":
        return 3 * k
    ratios = facts.get("compress_ratios")
    pooled = any(ratios) if isinstance(ratios, (list, tuple)) else bool(ratios)
    return 2 * k if arch == "qwen4exp" and pooled else k


def state_elems(facts: Mapping[str, Any]) -> tuple[int, int]:
    """(n_embd_r, n_embd_s) as llama_hparams computes them (llama-hparams.cpp: the first non-zero of RWKV, LFM2
    short conv, Kimi KDA, MiniMax lightning attention, else Mamba)."""
    e = _at(facts.get("embedding_length"), 0)
    n_head = _at(facts.get("head_count"), 0)
    d_conv, d_inner = facts.get("ssm_conv_kernel") or 0, facts.get("ssm_inner_size") or 0
    d_state, n_group = facts.get("ssm_state_size") or 0, facts.get("ssm_group_count") or 0
    if facts.get("wkv_head_size"):
        return (facts.get("token_shift_count") or 2) * e, e * facts["wkv_head_size"]
    kda = facts.get("kda_head_dim") or 0
    la = _at(facts.get("key_length"), 0) if facts.get("architecture") == "minimax-01" else 0
    if facts.get("shortconv_l_cache"):
        r = e * (facts["shortconv_l_cache"] - 1)
    elif kda:
        r = 3 * (d_conv - 1 if d_conv > 0 else 3) * n_head * kda
    else:
        r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    if kda:
        s = kda * kda * n_head
    elif la:
        s = la * la * n_head
    else:
        s = d_state * d_inner
    return r, s


def layout(facts: Mapping[str, Any]) -> Layout:
    """Per block: KV cache or not, recurrent state or not; for any architecture llama.cpp loads."""
    arch = facts.get("architecture") or ""
    n_all = int(facts.get("block_count") or 0)
    nextn = min(int(facts.get("nextn_predict_layers") or 0), n_all)
    n = n_all - nextn
    hkv = facts.get("head_count_kv")
    ff = facts.get("feed_forward_length")
    r, s = state_elems(facts)
    approx = None
    if arch in RECURRENT or facts.get("recurrent"):
        recr = [True] * n_all
        kv = [False] * n_all
    elif arch in INTERVAL:
        given = facts.get("recurrent_layers")
        interval = facts.get("full_attention_interval") or INTERVAL[arch]
        if isinstance(given, (list, tuple)) and len(given) == n_all:
            recr = [bool(x) for x in given]
        else:
            recr = [i < n and (i + 1) % interval != 0 for i in range(n_all)]
        kv = [i < n and not recr[i] for i in range(n_all)]
        recr = [i < n and recr[i] for i in range(n_all)]
    elif arch in DSV4:
        recr = [False] * n_all
        kv = [_at(hkv, i) > 0 for i in range(n_all)]
    elif arch in HYBRID_IDX:
        recr = [i < n and _at(hkv, i) == 0 for i in range(n_all)]
        kv = [i < n and _at(hkv, i) > 0 for i in range(n_all)]
    elif arch in HKV_ZERO:
        recr = [i < n and _at(hkv, i) == 0 for i in range(n_all)]
        kv = [not recr[i] and _at(hkv, i) > 0 for i in range(n_all)]
    elif arch in NEMOTRON:
        recr = [i < n and _at(hkv, i) == 0 and _at(ff, i) == 0 for i in range(n_all)]
        kv = [not recr[i] and _at(ff, i) == 0 and _at(hkv, i) > 0 for i in range(n_all)]
    elif arch in BOTH:
        recr = [i < n for i in range(n_all)]
        kv = [_at(hkv, i) > 0 for i in range(n_all)]
    else:
        # a plain (or sliding-window) KV cache: every trunk block with KV heads (llama-model.cpp:2814-2819 keeps
        # NextN blocks out of the main context); a block with no KV heads of a model with a recurrent state
        # (an architecture not listed above) is taken for a recurrent one
        recr = [i < n and bool(r or s) and _at(hkv, i) == 0 for i in range(n_all)]
        kv = [i < n and _at(hkv, i) > 0 for i in range(n_all)]
        if arch in NOT_MODELLED:
            approx = (f"approximate: {arch}'s context memory is not modelled ({NOT_MODELLED[arch]});"
                      " counted as a plain KV cache")
    if not any(recr):
        r = s = 0
    return Layout(tuple(kv), tuple(recr), r, s, n, approx)


def layout_notes(facts: Mapping[str, Any], tensors=(), load_mtp: bool = False) -> tuple[str, ...]:
    """What a plan or inspect says about the layout: an architecture whose context memory is not modelled, and
    NextN/MTP blocks llama.cpp will not load."""
    lay = layout(facts)
    out = [lay.approximate] if lay.approximate else []
    nextn = facts.get("nextn_predict_layers") or 0
    if nextn and facts.get("architecture") in MTP_SKIPPED and not load_mtp:
        skipped = sum(t.n_bytes for t in tensors if t.layer is not None and t.layer >= lay.n_trunk)
        out.append(f"{nextn} NextN/MTP block(s) ({skipped / (1 << 20):.1f} MiB) are not loaded: llama-server loads"
                   " them only with --spec-type draft-mtp")
    return tuple(out)
