"""The verdict's wording: every reason a Plan gives, and the short descriptions of placements and deficits."""
from __future__ import annotations

from .constants import GIB, MIB
from .types import Evaluation


def _gib(b: int) -> str:
    return f"{b / GIB:.2f} GiB" if abs(b) >= 0.1 * GIB else f"{b / MIB:.0f} MiB"


def _describe_placement(ev: Evaluation) -> str:
    p = ev.placement
    parts = [f"--ctx {p.ctx}", f"KV {p.type_k}" + (f"/{p.type_v}" if p.type_v != p.type_k else "")]
    if any(m.kind == "gpu" for m in ev.memory):
        parts.append(f"-ngl {p.ngl}")
        if p.n_cpu_moe:
            parts.append(f"--n-cpu-moe {p.n_cpu_moe}")
    f = ev.forecast.decode_tok_s
    return ", ".join(parts) + (f" at {f:.1f} tok/s" if f is not None else " (speed unknown)")


def _describe_deficit(ev: Evaluation) -> str:
    parts = []
    for m in ev.memory:
        if m.fits is False:
            what = "VRAM" if m.kind == "gpu" else "host RAM"
            flag = "--margin MiB" if m.kind == "gpu" else "the watchdog's SIGTERM line, --min-host-available MiB"
            parts.append(f"needs {_gib(-m.headroom_bytes)} more {what} on {m.device}"
                         f" (plan {_gib(m.total_bytes)} + margin {_gib(m.margin_bytes)} [{flag}]"
                         f" > free {_gib(m.capacity_bytes or 0)})")
    return "nothing fits: closest plan (" + _describe_placement(ev).rsplit(" at ", 1)[0] + ") " + "; ".join(parts)


ADVICE_MIN_GAIN = 1.15


def ship_reasons(best: Evaluation, alt: Evaluation | None) -> tuple[str, ...]:
    """A plan that ships; `alt` is the same search with a q8_0 KV cache, mentioned only when worth acting on: it
    forecasts at least ADVICE_MIN_GAIN faster, more than repeated decode measurements of one command spread on a
    busy machine (scripts/bench/forecast_accuracy.py: 94.7-135.4 tok/s for SmolLM2 on the 2-core CI VM)."""
    reasons = ["fits: " + _describe_placement(best)]
    if alt and alt.forecast.decode_tok_s and alt.forecast.decode_tok_s > ADVICE_MIN_GAIN * best.forecast.decode_tok_s:
        gain = 100 * (alt.forecast.decode_tok_s / best.forecast.decode_tok_s - 1)
        reasons.append(f"--kv-type q8_0 forecasts faster (less KV to read, or room for a better"
                       f" placement): {_describe_placement(alt)} (+{gain:.0f} %)")
    return tuple(reasons)


def below_floor_reasons(best_any: Evaluation, nearest: Evaluation | None, floor_tok_s: float) -> tuple[str, ...]:
    """A refusal where something fits but forecasts below the floor; `nearest` reaches the floor, if anything does."""
    f = best_any.forecast.decode_tok_s
    reasons = [f"fits, but the best forecast {f:.2f} tok/s is below the {floor_tok_s:g} tok/s floor"]
    if nearest is not None:
        reasons.append("the nearest plan above the floor: " + _describe_placement(nearest))
    else:
        reasons.append("no placement, context or KV type reaches the floor on this hardware")
    return tuple(reasons)


def no_fit_reasons(closest: Evaluation | None, nearest: Evaluation | None) -> tuple[str, ...]:
    """A refusal where nothing fits: how far the closest plan misses, and what fits with less context or KV."""
    reasons: list[str] = []
    if closest is not None:
        reasons.append(_describe_deficit(closest))
    if nearest is not None:
        reasons.append("with " + _describe_placement(nearest) + " it fits")
    else:
        reasons.append("no context down to 512 tokens and no KV type fits")
    return tuple(reasons)
