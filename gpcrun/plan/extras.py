"""Memory llama-server allocates besides the model: a draft model (-md), LoRA adapters (--lora, --lora-scaled),
control vectors and a multimodal projector (--mmproj) (pure; their headers are read by gpcrun/planning.py).

- Draft model (common_speculative_init): a second llama context at the main context's size and slots, its own
  weights, KV cache (-ctkd/-ctvd, default f16) and compute buffer, laid out like any model (LayoutTable,
  memory_map) with -ngld layers on the GPU (default auto: all of them when a GPU is present).
- LoRA adapters and control vectors: their tensors, held beside the base weights (on the GPU when the model's
  layers are there, else in host memory).
- Projector (mtmd): its weights on the first GPU unless --no-mmproj-offload (else host), and its encoder's
  compute buffer for the warm-up image (plan/encoder.py: replayed for the LLaVA 'mlp' graph; other projector
  types: None, and the line says so).
Each is its own line in plan.json (`extras`), and checked against the room the main plan leaves on its device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .constants import MIB
from .encoder import projector_compute_bytes
from .kv import context_bytes_by_device
from .layout import LayoutTable
from .memory import memory_map
from .request import Request, Target
from .types import Placement, Plan


@dataclass(frozen=True)
class Extra:
    kind: str  # "draft" | "lora" | "control_vector" | "mmproj"
    path: str
    info: object  # ModelInfo of the file
    on_gpu: bool = False  # the file's bytes go to the first GPU (when there is one)
    ngl: int | None = None  # draft: -ngld (None = auto)
    type_k: str = "f16"
    type_v: str = "f16"


@dataclass(frozen=True)
class ExtraLine:
    kind: str
    path: str
    device: str
    model_bytes: int
    context_bytes: int
    compute_bytes: int | None  # None: not estimated (a projector type whose encoder graph is not replayed)
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.context_bytes + (self.compute_bytes or 0)

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "device": self.device, "model_bytes": self.model_bytes,
                "context_bytes": self.context_bytes, "compute_bytes": self.compute_bytes,
                "total_bytes": self.total_bytes, "note": self.note}


def extra_lines(plan: Plan, extras: tuple[Extra, ...], target: Target, req: Request) -> list[ExtraLine]:
    ev = plan.chosen or plan.nearest
    if ev is None:
        return []
    pl = ev.placement
    gpu = target.gpus[0].name if target.gpus else None
    out: list[ExtraLine] = []
    for x in extras:
        if x.kind == "draft":
            out.extend(_draft_lines(x, pl, target, req))
            continue
        dev = gpu if (x.on_gpu and gpu) else target.host.name
        compute, note = 0, ""
        if x.kind == "mmproj":  # mtmd follows llama-server's -fa (server-context.cpp: mparams.flash_attn_type)
            compute, note = projector_compute_bytes(x.info, flash=req.pinned.flash_attn not in ("off", "0", "false"),
                                                    alignment=128 if dev == gpu else 32)
        out.append(ExtraLine(x.kind, x.path, dev, x.info.tensor_bytes, 0, compute, note))
    return out


def _draft_lines(x: Extra, main: Placement, target: Target, req: Request) -> list[ExtraLine]:
    table = LayoutTable(x.info, (), len(target.gpus))
    n_layer = int(x.info.facts.get("block_count") or 0)
    ngl = 0 if not target.gpus else (n_layer + 1 if x.ngl is None else min(x.ngl, n_layer + 1))
    pl = replace(main, ngl=ngl, n_cpu_moe=0, type_k=x.type_k, type_v=x.type_v, overrides=())
    lines = []
    ctx_b = context_bytes_by_device(table, pl, len(target.gpus))
    for m, kv in zip(memory_map(table, target, pl, req), ctx_b):
        if m.model_bytes or kv or (m.kind == "host"):
            lines.append(ExtraLine("draft", x.path, m.device, m.model_bytes, m.context_bytes, m.compute_bytes,
                                   f"-ngld {ngl}, KV {x.type_k}/{x.type_v} at -c {pl.ctx}"))
    return lines


def apply_extras(plan: Plan, lines: list[ExtraLine]) -> Plan:
    """Refuse a plan whose extras do not fit in the room the main plan leaves on their device."""
    ev = plan.chosen
    if ev is None or not lines:
        return plan
    short = []
    for m in ev.memory:
        need = sum(x.total_bytes for x in lines if x.device == m.device)
        if need and m.headroom_bytes is not None and need > m.headroom_bytes:
            short.append(f"{m.device}: {need / MIB:.0f} MiB of draft/adapter/projector memory, {m.headroom_bytes / MIB:.0f}"
                         " MiB of room after the model")
    if not short:
        return plan
    return replace(plan, verdict="refuse", chosen=None, nearest=ev,
                   reasons=(*plan.reasons, "the extra files do not fit: " + "; ".join(short)))


def room_after(plan: Plan, lines: list[ExtraLine]) -> Plan:
    """The plan as the prompt cache sees it: each device's room less what the extras take there."""
    ev = plan.chosen or plan.nearest
    if ev is None or not lines:
        return plan
    mem = tuple(replace(m, other_bytes=m.other_bytes + sum(x.total_bytes for x in lines if x.device == m.device))
                for m in ev.memory)
    ev2 = replace(ev, memory=mem)
    return replace(plan, chosen=ev2 if plan.chosen is not None else None,
                   nearest=ev2 if plan.chosen is None else plan.nearest)
