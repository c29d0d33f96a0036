"""Why a server run ended: pure classification of exit status, log text, OOM-kill counter and watchdog action.

Kinds and exit codes come from the one table, gpcrun/exits.py.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from ..exits import Exit

# (pattern in llama-server's log, kind, human reason), first match wins
_LOG_RULES = [
    (r"cudaMalloc failed|CUDA error: out of memory|cudaErrorMemoryAllocation|ggml_cuda.*out of memory",
     "gpu_oom", "CUDA allocation failed (out of VRAM)"),
    (r"failed to allocate (?:CUDA|Metal|Vulkan|ROCm|HIP)\w*|Metal.*out of memory|kIOGPUCommandBufferCallbackErrorOutOfMemory",
     "gpu_oom", "GPU allocation failed"),
    (r"failed to allocate buffer for kv cache|failed to allocate .*buffer|std::bad_alloc|out of memory",
     "host_oom", "host memory allocation failed"),
    (r"error: invalid argument: (.*)|error while handling argument|unknown argument: (.*)",
     "bad_flag", "llama-server rejected an argument"),
    (r"failed to open GGUF file|gguf_init_from_file.*failed|failed to load model|"
     r"exiting due to model loading error|error loading model",
     "model_invalid", "the model could not be loaded"),
    (r"couldn't bind HTTP server socket|address already in use", "port_in_use", "the port is already in use"),
    # last, so that a cause it follows from (a CUDA OOM) wins. ggml.c ggml_abort prints "FILE:LINE: GGML_ASSERT(cond)
    # failed" / "FILE:LINE: fatal error"; an escaped C++ exception "terminate called after throwing". The process
    # may then hang in its backtrace handler: serve stops it as soon as the line appears (exit 11).
    (FATAL_PATTERN := r"GGML_ASSERT\((.*?)\) failed|\.(?:c|cpp|cu|m):\d+: (fatal error)\s*$|"
                      r"terminate called after throwing an instance of '?([^'\n]*)",
     "assert", "llama-server failed an assertion"),
]


@dataclass(frozen=True)
class Outcome:
    kind: str  # an Exit member's kind: clean_stop | refused | load_failed | crashed | watchdog_abort | timeout ...
    exit_code: int
    cause: str | None  # oom_kill | sigill | signal | gpu_oom | host_oom | bad_flag | model_invalid | ...
    reason: str  # one line for people

    @classmethod
    def of(cls, exit: Exit, cause: str | None, reason: str) -> "Outcome":
        return cls(exit.kind or exit.name.lower(), exit.code, cause, reason)

    @classmethod
    def from_json(cls, d: dict) -> "Outcome":
        return cls(d["kind"], int(d["exit_code"]), d.get("cause"), d.get("reason") or "")

    def to_json(self) -> dict:
        return dict(self.__dict__)


_FATAL_RE = re.compile(FATAL_PATTERN, re.MULTILINE)


def fatal_line(text: str) -> str | None:
    """The first assertion/abort line in llama-server's output, None when there is none."""
    m = _FATAL_RE.search(text)
    return _line_of(text, m.start()) if m else None


def log_cause(log_tail: str) -> tuple[str, str] | None:
    for pat, kind, human in _LOG_RULES:
        m = re.search(pat, log_tail, re.IGNORECASE | re.MULTILINE)
        if m:
            detail = next((g for g in m.groups() if g), None) if m.groups() else None
            line = _line_of(log_tail, m.start())
            return kind, f"{human}: {detail.strip()}" if detail else f"{human}: {line}"
    return None


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:end if end >= 0 else None].strip()
    return line[-200:]


def classify(returncode: int | None, phase: str, log_tail: str = "", oom_kills_before: int | None = None,
             oom_kills_after: int | None = None, watchdog_rule: str | None = None, watchdog_message: str = "",
             stopped_by_user: bool = False, timed_out: bool = False) -> Outcome:
    """phase: where the server was when it ended: 'loading' or 'ready'."""
    if watchdog_rule:
        return Outcome.of(Exit.WATCHDOG, watchdog_rule, f"watchdog stopped the server: {watchdog_message}")
    if timed_out:
        return Outcome.of(Exit.TIMEOUT, "timeout", "llama-server did not become ready in time")
    if stopped_by_user:
        return Outcome.of(Exit.OK, None, "stopped on request"
                       + ("" if returncode in (0, None, -signal.SIGTERM, -signal.SIGKILL) else f" (server exit {returncode})"))
    load = phase == "loading"
    ex = Exit.LOAD_FAILED if load else Exit.CRASHED
    kind, code = ex.kind, ex.code
    where = "while loading" if load else "after it was ready"
    if returncode == -signal.SIGKILL or returncode == 137:
        if oom_kills_before is not None and oom_kills_after is not None and oom_kills_after > oom_kills_before:
            return Outcome(kind, code, "oom_kill", f"killed by the kernel OOM killer {where} (cgroup oom_kill"
                           f" {oom_kills_before} -> {oom_kills_after})")
    if returncode == -signal.SIGILL or returncode == 132:
        return Outcome(kind, code, "sigill", f"SIGILL {where}: the CPU cannot run an instruction this build uses"
                       " (build portable: scripts/build_llama.py)")
    found = log_cause(log_tail)
    if found:
        cause, human = found
        return Outcome(kind, code, cause, f"{human} ({where}, exit {_rc(returncode)})")
    if returncode is not None and returncode < 0:
        return Outcome(kind, code, "signal", f"llama-server died by {_rc(returncode)} {where}")
    if returncode == 0:
        return Outcome(kind, code, "exited", f"llama-server exited on its own {where}")
    return Outcome(kind, code, "exit_code", f"llama-server exited {_rc(returncode)} {where}")


def _rc(rc: int | None) -> str:
    if rc is None:
        return "unknown"
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"code {rc}"


def advice_for(action, plan: dict | None) -> str:
    """What to change after the watchdog fired (action: watchdog.Action), from the plan that ran (plan.json)."""
    if action.rule.startswith("host"):
        from ..receipt.docs import PlanDoc
        doc = PlanDoc.from_json(plan)
        ctx = doc.placement.ctx
        smaller = f" try --ctx {max(512, ctx // 2)}" if ctx else " try a smaller --ctx"
        cache = doc.prompt_cache_mib
        if cache:  # the host prompt cache grows while the server runs; weights and KV are allocated at load
            shown = "unlimited" if cache < 0 else f"{cache} MiB"
            return (f"host memory ran short while the server ran: the host prompt cache ({shown}) grows with every"
                    f" distinct prompt; lower --cache-ram (e.g. -cram {max(0, cache // 2) if cache > 0 else 1024}),"
                    " or free memory elsewhere;" + smaller + " frees KV cache too")
        return ("host memory ran short while the server ran: the KV cache or the weights grew past what is free;"
                + smaller + " or --kv-type q8_0, or free memory elsewhere")
    if action.rule == "gpu_free":
        return "VRAM ran short: try --ctx smaller, --kv-type q8_0, or more --n-cpu-moe / a smaller -ngl"
    if action.rule in ("gpu_temp", "gpu_power"):
        return "the GPU stayed over your temperature/power limit: improve cooling or lower the power limit"
    if action.rule == "watchdog_blind":
        return ("gpcrun could not read host memory (/proc/meminfo, the cgroup's memory files) and stopped the server"
                " rather than run it unwatched: check that they are readable here")
    return ""
