"""Formatting for people. Everything else stores integer bytes and raw numbers."""
from __future__ import annotations


def human_bytes(n: int | None) -> str:
    if n is None:
        return "null"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def table(rows: list[list[str]], header: list[str], align: str | None = None) -> str:
    """Plain-text table; align is a string of 'l'/'r' per column."""
    cols = len(header)
    align = align or "l" * cols
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(cols)]
    def fmt(r):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(r, widths, align)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def plan_summary(plan) -> str:
    notes = "".join(f"\n  note: {n}" for n in plan.notes)
    return _summary(plan) + notes


def _summary(plan) -> str:
    ev = plan.chosen or plan.nearest
    if ev is None:
        return f"plan: {plan.verdict}: " + "; ".join(plan.reasons)
    p = ev.placement
    mem = ", ".join(f"{m.device} {human_bytes(m.total_bytes)} of {human_bytes(m.capacity_bytes)}" for m in ev.memory)
    f = ev.forecast
    fc = f"{f.decode_tok_s:.1f} tok/s ({'calibrated' if f.calibrated else 'uncalibrated'})" \
        if f.decode_tok_s is not None else "unknown"
    return (f"plan: {plan.verdict}: ctx {p.ctx}, KV {p.type_k}, -ngl {p.ngl}"
            + (f", --n-cpu-moe {p.n_cpu_moe}" if p.n_cpu_moe else "") + f"; {mem}; decode forecast {fc}")


def render_changes(changes: list[dict]) -> str:
    """What gpcrun adds to the user's llama-server command line, one line each with its reason."""
    if not changes:
        return "changes: none (llama-server runs exactly your command line)"
    return "changes to your llama-server command line:\n" + "\n".join(
        f"  + {c['flag']} {c['value']}: {c['reason']}" for c in changes)
