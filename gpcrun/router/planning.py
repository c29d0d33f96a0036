"""Planning a llama-server router: every model it will list is planned as `gpcrun serve MODEL` would plan it (its
arguments: the preset's global section, its own section, then the router's command line, which llama.cpp puts
on top of every preset: server-models.cpp load_models), and the router is started with a preset carrying each
model's planned arguments and a --models-max that keeps the resident models inside memory (router/admission.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from ..errors import GpcrunError
from .admission import Admission, admit, budgets, footprint_of, models_max_change
from .preset import GLOBAL_SECTION, ROUTER_OWNED, model_tokens, parse_ini, render_ini, router_models

_ROUTER_ONLY = ("models-dir", "models-preset", "models-max", "models-autoload")


@dataclass
class ModelPlan:
    name: str
    path: str | None
    verdict: str  # "ship" | "refuse" | "unplanned"
    reasons: list[str]
    changes: list[dict]  # [{flag, value, reason}] this model's planned arguments
    planned: dict[str, str]  # preset keys gpcrun writes into its section
    memory: list[dict]  # the chosen (or nearest) plan's memory rows
    summary: str
    doc: dict | None = None  # the model's own plan.json document

    def to_json(self) -> dict:
        return {"name": self.name, "path": self.path, "verdict": self.verdict, "reasons": self.reasons,
                "changes": self.changes, "planned": self.planned, "memory": self.memory, "summary": self.summary,
                "plan": self.doc}


@dataclass
class RouterPlan:
    models: list[ModelPlan]
    admission: Admission
    argv: list[str]  # llama-server's arguments (the generated preset in place of the user's)
    preset_text: str
    changes: list[dict]  # router-level changes: the preset, --models-max
    warnings: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[ModelPlan]:
        return [m for m in self.models if m.verdict == "refuse"]

    @property
    def verdict(self) -> str:
        return "refuse" if self.refused else "ship"

    @property
    def reasons(self) -> list[str]:
        return [f"{m.name}: {'; '.join(m.reasons)}" for m in self.refused]

    def to_json(self) -> dict:
        a = self.admission
        return {"schema": "gpcrun.router-plan/1", "verdict": self.verdict, "reasons": self.reasons,
                "models": [m.to_json() for m in self.models],
                "admission": {"models_max": a.models_max, "most": a.most, "budget_bytes": dict(a.budget_bytes),
                              "all_fit": a.all_fit, "reason": a.reason},
                "argv": self.argv, "changes": self.changes, "warnings": self.warnings}


def _key(flag: str, grammar) -> str | None:
    hit = grammar.lookup(flag)
    if hit is None:
        return None
    o, positive = hit
    name = next((n for n in (o.names if positive else o.neg_names) if n.startswith("--")), None)
    return name.lstrip("-") if name else o.key


def _planned_options(changes: Sequence[dict], grammar) -> dict[str, str]:
    """The plan's additions as preset keys (a flag without its dashes; `true` for a flag that takes no value)."""
    out: dict[str, str] = {}
    for c in changes:
        hit = grammar.lookup(c["flag"])
        key = _key(c["flag"], grammar)
        if hit is None or key is None or hit[0].key in ROUTER_OWNED:
            continue
        out[key] = c["value"] if hit[0].arity else "true"
    return out


def _memory_rows(doc: dict) -> list[dict]:
    ev = doc.get("plan") or doc.get("nearest") or {}
    return list(ev.get("memory") or [])


def plan_router(sa, env: Mapping[str, str], binary: str, *, ctx=None, kv_type=None, parallel=None, floor=1.0,
                margin_mib=None, host_margin_bytes=None, summary=None) -> RouterPlan:
    """Plan each model of the router (`sa`: the user's ServerArgs) and the preset and argv that start it."""
    from ..planning import (build_request, build_target, model_head_dims, model_types, plan_with_document,
                            resolve_model, server_args)
    g = sa.grammar
    glob, models = router_models(sa.value("models-dir"), sa.value("models-preset"))
    base = sa
    for k in _ROUTER_ONLY:
        base = base.without(k)
    base_argv = base.argv()
    plans: list[ModelPlan] = []
    warnings: list[str] = []
    todo = []
    for name, m in models.items():
        tokens, unknown = model_tokens(m, glob, g)
        msa = server_args([*tokens, *base_argv], env, binary)
        path = msa.value("model")
        if not path:
            plans.append(ModelPlan(name, None, "unplanned", ["no local model file (an HF repo preset): llama-server"
                                                             " downloads it, gpcrun cannot read its header first"],
                                   [], {}, [], f"{name}: unplanned"))
            continue
        if not os.path.isabs(path) and m.source == "preset":
            path = os.path.abspath(path)  # preset paths are relative to the server's CWD: gpcrun's own
        warnings += [f"[{name}] {k}: not an option of this llama-server (llama.cpp refuses a preset key it does"
                     " not know)" for k in unknown]
        try:
            todo.append((name, path, msa, resolve_model(path)))
        except GpcrunError as e:  # one unreadable file: that model unplanned (llama.cpp fails it at its load)
            warnings.append(f"{name}: not planned: {e}")
            plans.append(ModelPlan(name, path, "unplanned", [str(e)], [], {}, [], f"{name}: unplanned ({e})"))
    # one reading of the machine for every model: the memory they share is the same snapshot
    target = build_target(types=sorted({t for *_, r in todo for t in model_types(r.info)}),
                          head_dims=sorted({h for *_, r in todo for h in model_head_dims(r.info)})) if todo else None
    for name, path, msa, resolved in todo:
        req = build_request(ctx, kv_type, parallel, floor, margin_mib, msa)
        if host_margin_bytes is not None:  # planner and watchdog agree: the host margin is the SIGTERM line
            req = replace(req, host_margin_bytes=host_margin_bytes)
        plan, doc = plan_with_document(resolved, req, msa, target=target,
                                       requested={"ctx": ctx, "kv_type": kv_type, "parallel": parallel})
        plans.append(ModelPlan(name, path, plan.verdict, list(plan.reasons), doc["changes"],
                               _planned_options(doc["changes"], g), _memory_rows(doc),
                               f"{name}: {summary(plan) if summary else plan.verdict}", doc))
    order = list(models)
    plans.sort(key=lambda p: order.index(p.name))
    planned = [p for p in plans if p.memory]
    adm = admit([footprint_of(p.name, p.memory) for p in planned if p.verdict == "ship"],
                budgets([p.memory for p in planned]))
    user_max = sa.int_value("models-max")
    write_max, warning = models_max_change(adm, user_max, len(models))
    sections: dict[str, dict[str, str]] = {}
    if sa.value("models-preset"):
        with open(sa.value("models-preset"), encoding="utf-8") as f:
            sections = {k: dict(v) for k, v in parse_ini(f.read(), sa.value("models-preset")).items()}
    sections.setdefault(GLOBAL_SECTION, {})
    for p in plans:
        sec = sections.setdefault(p.name, {})
        for k, v in p.planned.items():
            sec.setdefault(k, v)  # a key the user wrote stays theirs (the plan pinned it anyway)
    text = render_ini(sections, "written by gpcrun serve: your preset (or --models-dir) with each model's planned"
                                " arguments\nadded; every key you wrote is kept as written")
    changes = [{"flag": "--models-preset", "value": "<run dir>/models.ini",
                "reason": "each model's planned arguments, in a copy of your preset"
                + (f" ({sa.value('models-preset')})" if sa.value("models-preset") else "")}]
    argv = [*sa.without("models-preset").argv()]
    if write_max is not None:
        argv += ["--models-max", str(write_max)]
        changes.append({"flag": "--models-max", "value": str(write_max), "reason": adm.reason})
    return RouterPlan(plans, adm, argv, text, changes, warnings + ([warning] if warning else []))
