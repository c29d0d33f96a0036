"""gpcrun inspect MODEL: the GGUF header, exactly."""
from __future__ import annotations

import os

import click

from ..fmt import human_bytes, table
from ..model.layouts import layout_notes
from ..model import KV_CACHE_TYPES, ROLES, load_model
from .main import emit_json, main


@main.command("inspect")
@click.argument("model", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document (schema gpcrun.inspect/1).")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default="f16", show_default=True,
              help="KV cache type for the per-token KV figures.")
@click.option("--tensors/--no-tensors", default=True, show_default=True, help="List every tensor (text mode).")
def inspect_cmd(model: str, as_json: bool, kv_type: str, tensors: bool) -> None:
    """Read a GGUF header (all shards) and report facts, tensors, byte totals and KV cost.

    MODEL is a path, or a hub ref (hf://OWNER/REPO[@REV]/FILE.gguf, OWNER/REPO[:QUANT]): its header only is read."""
    from ..hub import describe, is_hub_ref, load_ref_header
    info, hub = load_ref_header(model) if is_hub_ref(model) else (load_model(model), None)
    if as_json:
        emit_json(dict(info.to_json(kv_type), **({"hub": hub} if hub else {})))
        return
    text = render_text(info, kv_type, tensors)
    click.echo(text.replace("\n", "\n" + describe(hub) + "\n", 1) if hub else text)


def _v(x):
    return "null" if x is None else (",".join(map(str, x)) if isinstance(x, tuple) else str(x))


def render_text(info, kv_type: str, show_tensors: bool) -> str:
    f = info.facts
    out = []
    s0 = info.shards[0]
    ok = all(s.reconciled for s in info.shards)
    out.append(f"{os.path.basename(info.path)}: {human_bytes(info.file_size_bytes)} in {len(info.shards)} shard(s),"
               f" GGUF v{s0.version}, {f['tensor_count']} tensors, {len(info.metadata)} keys")
    keys = ["architecture", "name", "file_type_name", "context_length", "block_count", "embedding_length",
            "feed_forward_length", "head_count", "head_count_kv", "key_length", "value_length", "vocab_size",
            "expert_count", "expert_used_count", "expert_shared_count", "expert_feed_forward_length",
            "leading_dense_block_count", "sliding_window", "sliding_window_pattern", "kv_lora_rank",
            "q_lora_rank", "ssm_state_size", "ssm_inner_size", "ssm_conv_kernel", "wkv_head_size"]
    rows = [[k, _v(f.get(k))] for k in keys if f.get(k) is not None or k in keys[:12]]
    out.append("")
    out.append(table(rows, ["fact", "value"]))
    by_role = info.bytes_by_role()
    total = info.tensor_bytes
    out.append("")
    out.append(table([[r, f"{by_role[r]:,}", human_bytes(by_role[r]), f"{100 * by_role[r] / total:.1f}%" if total else "-"]
                      for r in ROLES if by_role[r]] + [["total", f"{total:,}", human_bytes(total), "100%"]],
                     ["role", "bytes", "", "share"], "lrrr"))
    mix = info.quant_mix()
    out.append("")
    out.append("quant mix: " + ", ".join(f"{t} {human_bytes(b)}" for t, b in mix.items()))
    kv = info.kv_layers(kv_type)
    if kv:
        kinds: dict[str, list[int]] = {}
        for l in kv:
            kinds.setdefault(l.kind, []).append(l.layer)
        per_tok = sum(l.k_bytes_per_token + l.v_bytes_per_token for l in kv)
        desc = "; ".join(f"{k}: {_ranges(v)}" for k, v in kinds.items())
        out.append(f"KV cache ({kv_type}): {per_tok:,} bytes/token over all layers ({desc})")
        w = next((l.window for l in kv if l.kind == "swa"), None)
        if w:
            out.append(f"  sliding window {w} tokens: llama.cpp allocates PAD(min(n_ctx_seq, {w} + n_ubatch), 256) cells"
                       " for these layers")
        st = sum(l.state_bytes_per_seq for l in kv)
        if st:
            n_st = sum(1 for l in kv if l.state_bytes_per_seq)
            out.append(f"  recurrent state: {st:,} bytes per sequence ({n_st} layers, f32; llama.cpp keeps one per"
                       " sequence, -np)")
    out.extend(f"note: {n}" for n in layout_notes(info.facts, info.tensors))
    by_layer = info.bytes_by_layer()
    layer_sizes = sorted({b for k, b in by_layer.items() if k != "non_layer"})
    if layer_sizes:
        out.append(f"per-layer bytes: {human_bytes(layer_sizes[0])}"
                   + (f" .. {human_bytes(layer_sizes[-1])}" if len(layer_sizes) > 1 else " (all layers)")
                   + f"; outside layers: {human_bytes(by_layer.get('non_layer', 0))}")
    for s in info.shards:
        out.append(f"reconcile {os.path.basename(s.path)}: header {s.header_bytes:,} + tensors {s.tensor_bytes:,}"
                   f" + padding {s.padding_bytes:,} = {s.header_bytes + s.tensor_bytes + s.padding_bytes:,}"
                   f" {'==' if s.reconciled else '!='} file {s.file_size_bytes:,} {'OK' if s.reconciled else 'MISMATCH'}")
    if not ok:
        out.append("warning: tensor data does not account for the file size exactly")
    if show_tensors:
        out.append("")
        out.append(table([[t.name, t.type_name, "x".join(map(str, t.shape)), f"{t.n_bytes:,}", f"{t.file_offset:,}",
                           t.role] for t in info.tensors], ["tensor", "type", "shape", "bytes", "offset", "role"],
                         "lllrrl"))
    return "\n".join(out)


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = x
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)
