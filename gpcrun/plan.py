"""Pure planning: ModelInfo + Target (hardware) + Request -> Plan (memory map, flags, forecast, verdict).

No I/O here: the CLI builds the Target from the measured profile (or spec sheets) and prints the Plan.
Placement follows llama.cpp's own rules (src/llama-model.cpp load_tensors, common/arg.cpp):
- `-ngl N` offloads the output layer and the last N-1 repeating layers: i_gpu_start = max(n_layer + 1 - N, 0);
- the input layer (token_embd) always stays on the CPU; a tied output head is duplicated onto the output
  layer's device (TENSOR_DUPLICATED) when that device is not the CPU;
- `--n-cpu-moe K` adds overrides `blk\\.i\\.ffn_(up|down|gate|gate_up)_(ch|)exps` -> CPU for i < K; user `-ot`
  overrides come first and the first match wins;
- KV cache of a layer lives on that layer's device unless `-nkvo`.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

from .model import KV_CACHE_TYPES, ModelInfo

MIB = 1 << 20
GIB = 1 << 30

# gpu-facts.md (H200, CUDA 13): NVML per-process VRAM = llama.cpp "self" + ~720 MiB (CUDA context, cuBLAS).
DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES = 720 * MIB
# llama.cpp's --fit leaves 1024 MiB free per GPU by default (common.h fit_params_target).
DEFAULT_GPU_MARGIN_BYTES = 1024 * MIB
# Host: keep the watchdog's SIGTERM line (max(5 %, 1 GiB) available, issue 5) out of reach of a planned run.
HOST_MARGIN_MIN_BYTES = 1 * GIB
HOST_MARGIN_FRACTION = 0.05
# llama-server process itself outside its buffers (binary, libc, threads, HTTP): measured ~30-40 MiB RSS here.
HOST_PROCESS_OVERHEAD_BYTES = 48 * MIB
DEFAULT_MIN_CTX = 4096  # like llama.cpp's fit_params_min_ctx
CTX_PAD = 256  # llama-context.cpp: n_ctx = GGML_PAD(n_ctx, 256)
EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
# Uncalibrated realised fraction of the bandwidth ceiling; band multipliers around it.
DEFAULT_EFFICIENCY = {"host": 0.45, "gpu": 0.6}
UNCALIBRATED_BAND = (0.5, 1.5)
# Fixed per-layer cost of a decode step on a GPU (kernel launches, sync): gpu-facts.md, 3.7 ms / 48 layers.
GPU_LAYER_OVERHEAD_S = 77e-6
CPU_LAYER_OVERHEAD_S = 10e-6


# ----------------------------------------------------------------------------------------------- inputs

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


# ----------------------------------------------------------------------------------------------- placement

@dataclass(frozen=True)
class Placement:
    ngl: int  # llama.cpp semantics, clamped to 0..n_layer+1
    n_cpu_moe: int
    ctx: int  # as passed with -c (llama.cpp pads it to 256)
    type_k: str
    type_v: str
    parallel: int = 1
    kv_unified: bool = False
    flash_attn: str = "auto"
    n_ubatch: int = 512
    overrides: tuple[tuple[str, str], ...] = ()
    no_kv_offload: bool = False
    mmap: bool = True  # llama.cpp's default load mode maps the file; -lm none/dio reads into buffers
    splits: tuple[float, ...] = ()  # cumulative GPU shares (-ts, else free memory), llama.cpp's layer split
    swa_full: bool = False  # --swa-full: sliding-window layers keep the whole context
    repack: bool = True  # CPU weight repacking (llama.cpp default; -nr/--no-repack turns it off)


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    kind: str
    model_bytes: int
    context_bytes: int  # KV cache + recurrent state
    compute_bytes: int  # estimated (see estimate_compute_bytes)
    other_bytes: int  # output buffer and process overhead (host); runtime overhead (GPU)
    capacity_bytes: int | None
    margin_bytes: int
    weights_bytes: int | None = None  # the tensors themselves; model_bytes is what llama.cpp maps/allocates

    @property
    def self_bytes(self) -> int:
        """What llama.cpp's memory breakdown calls 'self': model + context + compute."""
        return self.model_bytes + self.context_bytes + self.compute_bytes

    @property
    def total_bytes(self) -> int:
        return self.self_bytes + self.other_bytes

    @property
    def headroom_bytes(self) -> int | None:
        if self.capacity_bytes is None:
            return None
        return self.capacity_bytes - self.margin_bytes - self.total_bytes

    @property
    def fits(self) -> bool | None:
        if self.kind == "gpu" and self.self_bytes == 0:
            return True  # a GPU the plan does not use needs no room
        return None if self.headroom_bytes is None else self.headroom_bytes >= 0

    def to_json(self) -> dict:
        return {"device": self.device, "kind": self.kind, "model_bytes": self.model_bytes,
                "weights_bytes": self.weights_bytes,
                "context_bytes": self.context_bytes, "compute_bytes": self.compute_bytes,
                "other_bytes": self.other_bytes, "self_bytes": self.self_bytes, "total_bytes": self.total_bytes,
                "capacity_bytes": self.capacity_bytes, "margin_bytes": self.margin_bytes,
                "headroom_bytes": self.headroom_bytes, "fits": self.fits}


@dataclass(frozen=True)
class Forecast:
    decode_ceiling_tok_s: float | None
    decode_tok_s: float | None
    decode_band_tok_s: tuple[float, float] | None
    prefill_ceiling_tok_s: float | None
    calibrated: bool
    method: str
    bytes_per_token: dict[str, int]

    def to_json(self) -> dict:
        return {"decode_ceiling_tok_s": _r(self.decode_ceiling_tok_s), "decode_tok_s": _r(self.decode_tok_s),
                "decode_band_tok_s": [_r(x) for x in self.decode_band_tok_s] if self.decode_band_tok_s else None,
                "prefill_ceiling_tok_s": _r(self.prefill_ceiling_tok_s), "calibrated": self.calibrated,
                "method": self.method, "bytes_read_per_token": self.bytes_per_token}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(frozen=True)
class Evaluation:
    placement: Placement
    memory: tuple[DeviceMemory, ...]
    forecast: Forecast

    @property
    def fits(self) -> bool:
        return all(m.fits is not False for m in self.memory)

    def deficit_bytes(self) -> dict[str, int]:
        return {m.device: -m.headroom_bytes for m in self.memory if m.fits is False}


@dataclass(frozen=True)
class Plan:
    verdict: str  # "ship" | "refuse"
    reasons: tuple[str, ...]
    chosen: Evaluation | None
    nearest: Evaluation | None  # for a refusal: the closest plan that would work (or the best that doesn't)
    argv: tuple[str, ...]
    target: Target
    candidates_evaluated: int

    def to_json(self) -> dict:
        def ev(e: Evaluation | None):
            if e is None:
                return None
            return {"placement": placement_json(e.placement), "memory": [m.to_json() for m in e.memory],
                    "forecast": e.forecast.to_json(), "fits": e.fits}
        return {"schema": "gpcrun.plan/1", "verdict": self.verdict, "reasons": list(self.reasons),
                "plan": ev(self.chosen), "nearest": ev(self.nearest), "argv": list(self.argv),
                "target": {"fingerprint": self.target.fingerprint, "threads": self.target.threads,
                           "devices": [d.__dict__ for d in self.target.devices]},
                "candidates_evaluated": self.candidates_evaluated}


def placement_json(p: Placement) -> dict:
    d = dict(p.__dict__)
    d["overrides"] = [list(o) for o in p.overrides]
    return d


class LayoutTable:
    """Per-layer byte sums the search needs, computed once per model (and per user -ot list)."""

    def __init__(self, model: ModelInfo, overrides: Sequence[tuple[str, str]] = (), n_gpus: int = 0,
                 repack_types: frozenset = frozenset()):
        f = model.facts
        self.model = model
        self.n_layer = int(f.get("block_count") or 0)
        self.n_expert = f.get("expert_count") or 0
        self.n_expert_used = f.get("expert_used_count") or 0
        self.n_vocab = f.get("vocab_size") or 0
        names = {t.name for t in model.tensors}
        self.tied_output = "output.weight" not in names and "token_embd.weight" in names
        frac = (self.n_expert_used / self.n_expert) if self.n_expert else 1.0
        user = [(re.compile(p), _buft_device(b, n_gpus)) for p, b in overrides]
        L = self.n_layer
        # per layer: [dense bytes, expert bytes, dense read/token, expert read/token]; index L = output layer
        self.layer = [[0, 0, 0, 0] for _ in range(L + 1)]
        self.fixed: list[tuple[int, int, int]] = []  # (device, bytes, read bytes) pinned by -ot or the input layer
        # file extents (shard, start, end) per layer group and of the fixed tensors: llama.cpp maps the span
        # from the first to the last CPU tensor of each shard, so that is what the host holds (plan_accuracy.py)
        # [all tensors, without repackable ones] x [dense, experts]; repacked CPU weights leave the mapping for a
        # CPU_REPACK buffer of the same size (ggml-cpu repack.cpp asserts size == ggml_nbytes)
        self.layer_extent: list[list[list[dict]]] = [[[{}, {}], [{}, {}]] for _ in range(self.n_layer + 1)]
        self.layer_repack: list[list[int]] = [[0, 0] for _ in range(self.n_layer + 1)]
        self.fixed_extent: list[tuple[int, int, int, int, int]] = []  # (device, shard, start, end, repack bytes)
        self.embd_bytes = 0
        self.embd_row_bytes = 0
        self.is_moe = False
        for t in model.tensors:
            is_exps = bool(re.search(EXPS_REGEX, t.name))
            self.is_moe |= is_exps
            read = int(t.n_bytes * frac) if is_exps else t.n_bytes
            dev = next((d for rx, d in user if d is not None and rx.search(t.name)), None)
            if t.name == "token_embd.weight":
                self.embd_bytes = t.n_bytes
                self.embd_row_bytes = t.n_bytes // max(1, self.n_vocab)
                read = self.embd_row_bytes
            ext = (t.shard, t.file_offset, t.file_offset + t.n_bytes)
            rp = t.n_bytes if _repackable(t, repack_types) else 0
            if dev is not None:
                self.fixed.append((dev, t.n_bytes, read))
                self.fixed_extent.append((dev, *ext, rp))
                continue
            if t.layer is not None and t.layer < L:
                row = self.layer[t.layer]
            elif t.name.startswith("output"):
                row = self.layer[L]
            else:  # input layer and other globals stay on the CPU
                self.fixed.append((0, t.n_bytes, read))
                self.fixed_extent.append((0, *ext, 0))
                continue
            il = t.layer if (t.layer is not None and t.layer < L) else L
            g = 1 if is_exps else 0
            _widen(self.layer_extent[il][0][g], ext)
            if rp:
                self.layer_repack[il][g] += rp
            else:
                _widen(self.layer_extent[il][1][g], ext)
            if is_exps:
                row[1] += t.n_bytes
                row[3] += read
            else:
                row[0] += t.n_bytes
                row[2] += read
        self._kv_cache: dict[tuple[str, str], tuple] = {}

    def kv_layers(self, type_k: str, type_v: str):
        key = (type_k, type_v)
        if key not in self._kv_cache:
            self._kv_cache[key] = self.model.kv_layers(type_k, type_v)
        return self._kv_cache[key]

    def host_mapped_bytes(self, pl: "Placement", n_gpus: int) -> int:
        """Host bytes llama.cpp holds for CPU weights: per shard, the span from the first to the last mapped CPU
        tensor, plus repacked tensors (their own CPU_REPACK buffer) when repacking is on."""
        span: dict[int, list[int]] = {}
        repacked = 0
        which = 1 if pl.repack else 0
        for dev, shard, lo, hi, rp in self.fixed_extent:
            if dev == 0:
                if pl.repack and rp:
                    repacked += rp
                else:
                    _widen(span, (shard, lo, hi))
        L = self.n_layer
        for il in range(L + 1):
            d = _layer_device(il, L, pl.ngl, n_gpus, pl.splits)
            ext = self.layer_extent[il][which]
            for g, on_cpu in ((0, d == 0), (1, d == 0 or il < pl.n_cpu_moe)):
                if not on_cpu:
                    continue
                for shard, (lo, hi) in ext[g].items():
                    _widen(span, (shard, lo, hi))
                if pl.repack:
                    repacked += self.layer_repack[il][g]
        return sum(hi - lo for lo, hi in span.values()) + repacked

    def weights_by_device(self, pl: "Placement", n_gpus: int) -> tuple[list[int], list[int]]:
        """(bytes held, bytes read per generated token) per device index (0 = CPU)."""
        held = [0] * (n_gpus + 1)
        read = [0] * (n_gpus + 1)
        for dev, b, r in self.fixed:
            held[dev] += b
            read[dev] += r
        L = self.n_layer
        for il in range(L + 1):
            d = _layer_device(il, L, pl.ngl, n_gpus, pl.splits)
            dense_b, exp_b, dense_r, exp_r = self.layer[il]
            held[d] += dense_b
            read[d] += dense_r
            de = 0 if il < pl.n_cpu_moe else d
            held[de] += exp_b
            read[de] += exp_r
        out_dev = _layer_device(L, L, pl.ngl, n_gpus, pl.splits)
        if self.tied_output:
            if out_dev != 0:  # TENSOR_DUPLICATED: a second copy on the output device, read in full
                held[out_dev] += self.embd_bytes
                read[out_dev] += self.embd_bytes
            else:  # the CPU copy also serves as the output matmul
                read[0] += self.embd_bytes - self.embd_row_bytes
        return held, read


# ggml-cpu repack.cpp ggml_repack_get_optimal_repack_type: weight types moved to CPU_REPACK, by CPU features.
_REPACK_X86_AVX2 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_REPACK_ARM_DOTPROD = frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})


def repack_types_for(isa: Sequence[str] | None) -> frozenset:
    """The ggml types this CPU repacks (x86 rules checked against llama.cpp here; ARM rules from the source)."""
    flags = {f.lower() for f in (isa or ())}
    if "avx2" in flags:
        return _REPACK_X86_AVX2 | ({"Q2_K"} if "avx512f" in flags else set())
    if "asimddp" in flags or "dotprod" in flags:
        return _REPACK_ARM_DOTPROD
    return frozenset()


def _repackable(t, types: frozenset) -> bool:
    # MUL_MAT (2-D) and MUL_MAT_ID (3-D experts) weights only; the token embedding is read by GET_ROWS
    if t.type_name not in types or t.name.startswith("token_embd") or len(t.shape) not in (2, 3):
        return False
    return t.shape[1] % 8 == 0


def _widen(span: dict, ext: tuple[int, int, int]) -> None:
    shard, lo, hi = ext
    cur = span.get(shard)
    span[shard] = [lo, hi] if cur is None else [min(cur[0], lo), max(cur[1], hi)]


def _layer_device(il: int, n_layer: int, ngl: int, n_gpus: int, splits: tuple[float, ...] = ()) -> int:
    """Device index for layer il (n_layer = output layer): 0 = CPU, 1.. = GPUs.

    llama-model.cpp: GPU = upper_bound(cumulative splits, (il - i_gpu_start) / ngl), the splits being -ts or
    each device's free memory; equal shares when none are given."""
    if n_gpus == 0:
        return 0
    ngl = max(0, min(ngl, n_layer + 1))
    i_gpu_start = max(n_layer + 1 - ngl, 0)
    if il < i_gpu_start or il - i_gpu_start >= ngl:
        return 0
    x = (il - i_gpu_start) / ngl
    if splits and len(splits) == n_gpus:
        return 1 + min(n_gpus - 1, bisect.bisect_right(splits, x))
    return 1 + min(n_gpus - 1, int(x * n_gpus))


def _buft_device(buft: str, n_gpus: int) -> int | None:
    b = buft.upper()
    if b.startswith("CPU"):
        return 0
    m = re.search(r"(\d+)$", b)
    if m and n_gpus:
        return 1 + min(int(m.group(1)), n_gpus - 1)
    return None


def _pad(n: int, to: int = CTX_PAD) -> int:
    return -(-n // to) * to


def kv_size_tokens(pl: Placement) -> int:
    """n_ctx after llama.cpp's rounding (llama-context.cpp:292-306): padded to 256, and to whole slots."""
    n_ctx = _pad(pl.ctx)
    if pl.kv_unified or pl.parallel <= 1:
        return n_ctx
    return _pad(n_ctx // pl.parallel) * pl.parallel


def context_bytes_by_device(table: LayoutTable, pl: Placement, n_gpus: int) -> list[int]:
    """KV cache and recurrent state bytes per device index (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp)."""
    out = [0] * (n_gpus + 1)
    n_seq = max(1, pl.parallel)
    n_ctx = kv_size_tokens(pl)
    n_stream = 1 if pl.kv_unified else n_seq
    n_ctx_seq = n_ctx if pl.kv_unified else n_ctx // n_seq
    for l in table.kv_layers(pl.type_k, pl.type_v):
        dev = 0 if pl.no_kv_offload else _layer_device(l.layer, table.n_layer, pl.ngl, n_gpus, pl.splits)
        if l.kind == "recurrent":  # one state row per sequence (llama-memory-recurrent.cpp)
            out[dev] += l.state_bytes_per_seq * n_seq
            continue
        cells = n_ctx_seq
        if l.kind == "swa" and l.window and not pl.swa_full:
            # iswa: PAD(min(n_ctx_seq, n_swa * (unified ? n_seq : 1) + n_ubatch), 256) cells per stream
            cells = _pad(min(n_ctx_seq, l.window * (n_seq if pl.kv_unified else 1) + pl.n_ubatch))
        out[dev] += (l.k_bytes_per_token + l.v_bytes_per_token) * cells * n_stream
    return out


# Compute-buffer model constants (estimate_compute_bytes). "Rows" are f32 activations of one ubatch token.
_F32 = 4
_IDX_BYTES = 8  # int64 KV row indices (k_idxs / v_idxs inputs)
_COMPUTE_SHAPES: dict = {}


@dataclass(frozen=True)
class _ComputeShape:
    n_layer: int
    n_embd: int
    ffn_width: int  # widest FFN per token: n_ff, n_expert_used * n_ff_exp, shared expert, or SSM in-projection
    n_head: int
    q_width: int  # n_head * key_length (MLA: the absorbed kv_lora_rank + rope head)
    v_width: int  # n_head_kv * value_length
    window: int
    mla: bool
    any_full: bool  # a full-context attention layer (its KQ mask spans n_kv)
    any_swa: bool  # a sliding-window layer (a second, smaller mask)
    full_prefix: tuple[int, ...]  # full/MLA attention layers among the first i
    swa_prefix: tuple[int, ...]


# the facts estimate_compute_bytes and kv_cache_layers read: the cache key (memory_map passes a fresh dict per call)
_COMPUTE_FACTS = ("block_count", "embedding_length", "feed_forward_length", "expert_count", "expert_used_count",
                  "expert_feed_forward_length", "expert_shared_count", "expert_shared_feed_forward_length",
                  "leading_dense_block_count", "ssm_conv_kernel", "ssm_inner_size", "ssm_group_count",
                  "ssm_state_size", "ssm_time_step_rank", "wkv_head_size", "token_shift_count", "recurrent",
                  "head_count", "head_count_kv", "key_length", "value_length", "key_length_swa", "value_length_swa",
                  "key_length_mla", "value_length_mla", "sliding_window", "sliding_window_pattern")


def _compute_shape(facts) -> _ComputeShape:
    key = tuple(tuple(v) if isinstance(v, list) else v for v in map(facts.get, _COMPUTE_FACTS))
    if key in _COMPUTE_SHAPES:
        return _COMPUTE_SHAPES[key]
    from .model import kv_cache_layers  # local: the planner's import line stays as it is

    def mx(v) -> int:
        return (max(v) if v else 0) if isinstance(v, (tuple, list)) else int(v or 0)

    e = mx(facts.get("embedding_length"))
    ff = mx(facts.get("feed_forward_length"))
    width = ff
    if facts.get("expert_count"):
        fe = mx(facts.get("expert_feed_forward_length")) or ff
        shared = mx(facts.get("expert_shared_feed_forward_length")) or mx(facts.get("expert_shared_count")) * fe
        dense = ff if facts.get("leading_dense_block_count") else 0
        width = max(mx(facts.get("expert_used_count")) * fe, shared, dense)
    d_inner = mx(facts.get("ssm_inner_size"))
    if d_inner:  # mamba: z, x, B, C, dt come out of one in-projection
        width = max(width, 2 * d_inner + 2 * mx(facts.get("ssm_group_count")) * mx(facts.get("ssm_state_size"))
                    + mx(facts.get("ssm_time_step_rank")))
    h = mx(facts.get("head_count"))
    layers = kv_cache_layers(facts)
    full, swa = [0], [0]
    for l in layers:
        full.append(full[-1] + (l.kind in ("full", "mla")))
        swa.append(swa[-1] + (l.kind == "swa"))
    s = _ComputeShape(len(layers), e, width, h, h * mx(facts.get("key_length")),
                      mx(facts.get("head_count_kv")) * mx(facts.get("value_length")), mx(facts.get("sliding_window")),
                      any(l.kind == "mla" for l in layers), full[-1] > 0, swa[-1] > 0, tuple(full), tuple(swa))
    _COMPUTE_SHAPES[key] = s
    return s


def estimate_compute_bytes(facts: dict, pl: Placement, kind: str, runs_layers: bool) -> int:
    """Compute buffer of one backend (llama.cpp `sched_reserve`): the peak of the graph allocator for one ubatch.

    Method: llama.cpp reserves the prompt graph for T = min(n_ubatch, -c) tokens (rounded up to whole sequences)
    against the full KV cache, and ggml-alloc reuses freed tensors, so the buffer is the live inputs plus the
    largest phase of one layer, not a sum over layers. Per device (the CPU holds layers [0, i_gpu_start), the GPU
    the rest; several GPUs are each given the whole GPU range, an upper bound):
    - inputs, alive all graph long: the KQ mask T x n_kv_per_stream (f16 with flash attention, else f32; a second
      one for sliding-window layers); without flash attention also the int64 V row indices (T x n_embd_v_gqa per
      cache; MLA instead: the f32 copy of V plus the KQV product);
    - a layer, in f32 rows of T tokens: max(5 n_embd, attention 6 n_embd or 2 n_embd + 3 q_width, FFN 4 n_embd +
      3 ffn_width); without flash attention the attention phase adds the f32 KQ scores n_kv x T x n_head (softmax
      runs in place). The last layer runs its FFN on the output rows only, so a device holding only it has none;
    - a CPU that runs layers also keeps the input embeddings (+1 row); a CPU holding only the input layer has
      4 n_embd rows + the inputs, or the expert FFN (4 n_embd + 3 ffn_width rows) when --n-cpu-moe / -ot keeps
      experts on it.
    Measured (scripts/bench/plan_accuracy.py, CPU and ggml-rpc-server "GPU" buffers of this llama.cpp build):
    on the benchmark grid (14 tiny models + SmolLM2, 487 runs, 974 device cells) max error 3.0 MiB, from -17 % to
    +31 % (worst underestimate 0.18 MiB); on a wider fit set with synthetic shapes (n_embd 256-2048, n_ff 256-8192,
    head widths 256-2048, -ub 128-1024, -np 1-3, fa on/off, 3758 cells) from -17 % to +47 % (largest
    underestimate 3.0 MiB of 231 MiB). It overestimates most when n_ff < 1.5 n_embd (the allocator then fits FFN
    tensors into freed holes) and for a GPU holding only the last layer. CUDA buffers could not be measured here:
    CUDA runs the same graph through the same allocator, but ops it lacks fall back to the CPU and several GPUs with
    pipeline parallelism keep extra input copies, neither modelled.
    """
    if not runs_layers:
        return 0
    s = _compute_shape(facts)
    L, e, fw, qw = s.n_layer, s.n_embd, s.ffn_width, s.q_width
    n_seq = max(1, pl.parallel)
    n_ctx = kv_size_tokens(pl)
    t = min(pl.n_ubatch, pl.ctx if pl.ctx > 0 else n_ctx)  # llama-context: n_ubatch <= n_batch <= -c
    t = -(-t // n_seq) * n_seq  # graph_reserve rounds n_tokens up to a multiple of n_seqs
    n_kv = n_ctx if pl.kv_unified else n_ctx // n_seq
    swa_kv = _pad(min(n_kv, s.window * (n_seq if pl.kv_unified else 1) + pl.n_ubatch))
    fa = pl.flash_attn != "off"
    gpu_start = min(L, max(L + 1 - pl.ngl, 0))
    lo, hi = (gpu_start, L) if kind == "gpu" else (0, gpu_start)
    full_here = s.full_prefix[hi] > s.full_prefix[lo]
    attn_here = full_here or s.swa_prefix[hi] > s.swa_prefix[lo]
    ffn_here = lo < min(hi, L - 1)
    masks = ([n_kv] if s.any_full else []) + ([swa_kv] if s.any_swa else [])
    inputs = t * sum(masks) * (2 if fa else _F32)
    kv_here = n_kv if full_here else swa_kv
    if not fa and s.mla:  # V is a view of the latent K, transposed by a copy before KQV, where layers run
        inputs += (kv_here * s.v_width * _F32 + t * s.n_head * s.v_width * _F32) if attn_here else 0
    elif not fa and masks:  # V cache stored transposed: one index per element
        inputs += t * s.v_width * _IDX_BYTES * len(masks)
    ffn_rows = 4 * e + 3 * fw if ffn_here else 0
    if fa or not attn_here:
        act = _F32 * t * max(5 * e, max(6 * e, 2 * e + 3 * qw) if attn_here else 0, ffn_rows)
    else:
        act = max(_F32 * t * ffn_rows, kv_here * t * s.n_head * _F32 + _F32 * t * max(5 * e, 2 * e + 3 * qw))
    if kind == "gpu":
        return int(inputs + act)
    if hi > lo:
        return int(inputs + act + _F32 * t * e)
    b = _F32 * t * 4 * e + inputs
    if pl.n_cpu_moe or any(buft.upper().startswith("CPU") for _, buft in pl.overrides):
        b = max(b, _F32 * t * (4 * e + 3 * fw))
    return int(b)


def output_buffer_bytes(table: LayoutTable, pl: Placement) -> int:
    # llama_context output buffer: logits for n_seq outputs (f32) + embeddings (none for generation)
    return table.n_vocab * 4 * max(1, pl.parallel)


def memory_map(table: LayoutTable, target: Target, pl: Placement, req: Request) -> tuple[DeviceMemory, ...]:
    n_gpus = len(target.gpus)
    model_b, _ = table.weights_by_device(pl, n_gpus)
    ctx_b = context_bytes_by_device(table, pl, n_gpus)
    facts = dict(table.model.facts)
    runs = [False] * (n_gpus + 1)
    for il in range(table.n_layer + 1):
        runs[_layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)] = True
    runs[0] = True  # the CPU backend always holds the input and the graph's CPU parts
    out = []
    for i, dev in enumerate(target.devices):
        if dev.kind == "host":
            margin = req.host_margin_bytes
            if margin is None:  # the watchdog's SIGTERM line: max(1 GiB, 5 % of the effective limit)
                base = dev.limit_bytes or dev.capacity_bytes or 0
                margin = max(HOST_MARGIN_MIN_BYTES, int(HOST_MARGIN_FRACTION * base))
            other = output_buffer_bytes(table, pl) + HOST_PROCESS_OVERHEAD_BYTES
        else:
            margin = req.gpu_margin_bytes
            other = dev.runtime_overhead_bytes
        held = model_b[i]
        if dev.kind == "host" and pl.mmap:
            held = table.host_mapped_bytes(pl, n_gpus)
        out.append(DeviceMemory(dev.name, dev.kind, held, ctx_b[i],
                                estimate_compute_bytes(facts, pl, dev.kind, runs[i]),
                                other, dev.capacity_bytes, margin, model_b[i]))
    return tuple(out)


# ----------------------------------------------------------------------------------------------- forecast

def bytes_read_per_token(table: LayoutTable, pl: Placement, n_gpus: int, kv_fill: int) -> list[int]:
    """Bytes each device reads to generate one token: active weights plus the KV cache at kv_fill tokens."""
    _, out = table.weights_by_device(pl, n_gpus)
    for l in table.kv_layers(pl.type_k, pl.type_v):
        dev = 0 if pl.no_kv_offload else _layer_device(l.layer, table.n_layer, pl.ngl, n_gpus, pl.splits)
        if l.kind == "recurrent":
            out[dev] += l.state_bytes_per_seq
        else:
            fill = min(kv_fill, l.window) if (l.kind == "swa" and l.window) else kv_fill
            out[dev] += (l.k_bytes_per_token + l.v_bytes_per_token) * fill
    return out


def forecast(table: LayoutTable, target: Target, pl: Placement, req: Request,
             calibration: "Calibration | None" = None) -> Forecast:
    n_gpus = len(target.gpus)
    reads = bytes_read_per_token(table, pl, n_gpus, min(req.decode_at_tokens, kv_size_tokens(pl)))
    t_ceiling = 0.0
    t_expected = 0.0
    unknown = False
    n_layers_on = [0] * (n_gpus + 1)
    for il in range(table.n_layer):
        n_layers_on[_layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)] += 1
    for i, dev in enumerate(target.devices):
        if reads[i] == 0:
            continue
        if not dev.bandwidth_bytes_per_s:
            unknown = True
            continue
        t = reads[i] / dev.bandwidth_bytes_per_s
        t_ceiling += t
        eff = DEFAULT_EFFICIENCY[dev.kind]
        t_expected += t / eff + n_layers_on[i] * (GPU_LAYER_OVERHEAD_S if dev.kind == "gpu" else CPU_LAYER_OVERHEAD_S)
    per_dev = {d.name: reads[i] for i, d in enumerate(target.devices)}
    flops = None
    gpu_flops = [d.flops for d in target.gpus if d.flops]
    if gpu_flops and pl.ngl > table.n_layer and pl.n_cpu_moe == 0:
        # prefill ceiling: 2 FLOP per active weight per token at the spec-sheet FP16 rate
        params = _active_params(table)
        flops = gpu_flops[0] / (2 * params) if params else None
    if unknown or t_ceiling == 0:
        return Forecast(None, None, None, flops, False, "bandwidth unknown for a device that holds weights",
                        per_dev)
    ceiling = 1.0 / t_ceiling
    expected = 1.0 / t_expected
    if calibration is not None:
        expected = ceiling * calibration.efficiency
        band = (expected * calibration.band[0], expected * calibration.band[1])
        return Forecast(ceiling, expected, band, flops, True, calibration.method, per_dev)
    band = (expected * UNCALIBRATED_BAND[0], min(ceiling, expected * UNCALIBRATED_BAND[1]))
    return Forecast(ceiling, expected, band, flops, False,
                    "uncalibrated: bandwidth roofline x default efficiency + per-layer overhead", per_dev)


def _active_params(table: LayoutTable) -> float:
    frac = (table.n_expert_used / table.n_expert) if table.n_expert else 1.0
    n = 0.0
    for t in table.model.tensors:
        if t.name == "token_embd.weight" and not table.tied_output:
            continue
        n += t.n_elements * (frac if t.role == "routed_experts" and re.search(EXPS_REGEX, t.name) else 1.0)
    return n


@dataclass(frozen=True)
class Calibration:
    """Realised fraction of the ceiling, learned from receipts of the same model and hardware."""

    efficiency: float
    band: tuple[float, float]
    samples: int
    method: str


# ----------------------------------------------------------------------------------------------- search

_CTX_LADDER = (1 << 20, 524288, 262144, 131072, 65536, 32768, 16384, 8192, 4096, 2048, 1024, 512)


def _ctx_candidates(model: ModelInfo, req: Request) -> list[int]:
    pinned = req.pinned.ctx if req.pinned.ctx is not None else req.ctx
    train = model.facts.get("context_length") or 4096
    if pinned is not None:
        return [pinned if pinned > 0 else train]
    ladder = [train] + [c for c in _CTX_LADDER if c < train]
    return [c for c in ladder if c >= min(req.min_ctx, train)] or [train]


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
    argv: list[str] = ["-m", model_path]
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
    if "--fit" not in pin.passthrough and "-fit" not in pin.passthrough:
        argv += ["--fit", "off"]  # the plan is the fit; llama.cpp's must not move things again
    argv += _without_auto_ngl(pin.passthrough)
    if pin.n_cpu_moe is None and not pin.cpu_moe and pl.n_cpu_moe:
        # after the user's -ot: llama.cpp applies overrides in order, first match wins, as the plan assumes
        argv += ["--n-cpu-moe", str(pl.n_cpu_moe)]
    return tuple(argv)


def _without_auto_ngl(args: Sequence[str]) -> list[str]:
    """The user's args minus '-ngl auto|-1' (the plan chose -ngl; passed after it, llama.cpp would take all)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0].replace("_", "-") if a.startswith("--") else a
        if name in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
            v = a.split("=", 1)[1] if "=" in a and a.startswith("--") else (args[i + 1] if i + 1 < len(args) else "")
            if v in ("auto", "-1"):
                i += 1 if "=" in a else 2
                continue
        out.append(a)
        i += 1
    return out


def make_plan(model: ModelInfo, target: Target, req: Request, calibration: Calibration | None = None) -> Plan:
    table = LayoutTable(model, req.pinned.overrides, len(target.gpus), repack_types_for(target.cpu_isa))
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
        reasons = ["fits: " + _describe_placement(best)]
        free_kv = not (req.kv_type or req.pinned.type_k or req.pinned.type_v)
        if free_kv and best.placement.type_k == "f16" and best.forecast.decode_tok_s:
            alt, _, _, k = _search(table, target, req, best.placement.ctx, "q8_0", "q8_0", calibration,
                                   req.floor_tok_s)
            n += k
            if alt and alt.forecast.decode_tok_s and alt.forecast.decode_tok_s > 1.05 * best.forecast.decode_tok_s:
                gain = 100 * (alt.forecast.decode_tok_s / best.forecast.decode_tok_s - 1)
                reasons.append(f"--kv-type q8_0 forecasts faster (less KV to read, or room for a better"
                               f" placement): {_describe_placement(alt)} (+{gain:.0f} %)")
        return Plan("ship", tuple(reasons), best, None,
                    build_argv(model.path, best.placement, req.pinned, n_gpus), target, n)
    reasons: list[str] = []
    if best_any is not None:
        f = best_any.forecast.decode_tok_s
        reasons.append(f"fits, but the best forecast {f:.2f} tok/s is below the {req.floor_tok_s:g} tok/s floor")
        nearest = _nearest(table, target, req, model, calibration, floor=req.floor_tok_s)
        if nearest is not None:
            reasons.append("the nearest plan above the floor: " + _describe_placement(nearest))
        else:
            reasons.append("no placement, context or KV type reaches the floor on this hardware")
        return Plan("refuse", tuple(reasons), best_any, nearest,
                    build_argv(model.path, best_any.placement, req.pinned, n_gpus), target, n)
    if closest is not None:
        reasons.append(_describe_deficit(closest))
    nearest = _nearest(table, target, req, model, calibration, floor=0.0)
    if nearest is not None:
        reasons.append("with " + _describe_placement(nearest) + " it fits")
    else:
        reasons.append("no context down to 512 tokens and no KV type fits")
    shown = nearest or closest
    return Plan("refuse", tuple(reasons), None, shown,
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
            parts.append(f"needs {_gib(-m.headroom_bytes)} more {what} on {m.device}"
                         f" (plan {_gib(m.total_bytes)} + margin {_gib(m.margin_bytes)}"
                         f" > free {_gib(m.capacity_bytes or 0)})")
    return "nothing fits: closest plan (" + _describe_placement(ev).rsplit(" at ", 1)[0] + ") " + "; ".join(parts)
