"""gpcrun plan MODEL [-- LLAMA_SERVER_ARGS]: placement, memory map, forecast and verdict before anything loads."""
from __future__ import annotations

import shlex

import click

from ..fmt import human_bytes, table
from ..model import KV_CACHE_TYPES
from ..exits import Exit
from .main import emit_json, main
from .params import FiniteFloat


@main.command("plan", context_settings={"ignore_unknown_options": True})
@click.argument("model", type=str)
@click.option("--ctx", type=click.IntRange(min=0), default=None, help="Context size (default: the largest that fits, >= 4096).")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default=None,
              help="KV cache type (default: f16, else q8_0 when only that fits).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True, help="Server slots (-np).")
@click.option("--floor", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Refuse plans forecast below this decode speed (tok/s).")
@click.option("--margin", type=FiniteFloat(min=0), default=None, help="GPU safety margin in MiB (default 1024).")
@click.option("--vram", type=click.IntRange(min=0), multiple=True, help="Plan for a GPU with this much free VRAM (MiB); repeat per GPU.")
@click.option("--gpu", multiple=True, help="Plan for this GPU model (spec sheet), e.g. 'RTX 4090'; repeat per GPU.")
@click.option("--refresh", is_flag=True, help="Re-measure bandwidths in the hardware profile.")
@click.option("--profile", "profile_file", type=str, default=None,
              help="Plan for another machine: its `gpcrun profile --calibrate --json` output (with its calibration).")
@click.option("--cpu-threads", type=click.IntRange(min=1), default=None,
              help="The host's llama-server default -t (its physical cores) for a machine you describe.")
@click.option("--cpu-bandwidth", type=FiniteFloat(min=0.001), default=None,
              help="The host's decode read rate in GB/s (what llama.cpp achieves there) instead of measured rates.")
@click.option("--device-memory", "device_memory", multiple=True, metavar="NAME=MIB",
              help="Use at most MIB on llama.cpp's device NAME (e.g. RPC0=20480 for a ggml-rpc-server given with"
                   " --rpc); repeat per device.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema gpcrun.plan/1).")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def plan_cmd(model, ctx, kv_type, parallel, floor, margin, vram, gpu, refresh, profile_file, cpu_threads,
             cpu_bandwidth, device_memory, as_json, server_args):
    """Plan how to run MODEL with llama-server; arguments after -- are pinned and passed through.

    MODEL is a path, or a hub ref (hf://OWNER/REPO[@REV]/FILE.gguf, OWNER/REPO[:QUANT]): its header only is read."""
    import os

    from ..hub import describe
    from ..planning import (build_request, build_target, model_head_dims, model_types, plan_with_document,
                            resolve_model, shown_plan)
    from ..planning import server_args as parse_args
    from ..fmt import render_changes
    sa = parse_args(list(server_args), os.environ)
    req = build_request(ctx, kv_type, parallel, floor, margin, sa)
    resolved = resolve_model(model)
    target = build_target(vram, gpu, refresh, model_types(resolved.info), profile_file, cpu_threads, cpu_bandwidth,
                          model_head_dims(resolved.info))
    runnable, doc = plan_with_document(resolved, req, sa, target,
                                       {"ctx": ctx, "kv_type": kv_type, "parallel": parallel},
                                       device_memory=_device_memory(device_memory))
    changes = doc["changes"]
    plan = shown_plan(resolved, runnable)
    hub = resolved.hub
    if as_json:
        emit_json(dict(plan.to_json(), extras=doc["extras"], prompt_cache=doc["prompt_cache"], changes=changes,
                       **({"hub": hub} if hub else {})))
    else:
        click.echo(render_plan(plan, render_changes(changes)) + ("\n" + describe(hub) if hub else ""))
    if plan.verdict != "ship":
        raise SystemExit(Exit.REFUSED.code)


def _device_memory(items) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, mib = item.partition("=")
        if not sep or not name or not mib.strip().isdigit():
            raise click.BadParameter(f"{item!r}: expected NAME=MIB, e.g. RPC0=20480", param_hint="--device-memory")
        out[name.strip()] = int(mib) * (1 << 20)
    return out


def render_plan(plan, changes_text: str = "") -> str:
    out = []
    ev = plan.chosen or plan.nearest
    if ev is not None:
        title = "plan" if plan.chosen is not None else "nearest plan"
        rows = []
        for m in ev.memory:
            rows.append([m.device, human_bytes(m.model_bytes), human_bytes(m.context_bytes),
                         human_bytes(m.compute_bytes), human_bytes(m.other_bytes), human_bytes(m.total_bytes),
                         human_bytes(m.margin_bytes), human_bytes(m.capacity_bytes),
                         human_bytes(m.headroom_bytes) if m.headroom_bytes is not None else "unknown"])
        out.append(f"{title}: memory map")
        out.append(table(rows, ["device", "model", "context", "compute", "other", "total", "margin", "free",
                                "headroom"], "lrrrrrrrr"))
        f = ev.forecast
        if f.decode_tok_s is not None:
            lo, hi = f.decode_band_tok_s
            out.append(f"decode forecast: {f.decode_tok_s:.1f} tok/s (band {lo:.1f}-{hi:.1f}, ceiling"
                       f" {f.decode_ceiling_tok_s:.1f}; {f.method}{_calibration_age(plan.target)})")
        else:
            out.append(f"decode forecast: unknown ({f.method})")
        if f.prefill_tok_s is not None:
            out.append(f"prefill forecast: {f.prefill_tok_s:.0f} tok/s (measured host prefill rate)")
        if f.prefill_ceiling_tok_s is not None:
            out.append(f"prefill ceiling: {f.prefill_ceiling_tok_s:.0f} tok/s (spec-sheet FLOP/s)")
    out.append(f"verdict: {plan.verdict.upper()}")
    out.extend(f"  - {r}" for r in plan.reasons)
    out.extend(f"  note: {n}" for n in plan.notes)
    if changes_text:
        out.append(changes_text)
    if plan.argv:
        out.append("llama-server " + " ".join(shlex.quote(a) for a in plan.argv))
    return "\n".join(out)


def _calibration_age(target) -> str:
    """'; calibration 2.5 h old' when the host's rates were measured (gpcrun profile --calibrate)."""
    r = target.host.decode_rates
    if r is None or not r.measured_at_unix:
        return ""
    import time
    return f"; calibration {(time.time() - r.measured_at_unix) / 3600:.1f} h old"
