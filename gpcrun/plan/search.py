"""The search: candidate placements per context and KV type, the best that ships, the nearest that would, the
verdict, and the llama-server argv that reproduces the chosen placement."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

from ..model import ModelInfo
from ..model.layouts import layout_notes
from .fa_auto import flash_attn_auto_off, hc_post_auto_off
from .speed import Calibration, forecast
from .layout import LayoutTable, repack_types_for
from .memory import memory_map
from .request import Pinned, Request, Target
from .types import Evaluation, Placement, Plan
from .verdict import below_floor_reasons, no_fit_reasons, ship_reasons

_CTX_LADDER = (1 << 20, 524288, 262144, 131072, 65536, 32768, 16384, 8192, 4096, 2048, 1024, 512)


def _ctx_candidates(model: ModelInfo, req: Request) -> list[int]:
    pinned = req.pinned.ctx if req.pinned.ctx is not None else req.ctx
    train = model.facts.get("context_length") or 4096
    # llama.cpp's default context (-c unset, or 0): n_ctx_train for each sequence when the KV cache is not unified
    # (common/fit.cpp: "context size unset and KV cache not unified -> n_ctx_train * n_streams"), else in total
    streams = 1 if req.pinned.kv_unified else max(1, req.pinned.parallel or req.parallel)
    full = train * streams
    if pinned is not None:
        return [pinned if pinned > 0 else full]
    ladder = [full] + [c for c in _CTX_LADDER if c < full]
    return [c for c in ladder if c >= min(req.min_ctx * streams, full)] or [full]


def _kv_candidates(req: Request) -> list[tuple[str, str]]:
    pk, pv = req.pinned.type_k, req.pinned.type_v
    if pk or pv:
        return [(pk or "f16", pv or "f16")]
    if req.kv_type:
        return [(req.kv_type, req.kv_type)]
    return [("f16", "f16"), ("q8_0", "q8_0")]


def _fa_for(pinned: Pinned, type_v: str) -> str:
    if pinned.flash_attn:
        return pinned.flash_attn
    return "on" if type_v not in ("f16", "f32", "bf16") else "auto"


def evaluate(table: LayoutTable, target: Target, pl: Placement, req: Request,
             calibration: Calibration | None = None) -> Evaluation:
    return Evaluation(pl, memory_map(table, target, pl, req), forecast(table, target, pl, req, calibration))


def _placement_rows(table: LayoutTable, target: Target, req: Request, ctx: int, tk: str,
                    tv: str) -> Iterable[list[Placement]]:
    """Rows of candidate placements: one row per -ngl, --n-cpu-moe ascending (each step frees VRAM, costs speed)."""
    pin = req.pinned
    n_layer = table.n_layer
    parallel = pin.parallel or req.parallel
    # llama-context.cpp: n_ubatch = min(n_batch, n_ubatch), defaults 2048 / 512
    ubatch = min(pin.n_ubatch or 512, pin.n_batch or 2048)
    base = Placement(ngl=0, n_cpu_moe=0, ctx=ctx, type_k=tk, type_v=tv, parallel=parallel,
                     kv_unified=bool(pin.kv_unified), flash_attn=_fa_for(pin, tv), n_ubatch=ubatch,
                     overrides=pin.overrides, no_kv_offload=pin.no_kv_offload,
                     mmap=pin.load_mode not in ("none", "dio"), repack=pin.repack is not False,
                     splits=_splits(pin.tensor_split, target), swa_full=pin.swa_full)
    if not target.gpus:
        yield [base]
        return
    ngls = [min(pin.ngl, n_layer + 1)] if pin.ngl is not None else list(range(n_layer + 1, -1, -1))
    if pin.cpu_moe:
        cmoes = [n_layer]
    elif pin.n_cpu_moe is not None:
        cmoes = [pin.n_cpu_moe]
    elif table.is_moe:
        cmoes = list(range(0, n_layer + 1))
    else:
        cmoes = [0]
    for ngl in ngls:
        yield [replace(base, ngl=ngl, n_cpu_moe=k) for k in cmoes]


def _search(table: LayoutTable, target: Target, req: Request, ctx: int, tk: str, tv: str,
            calibration: "Calibration | None", floor: float):
    """(best above floor, best fitting, closest non-fitting, evaluations) at one context and KV type.

    In a row (one -ngl) every extra --n-cpu-moe layer frees VRAM and costs host memory and speed, so the
    smallest count whose GPU side fits is the row's only candidate: found by binary search on memory alone,
    and only that one gets a forecast."""
    best = best_any = closest = None
    n = 0
    for row in _placement_rows(table, target, req, ctx, tk, tv):
        lo, hi, pick = 0, len(row) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            n += 1
            mem = memory_map(table, target, row[mid], req)
            if all(m.fits is not False for m in mem[1:]):
                pick, hi = (mid, mem), mid - 1
            else:
                lo = mid + 1
        if pick is None:  # the GPU side never fits in this row: remember how close the lightest one came
            pl = row[-1]
            ev = Evaluation(pl, memory_map(table, target, pl, req), forecast(table, target, pl, req, calibration))
        else:
            pl = row[pick[0]]
            ev = Evaluation(pl, pick[1], forecast(table, target, pl, req, calibration))
        if ev.fits:
            if _better(ev, best_any):
                best_any = ev
            f = ev.forecast.decode_tok_s
            if (f is None or f >= floor) and _better(ev, best):
                best = ev
        else:
            d = sum(ev.deficit_bytes().values())
            if closest is None or d < sum(closest.deficit_bytes().values()):
                closest = ev
    return best, best_any, closest, n


def _splits(tensor_split, target: Target) -> tuple[float, ...]:
    """Cumulative GPU shares as llama.cpp computes them: -ts if given, else each GPU's free memory."""
    shares = list(tensor_split) if tensor_split else [d.capacity_bytes or 0 for d in target.gpus]
    if len(target.gpus) < 2 or len(shares) != len(target.gpus) or sum(shares) <= 0:
        return ()
    total, acc, out = float(sum(shares)), 0.0, []
    for x in shares:
        acc += x
        out.append(acc / total)
    return tuple(out)


def _better(a: Evaluation, b: Evaluation | None) -> bool:
    if b is None:
        return True
    fa, fb = a.forecast.decode_tok_s, b.forecast.decode_tok_s
    if fa is None or fb is None:
        # a GPU of unknown bandwidth: more work on the GPUs is the better bet
        ga = sum(m.weights_bytes or m.model_bytes for m in a.memory if m.kind == "gpu")
        gb = sum(m.weights_bytes or m.model_bytes for m in b.memory if m.kind == "gpu")
        if ga != gb:
            return ga > gb
        fa, fb = fa or 0.0, fb or 0.0
    if abs(fa - fb) > 1e-9 * max(fa, fb, 1.0):
        return fa > fb
    ha = min((m.headroom_bytes or 0) for m in a.memory)
    hb = min((m.headroom_bytes or 0) for m in b.memory)
    return ha > hb


def build_argv(model_path: str, pl: Placement, pin: Pinned, n_gpus: int) -> tuple[str, ...]:
    """Planner flags for what the user left free, then the user's own args verbatim (user wins)."""
    argv: list[str] = [] if pin.model_set else ["-m", model_path]
    if pin.ctx is None:
        argv += ["-c", str(pl.ctx)]
    if pin.ngl is None:
        argv += ["-ngl", str(pl.ngl)]
    if pin.type_k is None:
        argv += ["-ctk", pl.type_k]
    if pin.type_v is None:
        argv += ["-ctv", pl.type_v]
    if pin.flash_attn is None and pl.flash_attn != "auto":
        argv += ["-fa", pl.flash_attn]
    if pin.parallel is None:
        argv += ["-np", str(pl.parallel)]
    if pin.fit is None:
        argv += ["--fit", "off"]  # the plan is the fit; llama.cpp's must not move things again
    argv += _without_auto_ngl(pin.passthrough)
    if pin.n_cpu_moe is None and not pin.cpu_moe and pl.n_cpu_moe:
        # after the user's -ot: llama.cpp applies overrides in order, first match wins, as the plan assumes
        argv += ["--n-cpu-moe", str(pl.n_cpu_moe)]
    return tuple(argv)


def _without_auto_ngl(args: Sequence[str]) -> list[str]:
    """The user's args minus '-ngl auto|-1' (the plan chose -ngl; passed after it, llama.cpp would take all)."""
    from ..server_args import ServerArgs
    return [t for a in ServerArgs.parse(list(args)).items
            if not (a.option is not None and a.option.key == "gpu-layers" and a.values[:1] in (("auto",), ("-1",)))
            for t in a.tokens()]


def make_plan(model: ModelInfo, target: Target, req: Request, calibration: Calibration | None = None) -> Plan:
    table = LayoutTable(model, req.pinned.overrides, len(target.gpus), repack_types_for(target.cpu_isa),
                        load_mtp=req.pinned.load_mtp)
    plan = _make_plan(table, target, req, calibration)
    notes = layout_notes(model.facts, model.tensors, req.pinned.load_mtp)
    shown = plan.chosen or plan.nearest
    if shown is not None:
        for why in (flash_attn_auto_off, hc_post_auto_off):
            note = why(table, shown.placement, len(target.gpus))
            notes += (note,) if note else ()
    return replace(plan, notes=notes) if notes else plan


def _make_plan(table: LayoutTable, target: Target, req: Request, calibration: Calibration | None = None) -> Plan:
    model = table.model
    n = 0
    best = best_any = closest = None
    kvs = _kv_candidates(req)
    ctxs = _ctx_candidates(model, req)

    def at(ctx: int, kv_list) -> Evaluation | None:
        """f16 first: q8_0 only when f16 ships nothing at this context."""
        nonlocal n, best_any, closest
        for tk, tv in kv_list:
            b, a, c, k = _search(table, target, req, ctx, tk, tv, calibration, req.floor_tok_s)
            n += k
            if a is not None and _better(a, best_any):
                best_any = a
            if c is not None and (closest is None or sum(c.deficit_bytes().values())
                                  < sum(closest.deficit_bytes().values())):
                closest = c
            if b is not None:
                return b
        return None

    # The largest context that ships: less context never needs more memory nor reads more per token, so
    # binary-search the ladder with the most permissive KV type, then take the preferred type there.
    lo, hi, first = 0, len(ctxs) - 1, None
    while lo <= hi and len(ctxs) > 1:
        mid = (lo + hi) // 2
        if at(ctxs[mid], kvs[-1:]) is not None:
            first, hi = mid, mid - 1
        else:
            lo = mid + 1
    if len(ctxs) == 1:
        best = at(ctxs[0], kvs)
    elif first is not None:
        best = at(ctxs[first], kvs)
    else:
        at(ctxs[-1], kvs)  # nothing ships: the smallest context says how close it came
    n_gpus = len(target.gpus)
    if best is not None:
        alt = None
        free_kv = not (req.kv_type or req.pinned.type_k or req.pinned.type_v)
        if free_kv and best.placement.type_k == "f16" and best.forecast.decode_tok_s:
            alt, _, _, k = _search(table, target, req, best.placement.ctx, "q8_0", "q8_0", calibration,
                                   req.floor_tok_s)
            n += k
        return Plan("ship", ship_reasons(best, alt), best, None,
                    build_argv(model.path, best.placement, req.pinned, n_gpus), target, n)
    if best_any is not None:
        nearest = _nearest(table, target, req, model, calibration, floor=req.floor_tok_s)
        return Plan("refuse", below_floor_reasons(best_any, nearest, req.floor_tok_s), best_any, nearest,
                    build_argv(model.path, best_any.placement, req.pinned, n_gpus), target, n)
    nearest = _nearest(table, target, req, model, calibration, floor=0.0)
    shown = nearest or closest
    return Plan("refuse", no_fit_reasons(closest, nearest), None, shown,
                build_argv(model.path, shown.placement, req.pinned, n_gpus) if shown else (), target, n)


def _nearest(table, target, req, model, calibration, floor: float) -> Evaluation | None:
    """Relax context and KV type (never the user's pinned placement) down to 512 tokens / q4_0.

    Fitting is monotone in context (less context never needs more memory), so each KV type binary-searches the
    ladder for its largest shippable context instead of walking it."""
    pin = replace(req.pinned, ctx=None, type_k=None, type_v=None)
    relaxed = replace(req, ctx=None, kv_type=None, pinned=pin, min_ctx=512)
    ladder = _ctx_candidates(model, relaxed)  # descending
    for tk, tv in [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]:
        lo, hi, found = 0, len(ladder) - 1, None
        while lo <= hi:  # first index (largest context) that ships
            mid = (lo + hi) // 2
            b, _, _, _ = _search(table, target, relaxed, ladder[mid], tk, tv, calibration, floor)
            if b is not None:
                found, hi = b, mid - 1
            else:
                lo = mid + 1
        if found is not None:
            return found
    return None
