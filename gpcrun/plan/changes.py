"""Every change a plan makes to the user's llama-server command line, each with its reason (pure).

The user's arguments and LLAMA_ARG_* are never overridden (pinned_from reads them; build_argv writes only what is
left free); what the plan adds is listed here so that serve, plan.json and receipts can say why, e.g.
"-c 8192: the model's 131072-token context does not fit beside the weights; 8192 is the largest that does".
"""
from __future__ import annotations

from ..server_args import ServerArgs
from .types import Plan

_FIT = "the plan is the fit: llama.cpp's --fit must not move layers or shrink the context again at load time"


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / (1 << 30):.2f} GiB"


def describe_changes(plan: Plan, user: ServerArgs, train_ctx: int | None, requested: dict | None = None,
                     reasons: dict[str, str] | None = None) -> list[dict]:
    """[{flag, value, reason}] for each option the plan's argv sets that the user did not (by flag or env), and for
    a user value the plan replaced ('-ngl auto'). `requested` holds gpcrun's own options (ctx, kv_type, parallel);
    `reasons` gives the reason for options decided outside the placement search (option key -> text)."""
    requested = requested or {}
    reasons = reasons or {}
    ev = plan.chosen or plan.nearest
    if ev is None:
        return []
    pl = ev.placement
    gpus = [m for m in ev.memory if m.kind == "gpu"]
    out: list[dict] = []
    for a in ServerArgs.parse(list(plan.argv), strict=False).items:
        o = a.option
        if o is None or o.key == "model" or user.is_set(o.key):
            continue
        value = " ".join(a.values)
        why = reasons.get(o.key) or _reason(o.key, pl, gpus, train_ctx, requested)
        out.append({"flag": a.token, "value": value, "reason": why})
    if user.value("gpu-layers") in ("auto", "-1") and gpus:
        out.append({"flag": "-ngl", "value": str(pl.ngl),
                    "reason": f"replaces -ngl {user.value('gpu-layers')}: the plan chose the layers (see -ngl above)"})
    return out


def _reason(key: str, pl, gpus, train_ctx: int | None, req: dict) -> str:
    if key == "ctx-size":
        if req.get("ctx") is not None:
            return f"from gpcrun --ctx {req['ctx']}"
        streams = 1 if pl.kv_unified else max(1, pl.parallel)
        full = (train_ctx or 0) * streams
        default = (f"the model's {train_ctx}-token context" + (f" for each of {streams} slots" if streams > 1 else "")
                   + " (llama-server's default)")
        if train_ctx and pl.ctx >= full:
            return f"{default}, written out since --fit is off"
        return f"{default} does not fit; {pl.ctx} is the largest that does"
    if key in ("cache-type-k", "cache-type-v"):
        t = pl.type_k if key == "cache-type-k" else pl.type_v
        if req.get("kv_type"):
            return f"from gpcrun --kv-type {req['kv_type']}"
        if t == "f16":
            return "llama-server's default (f16), written out"
        return f"f16 KV does not fit (or forecasts slower) at {pl.ctx} tokens; {t} halves the cache or more"
    if key == "gpu-layers":
        if not gpus:
            return "no GPU is visible: every layer runs on the CPU"
        free = ", ".join(f"{m.device} {_gib(m.capacity_bytes)} free" for m in gpus)
        return f"{pl.ngl} layers on the GPU: the fastest placement that fits ({free})"
    if key == "n-cpu-moe":
        free = ", ".join(_gib(m.capacity_bytes) for m in gpus) or "no"
        return (f"experts of layers 0-{pl.n_cpu_moe - 1} stay in RAM to fit {free} of free VRAM"
                " (the fastest placement that fits)")
    if key == "fit":
        return _FIT
    if key == "parallel":
        return (f"from gpcrun --parallel/--concurrency {req['parallel']}" if req.get("parallel")
                else f"{pl.parallel} slots")
    if key == "flash-attn":
        return f"-fa {pl.flash_attn}: llama.cpp needs flash attention for a quantized V cache ({pl.type_v})"
    return "set by the plan"
