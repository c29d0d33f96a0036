"""The planner's values: a candidate Placement, its per-device DeviceMemory, its Forecast, the Evaluation of both,
and the resulting Plan, each with its JSON form (schema gpcrun.plan/1)."""
from __future__ import annotations

from dataclasses import dataclass

from .request import Target


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
    prefill_tok_s: float | None = None  # all weights on the host, from its measured prefill rates

    def to_json(self) -> dict:
        return {"decode_ceiling_tok_s": _r(self.decode_ceiling_tok_s), "decode_tok_s": _r(self.decode_tok_s),
                "decode_band_tok_s": [_r(x) for x in self.decode_band_tok_s] if self.decode_band_tok_s else None,
                "prefill_ceiling_tok_s": _r(self.prefill_ceiling_tok_s), "prefill_tok_s": _r(self.prefill_tok_s),
                "calibrated": self.calibrated,
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
    notes: tuple[str, ...] = ()  # what the plan could not model exactly (an architecture's memory layout ...)

    def to_json(self) -> dict:
        def ev(e: Evaluation | None):
            if e is None:
                return None
            return {"placement": placement_json(e.placement), "memory": [m.to_json() for m in e.memory],
                    "forecast": e.forecast.to_json(), "fits": e.fits}
        return {"schema": "gpcrun.plan/1", "verdict": self.verdict, "reasons": list(self.reasons),
                "plan": ev(self.chosen), "nearest": ev(self.nearest), "argv": list(self.argv),
                "target": {"fingerprint": self.target.fingerprint, "threads": self.target.threads,
                           "devices": [_device_json(d) for d in self.target.devices]},
                "candidates_evaluated": self.candidates_evaluated, **({"notes": list(self.notes)} if self.notes else {})}


def _device_json(d) -> dict:
    """A target device; measured host rates appear as where they came from and when (the figures are in
    $GPCRUN_HOME/calibration.json and `gpcrun profile --calibrate --json`)."""
    out = dict(d.__dict__)
    r = out.pop("decode_rates", None)
    if r is not None:
        out["decode_rates"] = {"source": r.source, "measured_at_unix": r.measured_at_unix, "types": r.types()}
    if out.get("layer_fixed_s") is None:
        out.pop("layer_fixed_s", None)
    if not out.get("shares_host_memory"):
        out.pop("shares_host_memory", None)
    return out


def placement_json(p: Placement) -> dict:
    d = dict(p.__dict__)
    d["overrides"] = [list(o) for o in p.overrides]
    return d
