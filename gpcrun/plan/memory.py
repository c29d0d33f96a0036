"""The memory map: what each device holds for a placement (weights, context, compute, other) against its room."""
from __future__ import annotations

from dataclasses import replace

from .compute import estimate_compute_bytes
from .fa_auto import HC_POST_UNFUSED_ROWS, flash_attn_auto_off, hc_post_auto_off, moved_attention
from .constants import HOST_PROCESS_OVERHEAD_BYTES, host_term_line_bytes
from .kv import context_bytes_by_device
from .layout import LayoutTable, _layer_device
from .request import Request, Target
from .types import DeviceMemory, Placement


def output_buffer_bytes(table: LayoutTable, pl: Placement) -> int:
    # llama_context output buffer: logits for n_seq outputs (f32) + embeddings (none for generation)
    return table.n_vocab * 4 * max(1, pl.parallel)


def memory_map(table: LayoutTable, target: Target, pl: Placement, req: Request) -> tuple[DeviceMemory, ...]:
    n_gpus = len(target.gpus)
    model_b, _ = table.weights_by_device(pl, n_gpus)
    ctx_b = context_bytes_by_device(table, pl, n_gpus)
    facts = dict(table.model.facts)
    runs = [False] * (n_gpus + 1)
    for il in range(table.n_layer + 1):
        runs[_layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)] = True
    runs[0] = True  # the CPU backend always holds the input and the graph's CPU parts
    moved_all = moved_attention(table, pl, n_gpus)
    graph_pl = replace(pl, flash_attn="off") if flash_attn_auto_off(table, pl, n_gpus, moved_all) else pl
    # only the CPU -> GPU moves (single-GPU): layers the compute estimate counts on the CPU side
    moved = tuple(il for il, (dev, att) in moved_all.items() if dev == 0 and att != 0)
    hc_rows = HC_POST_UNFUSED_ROWS if hc_post_auto_off(table, pl, n_gpus) else 0  # on the GPU after the split
    out = []
    for i, dev in enumerate(target.devices):
        if dev.kind == "host":
            margin = req.host_margin_bytes
            if margin is None:  # the watchdog's default SIGTERM line (constants.host_term_line_bytes)
                margin = host_term_line_bytes(dev.limit_bytes or dev.capacity_bytes or 0)
            other = output_buffer_bytes(table, pl) + HOST_PROCESS_OVERHEAD_BYTES
        else:
            margin = req.gpu_margin_bytes
            other = dev.runtime_overhead_bytes
        held = model_b[i]
        if dev.kind == "host" and pl.mmap:
            held = table.host_mapped_bytes(pl, n_gpus)
        out.append(DeviceMemory(dev.name, dev.kind, held, ctx_b[i],
                                estimate_compute_bytes(facts, graph_pl, dev.kind, runs[i], moved,
                                                       hc_rows if i == 1 else 0),
                                other, dev.capacity_bytes, margin, model_b[i]))
    # an integrated GPU's buffers are host memory: the host must hold them beside its own
    shared = sum(m.self_bytes for m, d in zip(out, target.devices) if d.kind != "host" and d.shares_host_memory)
    if shared:
        out = [replace(m, other_bytes=m.other_bytes + shared) if d.kind == "host" else m
               for m, d in zip(out, target.devices)]
    return tuple(out)
