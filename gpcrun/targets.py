"""Profile document (gpcrun.profile/1) or spec sheets -> plan.Target. Pure: no I/O."""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping, Sequence

from .gpu_specs import GpuSpec, find_spec
from .plan import DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, MIB, DeviceTarget, Target

# An idle card reports a little less free than its marketed size (driver reservations): ~400 MiB here.
SPEC_DRIVER_RESERVE_BYTES = 400 * MIB


def host_from_profile(doc: Mapping[str, Any]) -> DeviceTarget:
    hm = doc.get("host_memory") or {}
    bw = ((doc.get("bandwidth") or {}).get("cpu_memory") or {})
    # numpy copy bandwidth counts read + write; decode mostly streams reads: use it as the read rate
    return DeviceTarget("CPU", "host", hm.get("effective_available_bytes"), bw.get("bytes_per_s"),
                        source="profile: effective_available_bytes, " + (bw.get("method") or "bandwidth unknown"),
                        limit_bytes=hm.get("effective_limit_bytes"))


# NVML names -> spec-table names; most specific first, whole tokens only ("L40" must not match "L4").
_NAME_RULES = [
    (r"\bH200\b", "H200"), (r"\bH100\b.*\b(SXM|HBM3)", "H100 SXM"), (r"\bH100\b", "H100 PCIe"),
    (r"\bA100\b.*\b80\s?GB\b", "A100 80GB"), (r"\bA100\b", "A100 40GB"), (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"), (r"\bL4\b", "L4"), (r"\bT4\b", "T4"), (r"\b5090\b", "RTX 5090"),
    (r"\b4090\b", "RTX 4090"), (r"\b4080\b", "RTX 4080"), (r"\b4070\b(?!\s*Ti)", "RTX 4070"),
    (r"\b4060\s*Ti\b.*16", "RTX 4060 Ti 16GB"), (r"\b3090\b", "RTX 3090"), (r"\b3060\b", "RTX 3060"),
]


def _spec_for_name(name: str) -> GpuSpec | None:
    spec = find_spec(name)
    if spec:
        return spec
    text = name.replace("-", " ").replace("_", " ")
    for pat, key in _NAME_RULES:
        if re.search(pat, text, re.IGNORECASE):
            return find_spec(key)
    return None


def gpus_from_profile(doc: Mapping[str, Any]) -> list[DeviceTarget]:
    out = []
    for d in ((doc.get("gpus") or {}).get("devices") or []):
        vol = d.get("volatile") or {}
        spec = _spec_for_name(d.get("name") or "")
        out.append(DeviceTarget(
            gpu_names(doc)[len(out)], "gpu", vol.get("free_bytes"),
            spec.bandwidth_bytes_per_s if spec else None, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES,
            spec.fp16_tflops * 1e12 if spec else None,
            f"nvml free now; bandwidth {'spec sheet ' + spec.name if spec else 'unknown (no spec for this name)'}",
            layer_fixed_s=spec.layer_fixed_s if spec else None))
    return out


# An integrated GPU (by its name: AMD APUs' "Radeon 890M / 8060S / (TM) Graphics", Intel UHD / Iris / Arc
# Graphics without a model number, Apple M-series, NVIDIA GB10 / Orin) that reports at least this share of the
# host's memory as its own is taken to share host memory (Vulkan/HIP/SYCL report the UMA heap, i.e. system RAM); a
# BIOS carve-out reports less and is a pool of its own. --list-devices does not print llama.cpp's device type.
SHARED_MEMORY_SHARE = 0.9
_INTEGRATED = re.compile(r"Radeon(\(TM\))? (\d{3,4}[MS] )?Graphics|Radeon Vega|\bUHD\b|\bIris\b|"
                         r"Intel\(R\) (Arc\(TM\) )?Graphics|\bApple M\d|\bGB10\b|\bOrin\b", re.I)


def gpus_from_llama(devices, host_total_bytes: int | None = None) -> list[DeviceTarget]:
    """Local GPUs NVML does not know (Vulkan, ROCm/HIP, SYCL, Metal ...) as llama.cpp lists them
    (hardware/llama_devices.py): its name, the free memory its backend reports, the spec sheet's bandwidth when the
    description names a known GPU. RPC devices come from the user's --rpc (planning.with_llama_devices).

    An integrated GPU whose reported memory is the host's (>= SHARED_MEMORY_SHARE of host_total_bytes) shares host
    memory: its
    bytes count against the host too (plan/memory.py). llama.cpp adds integrated GPUs only when no discrete GPU was
    found (llama_model_load, src/llama.cpp:280-285), so such devices are dropped when a separate-memory GPU is listed.
    """
    out = []
    for d in devices:
        if d.backend in ("CPU", "RPC"):
            continue
        spec = _spec_for_name(d.description)
        shared = (bool(host_total_bytes) and d.total_bytes >= SHARED_MEMORY_SHARE * host_total_bytes
                  and _INTEGRATED.search(d.description) is not None)
        out.append(DeviceTarget(
            d.name, "gpu", d.free_bytes, spec.bandwidth_bytes_per_s if spec else None, 0,
            spec.fp16_tflops * 1e12 if spec else None,
            f"llama-server --list-devices: {d.name} {d.description} ({d.total_bytes >> 20} MiB, {d.free_bytes >> 20}"
            f" MiB free)" + ("; shares host memory (integrated GPU)" if shared else "")
            + f"; runtime overhead not known for {d.backend}; bandwidth "
            + (f"spec sheet {spec.name}" if spec else "unknown (no spec for this name)"),
            layer_fixed_s=spec.layer_fixed_s if spec else None, shares_host_memory=shared))
    if any(not g.shares_host_memory for g in out):
        out = [g for g in out if not g.shares_host_memory]
    return out


def gpu_from_spec(spec: GpuSpec, index: int, free_bytes: int | None = None) -> DeviceTarget:
    cap = free_bytes if free_bytes is not None else spec.vram_bytes - SPEC_DRIVER_RESERVE_BYTES
    return DeviceTarget(f"CUDA{index}", "gpu", cap, spec.bandwidth_bytes_per_s, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES,
                        spec.fp16_tflops * 1e12, f"spec sheet: {spec.name} ({spec.source})",
                        layer_fixed_s=spec.layer_fixed_s)


def with_device_rates(g: DeviceTarget, dev_doc: Mapping[str, Any] | None) -> DeviceTarget:
    from .plan.rates import HostRates
    rates = HostRates.from_doc(dev_doc) if dev_doc and not dev_doc.get("error") else None
    if rates is None:
        return g
    return replace(g, decode_rates=rates, source=g.source + "; decode rates: " + rates.source)


def gpu_names(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """llama.cpp's names (CUDA0 ...) of the profiled machine's GPUs, as gpus_from_profile names them."""
    return tuple(f"CUDA{d.get('cuda_index', i)}" for i, d in enumerate((doc.get("gpus") or {}).get("devices") or ()))


def default_threads(doc: Mapping[str, Any]) -> int | None:
    """llama-server's default -t on the profiled machine: its physical cores (common.cpp
    common_cpu_get_num_math), else the usable CPUs when the core count is unknown."""
    plat = doc.get("platform") or {}
    return plat.get("cores_physical") or plat.get("cpus_usable")


def target_from_profile(doc: Mapping[str, Any], vram_mib: Sequence[int] = (),
                        specs: Sequence[GpuSpec] = (), calibration: Mapping[str, Any] | None = None,
                        cpu_threads: int | None = None, cpu_rate_bytes_per_s: float | None = None) -> Target:
    """The measured machine, or hypothetical GPUs: `--gpu NAME` (spec sheet) and/or `--vram MiB` (free VRAM).
    calibration: the llama-bench calibration document (gpcrun/calibrate), the host's measured decode rates.
    A host described instead (`plan --cpu-threads N --cpu-bandwidth GB/s`): its default -t and one decode read
    rate for every weight type, labelled as described."""
    from .plan.rates import HostRates
    host = host_from_profile(doc)
    rates = HostRates.from_doc(calibration) if calibration else None
    if cpu_rate_bytes_per_s:
        rates = HostRates((("F16", 1, float(cpu_rate_bytes_per_s)),), (), (1.0, 1.0),
                          f"described: --cpu-bandwidth {cpu_rate_bytes_per_s / 1e9:g} GB/s (not measured)")
    if rates is not None:
        host = replace(host, decode_rates=rates, source=host.source + "; decode rates: " + rates.source)
    if specs or vram_mib:
        gpus = []
        n = max(len(specs), len(vram_mib))
        for i in range(n):
            spec = specs[i] if i < len(specs) else (specs[-1] if specs else None)
            free = vram_mib[i] * MIB if i < len(vram_mib) else None
            if spec is not None:
                gpus.append(gpu_from_spec(spec, i, free))
            else:
                gpus.append(DeviceTarget(f"CUDA{i}", "gpu", free, None, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES,
                                         None, "--vram (bandwidth unknown: add --gpu NAME for a speed forecast)"))
    else:
        gpus = gpus_from_profile(doc)
    if calibration and not specs and not vram_mib:  # this machine's GPUs as llama-bench measured them
        gpus = [with_device_rates(g, (calibration.get("devices") or {}).get(g.name)) for g in gpus]
    plat = doc.get("platform") or {}
    threads = cpu_threads or default_threads(doc)
    return Target(host, tuple(gpus), doc.get("fingerprint"), threads, tuple(plat.get("isa") or ()))
