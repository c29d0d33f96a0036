"""PCIe host<->device bandwidth with pinned buffers, through libcudart by ctypes (the only module touching cudart).

Per CUDA device: cudaMallocHost + cudaMalloc of buffer_bytes, one warm-up copy, then timed synchronous
cudaMemcpy runs each way (wall clock around memcpy + cudaDeviceSynchronize), median reported. Anything
missing (no GPU, no libcudart, a driver too old for the runtime) skips with the reason; nothing raises.
"""
from __future__ import annotations

import ctypes
import glob
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

METHOD = "measured:cudart-memcpy-pinned"
_H2D, _D2H = 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
_SONAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


@dataclass(frozen=True)
class PcieBandwidth:
    cuda_index: int
    pci_bus_id: str | None  # "0000:01:00.0" (cudaDeviceGetPCIBusId), to match NVML's device
    h2d_bytes_per_s: int | None
    d2h_bytes_per_s: int | None
    buffer_bytes: int
    samples: int
    h2d_sample_s: tuple[float, ...]
    d2h_sample_s: tuple[float, ...]
    method: str
    measured_at: str
    error: str | None = None

    def to_json(self) -> dict:
        return {"cuda_index": self.cuda_index, "pci_bus_id": self.pci_bus_id,
                "h2d_bytes_per_s": self.h2d_bytes_per_s, "d2h_bytes_per_s": self.d2h_bytes_per_s,
                "buffer_bytes": self.buffer_bytes, "samples": self.samples, "h2d_sample_s": list(self.h2d_sample_s),
                "d2h_sample_s": list(self.d2h_sample_s), "method": self.method, "measured_at": self.measured_at,
                "error": self.error}

    @classmethod
    def from_json(cls, d: dict) -> "PcieBandwidth":
        return cls(d["cuda_index"], d.get("pci_bus_id"), d.get("h2d_bytes_per_s"), d.get("d2h_bytes_per_s"),
                   d["buffer_bytes"], d["samples"], tuple(d.get("h2d_sample_s") or ()),
                   tuple(d.get("d2h_sample_s") or ()), d["method"], d["measured_at"], d.get("error"))


@dataclass(frozen=True)
class PcieResult:
    devices: tuple[PcieBandwidth, ...]
    skipped_reason: str | None
    library: str | None

    def to_json(self) -> dict:
        return {"devices": [d.to_json() for d in self.devices], "skipped_reason": self.skipped_reason,
                "library": self.library}

    @classmethod
    def from_json(cls, d: dict) -> "PcieResult":
        return cls(tuple(PcieBandwidth.from_json(x) for x in d.get("devices") or ()), d.get("skipped_reason"),
                   d.get("library"))


def normalize_bus_id(bus: str | None) -> str | None:
    """NVML says "00000000:01:00.0", CUDA "0000:01:00.0": compare as domain:bus:device.function integers."""
    if not bus:
        return None
    try:
        dom, b, rest = bus.strip().lower().split(":")
        dev, fn = rest.split(".")
        return f"{int(dom, 16):04x}:{int(b, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"
    except ValueError:
        return bus.strip().lower()


def find_cudart() -> tuple[Any, str | None, str]:
    """(library, its name, what was tried)."""
    tried = []
    names = list(_SONAMES)
    try:
        import importlib.util
        spec = importlib.util.find_spec("nvidia.cuda_runtime")  # the pip wheel nvidia-cuda-runtime-cu12
        for loc in (spec.submodule_search_locations or []) if spec else []:
            names += sorted(glob.glob(os.path.join(loc, "lib", "libcudart.so*")))
    except (ImportError, ValueError):
        pass
    for n in names:
        try:
            return ctypes.CDLL(n), n, ""
        except OSError:
            tried.append(n)
    return None, None, ", ".join(tried)


def _errstr(lib: Any, code: int) -> str:
    try:
        f = lib.cudaGetErrorString
        f.restype = ctypes.c_char_p
        s = f(code)
        return f"{s.decode() if isinstance(s, bytes) else s} (cudaError {code})"
    except (AttributeError, TypeError, OSError):
        return f"cudaError {code}"


def _median_rate(size: int, samples: list[float]) -> int | None:
    return int(size / statistics.median(samples)) if samples else None


def _measure_device(lib: Any, dev: int, size: int, runs: int) -> PcieBandwidth:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    h2d: list[float] = []
    d2h: list[float] = []
    bus = None
    hptr, dptr = ctypes.c_void_p(), ctypes.c_void_p()
    error = None

    def check(what: str, rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: {_errstr(lib, rc)}")

    try:
        check("cudaSetDevice", lib.cudaSetDevice(ctypes.c_int(dev)))
        buf = ctypes.create_string_buffer(32)
        if lib.cudaDeviceGetPCIBusId(buf, ctypes.c_int(32), ctypes.c_int(dev)) == 0:
            bus = buf.value.decode() or None
        check("cudaMallocHost", lib.cudaMallocHost(ctypes.byref(hptr), ctypes.c_size_t(size)))
        check("cudaMalloc", lib.cudaMalloc(ctypes.byref(dptr), ctypes.c_size_t(size)))
        for kind, out in ((_H2D, h2d), (_D2H, d2h)):
            dst, src = (dptr, hptr) if kind == _H2D else (hptr, dptr)
            for i in range(runs + 1):
                t0 = time.perf_counter()
                check("cudaMemcpy", lib.cudaMemcpy(dst, src, ctypes.c_size_t(size), ctypes.c_int(kind)))
                check("cudaDeviceSynchronize", lib.cudaDeviceSynchronize())
                if i:  # the first copy of each direction is a warm-up
                    out.append(time.perf_counter() - t0)
    except RuntimeError as e:
        error = str(e)
    finally:
        if dptr.value:
            lib.cudaFree(dptr)
        if hptr.value:
            lib.cudaFreeHost(hptr)
        # drop the primary context: a long-lived gpcrun must not keep ~300 MiB of VRAM per GPU after measuring
        reset = getattr(lib, "cudaDeviceReset", None)
        if reset is not None:
            reset()
    return PcieBandwidth(dev, bus, _median_rate(size, h2d), _median_rate(size, d2h), size, min(len(h2d), len(d2h)),
                         tuple(round(s, 6) for s in h2d), tuple(round(s, 6) for s in d2h), METHOD, now, error)


def measure_pcie(gpu_count: int, buffer_bytes: int = 64 << 20, runs: int = 5, lib: Any = None) -> PcieResult:
    """Measure every CUDA device (CUDA_VISIBLE_DEVICES applies: cudart reads it itself). ``lib``: a fake in tests."""
    if gpu_count <= 0:
        return PcieResult((), "no GPU visible (NVML lists none)", None)
    name = "injected"
    if lib is None:
        lib, name, tried = find_cudart()
        if lib is None:
            return PcieResult((), f"libcudart not found (tried {tried}); install the CUDA runtime to measure"
                                  " PCIe bandwidth", None)
    n = ctypes.c_int(0)
    try:
        rc = lib.cudaGetDeviceCount(ctypes.byref(n))
    except (AttributeError, OSError) as e:
        return PcieResult((), f"cudaGetDeviceCount unusable: {e}", name)
    if rc != 0:
        return PcieResult((), f"cudaGetDeviceCount: {_errstr(lib, rc)}", name)
    if n.value <= 0:
        return PcieResult((), "cudart sees no CUDA device", name)
    return PcieResult(tuple(_measure_device(lib, d, buffer_bytes, runs) for d in range(n.value)), None, name)
