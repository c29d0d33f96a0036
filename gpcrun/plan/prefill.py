"""The prefill forecast (pure): a prompt batch's work per device against that device's measured prefill rates.

What a batch of B prompt tokens computes is not B x every weight. llama-server asks for the logits of a prompt's
last token only (llama-bench likewise: llama_batch_get_one leaves logits null, which outputs the last token), and
the model graphs drop every other token right after the last layer's attention (src/models/llama.cpp,
qwen3moe.cpp ...: `if (il == n_layer - 1 && inp_out_ids) { cur = ggml_get_rows(cur, inp_out_ids); ... }`), so
the last layer's feed-forward weights and the output head work on one token, not B. On a model of few layers
that is much of the work: a one-layer synthetic model prefilled 2x faster per weight than a four-layer one of
the same shape (scripts/bench/forecast_accuracy.py's notes), and the calibration's rates were inflated by it.

Time per prompt token on a device = the parameters every token computes with / its measured prefill rate for its
types + the output token's weights read once per batch at its decode rate + its layers x the measured per-layer
cost (plan/rates.py) + reading the experts the batch routes to beyond the active share, once per batch.
"""
from __future__ import annotations

import re

from .constants import EXPS_REGEX, PREFILL_BATCH_TOKENS


def _is_ffn(name: str) -> bool:
    """A layer's feed-forward tensor (dense, router, routed or shared experts, its norm): blk.N.ffn_*."""
    parts = name.split(".")
    return len(parts) > 2 and parts[2].startswith("ffn")


def one_token(t, n_layer: int, tied_output: bool) -> bool:
    """Weight t works on the batch's output token only: the last layer's feed-forward weights and the output head
    (the tied input embedding when it is the head). Such a matrix-vector product reads its weights once per batch,
    like decode, so it costs its bytes at the decode rate, not parameter-tokens at the prefill rate."""
    if t.name == "token_embd.weight":
        return tied_output
    return t.name == "output.weight" or (t.layer == n_layer - 1 and _is_ffn(t.name))


def batch_work(tensors, n_layer: int, n_expert: int, n_expert_used: int, tied_output: bool,
               device_of=None, n_devices: int = 1) -> tuple[list[float], list[dict[str, int]]]:
    """Per device (device_of(t) -> index; all on 0 by default): (the parameters every token of a batch computes
    with, the bytes by ggml type only its output token reads) -- routed experts at their active share; an untied
    input embedding in neither (a row lookup)."""
    frac = (n_expert_used / n_expert) if n_expert else 1.0
    params = [0.0] * n_devices
    once: list[dict[str, int]] = [{} for _ in range(n_devices)]
    for t in tensors:
        share = frac if (t.role == "routed_experts" and re.search(EXPS_REGEX, t.name)) else 1.0
        dev = device_of(t) if device_of else 0
        if one_token(t, n_layer, tied_output):
            once[dev][t.type_name] = once[dev].get(t.type_name, 0) + int(t.n_bytes * share)
        elif t.name != "token_embd.weight":
            params[dev] += t.n_elements * share
    return params, once


def prefill_tok_s(table, target, pl, n_gpus: int, threads_batch: int, threads: int, tensor_device,
                  type_bytes, layer_device) -> float | None:
    """Prompt tokens/s for a PREFILL_BATCH_TOKENS batch: per device, its batch parameters / its measured prefill
    rate for its types, + its layers x its measured per-layer batch cost, + reading the experts the batch routes
    to beyond the active share. None when a device holding weights has no measured prefill rate, or when a GPU
    would stream the host's weights: llama.cpp's scheduler hands a big batch's matmuls over host weights to a
    device whose offload_op accepts them (CUDA: batch >= op_offload_min_batch_size, ggml-cuda.cu), at the
    host-to-device rate, which only a GPU can measure. A ggml-rpc-server has no offload_op (ggml-rpc.cpp): each
    device computes its own layers."""
    where = dict(device_of=lambda t: tensor_device(table, pl, n_gpus, t), n_devices=n_gpus + 1)
    shape = (table.tensors, table.n_layer, table.n_expert, table.n_expert_used, table.tied_output)
    params, once = batch_work(*shape, **where)
    if params[0] and any(d.kind == "gpu" and not d.name.startswith("RPC") for d in target.gpus):
        return None
    layers_on = [0] * (n_gpus + 1)
    for il in range(table.n_layer):
        layers_on[layer_device(il, table.n_layer, pl.ngl, n_gpus, pl.splits)] += 1
    t = 0.0
    for i, dev in enumerate(target.devices):
        if not params[i]:
            continue
        rates = dev.decode_rates
        mix = type_bytes(table, pl, n_gpus, i, active=False)
        pps = rates.prefill_params_per_s(mix, threads_batch) if rates is not None else None
        if not pps:
            return None
        # a batch routes its tokens to (nearly) every expert: all expert weights are read once per batch, not only
        # the active share the compute sees (the dense calibration reads each once)
        idle = {}
        if table.n_expert:
            exp = type_bytes(table, pl, n_gpus, i, active=False, experts_only=True)
            idle = {k: int(v * (1 - table.n_expert_used / table.n_expert)) for k, v in exp.items() if v}
        extra = sum(idle.values()) / rates.mix_bytes_per_s(idle, threads) / PREFILL_BATCH_TOKENS if idle else 0.0
        if once[i]:
            extra += sum(once[i].values()) / rates.mix_bytes_per_s(once[i], threads) / PREFILL_BATCH_TOKENS
        t += params[i] / pps + extra + layers_on[i] * rates.prefill_layer_s(threads_batch) + \
            rates.prefill_token_s(threads_batch)
    return 1.0 / t if t else None
