"""Typed readers of the plan and receipt documents: the fields code reads, and nothing is converted.

The JSON documents stay what they are (plan.Plan.to_json(), receipt.build_receipt()); code that reads them goes
through these frozen views instead of ``((doc.get("plan") or {}).get("plan") or {})`` chains. Each value is the
document's own (a missing key or object reads as None, a list stays a list), so a view can be written back or
compared with the document it came from. An object member that is present but not an object fails on reading,
with AttributeError, as those chains did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


def _obj(d: Mapping, key: str) -> Mapping:
    """d[key], {} when missing, null or empty."""
    return d.get(key) or {}


# ----------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class PlacementDoc:
    ctx: int | None = None
    ngl: int | None = None
    n_cpu_moe: int | None = None
    type_k: str | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "PlacementDoc":
        return cls(d.get("ctx"), d.get("ngl"), d.get("n_cpu_moe"), d.get("type_k"))


@dataclass(frozen=True)
class ForecastDoc:
    decode_tok_s: float | None = None
    ceiling_decode_tok_s: float | None = None
    band_decode_tok_s: list | None = None  # [low, high]
    calibrated: bool | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "ForecastDoc":
        return cls(d.get("decode_tok_s"), d.get("decode_ceiling_tok_s"), d.get("decode_band_tok_s"),
                   d.get("calibrated"))


@dataclass(frozen=True)
class EvaluationDoc:
    """One evaluated placement of a plan document ("plan" or "nearest")."""
    placement: PlacementDoc = field(default_factory=PlacementDoc)
    forecast: ForecastDoc = field(default_factory=ForecastDoc)

    @classmethod
    def from_json(cls, d: Mapping) -> "EvaluationDoc":
        return cls(PlacementDoc.from_json(_obj(d, "placement")), ForecastDoc.from_json(_obj(d, "forecast")))


_NO_EVALUATION = EvaluationDoc()


@dataclass(frozen=True)
class PlanDoc:
    """A gpcrun.plan/1 document: the verdict, the chosen placement ("plan"), the nearest one and the argv."""
    verdict: str | None = None
    chosen: EvaluationDoc | None = None
    nearest: EvaluationDoc | None = None
    argv: tuple[str, ...] = ()
    prompt_cache: Mapping | None = None  # {"limit_mib" (None = unlimited), "source", ...} when planned

    @classmethod
    def from_json(cls, d: Mapping | None) -> "PlanDoc":
        d = d or {}
        ch, ne = d.get("plan"), d.get("nearest")
        return cls(d.get("verdict"), EvaluationDoc.from_json(ch) if ch else None,
                   EvaluationDoc.from_json(ne) if ne else None, tuple(d.get("argv") or ()), d.get("prompt_cache"))

    @property
    def prompt_cache_mib(self) -> int | None:
        """The host prompt cache's limit: MiB, -1 unlimited, 0 or None when there is none (or it was not planned)."""
        if not self.prompt_cache:
            return None
        limit = self.prompt_cache.get("limit_mib")
        return -1 if limit is None else limit

    @property
    def placement(self) -> PlacementDoc:
        """The chosen placement; all None when the plan chose none."""
        return (self.chosen or _NO_EVALUATION).placement

    @property
    def forecast(self) -> ForecastDoc:
        """The chosen placement's forecast; all None when the plan chose none."""
        return (self.chosen or _NO_EVALUATION).forecast

    @property
    def shown(self) -> EvaluationDoc:
        """The chosen placement, else the nearest (a refusal), else an empty one."""
        return self.chosen or self.nearest or _NO_EVALUATION


# ----------------------------------------------------------------------------------------------- receipt

@dataclass(frozen=True)
class StatsDoc:
    mean: float | None = None
    sd: float | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "StatsDoc":
        return cls(d.get("mean"), d.get("sd"))


@dataclass(frozen=True)
class MeasuredDoc:
    decode_tok_s: StatsDoc = field(default_factory=StatsDoc)
    prefill_tok_s: StatsDoc = field(default_factory=StatsDoc)
    forecast_decode_tok_s: float | None = None
    ceiling_decode_tok_s: float | None = None
    prediction_error_pct: float | None = None
    ttft_p50_ms: float | None = None
    itl_p50_ms: float | None = None
    model_same: bool | None = None  # the served model is the planned one (model_check.same); None: unknown/old

    @classmethod
    def from_json(cls, d: Mapping) -> "MeasuredDoc":
        return cls(StatsDoc.from_json(_obj(d, "decode_tok_s")), StatsDoc.from_json(_obj(d, "prefill_tok_s")),
                   d.get("forecast_decode_tok_s"), d.get("ceiling_decode_tok_s"), d.get("prediction_error_pct"),
                   _obj(d, "ttft_ms").get("p50"), _obj(d, "itl_ms").get("p50"), _obj(d, "model_check").get("same"))


@dataclass(frozen=True)
class EnvelopeDoc:
    limits_fired: tuple = ()
    peak_child_rss_bytes: int | None = None
    min_host_available_bytes: int | None = None
    peak_child_vram_bytes: Mapping[str, int | None] = field(default_factory=dict)  # by device

    @classmethod
    def from_json(cls, d: Mapping) -> "EnvelopeDoc":
        return cls(tuple(d.get("limits_fired") or ()), d.get("peak_child_rss_bytes"),
                   d.get("min_host_available_bytes"), d.get("peak_child_vram_bytes") or {})

    @property
    def watchdog_fired(self) -> bool:
        """A limit acted (a *_warn limit only logs)."""
        return any(not str(r).endswith("_warn") for r in self.limits_fired)


@dataclass(frozen=True)
class ModelDoc:
    file_name: str | None = None
    header_sha256: str | None = None
    architecture: str | None = None
    size_bytes: int | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "ModelDoc":
        return cls(d.get("file_name"), d.get("header_sha256"), d.get("architecture"), d.get("size_bytes"))


@dataclass(frozen=True)
class GpuDoc:
    name: str | None = None
    total_bytes: int | None = None


@dataclass(frozen=True)
class HardwareDoc:
    """What a receipt's hardware profile is shown with: the GPUs and the CPU."""
    gpus: tuple[GpuDoc, ...] = ()
    cpu_model: str | None = None
    cores_logical: int | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "HardwareDoc":
        plat = _obj(d, "platform")
        return cls(tuple(GpuDoc(g.get("name"), g.get("total_bytes")) for g in _obj(d, "gpus").get("devices") or ()),
                   plat.get("cpu_model"), plat.get("cores_logical"))


@dataclass(frozen=True)
class OutcomeDoc:
    kind: str | None = None
    exit_code: int | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> "OutcomeDoc":
        return cls(d.get("kind"), d.get("exit_code"), d.get("reason"))


@dataclass(frozen=True)
class ReceiptDoc:
    """A gpcrun.receipt/1 document, the fields the index, the batch summary and the Markdown view read."""
    id: str | None
    created_utc: str | None
    kind: str | None
    hardware_fingerprint: str | None
    hardware: HardwareDoc
    model: ModelDoc
    plan: PlanDoc
    argv: tuple[str, ...]  # command.argv (redacted)
    llama_cpp_build_info: str | None
    measured: MeasuredDoc
    envelope: EnvelopeDoc
    outcome: OutcomeDoc

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ReceiptDoc":
        return cls(d.get("id"), d.get("created_utc"), d.get("kind"), d.get("hardware_fingerprint"),
                   HardwareDoc.from_json(_obj(d, "hardware")), ModelDoc.from_json(_obj(d, "model")),
                   PlanDoc.from_json(_obj(d, "plan")), tuple(_obj(d, "command").get("argv") or ()),
                   _obj(d, "llama_cpp").get("build_info"), MeasuredDoc.from_json(_obj(d, "measured")),
                   EnvelopeDoc.from_json(_obj(d, "envelope")), OutcomeDoc.from_json(_obj(d, "outcome")))
