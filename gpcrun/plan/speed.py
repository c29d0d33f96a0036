"""The decode-speed forecast: bytes read per token on each device against its bandwidth, an efficiency (default or
calibrated from receipts) and a per-layer overhead; the prefill ceiling from spec-sheet FLOP/s."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .constants import (CPU_LAYER_OVERHEAD_S, DEFAULT_EFFICIENCY, EXPS_REGEX, GPU_LAYER_OVERHEAD_S, MODEL_ERROR,
                        UNCALIBRATED_BAND)
from .kv import kv_size_tokens
from .layout import LayoutTable, _layer_device
from .prefill import batch_work, prefill_tok_s
from .request import Request, Target
from .types import Forecast, Placement


def bytes_read_per_token(table: LayoutTable, pl: Placement, n_gpus: int, kv_fill: int) -> list[int]:
    """Bytes each device reads to generate one token: active weights plus the KV cache at kv_fill tokens."""
    _, out = table.weights_by_device(pl, n_gpus)
    for l in table.kv_layers(pl.type_k, pl.type_v):
        dev = 0 if pl.no_kv_offload else _layer_device(l.layer, table.n_layer, pl.ngl, n_gpus, pl.splits)
        out[dev] += l.state_bytes_per_seq  # a recurrent layer reads and writes its state once per token
        if l.kind not in ("recurrent", "none"):
            fill = min(kv_fill, l.window) if (l.kind == "swa" and l.window) else kv_fill
            out[dev] += (l.k_bytes_per_token + l.v_bytes_per_token) * fill
    return out


def _kv_device(table: LayoutTable, pl: Placement, n_gpus: int, layer: int) -> int:
    return 0 if pl.no_kv_offload else _layer_device(layer, table.n_layer, pl.ngl, n_gpus, pl.splits)


def _attention_units(table: LayoutTable, pl: Placement, n_gpus: int, kv_fill: int, dev: int = 0) -> tuple[int, int]:
    """(attention units per generated token on device `dev`, KV bytes it reads): per layer whose cache is there,
    cached tokens x query heads x (K + V elements per KV head). Recurrent layers have no depth."""
    from .rates import bits_per_weight

    def elem_bytes(kv: str) -> float:
        return bits_per_weight(kv.upper()) / 8

    f = table.model.facts
    units = kv_bytes = 0
    for l in table.kv_layers(pl.type_k, pl.type_v):
        if l.kind in ("recurrent", "none"):
            continue
        if _kv_device(table, pl, n_gpus, l.layer) != dev:
            continue
        fill = min(kv_fill, l.window) if (l.kind == "swa" and l.window) else kv_fill
        nh, nkv = (_at(f.get("head_count"), l.layer) or 1), (_at(f.get("head_count_kv"), l.layer) or 1)
        if l.kind == "mla":
            nkv = 1  # one shared latent per token
        elems = l.k_bytes_per_token / elem_bytes(pl.type_k) + l.v_bytes_per_token / elem_bytes(pl.type_v)
        units += int(fill * nh / nkv * elems)
        kv_bytes += (l.k_bytes_per_token + l.v_bytes_per_token) * fill
    return units, kv_bytes


def head_size(facts) -> int:
    """The attention head size (key_length, else n_embd / n_head) that selects llama.cpp's attention kernel."""
    k = _at(facts.get("key_length"), 0)
    if k:
        return int(k)
    e, h = facts.get("embedding_length"), _at(facts.get("head_count"), 0)
    return int(e // h) if e and h else 128


def _at(v, i: int):
    return v[i] if isinstance(v, (list, tuple)) else v


def _read_mix(table: LayoutTable, pl: Placement, n_gpus: int, dev_bytes: int, kv_fill: int,
              dev: int = 0) -> dict[str, int]:
    """Device `dev`'s bytes read per token split by ggml type (its KV cache included), scaled to dev_bytes: which
    weight types a backend's kernels stream decides their rate. -ot overrides are not followed here (the total
    is the layout's; only the split by type is approximated)."""
    mix: dict[str, float] = dict(_type_bytes(table, pl, n_gpus, dev, per_token=True))
    for l in table.kv_layers(pl.type_k, pl.type_v):
        if _kv_device(table, pl, n_gpus, l.layer) == dev:
            fill = min(kv_fill, l.window) if (l.kind == "swa" and l.window) else kv_fill
            mix[pl.type_k.upper()] = mix.get(pl.type_k.upper(), 0.0) + l.k_bytes_per_token * fill
            mix[pl.type_v.upper()] = mix.get(pl.type_v.upper(), 0.0) + l.v_bytes_per_token * fill
    total = sum(mix.values())
    return {k: int(v * dev_bytes / total) for k, v in mix.items() if v} if total else {}


def extra_crossings(table: LayoutTable, pl: Placement, n_gpus: int) -> list[int]:
    """Per device, the times a token's graph crosses between it and another device beyond the one crossing every
    placement on it has (the input embedding is on the CPU: llama-model.cpp dev_input), which its all-layers
    calibration already measured: for each --n-cpu-moe layer on it the experts' round trip to the CPU and back
    (2), and any return to a device after another one. Charged to the device crossed into (or out of, for the CPU)."""
    out = [0] * (n_gpus + 1)
    seq = [0]
    for il in range(table.n_layer):
        d = _layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)
        seq.append(d)
        if d and table.n_expert and il < pl.n_cpu_moe:
            seq += [0, d]
    seq.append(_layer_device(table.n_layer, table.n_layer, pl.ngl, n_gpus, pl.splits))
    for a, b in zip(seq, seq[1:]):
        if a != b:
            out[b or a] += 1
    for d in range(1, n_gpus + 1):
        out[d] = max(0, out[d] - 1) if d in seq else 0
    return out


def decode_threads(req: Request, target: Target) -> int:
    """The threads llama-server decodes with: -t as given, else its default (common.cpp common_cpu_get_num_math:
    the physical cores). A CPU quota below that is not modelled."""
    return max(1, req.pinned.threads or target.threads or 1)


def forecast(table: LayoutTable, target: Target, pl: Placement, req: Request,
             calibration: "Calibration | None" = None) -> Forecast:
    """Time per token = sum over devices of bytes read / that device's rate + attention over its KV cache + its
    layers x a fixed cost.

    A device's rates are measured by llama.cpp's own kernels where calibrated (plan/rates.py): the host's for
    the types it reads at the thread count llama-server will use, a GPU's (or a ggml-rpc-server's) for the types
    it reads. Else the host's one-thread copy bandwidth x a default efficiency (the labelled fallback) and a
    GPU's bandwidth x efficiency plus the per-layer fixed cost of its spec row (measured where known)."""
    n_gpus = len(target.gpus)
    fill = min(req.decode_at_tokens, kv_size_tokens(pl))
    reads = bytes_read_per_token(table, pl, n_gpus, fill)
    t_ceiling = 0.0
    t_expected = 0.0
    unknown = False
    measured_host = False
    n_layers_on = [0] * (n_gpus + 1)
    for il in range(table.n_layer):
        n_layers_on[_layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)] += 1
    threads = decode_threads(req, target)
    crossings = extra_crossings(table, pl, n_gpus)
    measured_gpu, spreads = False, []
    for i, dev in enumerate(target.devices):
        if reads[i] == 0:
            continue
        rates = dev.decode_rates
        rate, weight_reads, t_attn = None, reads[i], 0.0
        if rates is not None:
            attn_c = rates.attention_s_per_unit(pl.type_k, threads, head_size(table.model.facts))
            if attn_c is not None:  # the cache's cost is measured attention work, not bytes at a weight rate
                units, kv_b = _attention_units(table, pl, n_gpus, fill, i)
                weight_reads, t_attn = reads[i] - kv_b, units * attn_c
            rate = rates.mix_bytes_per_s(_read_mix(table, pl, n_gpus, weight_reads, 0 if attn_c else fill, i),
                                         threads)
            if rate is not None:
                spreads.append(rates.spread)
                if dev.kind == "host":
                    measured_host = True
                else:
                    measured_gpu = True
        if rate is None:
            weight_reads, t_attn = reads[i], 0.0
            if dev.bandwidth_bytes_per_s:
                rate = dev.bandwidth_bytes_per_s * DEFAULT_EFFICIENCY[dev.kind]
        if rate is None:
            unknown = True
            continue
        t_ceiling += reads[i] / max(rate, dev.bandwidth_bytes_per_s or 0)
        fixed = rates.layer_fixed_s(threads) if (rates is not None and rate is not None) else None
        if fixed is None:
            fixed = dev.layer_fixed_s
        if fixed is None:
            fixed = GPU_LAYER_OVERHEAD_S if dev.kind == "gpu" else CPU_LAYER_OVERHEAD_S
        t_token = rates.token_fixed_s(threads) if (rates is not None and rate is not None) else 0.0
        if rates is not None and rates.crossing_s and i:
            t_token += crossings[i] * rates.crossing_s
        t_expected += weight_reads / rate + t_attn + n_layers_on[i] * fixed + t_token
    per_dev = {d.name: reads[i] for i, d in enumerate(target.devices)}
    flops = None
    gpu_flops = [d.flops for d in target.gpus if d.flops]
    if gpu_flops and pl.ngl > table.n_layer and pl.n_cpu_moe == 0:
        # prefill ceiling: 2 FLOP per weight a batch token computes with (plan/prefill.py) at the spec-sheet
        # FP16 rate
        params = sum(batch_work(table.tensors, table.n_layer, table.n_expert, table.n_expert_used,
                                table.tied_output)[0])
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
    if measured_host or measured_gpu:
        lo, hi = min(s[0] for s in spreads), max(s[1] for s in spreads)
        band = (expected * (lo - MODEL_ERROR), expected * (hi + MODEL_ERROR))
        prefill = prefill_tok_s(table, target, pl, n_gpus, req.pinned.threads_batch or threads, threads,
                                _tensor_device, _type_bytes, _layer_device)
        parts = [f"host rates measured by llama-bench at -t {threads}"] if measured_host else []
        if n_gpus:
            parts.append("GPU rates measured by llama-bench" if measured_gpu else
                         "GPU: bandwidth x default efficiency + per-layer cost")
        return Forecast(ceiling, expected, band, flops, True, ", ".join(parts), per_dev, prefill)
    band = (expected * UNCALIBRATED_BAND[0], min(ceiling, expected * UNCALIBRATED_BAND[1]))
    return Forecast(ceiling, expected, band, flops, False,
                    "uncalibrated: one-thread copy bandwidth x default efficiency + per-layer overhead", per_dev)


def _tensor_device(table: LayoutTable, pl: Placement, n_gpus: int, t) -> int:
    expert = t.role == "routed_experts" and re.search(EXPS_REGEX, t.name)
    if expert and t.layer is not None and t.layer < pl.n_cpu_moe:
        return 0
    return _layer_device(t.layer if t.layer is not None else table.n_layer, table.n_layer, pl.ngl, n_gpus,
                         pl.splits)


def _type_bytes(table: LayoutTable, pl: Placement, n_gpus: int, dev: int, active: bool = True,
                experts_only: bool = False, per_token: bool = False) -> dict[str, int]:
    """Bytes by ggml type of the weights on device `dev` (routed experts at their active share when active).
    per_token: what a token reads, so not an untied input embedding (one row is looked up)."""
    frac = (table.n_expert_used / table.n_expert) if table.n_expert else 1.0
    out: dict[str, int] = {}
    for t in table.tensors:
        if per_token and t.name == "token_embd.weight" and not table.tied_output:
            continue
        expert = bool(t.role == "routed_experts" and re.search(EXPS_REGEX, t.name))
        if (experts_only and not expert) or _tensor_device(table, pl, n_gpus, t) != dev:
            continue
        out[t.type_name] = out.get(t.type_name, 0) + int(t.n_bytes * (frac if expert and active else 1.0))
    return out


@dataclass(frozen=True)
class Calibration:
    """Realised fraction of the ceiling, learned from receipts of the same model and hardware."""

    efficiency: float
    band: tuple[float, float]
    samples: int
    method: str
