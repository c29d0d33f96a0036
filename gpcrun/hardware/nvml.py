"""GPU inventory and cheap volatile samples through NVML (nvidia-ml-py). The only module importing pynvml.

The backend is injected (default: the real ``pynvml`` module) so tests pass tests/fake_nvml.py. Nothing here
raises for a missing driver, library, function or GPU: the inventory is empty and says why, and each
unreadable value is None with the NVML calls tried and their errors in ``unknown``.

Static identity (``read_gpus`` / ``NvmlSession.inventory``) is separate from volatile values
(``read_volatile`` / ``NvmlSession.sample``: free/used VRAM, per-process VRAM, power, temperature) so the
watchdog can poll the latter on open handles without re-initialising NVML. The documents and the
CUDA_VISIBLE_DEVICES rules live in hardware.gpu (no pynvml) and are importable from here.
"""
from __future__ import annotations

import os
import time
from types import MappingProxyType
from typing import Any, Mapping

from .gpu import EMPTY as _EMPTY, Gpu, GpuInventory, GpuProcess, GpuVolatile, visible_devices  # noqa: F401

ULLONG_MAX = (1 << 64) - 1  # NVML's "not available" for per-process memory (WDDM, some containers)
_NOT_SUPPORTED = 3
_LIBRARY_NOT_FOUND = 12
_DRIVER_NOT_LOADED = 9


def _freeze(d: dict) -> Mapping[str, str]:
    return MappingProxyType(dict(d)) if d else _EMPTY


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


# ---------------------------------------------------------------- NVML calls

# The device nodes the NVIDIA driver creates (WSL2: /dev/dxg); without one, libnvidia-ml has nothing to open, so
# the ~10 ms import of pynvml (a ctypes binding of ~300 structures) is skipped at every start of a GPU-less host.
DRIVER_NODES = ("/dev/nvidiactl", "/dev/dxg")


def driver_node(nodes: tuple[str, ...] | None = None) -> str | None:
    """The first NVIDIA driver device node present (DRIVER_NODES by default), None when there is none."""
    return next((p for p in (DRIVER_NODES if nodes is None else nodes) if os.path.exists(p)), None)


def _load(backend: Any) -> tuple[Any, str | None]:
    if backend is not None:
        return backend, None
    if driver_node() is None:
        return None, f"no NVIDIA driver on this host (none of {', '.join(DRIVER_NODES)} exists): NVML not opened"
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as e:
        return None, f"nvidia-ml-py (module pynvml) is not installed: {e}"
    return pynvml, None


def _err(e: BaseException) -> str:
    code = getattr(e, "value", None)
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001 - pynvml's __str__ calls into the library, which may be gone
        msg = type(e).__name__
    return f"{msg} (NVML error {code})" if isinstance(code, int) else msg


def _nvml_error(b: Any) -> type[BaseException]:
    return getattr(b, "NVMLError", Exception)


class _Calls:
    """Tries NVML functions in order, keeping the first that answers and the errors of those that did not."""

    def __init__(self, b: Any) -> None:
        self.b = b
        self.sources: dict[str, str] = {}
        self.unknown: dict[str, str] = {}
        self.not_supported: set[str] = set()
        self.fallback: dict[str, str] = {}  # key -> errors of the calls tried before the one that answered

    def first(self, key: str | None, attempts: list[tuple[str, str, tuple, dict]]) -> Any:
        errs = []
        for label, name, args, kwargs in attempts:
            try:
                fn = getattr(self.b, name)
            except AttributeError:
                errs.append(f"{label}: not in this nvidia-ml-py")
                continue
            try:
                v = fn(*args, **kwargs)
            except TypeError as e:  # an older nvidia-ml-py without the keyword
                errs.append(f"{label}: {e}")
                continue
            except _nvml_error(self.b) as e:
                if getattr(e, "value", None) == _NOT_SUPPORTED and key:
                    self.not_supported.add(key)
                errs.append(f"{label}: {_err(e)}")
                continue
            if key:
                self.sources[key] = f"nvml:{label}"
                if errs:
                    self.fallback[key] = "; ".join(errs)
            return v
        if key:
            self.unknown[key] = "; ".join(errs)
        return None

    def one(self, key: str, name: str, *args: Any) -> Any:
        return self.first(key, [(name, name, args, {})])


def _memory_attempts(b: Any, handle: Any) -> list[tuple[str, str, tuple, dict]]:
    out = []
    v2 = getattr(b, "nvmlMemory_v2", None)
    if v2 is not None:
        out.append(("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo", (handle,), {"version": v2}))
    out.append(("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo", (handle,), {}))
    return out


def _memory(c: _Calls, handle: Any) -> tuple[Any, bool]:
    """(memory struct or None, whether it came from the v2 call)."""
    mem = c.first("memory", _memory_attempts(c.b, handle))
    return mem, c.sources.get("memory", "").endswith("_v2")


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


def read_volatile(backend: Any, handle: Any, unified_memory: bool | None = False) -> GpuVolatile:
    """One cheap sample of a device's changing values. NVML must be initialised (see NvmlSession)."""
    c = _Calls(backend)
    mem, is_v2 = _memory(c, handle)
    src_mem = c.sources.pop("memory", None)
    why_mem = c.unknown.pop("memory", None)
    free = used = None
    if mem is not None and not unified_memory and int(mem.total) > 0:
        free, used = int(mem.free), int(mem.used)
        c.sources["free_bytes"] = c.sources["used_bytes"] = src_mem
        if not is_v2:
            c.sources["used_bytes"] = f"{src_mem} (v1: includes reserved memory)"
    else:
        why = "unified memory: no dedicated VRAM, plan with host memory" if (unified_memory or mem is not None) \
            else why_mem
        c.unknown["free_bytes"] = c.unknown["used_bytes"] = why
    sensor = getattr(backend, "NVML_TEMPERATURE_GPU", 0)
    temp = c.first("temperature_c", [("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperatureV", (handle, sensor), {}),
                                     ("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperature", (handle, sensor), {})])
    power = c.one("power_draw_mw", "nvmlDeviceGetPowerUsage", handle)
    raw = c.first("processes", [(n, n, (handle,), {}) for n in (
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses")])
    procs = None
    if raw is not None:
        procs = tuple(GpuProcess(int(p.pid), None if p.usedGpuMemory is None or int(p.usedGpuMemory) >= ULLONG_MAX
                                 else int(p.usedGpuMemory)) for p in raw)
    return GpuVolatile(free, used, _int(power), _int(temp), procs, time.time(), _freeze(c.sources),
                       _freeze(c.unknown))


def _read_device(b: Any, nvml_index: int, cuda_index: int, handle: Any) -> Gpu:
    c = _Calls(b)
    uuid = c.one("uuid", "nvmlDeviceGetUUID", handle)
    name = c.one("name", "nvmlDeviceGetName", handle)
    pci = c.first("pci_bus_id", [(n, n, (handle,), {}) for n in ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo")])
    bus = None
    if pci is not None:
        bus = _text(getattr(pci, "busId", None) or getattr(pci, "busIdLegacy", ""))
        if not bus:
            c.sources.pop("pci_bus_id", None)
            c.unknown["pci_bus_id"] = "PCI info has no busId"
            bus = None
    mem, is_v2 = _memory(c, handle)
    total = reserved = None
    unified: bool | None = None
    src = c.sources.pop("memory", None)
    why = c.unknown.pop("memory", None)
    if mem is not None:
        total = int(mem.total)
        unified = total == 0
        c.sources["unified_memory"] = f"{src}: total {'is 0' if unified else '> 0'}"
        if unified:
            total = None
            c.unknown["total_bytes"] = f"{src} reports total 0 (unified memory)"
        else:
            c.sources["total_bytes"] = src
        if is_v2 and not unified:
            reserved = int(mem.reserved)
            c.sources["reserved_bytes"] = src
        elif not unified:
            c.unknown["reserved_bytes"] = (f"{c.fallback.get('memory', 'v2 call unavailable')}; the v1 call"
                                           " counts reserved memory as used")
    else:
        c.unknown["total_bytes"] = c.unknown["reserved_bytes"] = why
        if "memory" in c.not_supported:
            unified = True
            c.sources["unified_memory"] = "nvml: memory info NotSupported (integrated/unified-memory device)"
        else:
            c.unknown["unified_memory"] = why
    if unified:
        c.unknown["reserved_bytes"] = "unified memory"
    cc = c.one("compute_capability", "nvmlDeviceGetCudaComputeCapability", handle)
    gets = {key: _int(c.one(key, fn, handle)) for key, fn in (
        ("pcie_link_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration"),
        ("pcie_link_width_current", "nvmlDeviceGetCurrPcieLinkWidth"),
        ("pcie_link_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration"),
        ("pcie_link_width_max", "nvmlDeviceGetMaxPcieLinkWidth"),
        ("power_limit_mw", "nvmlDeviceGetEnforcedPowerLimit"))}
    vol = read_volatile(b, handle, unified)
    return Gpu(nvml_index=nvml_index, cuda_index=cuda_index, uuid=None if uuid is None else _text(uuid),
               name=None if name is None else _text(name), pci_bus_id=bus, total_bytes=total, reserved_bytes=reserved,
               unified_memory=unified, compute_capability=None if cc is None else f"{int(cc[0])}.{int(cc[1])}",
               volatile=vol, sources=_freeze(c.sources), unknown=_freeze(c.unknown), **gets)


# ---------------------------------------------------------------- session

class NvmlSession:
    """NVML initialised once, handles of the CUDA-visible devices kept: inventory() once, sample() per poll.

    Never raises for a missing library/driver/GPU: ``reason`` says why there are no devices.
    """

    def __init__(self, backend: Any = None, env: Mapping[str, str] | None = None) -> None:
        self.backend, self.reason = _load(backend)
        self.env = os.environ if env is None else env
        self.handles: list[tuple[int, int, Any]] = []  # (nvml_index, cuda_index, handle)
        self.device_count: int | None = None
        self.notes: list[str] = []
        self.is_open = False
        self._uuids: list[str | None] = []

    def __enter__(self) -> "NvmlSession":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> bool:
        b = self.backend
        if b is None:
            return False
        try:
            b.nvmlInit()
        except _nvml_error(b) as e:
            code = getattr(e, "value", None)
            hint = {_LIBRARY_NOT_FOUND: "no NVIDIA driver library (libnvidia-ml.so.1)",
                    _DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded"}.get(code, "NVML init failed")
            self.reason = f"{hint}: nvmlInit: {_err(e)}"
            return False
        except OSError as e:  # a broken libnvidia-ml.so can fail inside ctypes
            self.reason = f"NVML init failed: {e}"
            return False
        self.is_open = True
        try:
            self.device_count = int(b.nvmlDeviceGetCount())
        except _nvml_error(b) as e:
            self.reason = f"nvmlDeviceGetCount: {_err(e)}"
            return True
        all_handles: list[Any] = []
        for i in range(self.device_count):
            try:
                h = b.nvmlDeviceGetHandleByIndex(i)
            except _nvml_error(b) as e:
                self.notes.append(f"GPU {i}: nvmlDeviceGetHandleByIndex: {_err(e)} (skipped)")
                h = None
            all_handles.append(h)
            u = None
            if h is not None:
                try:
                    u = _text(b.nvmlDeviceGetUUID(h))
                except _nvml_error(b):
                    u = None
            self._uuids.append(u)
        cvd = self.env.get("CUDA_VISIBLE_DEVICES")
        order, note = visible_devices(cvd, self._uuids)
        if note:
            self.notes.append(note)
        ints = cvd is not None and not cvd.strip().startswith(("GPU-", "MIG-"))
        if ints and self.env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len(order) > 1:
            self.notes.append("CUDA_VISIBLE_DEVICES indices were read in NVML (PCI bus) order; CUDA uses that order"
                              " only with CUDA_DEVICE_ORDER=PCI_BUS_ID (default FASTEST_FIRST may differ)")
        for cuda_i, nvml_i in enumerate(order):
            if all_handles[nvml_i] is not None:
                self.handles.append((nvml_i, cuda_i, all_handles[nvml_i]))
        if not self.handles:
            if self.device_count == 0:
                self.reason = "NVML reports no GPU"
            elif not order:
                self.reason = note or f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU"
            else:
                self.reason = "no GPU handle could be opened"
        return True

    def close(self) -> None:
        if self.is_open:
            try:
                self.backend.nvmlShutdown()
            except _nvml_error(self.backend):
                pass
            self.is_open = False

    def inventory(self) -> GpuInventory:
        b = self.backend
        sources: dict[str, str] = {}
        unknown: dict[str, str] = {}
        cvd = self.env.get("CUDA_VISIBLE_DEVICES")
        if not self.is_open:
            why = self.reason or "NVML not initialised"
            return GpuInventory(False, (), why, None, None, None, cvd, tuple(self.notes),
                                unknown=_freeze({"driver_version": why, "cuda_driver_version": why}))
        c = _Calls(b)
        drv = c.one("driver_version", "nvmlSystemGetDriverVersion")
        cuda = c.first("cuda_driver_version", [(n, n, (), {}) for n in (
            "nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion")])
        sources.update(c.sources)
        unknown.update(c.unknown)
        devices = tuple(_read_device(b, ni, ci, h) for ni, ci, h in self.handles)
        return GpuInventory(True, devices, self.reason if not devices else None,
                            None if drv is None else _text(drv),
                            None if cuda is None else f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}",
                            self.device_count, cvd, tuple(self.notes), _freeze(sources), _freeze(unknown))

    def sample(self, unified: Mapping[int, bool] | None = None) -> tuple[GpuVolatile, ...]:
        """Volatile values of each visible device, in CUDA order (empty when NVML is not open)."""
        if not self.is_open:
            return ()
        unified = unified or {}
        return tuple(read_volatile(self.backend, h, unified.get(ni, False)) for ni, _ci, h in self.handles)


def read_gpus(backend: Any = None, env: Mapping[str, str] | None = None) -> GpuInventory:
    """Open NVML, read every CUDA-visible GPU (static identity plus one volatile sample), close."""
    with NvmlSession(backend, env) as s:
        return s.inventory()
