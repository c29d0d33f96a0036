"""The decode forecast's model, checked on numbers measured elsewhere (pure): shared/gpu-facts.md's H200 table,
and the measured host rates (plan/rates.py) the calibration writes."""
from __future__ import annotations

import pytest

from gpcrun.gpu_specs import find_spec
from gpcrun.plan import DeviceTarget, Target
from gpcrun.plan.constants import DEFAULT_EFFICIENCY
from gpcrun.plan.layout import LayoutTable
from gpcrun.plan.rates import HostRates
from gpcrun.plan.request import Pinned, Request
from gpcrun.plan.speed import bytes_read_per_token, forecast
from gpcrun.plan.types import Placement
from gpcrun.targets import gpu_from_spec
from tests.synthetic import moe_model

# shared/gpu-facts.md: Qwen3-30B-A3B-shaped qwen3moe (experts Q4_0, the rest Q8_0, vocab 32000), one H200,
# -t 14 -np 1 -c 32768, decode of 128 tokens after a ~1500-token prompt. tok/s (the mean of the runs listed).
ALL_GPU, CPU_MOE = 265.0, 39.7
ROWS = {28: (61.3 + 60.7 + 60.2) / 3, 32: 55.3, 40: 47.4}
DEPTH = 1500 + 64  # the KV fill halfway through the 128 decoded tokens


def _pl(k: int) -> Placement:
    return Placement(ngl=49, n_cpu_moe=k, ctx=32768, type_k="f16", type_v="f16")


def test_gpu_facts_n_cpu_moe_rows_within_10_percent_from_two_rows():
    """Derive that machine's GPU per-layer cost (all-GPU row) and host rate (--cpu-moe row), then forecast the
    --n-cpu-moe 28/32/40 rows with the planner's own forecast: each within +-10 %."""
    m = moe_model(n_vocab=32000)
    table = LayoutTable(m, (), 1)
    spec = find_spec("H200")
    bw = spec.bandwidth_bytes_per_s * DEFAULT_EFFICIENCY["gpu"]
    n_layer = 48
    gpu_all = bytes_read_per_token(table, _pl(0), 1, DEPTH)[1]
    fixed = (1 / ALL_GPU - gpu_all / bw) / n_layer
    assert fixed == pytest.approx(spec.layer_fixed_s, rel=0.01)  # the spec row holds the same derivation
    host_b, gpu_b = bytes_read_per_token(table, _pl(48), 1, DEPTH)
    host_rate = host_b / (1 / CPU_MOE - gpu_b / bw - n_layer * fixed)
    assert 40e9 < host_rate < 55e9  # gpu-facts.md: ~47 GB/s effective with 14 threads
    rates = HostRates((("Q4_0", 14, host_rate),), (), (1.0, 1.0), "derived from gpu-facts.md")
    host = DeviceTarget("CPU", "host", 100 << 30, 21.5e9, decode_rates=rates)
    target = Target(host, (gpu_from_spec(spec, 0),), None, 14)
    req = Request(ctx=32768, decode_at_tokens=DEPTH, pinned=Pinned(threads=14))
    for k, measured in ROWS.items():
        f = forecast(table, target, _pl(k), req)
        assert f.decode_tok_s == pytest.approx(measured, rel=0.10), (k, f.decode_tok_s, measured)
        assert f.calibrated and "measured" in f.method


def test_the_one_thread_copy_fallback_is_labelled_and_far_off_there():
    """Without measured rates the forecast falls back to the one-thread copy x 0.45 and says so: on that host
    (21.5 GB/s copy) it is ~4x too slow at --n-cpu-moe 28 -- why the calibration exists."""
    m = moe_model(n_vocab=32000)
    target = Target(DeviceTarget("CPU", "host", 100 << 30, 21.5e9), (gpu_from_spec(find_spec("H200"), 0),), None, 14)
    f = forecast(LayoutTable(m, (), 1), target, _pl(28), Request(ctx=32768, decode_at_tokens=DEPTH))
    assert not f.calibrated and "one-thread copy" in f.method
    assert f.decode_tok_s < 0.5 * ROWS[28]


RATES = HostRates((("Q4_0", 1, 10e9), ("Q4_0", 2, 16e9), ("Q4_0", 4, 20e9), ("Q8_0", 1, 12e9),
                   ("Q8_0", 2, 18e9), ("F16", 1, 14e9), ("Q4_K", 1, 9e9)), (("Q4_0", 4, 2e12),), (0.95, 1.04), "t")


@pytest.mark.parametrize("ty, threads, want", [
    ("Q4_0", 1, 10e9), ("Q4_0", 2, 16e9), ("Q4_0", 3, 18e9), ("Q4_0", 4, 20e9), ("Q4_0", 64, 20e9),
    ("Q4_0", 0, 10e9),
    ("Q4_1", 1, 10e9),  # 5.0 bits: nearest measured is Q4_0 (4.5)
    ("Q5_K", 1, 9e9),  # 5.5 bits, a K-quant: Q4_K (4.5, same family) before Q4_0 (4.5)
    ("Q6_K", 1, 12e9),  # 6.56 bits: Q8_0 (8.5) is nearer than Q4_K (4.5)
    ("Q8_0", 2, 18e9), ("BF16", 1, 14e9), ("F32", 1, 14e9),
])
def test_host_rate_lookup(ty, threads, want):
    assert RATES.decode_bytes_per_s(ty, threads) == pytest.approx(want)


def test_a_mix_of_types_adds_times_not_rates():
    # 1 GB at 10 GB/s + 1 GB at 12 GB/s = 0.1 + 0.0833 s for 2 GB
    assert RATES.mix_bytes_per_s({"Q4_0": 10**9, "Q8_0": 10**9}, 1) == pytest.approx(2e9 / (0.1 + 1 / 12))
    assert RATES.mix_bytes_per_s({}, 1) is None


def test_rates_from_a_calibration_document():
    doc = {"method": "llama-bench", "measured_at_unix": 1, "decode": [
        {"type": "Q4_0", "threads": 1, "tok_s": 40.0, "samples_tok_s": [39.0, 41.0], "bytes_per_s": 1e10},
        {"type": "Q4_0", "threads": 2, "tok_s": 70.0, "samples_tok_s": [66.5, 72.1], "bytes_per_s": 1.75e10}],
        "prefill": [{"type": "Q4_0", "threads": 2, "tok_s": 100.0, "n_params": 5e8}]}
    r = HostRates.from_doc(doc)
    assert r.decode_bytes_per_s("Q4_0", 2) == 1.75e10 and r.spread == (0.95, 1.03)
    assert r.prefill_params_per_s({"Q4_0": 1}, 2) == 5e10
    assert HostRates.from_doc({"decode": []}) is None


def test_what_if_a_described_host_reproduces_gpu_facts():
    """`gpcrun plan --gpu H200 --vram 12288 --cpu-threads 14 --cpu-bandwidth 47`: that host described by its
    threads and the rate llama.cpp reaches there (gpu-facts.md: ~47 GB/s) forecasts the measured rows."""
    from gpcrun.targets import target_from_profile
    doc = {"platform": {"cores_physical": 2}, "host_memory": {"effective_available_bytes": 100 << 30},
           "bandwidth": {"cpu_memory": {"bytes_per_s": 21.5e9}}}
    t = target_from_profile(doc, [12288], [find_spec("H200")], cpu_threads=14, cpu_rate_bytes_per_s=47e9)
    assert t.threads == 14 and "described" in t.host.decode_rates.source
    m = moe_model(n_vocab=32000)
    req = Request(ctx=32768, decode_at_tokens=DEPTH, pinned=Pinned(threads=14))
    for k, measured in ROWS.items():
        f = forecast(LayoutTable(m, (), 1), t, _pl(k), req)
        assert f.decode_tok_s == pytest.approx(measured, rel=0.10), (k, f.decode_tok_s)


def test_attention_over_the_cache_is_measured_work_not_bytes():
    """decode at depth D less decode at depth 0, per unit (cached token x query head x (K+V dims) x layer)."""
    doc = {"decode": [{"type": "F16", "threads": 1, "tok_s": 50.0, "bytes_per_s": 2e10}],
           "attention": [{"type": "f16", "threads": 1, "depth": 0, "tok_s": 500.0, "units_per_depth_token": 1000},
                         {"type": "f16", "threads": 1, "depth": 1000, "tok_s": 250.0, "units_per_depth_token": 1000},
                         {"type": "q8_0", "threads": 1, "depth": 0, "tok_s": 500.0, "units_per_depth_token": 1000},
                         {"type": "q8_0", "threads": 1, "depth": 1000, "tok_s": 400.0, "units_per_depth_token": 1000}]}
    r = HostRates.from_doc(doc)
    assert r.attention_s_per_unit("f16", 1) == pytest.approx((1 / 250 - 1 / 500) / 1e6)
    assert r.attention_s_per_unit("q4_0", 1) == r.attention_s_per_unit("q8_0", 1)  # quantized: q8_0's
    assert r.attention_s_per_unit("bf16", 4) == r.attention_s_per_unit("f16", 1)
    m = moe_model(n_vocab=32000)
    table = LayoutTable(m, (), 0)
    target = Target(DeviceTarget("CPU", "host", 100 << 30, 21.5e9, decode_rates=r), (), None, 1)
    shallow = forecast(table, target, _pl_cpu(), Request(ctx=32768, decode_at_tokens=16))
    deep = forecast(table, target, _pl_cpu(), Request(ctx=32768, decode_at_tokens=8192))
    # 48 layers x 32 heads x (128 + 128) per cached token, at 2 ns each
    extra = 48 * 32 * 256 * (8192 - 16) * (1 / 250 - 1 / 500) / 1e6
    assert 1 / deep.decode_tok_s - 1 / shallow.decode_tok_s == pytest.approx(extra, rel=0.01)


def _pl_cpu() -> Placement:
    return Placement(ngl=0, n_cpu_moe=0, ctx=32768, type_k="f16", type_v="f16")


def test_a_calibrated_second_device_adds_its_own_time():
    """A device other than the host with llama-bench-measured rates (a GPU, or a ggml-rpc-server standing in for
    one): each device's bytes at its own measured rate + its layers x its own measured per-layer cost; the host
    alone plus the device alone bracket a split, and the split's time is their shares summed."""
    m = moe_model(n_vocab=32000)
    host_r = HostRates((("Q4_0", 2, 10e9), ("Q8_0", 2, 12e9)), (("Q4_0", 2, 1e12), ("Q8_0", 2, 1e12)), (0.9, 1.05),
                       "host", layer_fixed=((2, 20e-6),))
    dev_r = HostRates((("Q4_0", 2, 40e9), ("Q8_0", 2, 50e9)), (("Q4_0", 2, 4e12), ("Q8_0", 2, 4e12)), (0.97, 1.1),
                      "rpc", layer_fixed=((2, 5e-6),))
    target = Target(DeviceTarget("CPU", "host", 100 << 30, 21.5e9, decode_rates=host_r),
                    (DeviceTarget("RPC0", "gpu", 100 << 30, None, decode_rates=dev_r),), None, 2)
    table = LayoutTable(m, (), 1)
    req = Request(ctx=32768, decode_at_tokens=0, pinned=Pinned(threads=2))

    def pl(ngl, k=0):
        return Placement(ngl=ngl, n_cpu_moe=k, ctx=32768, type_k="f16", type_v="f16")
    split = forecast(table, target, pl(24), req)
    reads = bytes_read_per_token(table, pl(24), 1, 0)
    host_s = reads[0] / host_r.mix_bytes_per_s({"Q4_0": 3, "Q8_0": 1}, 2)  # only the type mix is approximated
    assert split.calibrated and "GPU rates measured by llama-bench" in split.method
    assert 1 / split.decode_tok_s == pytest.approx(reads[0] / 11e9 + 24 * 20e-6 + reads[1] / 45e9 + 24 * 5e-6,
                                                   rel=0.15)
    assert host_s > 0
    assert split.decode_band_tok_s == pytest.approx((split.decode_tok_s * 0.75, split.decode_tok_s * 1.25))
    on_dev = forecast(table, target, pl(49), req)
    on_host = forecast(table, target, pl(0), req)
    assert on_host.decode_tok_s < split.decode_tok_s < on_dev.decode_tok_s
    assert on_host.decode_tok_s < forecast(table, target, pl(49, 24), req).decode_tok_s < on_dev.decode_tok_s
    # prefill across the split: each device its own share (an RPC device computes its own layers)
    assert on_host.prefill_tok_s < split.prefill_tok_s < on_dev.prefill_tok_s


def test_no_prefill_forecast_where_a_gpu_would_stream_host_weights():
    """CUDA takes a big batch's matmuls over host weights (offload_op): the host-to-device rate decides, which is
    not measured here, so there is no prefill figure; an RPC device computes its own layers and gets one."""
    m = moe_model(n_vocab=32000)
    r = HostRates((("Q4_0", 2, 10e9), ("Q8_0", 2, 12e9)), (("Q4_0", 2, 1e12), ("Q8_0", 2, 1e12)), (1, 1), "x")
    pl = Placement(ngl=24, n_cpu_moe=0, ctx=32768, type_k="f16", type_v="f16")
    req = Request(ctx=32768, decode_at_tokens=0, pinned=Pinned(threads=2))
    for name, has in (("CUDA0", False), ("RPC0", True)):
        target = Target(DeviceTarget("CPU", "host", 100 << 30, 21.5e9, decode_rates=r),
                        (DeviceTarget(name, "gpu", 100 << 30, 1e12, decode_rates=r),), None, 2)
        assert (forecast(LayoutTable(m, (), 1), target, pl, req).prefill_tok_s is not None) == has, name


@pytest.mark.parametrize("ngl, ncmoe, want", [
    (0, 0, [0, 0]),  # every layer on the CPU
    (49, 0, [0, 0]),  # every layer and the output on the device: the one crossing its calibration measured
    (24, 0, [0, 0]),  # the upper 24 layers: still one crossing
    (48, 0, [0, 0]),  # layer 0 on the CPU: llama.cpp counts the output as one of -ngl's layers
    (49, 10, [0, 20]),  # ten layers' experts on the CPU: there and back for each
    (30, 40, [0, 42]),  # only --n-cpu-moe layers on the device (19..39 of 19..47) cross for their experts
])
def test_extra_crossings(ngl, ncmoe, want):
    from gpcrun.plan.speed import extra_crossings
    table = LayoutTable(moe_model(n_vocab=32000), (), 1)
    pl = Placement(ngl=ngl, n_cpu_moe=ncmoe, ctx=4096, type_k="f16", type_v="f16")
    assert extra_crossings(table, pl, 1) == want


def test_per_token_and_crossing_costs_from_a_calibration_document():
    """One thin layer (1 ms) and 64 of them (7.3 ms): 0.1 ms a layer, 0.9 ms a token beyond its layers; the big
    model's bytes get what is left of its time; crossings: the mixed run's extra time / its crossings."""
    doc = {"models": {"Q8_0": {"n_layer": 10}},
           "decode": [{"type": "Q8_0", "threads": 2, "tok_s": 100.0, "bytes_per_token": 81e6, "bytes_per_s": 81e8}],
           "layer_fixed": [{"threads": 2, "tok_s": 1 / 7.3e-3, "n_layer": 64, "bytes_per_token": 0, "type": "Q8_0"}],
           "token_fixed": [{"threads": 2, "tok_s": 1 / 1e-3, "n_layer": 1}],
           "crossing": [{"threads": 2, "tok_s": 1 / (7.3e-3 + 64 * 2e-3), "crossings": 64}]}
    r = HostRates.from_doc(doc)
    assert r.layer_fixed_s(2) == pytest.approx(1e-4) and r.token_fixed_s(2) == pytest.approx(9e-4)
    # 10 ms a token: 0.9 ms per token + 10 x 0.1 ms of layers leaves 8.1 ms for 81 MB
    assert r.decode_bytes_per_s("Q8_0", 2) == pytest.approx(1e10)
    assert r.crossing_s == pytest.approx(2e-3)
    older = HostRates.from_doc({k: v for k, v in doc.items() if k not in ("token_fixed", "crossing")})
    assert older.token_fixed_s(2) == 0.0 and older.crossing_s is None and older.decode_bytes_per_s("Q8_0", 2) == 81e8
