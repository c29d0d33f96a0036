"""The planner's inputs: the hardware (DeviceTarget, Target), what is asked (Request) and what the user pinned after
`--` (Pinned, read by parse_server_args from the llama-server arguments)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..model import KV_CACHE_TYPES
from .constants import DEFAULT_GPU_MARGIN_BYTES, DEFAULT_MIN_CTX


@dataclass(frozen=True)
class DeviceTarget:
    """A place weights can live. Host: capacity = effective available memory (cgroup included)."""

    name: str  # "CPU", "CUDA0", "RPC0" ...
    kind: str  # "host" | "gpu"
    capacity_bytes: int | None  # free now; None = unknown
    bandwidth_bytes_per_s: float | None
    runtime_overhead_bytes: int = 0  # memory the backend takes outside llama.cpp's buffers (CUDA context)
    flops: float | None = None  # dense fp16 FLOP/s, spec sheet only
    source: str = "profile"
    limit_bytes: int | None = None  # host: effective limit (cgroup included); the margin is a share of it


@dataclass(frozen=True)
class Target:
    host: DeviceTarget
    gpus: tuple[DeviceTarget, ...] = ()
    fingerprint: str | None = None
    threads: int | None = None
    cpu_isa: tuple[str, ...] = ()  # decides which weight types llama.cpp repacks on the CPU

    @property
    def devices(self) -> tuple[DeviceTarget, ...]:
        return (self.host, *self.gpus)


@dataclass(frozen=True)
class Pinned:
    """What the user fixed after `--`; None = free for the planner. `passthrough` is every user arg, verbatim."""

    ngl: int | None = None
    n_cpu_moe: int | None = None
    cpu_moe: bool = False
    overrides: tuple[tuple[str, str], ...] = ()
    ctx: int | None = None
    type_k: str | None = None
    type_v: str | None = None
    parallel: int | None = None
    flash_attn: str | None = None
    n_ubatch: int | None = None
    n_batch: int | None = None
    no_kv_offload: bool = False
    kv_unified: bool | None = None
    load_mode: str | None = None
    repack: bool | None = None
    swa_full: bool = False
    tensor_split: tuple[float, ...] | None = None
    passthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    ctx: int | None = None
    kv_type: str | None = None  # None: f16, falling back to q8_0 when that fits where f16 does not
    parallel: int = 1
    floor_tok_s: float = 1.0
    gpu_margin_bytes: int = DEFAULT_GPU_MARGIN_BYTES
    host_margin_bytes: int | None = None  # None: max(1 GiB, 5 % of the host limit)
    min_ctx: int = DEFAULT_MIN_CTX
    decode_at_tokens: int = 512  # KV fill at which decode speed is forecast
    pinned: Pinned = field(default_factory=Pinned)


class PlanArgError(ValueError):
    """A pass-through llama-server argument the planner must understand but cannot parse."""


def _int(flag: str, v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise PlanArgError(f"{flag} expects an integer, got {v!r}") from None


def parse_server_args(argv: Sequence[str]) -> Pinned:
    """Read the placement-relevant llama-server flags; everything is kept verbatim in `passthrough`."""
    p: dict[str, Any] = {}
    overrides: list[tuple[str, str]] = []
    i = 0
    args = list(argv)

    def val(flag: str) -> str:
        nonlocal i
        if "=" in flag and flag.startswith("--"):
            return flag.split("=", 1)[1]
        if i + 1 >= len(args):
            raise PlanArgError(f"{flag} needs a value")
        i += 1
        return args[i]

    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0] if a.startswith("--") else a
        if name.startswith("--"):
            name = name.replace("_", "-")  # llama.cpp treats '_' as '-' in long options
        if name in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
            v = val(a)
            p["ngl"] = 10 ** 6 if v in ("all", "-2") else (None if v in ("auto", "-1") else _int(name, v))
        elif name in ("-ncmoe", "--n-cpu-moe"):
            p["n_cpu_moe"] = _int(name, val(a))
        elif name in ("-cmoe", "--cpu-moe"):
            p["cpu_moe"] = True
        elif name in ("-ot", "--override-tensor"):
            for part in val(a).split(","):
                if "=" not in part:
                    raise PlanArgError(f"-ot expects pattern=BUFFER_TYPE, got {part!r}")
                pat, buft = part.split("=", 1)  # llama.cpp splits at the first '=' 
                try:
                    re.compile(pat)
                except re.error as e:
                    raise PlanArgError(f"-ot pattern {pat!r} is not a valid regex: {e}") from None
                overrides.append((pat, buft))
        elif name in ("-c", "--ctx-size"):
            p["ctx"] = _int(name, val(a))
        elif name in ("-ctk", "--cache-type-k"):
            p["type_k"] = val(a)
        elif name in ("-ctv", "--cache-type-v"):
            p["type_v"] = val(a)
        elif name in ("-np", "--parallel"):
            n = _int(name, val(a))
            if n < 0:  # llama-server's auto: 4 slots sharing one unified KV cache (server.cpp)
                p["parallel"], p["kv_unified"] = 4, p.get("kv_unified", True)
            else:
                p["parallel"] = n
        elif name in ("-fa", "--flash-attn"):
            p["flash_attn"] = val(a)
        elif name in ("-ub", "--ubatch-size"):
            p["n_ubatch"] = _int(name, val(a))
        elif name in ("-b", "--batch-size"):
            p["n_batch"] = _int(name, val(a))
        elif name == "--swa-full":
            p["swa_full"] = True
        elif name in ("-ts", "--tensor-split"):
            try:
                p["tensor_split"] = tuple(float(x) for x in re.split(r"[,/]", val(a)) if x != "")
            except ValueError:
                raise PlanArgError(f"{name} expects proportions like 3,1") from None
        elif name in ("-nr", "--no-repack"):
            p["repack"] = False
        elif name == "--repack":
            p["repack"] = True
        elif name in ("-lm", "--load-mode"):
            p["load_mode"] = val(a)
        elif name in ("-nkvo", "--no-kv-offload"):
            p["no_kv_offload"] = True
        elif name in ("-kvu", "--kv-unified"):
            p["kv_unified"] = True
        elif name in ("-no-kvu", "--no-kv-unified"):
            p["kv_unified"] = False
        i += 1
    for k in ("type_k", "type_v"):
        if p.get(k) is not None and p[k] not in KV_CACHE_TYPES:
            raise PlanArgError(f"unknown KV cache type {p[k]!r} (one of {', '.join(KV_CACHE_TYPES)})")
    return Pinned(overrides=tuple(overrides), passthrough=tuple(args), **p)
