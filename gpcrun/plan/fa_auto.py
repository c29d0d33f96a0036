"""What `-fa auto` resolves to for a placement (pure).

llama.cpp decides `-fa auto` at context creation (src/llama-context.cpp resolve_fused_ops): it reserves a
one-token graph, lets the scheduler place it, and turns flash attention off if any layer's FLASH_ATTN_EXT node
landed on another device than model.dev_layer(il) ("layer N is assigned to device CPU but Flash Attention is
assigned to device RPC0"). With every op supported, that happens through the scheduler's pass 2
(ggml/src/ggml-backend.cpp ggml_backend_sched_split_graph): the FA node has no weights, so "expand gpu down"
gives it the device of the last non-CPU node before it, and when the node before it is on the CPU (its layer's
KV writes: a CPU layer, or any layer under `-nkvo`), "expand gpu up" gives it the device of the next assigned
node after it.

In a hybrid model that next node can be the recurrent-state read of the next layer with a memory:
llm_graph_context::build_rs expands its state copies as soon as that layer is built, before the attention
layer's output projection is pulled into the graph (measured in the scheduler's GGML_SCHED_DEBUG=2 listing for
tiny-lfm2 at -ngl 4: FA of layer 2, then cache_r_l3's SCALE/GET_ROWS/CPY on RPC0, then layer 2's attn_output on
the CPU). The state lives on its layer's device, or on the CPU under `-nkvo` (create_memory passes offload_kqv to
the recurrent cache too). Architectures whose layer loop first expands its attn_norm (qwen35.cpp:167,
qwen35moe.cpp:186, qwen3next.cpp, kimi-linear.cpp:286, kimi-k3.cpp:295, glm5-next.cpp:596, qwen4exp.cpp:465) pull
the previous layer's output projection in first, so the next node is on the attention layer's own device.
falcon-h1 runs its mamba right after the attention of the same layer (falcon-h1.cpp:152-161), so there the
"next layer" is the layer itself. scripts/bench/fa_auto.py checks every generated hybrid at every -ngl, with and
without -nkvo, against the real llama-server.
"""
from __future__ import annotations

from ..model.layouts import layout
from .layout import LayoutTable, _layer_device
from .types import Placement

# Architectures whose layers end in DeepSeek-V4's hyper-connection "post" op (fused: ggml_dsv4_hc_post); measured on
# glm5-next only (deepseek4 and qwen4exp build it too, but their memory is not modelled)
HC_POST = frozenset(("glm5-next",))
# Without the fused op, build_hc_post (glm5-next.cpp:511-545) mixes the hc streams with per-stream MUL/ADD and a
# growing CONCAT: the device after the split then peaks ~50 f32 rows of n_embd per ubatch token higher (tiny-glm5-next
# on an RPC device, ngl 3: +25.5 MiB at ubatch 512, +6.2 MiB at 128; scripts/bench/plan_accuracy.py)
HC_POST_UNFUSED_ROWS = 50

# layer loops that expand the layer's input norm before anything else (see above)
EARLY_EXPAND = frozenset(("qwen35", "qwen35moe", "qwen3next", "kimi-linear", "kimi-k3", "glm5-next", "qwen4exp"))


def moved_attention(table: LayoutTable, pl: Placement, n_gpus: int) -> dict[int, tuple[int, int]]:
    """Attention layers whose attention core (the FLASH_ATTN_EXT node, or KQ/softmax/KQV without flash attention)
    the scheduler places on another device than the layer's: layer -> (its device, the attention's device);
    0 = CPU, 1.. = GPUs, as layout._layer_device."""
    facts = table.model.facts
    if n_gpus == 0 or facts.get("architecture") in EARLY_EXPAND:
        return {}
    lay = getattr(table, "memory_layout", None) or layout(facts)
    n = table.n_layer
    mixing = [i for i in range(min(lay.n_trunk, len(lay.kv))) if lay.kv[i] or lay.recurrent[i]]
    offload = not pl.no_kv_offload
    out = {}
    for k, il in enumerate(mixing):
        if not lay.kv[il]:
            continue
        nxt = il if lay.recurrent[il] else (mixing[k + 1] if k + 1 < len(mixing) else None)
        dev = _layer_device(il, n, pl.ngl, n_gpus, pl.splits)
        if dev != 0 and offload:
            continue  # its KV writes sit on its GPU: "expand gpu down" keeps the attention there
        att = dev  # "expand gpu up" from its own output projection
        if nxt is not None and lay.recurrent[nxt]:
            att = _layer_device(nxt, n, pl.ngl, n_gpus, pl.splits) if offload else 0
        if att != dev:
            out[il] = (dev, att)
    return out


def flash_attn_auto_off(table: LayoutTable, pl: Placement, n_gpus: int,
                        moved: dict[int, tuple[int, int]] | None = None) -> str | None:
    """Why llama.cpp will turn `-fa auto` off for this placement, or None when it stays on (or was pinned);
    `moved`: moved_attention's answer when the caller has it already."""
    if pl.flash_attn != "auto":
        return None
    for il, (dev, att) in sorted((moved if moved is not None else moved_attention(table, pl, n_gpus)).items()):
        here = "the CPU" if dev == 0 else f"GPU {dev - 1}"
        there = "the CPU (-nkvo)" if att == 0 else f"GPU {att - 1}"
        return (f"-fa auto resolves to off here: llama.cpp schedules layer {il}'s flash attention on {there}, "
                f"beside the next layer's recurrent state, while layer {il} is on {here} "
                f"(llama-context.cpp resolve_fused_ops); memory is counted without flash attention; "
                f"another -ngl, or -fa on, keeps it")
    return None


def hc_post_auto_off(table: LayoutTable, pl: Placement, n_gpus: int) -> str | None:
    """The fused hyper-connection post op goes off (resolve_fused_ops, "fused DeepSeek V4 HC post") when the last
    CPU layer's post op, the layer's last node and weightless, is scheduled on the GPU that runs the next layer
    ("expand gpu up"): a CPU -> GPU boundary anywhere in the trunk, or before the output layer."""
    if n_gpus == 0 or table.model.facts.get("architecture") not in HC_POST:
        return None
    n = table.n_layer
    start = max(n + 1 - max(0, min(pl.ngl, n + 1)), 0)
    if not 1 <= start <= n:
        return None
    return (f"fused hyper-connection post goes off here: layer {start - 1}'s runs on the GPU after the split "
            f"(llama-context.cpp resolve_fused_ops); its unfused form costs that GPU ~{HC_POST_UNFUSED_ROWS} x "
            f"n_embd f32 per ubatch token of compute (counted); an -ngl that offloads every layer keeps it fused")
