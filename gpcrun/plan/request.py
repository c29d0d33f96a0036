"""The planner's inputs: the hardware (DeviceTarget, Target), what is asked (Request) and what the user pinned after
`--` or in LLAMA_ARG_* (Pinned, read by pinned_from from gpcrun.server_args, the one model of llama-server's
arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..server_args import ServerArgs, ServerArgsError, settings
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
    decode_rates: object | None = None  # host: plan.rates.HostRates measured by llama-bench (None: fallback)
    layer_fixed_s: float | None = None  # gpu: decode cost per layer beyond its bytes (spec row), None: default
    shares_host_memory: bool = False  # gpu: an integrated GPU whose memory is the host's (its bytes count there too)


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
    """What the user fixed (flags or LLAMA_ARG_*); None = free for the planner. `passthrough` is every user
    command-line arg, verbatim (environment values stay in the environment)."""

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
    fit: str | None = None  # --fit / LLAMA_ARG_FIT as the user set it
    model_set: bool = False  # the user's own args name the model (-m, -hf, LLAMA_ARG_MODEL): no '-m' is added
    cache_ram_mib: int | None = None  # -cram / LLAMA_ARG_CACHE_RAM (MiB; -1 unlimited, 0 off)
    threads: int | None = None  # -t / LLAMA_ARG_THREADS (<= 0: llama-server's default, like unset)
    threads_batch: int | None = None  # -tb (unset: the same as -t, common.cpp postprocess_cpu_params)
    load_mtp: bool = False  # --spec-type draft-mtp: llama.cpp loads the NextN/MTP blocks (common.cpp:1683)
    passthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    ctx: int | None = None
    kv_type: str | None = None  # None: f16, falling back to q8_0 when that fits where f16 does not
    parallel: int = 1
    floor_tok_s: float = 1.0
    gpu_margin_bytes: int = DEFAULT_GPU_MARGIN_BYTES
    host_margin_bytes: int | None = None  # None: the watchdog's default SIGTERM line (host_term_line_bytes)
    min_ctx: int = DEFAULT_MIN_CTX
    decode_at_tokens: int = 512  # KV fill at which decode speed is forecast
    pinned: Pinned = field(default_factory=Pinned)


def pinned_from(sa: ServerArgs) -> Pinned:
    """What the user pinned, by flag or LLAMA_ARG_*, read from the one model of llama-server's arguments."""
    p: dict[str, Any] = {}
    p["ngl"] = settings.ngl(sa)
    p["n_cpu_moe"] = sa.int_value("n-cpu-moe")
    p["cpu_moe"] = bool(sa.flag("cpu-moe"))
    p["overrides"] = settings.overrides(sa)
    p["ctx"] = sa.int_value("ctx-size")
    if p["ctx"] is not None and p["ctx"] < 0:  # llama.cpp casts n_ctx to uint32: -1 would ask for 4 billion tokens
        a = sa.last("ctx-size")
        raise ServerArgsError(f"{a.spelled} expects a context size >= 0 (0: the model's), got {p['ctx']}",
                              "ctx-size", a)
    p["type_k"] = settings.cache_type(sa, "cache-type-k")
    p["type_v"] = settings.cache_type(sa, "cache-type-v")
    n = sa.int_value("parallel")
    if n is not None and n < 0:  # llama-server's auto: 4 slots sharing one unified KV cache (server.cpp)
        p["parallel"], p["kv_unified"] = 4, True
    else:
        p["parallel"] = n
    if sa.flag("kv-unified") is not None:
        p["kv_unified"] = sa.flag("kv-unified")
    p["flash_attn"] = sa.value("flash-attn")
    p["n_ubatch"] = sa.int_value("ubatch-size")
    p["n_batch"] = sa.int_value("batch-size")
    p["swa_full"] = bool(sa.flag("swa-full"))
    p["tensor_split"] = settings.tensor_split(sa)
    p["repack"] = sa.flag("repack")
    p["load_mode"] = sa.value("load-mode")
    p["no_kv_offload"] = sa.flag("kv-offload") is False
    p["fit"] = sa.value("fit")
    p["model_set"] = settings.model_source(sa).kind in ("path", "hf", "url")
    p["cache_ram_mib"] = sa.int_value("cache-ram")
    t = settings.threads(sa)
    p["threads"] = t if t is not None and t > 0 else None
    tb = sa.int_value("threads-batch")
    p["threads_batch"] = tb if tb is not None and tb > 0 else None
    p["load_mtp"] = any("draft-mtp" in str(v).split(",") for v in sa.values("spec-type"))
    return Pinned(passthrough=tuple(sa.argv()), **p)


def parse_server_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Pinned:
    """Pinned from llama-server arguments (and an environment), with the shipped grammar."""
    return pinned_from(ServerArgs.parse(list(argv), env or {}))
