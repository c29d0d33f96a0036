"""The compute-buffer estimate: the peak of llama.cpp's graph allocator for one ubatch, per backend."""
from __future__ import annotations

from dataclasses import dataclass

from ..model import kv_cache_layers
from ..model.layouts import indexer_layers
from .kv import _pad, kv_size_tokens
from .types import Placement

# Compute-buffer model constants (estimate_compute_bytes). "Rows" are f32 activations of one ubatch token.
_F32 = 4
_IDX_BYTES = 8  # int64 KV row indices (k_idxs / v_idxs inputs)
_COMPUTE_SHAPES: dict = {}


@dataclass(frozen=True)
class _ComputeShape:
    n_layer: int
    n_embd: int
    ffn_width: int  # widest FFN per token: n_ff, n_expert_used * n_ff_exp, shared expert, or SSM in-projection
    n_head: int
    q_width: int  # n_head * key_length (MLA: the absorbed kv_lora_rank + rope head)
    v_width: int  # n_head_kv * value_length
    window: int
    mla: bool
    any_full: bool  # a full-context attention layer (its KQ mask spans n_kv)
    any_swa: bool  # a sliding-window layer (a second, smaller mask)
    full_prefix: tuple[int, ...]  # full/MLA attention layers among the first i
    swa_prefix: tuple[int, ...]
    idx_prefix: tuple[int, ...] = ()  # layers with a sparse-attention indexer (DSA, k-pool, QSA) among the first i
    idx_pool: int = 1  # cells per indexer score (k-pool / compress ratio), 1 for DSA
    idx_mask_pool: int = 1  # cells per top-k mask entry: 1, or deepseek4's CSA ratio (it selects compressed cells)


# the facts estimate_compute_bytes and kv_cache_layers read: the cache key (memory_map passes a fresh dict per call)
_COMPUTE_FACTS = ("block_count", "embedding_length", "feed_forward_length", "expert_count", "expert_used_count",
                  "expert_feed_forward_length", "expert_shared_count", "expert_shared_feed_forward_length",
                  "leading_dense_block_count", "ssm_conv_kernel", "ssm_inner_size", "ssm_group_count",
                  "ssm_state_size", "ssm_time_step_rank", "wkv_head_size", "token_shift_count", "recurrent",
                  "head_count", "head_count_kv", "key_length", "value_length", "key_length_swa", "value_length_swa",
                  "key_length_mla", "value_length_mla", "sliding_window", "sliding_window_pattern", "architecture",
                  "block_count", "nextn_predict_layers", "indexer_key_length", "indexer_types", "compress_ratios",
                  "indexer_kpool", "context_length", "recurrent_layers", "full_attention_interval")


def _compute_shape(facts) -> _ComputeShape:
    key = tuple(tuple(v) if isinstance(v, list) else v for v in map(facts.get, _COMPUTE_FACTS))
    if key in _COMPUTE_SHAPES:
        return _COMPUTE_SHAPES[key]

    def mx(v) -> int:
        return (max(v) if v else 0) if isinstance(v, (tuple, list)) else int(v or 0)

    e = mx(facts.get("embedding_length"))
    ff = mx(facts.get("feed_forward_length"))
    width = ff
    if facts.get("expert_count"):
        fe = mx(facts.get("expert_feed_forward_length")) or ff
        shared = mx(facts.get("expert_shared_feed_forward_length")) or mx(facts.get("expert_shared_count")) * fe
        dense = ff if facts.get("leading_dense_block_count") else 0
        width = max(mx(facts.get("expert_used_count")) * fe, shared, dense)
    d_inner = mx(facts.get("ssm_inner_size"))
    if d_inner:  # mamba: z, x, B, C, dt come out of one in-projection
        width = max(width, 2 * d_inner + 2 * mx(facts.get("ssm_group_count")) * mx(facts.get("ssm_state_size"))
                    + mx(facts.get("ssm_time_step_rank")))
    h = mx(facts.get("head_count"))
    layers = kv_cache_layers(facts)
    full, swa = [0], [0]
    for l in layers:
        full.append(full[-1] + (l.kind in ("full", "mla")))
        swa.append(swa[-1] + (l.kind in ("swa", "dsv4")))  # deepseek4 attends its window (+ compressed cells)
    idx = [0]
    dsv4 = [l.compress_ratio == 4 for l in layers]  # deepseek4's CSA layers carry the lightning indexer
    for on, csa in zip(indexer_layers(facts)[:len(layers)], dsv4):
        idx.append(idx[-1] + (on or csa))
    ratios = facts.get("compress_ratios")
    pool = mx(facts.get("indexer_kpool")) or (max(ratios) if isinstance(ratios, (list, tuple)) and ratios else 0)
    s = _ComputeShape(len(layers), e, width, h, h * mx(facts.get("key_length")),
                      mx(facts.get("head_count_kv")) * mx(facts.get("value_length")), mx(facts.get("sliding_window")),
                      any(l.kind == "mla" for l in layers), full[-1] > 0, swa[-1] > 0, tuple(full), tuple(swa),
                      tuple(idx), 4 if any(dsv4) else max(1, pool), 4 if any(dsv4) else 1)
    _COMPUTE_SHAPES[key] = s
    return s


def estimate_compute_bytes(facts: dict, pl: Placement, kind: str, runs_layers: bool,
                           moved_attn: tuple[int, ...] = (), extra_rows: int = 0) -> int:
    """Compute buffer of one backend (llama.cpp `sched_reserve`): the peak of the graph allocator for one ubatch.

    Method: llama.cpp reserves the prompt graph for T = min(n_ubatch, -c) tokens (rounded up to whole sequences)
    against the full KV cache, and ggml-alloc reuses freed tensors, so the buffer is the live inputs plus the
    largest phase of one layer, not a sum over layers. Per device (the CPU holds layers [0, i_gpu_start), the GPU
    the rest; several GPUs are each given the whole GPU range, an upper bound):
    - inputs, alive all graph long: the KQ mask T x n_kv_per_stream (f16 with flash attention, else f32; a second
      one for sliding-window layers); without flash attention also the int64 V row indices (T x n_embd_v_gqa per
      cache; MLA instead: the f32 copy of V plus the KQV product);
    - a layer, in f32 rows of T tokens: max(5 n_embd, attention 6 n_embd or 2 n_embd + 3 q_width, FFN 4 n_embd +
      3 ffn_width); without flash attention the attention phase adds the f32 KQ scores n_kv x T x n_head (softmax
      runs in place); a sparse-attention layer (DSA / k-pool / QSA indexer) adds its f32 scores over the cache and
      two T x n_kv copies of the top-k mask in the KQ mask's type (an all -inf row repeated, the selection scattered
      in: qwen4exp.cpp:820-850); measured on tiny deepseek32, glm-dsa, glm5-next and qwen4exp up to 8192 cells
      within -7.3 / +7.9 MiB, where leaving it out missed by up to 25 MiB and grew with the context.
      The last layer runs its FFN on the output rows only, so a device holding only it has none;
    - a CPU that runs layers also keeps the input embeddings (+1 row); a CPU holding only the input layer has
      4 n_embd rows + the inputs, or the expert FFN (4 n_embd + 3 ffn_width rows) when --n-cpu-moe / -ot keeps
      experts on it.
    Measured (scripts/bench/plan_accuracy.py, CPU and ggml-rpc-server "GPU" buffers of this llama.cpp build):
    on the benchmark grid of the dense/MoE/SWA/MLA models (14 tiny models + SmolLM2, 487 runs) max error 3.0 MiB;
    with every memory layout (39 tiny models + SmolLM2, 1407 runs, 2465 buffers > 0.5 MiB) largest underestimate
    13.0 MiB (minimax-01's lightning attention), from -77 % to +158 % on small buffers; on a wider fit set with
    synthetic shapes (n_embd 256-2048, n_ff 256-8192, head widths 256-2048, -ub 128-1024, -np 1-3, fa on/off, 3758
    cells) from -17 % to +47 % (largest
    underestimate 3.0 MiB of 231 MiB). It overestimates most when n_ff < 1.5 n_embd (the allocator then fits FFN
    tensors into freed holes) and for a GPU holding only the last layer. CUDA buffers could not be measured here:
    CUDA runs the same graph through the same allocator, but ops it lacks fall back to the CPU and several GPUs with
    pipeline parallelism keep extra input copies, neither modelled.
    """
    if not runs_layers:
        return 0
    s = _compute_shape(facts)
    L, e, fw, qw = s.n_layer, s.n_embd, s.ffn_width, s.q_width
    n_seq = max(1, pl.parallel)
    n_ctx = kv_size_tokens(pl)
    t = min(pl.n_ubatch, pl.ctx if pl.ctx > 0 else n_ctx)  # llama-context: n_ubatch <= n_batch <= -c
    t = -(-t // n_seq) * n_seq  # graph_reserve rounds n_tokens up to a multiple of n_seqs
    n_kv = n_ctx if pl.kv_unified else n_ctx // n_seq
    swa_kv = _pad(min(n_kv, s.window * (n_seq if pl.kv_unified else 1) + pl.n_ubatch))
    fa = pl.flash_attn != "off"
    gpu_start = min(L, max(L + 1 - pl.ngl, 0))
    lo, hi = (gpu_start, L) if kind == "gpu" else (0, gpu_start)
    n_full, n_swa = s.full_prefix[hi] - s.full_prefix[lo], s.swa_prefix[hi] - s.swa_prefix[lo]
    for il in moved_attn:  # CPU layers whose attention the scheduler runs on the GPU (fa_auto.moved_attention)
        sign = 1 if kind == "gpu" else -1
        n_full += sign * (s.full_prefix[il + 1] - s.full_prefix[il])
        n_swa += sign * (s.swa_prefix[il + 1] - s.swa_prefix[il])
    full_here = n_full > 0
    attn_here = full_here or n_swa > 0
    ffn_here = lo < min(hi, L - 1)
    masks = ([n_kv] if s.any_full else []) + ([swa_kv] if s.any_swa else [])
    inputs = t * sum(masks) * (2 if fa else _F32)
    kv_here = n_kv if full_here else swa_kv
    if not fa and s.mla:  # V is a view of the latent K, transposed by a copy before KQV, where layers run
        inputs += (kv_here * s.v_width * _F32 + t * s.n_head * s.v_width * _F32) if attn_here else 0
    elif not fa and masks:  # V cache stored transposed: one index per element
        inputs += t * s.v_width * _IDX_BYTES * len(masks)
    ffn_rows = 4 * e + 3 * fw if ffn_here else 0
    if fa:
        attn = _F32 * t * max(6 * e, 2 * e + 3 * qw)
    else:
        attn = kv_here * t * s.n_head * _F32 + _F32 * t * max(5 * e, 2 * e + 3 * qw)
    if s.idx_prefix and s.idx_prefix[hi] > s.idx_prefix[lo]:
        # sparse attention (deepseek32.cpp, glm-dsa.cpp, glm5-next.cpp, qwen4exp.cpp): the indexer's f32 scores
        # over the cache (one per pool of cells) and the top-k mask built as an all -inf row repeated over the
        # tokens and the scatter of the selected cells into it, in the KQ mask's type
        attn += t * -(-n_kv // s.idx_mask_pool) * (2 * (2 if fa else _F32)) + t * -(-n_kv // s.idx_pool) * _F32
    act = max(_F32 * t * max(5 * e, ffn_rows), attn if attn_here else 0)
    if kind == "gpu":
        return int(inputs + act + _F32 * t * e * extra_rows)
    if hi > lo:
        return int(inputs + act + _F32 * t * e)
    b = _F32 * t * 4 * e + inputs
    if pl.n_cpu_moe or any(buft.upper().startswith("CPU") for _, buft in pl.overrides):
        b = max(b, _F32 * t * (4 * e + 3 * fw))
    return int(b)
