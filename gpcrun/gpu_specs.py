"""Spec-sheet figures for planning on hardware you don't have (`gpcrun plan --gpu NAME`).

Only used when asked for: real plans use the measured profile. Memory in bytes as sold (GB = 10^9 for
bandwidth, GiB-class capacities as marketed: a "24 GB" card has 24 GiB of GDDR, of which the driver
reports slightly less). Sources: NVIDIA product pages and datasheets (cited per entry).
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30


@dataclass(frozen=True)
class GpuSpec:
    name: str
    vram_bytes: int
    bandwidth_bytes_per_s: float
    fp16_tflops: float  # dense tensor-core FP16 with FP32 accumulate, no sparsity
    source: str
    # decode cost per layer beyond its bytes at batch 1 (kernel launches, syncs), measured where known; None:
    # the planner's default (plan/constants.py GPU_LAYER_OVERHEAD_S)
    layer_fixed_s: float | None = None


_SPECS = [
    GpuSpec("RTX 3060", 12 * GIB, 360e9, 51.0, "nvidia.com GeForce RTX 3060 specs; GA106 whitepaper"),
    GpuSpec("RTX 3090", 24 * GIB, 936e9, 71.0, "nvidia.com GeForce RTX 3090 specs; Ampere GA102 whitepaper"),
    GpuSpec("RTX 4060 Ti 16GB", 16 * GIB, 288e9, 88.0, "nvidia.com GeForce RTX 4060 Ti specs; Ada whitepaper"),
    GpuSpec("RTX 4070", 12 * GIB, 504e9, 117.0, "nvidia.com GeForce RTX 4070 specs; Ada whitepaper"),
    GpuSpec("RTX 4080", 16 * GIB, 717e9, 195.0, "nvidia.com GeForce RTX 4080 specs; Ada whitepaper"),
    GpuSpec("RTX 4090", 24 * GIB, 1008e9, 330.0, "nvidia.com GeForce RTX 4090 specs; Ada whitepaper"),
    GpuSpec("RTX 5090", 32 * GIB, 1792e9, 419.0, "nvidia.com GeForce RTX 5090 specs; Blackwell whitepaper"),
    GpuSpec("T4", 16 * GIB, 320e9, 65.0, "NVIDIA T4 datasheet"),
    GpuSpec("L4", 24 * GIB, 300e9, 121.0, "NVIDIA L4 datasheet"),
    GpuSpec("L40", 48 * GIB, 864e9, 181.0, "NVIDIA L40 datasheet"),
    GpuSpec("L40S", 48 * GIB, 864e9, 362.0, "NVIDIA L40S datasheet"),
    GpuSpec("A100 40GB", 40 * GIB, 1555e9, 312.0, "NVIDIA A100 datasheet (SXM4 40GB)"),
    GpuSpec("A100 80GB", 80 * GIB, 2039e9, 312.0, "NVIDIA A100 datasheet (SXM4 80GB)"),
    GpuSpec("H100 PCIe", 80 * GIB, 2000e9, 756.0, "NVIDIA H100 datasheet (PCIe 80GB)"),
    GpuSpec("H100 SXM", 80 * GIB, 3350e9, 989.0, "NVIDIA H100 datasheet (SXM5 80GB)"),
    # layer_fixed_s from shared/gpu-facts.md: all 48 layers of a Qwen3-30B-A3B-shaped Q4_0/Q8_0 MoE on the GPU
    # decode 265.0 tok/s = 3.774 ms/token, of which 2.256 GB at 4.8 TB/s x 0.6 = 0.783 ms: (3.774 - 0.783) / 48
    # (tests/test_forecast.py derives it again from the table)
    GpuSpec("H200", 141 * GIB, 4800e9, 989.0, "NVIDIA H200 datasheet (SXM 141GB)", 62.3e-6),
]
GPU_SPECS: dict[str, GpuSpec] = {s.name.lower(): s for s in _SPECS}


def find_spec(name: str) -> GpuSpec | None:
    """Case-insensitive; accepts names without spaces or an 'NVIDIA'/'GeForce' prefix."""
    key = name.lower().replace("nvidia", "").replace("geforce", "").strip()
    norm = key.replace(" ", "").replace("-", "")
    for k, spec in GPU_SPECS.items():
        if k == key or k.replace(" ", "").replace("-", "") == norm:
            return spec
    return None
