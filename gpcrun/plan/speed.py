"""The decode-speed forecast: bytes read per token on each device against its bandwidth, an efficiency (default or
calibrated from receipts) and a per-layer overhead; the prefill ceiling from spec-sheet FLOP/s."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .constants import (CPU_LAYER_OVERHEAD_S, DEFAULT_EFFICIENCY, EXPS_REGEX, GPU_LAYER_OVERHEAD_S,
                        UNCALIBRATED_BAND)
from .kv import kv_size_tokens
from .layout import LayoutTable, _layer_device
from .request import Request, Target
from .types import Forecast, Placement


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
