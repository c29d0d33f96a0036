"""`gpcrun serve --models-dir DIR | --models-preset FILE`: plan the router's models, write the preset that carries
their planned arguments into the run directory, and give llama-server the arguments that start the router."""
from __future__ import annotations

from ..atomic import write_text_atomic
from ..exits import Exit
from ..launch.outcome import Outcome
from .planning import plan_router


def prepare_router(cfg, res, sa, env, binary: str) -> list[str] | None:
    """llama-server's arguments for the router, or None when a model cannot fit even alone (res.outcome says
    which, with the nearest plan); --force starts it anyway."""
    from ..launch.run import new_run_dir, write_run_doc
    from ..redact import secret_values
    from ..fmt import plan_summary
    res.run_dir = run_dir = new_run_dir(cfg.runs_root)
    rp = plan_router(sa, env, binary, ctx=cfg.ctx, kv_type=cfg.kv_type, parallel=cfg.parallel,
                     floor=cfg.floor_tok_s, margin_mib=cfg.margin_mib, summary=plan_summary,
                     host_margin_bytes=cfg.limits.host_term_available_bytes if cfg.limits is not None else None)
    preset = run_dir / "models.ini"
    write_text_atomic(preset, rp.preset_text, mode=0o600)
    for c in rp.changes:
        if c["flag"] == "--models-preset":
            c["value"] = str(preset)
    res.plan_doc = doc = rp.to_json()
    write_run_doc(run_dir / "plan.json", doc, secret_values(sa.argv(), env))
    res.plan = rp
    if cfg.on_plan:
        cfg.on_plan(rp, rp.changes)
    args = [*rp.argv, "--models-preset", str(preset)]
    res.argv = args
    if rp.verdict != "ship" and not cfg.force:
        res.outcome = Outcome.of(Exit.REFUSED, "plan", "; ".join(rp.reasons))
        return None
    return args


def render_router_plan(rp) -> str:
    """What serve prints for a router: each model's plan and changes, the admission, the router's changes."""
    lines = [f"router plan: {rp.verdict}: {len(rp.models)} models; {rp.admission.reason}"]
    for m in rp.models:
        lines.append(f"  {m.summary}")
        for c in m.changes:
            lines.append(f"      + {c['flag']} {c['value']}: {c['reason']}")
        if m.verdict != "ship":
            lines += [f"      - {r}" for r in m.reasons]
    from ..fmt import render_changes
    lines.append(render_changes(rp.changes))
    lines += [f"gpcrun: warning: {w}" for w in rp.warnings]
    return "\n".join(lines)
