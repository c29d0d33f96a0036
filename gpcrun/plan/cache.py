"""llama-server's host prompt cache, planned (pure).

`--cache-ram N` (MiB; common/common.h `cache_ram_mib = 8192`; 0 disables it, -1 removes the limit) is host memory
that grows with every distinct prompt up to its limit, beside the weights, the KV cache and the compute buffers
(shared/llama-server-facts.md: five distinct 2k-token prompts took SmolLM2's RSS from 307 to 501 MiB). In a
long-running container the default 8 GiB is a known cause of OOM kills. The plan keeps it inside the host's room
after everything else and the watchdog margin: llama-server's default when it fits; otherwise gpcrun writes
`-cram` with what fits and says so; a value the user set is never changed: if it cannot fit, the plan refuses
and names the value that would.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .constants import MIB
from .types import Plan

DEFAULT_CACHE_RAM_MIB = 8192  # common/common.h cache_ram_mib
MIN_USEFUL_CACHE_MIB = 64  # below this a prompt cache holds less than one long prompt's state: disable it instead


@dataclass(frozen=True)
class PromptCache:
    limit_mib: int | None  # what llama-server will use; None = unlimited (-1)
    source: str  # "default" | "user"
    room_bytes: int | None  # host room after the plan and its margin (None: host capacity unknown)
    set_mib: int | None  # what the plan writes with -cram (the default did not fit); None: nothing written
    fits: bool

    def to_json(self) -> dict:
        return {"limit_mib": self.limit_mib, "source": self.source, "room_bytes": self.room_bytes,
                "set_mib": self.set_mib, "fits": self.fits}

    def reason(self) -> str | None:
        room = "unknown" if self.room_bytes is None else f"{self.room_bytes / MIB:.0f} MiB"
        if self.set_mib is not None:
            what = "disables it" if self.set_mib == 0 else f"{self.set_mib} MiB is what fits"
            return (f"the host prompt cache (llama-server's default {DEFAULT_CACHE_RAM_MIB} MiB) would grow past the"
                    f" host's room after the model ({room}); {what}")
        if not self.fits:
            return (f"--cache-ram {self.limit_mib} MiB does not fit: the host has {room} left after the model, the KV"
                    f" cache and the margin; with --cache-ram {max(0, (self.room_bytes or 0) // MIB)} it fits")
        if self.limit_mib is None:
            return "--cache-ram -1: the prompt cache has no limit; only the watchdog bounds it"
        return None


def plan_prompt_cache(plan: Plan, user_mib: int | None) -> PromptCache:
    ev = plan.chosen or plan.nearest
    host = next((m for m in ev.memory if m.kind == "host"), None) if ev is not None else None
    room = max(0, host.headroom_bytes) if host is not None and host.headroom_bytes is not None else None
    if user_mib is not None:
        limit = None if user_mib < 0 else user_mib
        fits = limit is not None and (room is None or limit * MIB <= room)
        return PromptCache(limit, "user", room, None, fits or limit is None)
    if room is None or DEFAULT_CACHE_RAM_MIB * MIB <= room:
        return PromptCache(DEFAULT_CACHE_RAM_MIB, "default", room, None, True)
    mib = room // MIB
    mib = 0 if mib < MIN_USEFUL_CACHE_MIB else mib
    return PromptCache(mib, "default", room, mib, True)


def apply_prompt_cache(plan: Plan, pc: PromptCache) -> Plan:
    """The plan with -cram written (default too big) or refused (the user's value cannot fit)."""
    if pc.set_mib is not None:
        return replace(plan, argv=(*plan.argv, "-cram", str(pc.set_mib)))
    if not pc.fits and plan.verdict == "ship":
        return replace(plan, verdict="refuse", reasons=(*plan.reasons, pc.reason()), chosen=None,
                       nearest=plan.chosen)
    return plan
