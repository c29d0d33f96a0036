"""What NVML reports, as frozen documents, and CUDA_VISIBLE_DEVICES parsing: pure, no pynvml (see hardware.nvml).

Static identity (``Gpu``, ``GpuInventory``) is separate from volatile values (``GpuVolatile``: free/used VRAM,
per-process VRAM, power, temperature). Unknown values are None with the NVML calls tried in ``unknown``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None: NVML reports it unavailable (ULLONG_MAX)

    def to_json(self) -> dict:
        return {"pid": self.pid, "used_bytes": self.used_bytes}


@dataclass(frozen=True)
class GpuVolatile:
    """Values that change while a server runs; re-read on every profile and every watchdog poll."""
    free_bytes: int | None
    used_bytes: int | None  # with the v1 call this includes the driver's reserved memory
    power_draw_mw: int | None
    temperature_c: int | None
    processes: tuple[GpuProcess, ...] | None  # None: the process list could not be read
    read_at_unix_s: float
    sources: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    def to_json(self) -> dict:
        return {"free_bytes": self.free_bytes, "used_bytes": self.used_bytes, "power_draw_mw": self.power_draw_mw,
                "temperature_c": self.temperature_c,
                "processes": None if self.processes is None else [p.to_json() for p in self.processes],
                "read_at_unix_s": self.read_at_unix_s, "sources": dict(self.sources), "unknown": dict(self.unknown)}


@dataclass(frozen=True)
class Gpu:
    nvml_index: int  # NVML (PCI bus) order
    cuda_index: int  # position after CUDA_VISIBLE_DEVICES: what llama.cpp's -dev CUDA<n> / --tensor-split mean
    uuid: str | None
    name: str | None
    pci_bus_id: str | None
    total_bytes: int | None
    reserved_bytes: int | None  # driver/firmware reservation (v2 call only)
    unified_memory: bool | None  # True: no dedicated VRAM figures (total 0 or NotSupported), plan with host memory
    compute_capability: str | None  # "8.9"
    pcie_link_gen_current: int | None
    pcie_link_width_current: int | None
    pcie_link_gen_max: int | None
    pcie_link_width_max: int | None
    power_limit_mw: int | None  # the enforced limit, not the default or the max
    volatile: GpuVolatile
    sources: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    _STATIC = ("nvml_index", "cuda_index", "uuid", "name", "pci_bus_id", "total_bytes", "reserved_bytes",
               "unified_memory", "compute_capability", "pcie_link_gen_current", "pcie_link_width_current",
               "pcie_link_gen_max", "pcie_link_width_max", "power_limit_mw")

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self._STATIC}
        d["volatile"] = self.volatile.to_json()
        d["sources"] = dict(self.sources)
        d["unknown"] = dict(self.unknown)
        return d


@dataclass(frozen=True)
class GpuInventory:
    available: bool  # NVML loaded and initialised
    devices: tuple[Gpu, ...]  # visible devices, in CUDA order
    reason: str | None  # why devices is empty (no library, no driver, none visible...)
    driver_version: str | None
    cuda_driver_version: str | None  # the newest CUDA the driver supports, "12.4"
    nvml_device_count: int | None
    cuda_visible_devices: str | None  # the raw variable, None when unset
    notes: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    def to_json(self) -> dict:
        return {"available": self.available, "reason": self.reason, "driver_version": self.driver_version,
                "cuda_driver_version": self.cuda_driver_version, "nvml_device_count": self.nvml_device_count,
                "cuda_visible_devices": self.cuda_visible_devices, "notes": list(self.notes),
                "devices": [g.to_json() for g in self.devices], "sources": dict(self.sources),
                "unknown": dict(self.unknown)}


# ---------------------------------------------------------------- CUDA_VISIBLE_DEVICES

def _strtoul(s: str) -> int:
    # CUDA parses each entry like strtoul: "1gpu2" is 1, no leading digits is invalid
    i = 0
    while i < len(s) and (s[i].isdigit() or (i == 0 and s[i] in "+-")):
        i += 1
    try:
        return int(s[:i])
    except ValueError:
        return -1


def visible_devices(value: str | None, uuids: list[str | None]) -> tuple[list[int], str | None]:
    """NVML indices CUDA would expose under CUDA_VISIBLE_DEVICES=value, in CUDA order, and a note.

    CUDA's rules (as PyTorch's _parse_visible_devices mirrors them): entries are indices or UUID prefixes
    ("GPU-8932f937"); the first invalid entry (out of range, negative, unparsable, ambiguous or unmatched
    prefix) ends the list; a repeated device hides every device; the empty string hides all.
    """
    n = len(uuids)
    if value is None:
        return list(range(n)), None
    entries = [e.strip() for e in value.split(",")]
    out: list[int] = []
    stop = None
    if entries[0].startswith("MIG-"):
        return [], (f"CUDA_VISIBLE_DEVICES={value!r} selects MIG instances, which gpcrun does not enumerate;"
                    " no GPU reported")
    if entries[0].startswith("GPU-"):
        for e in entries:
            matches = [i for i, u in enumerate(uuids) if e.startswith("GPU-") and u and u.startswith(e)]
            if len(matches) != 1:
                stop = f"entry {e!r} {'is ambiguous' if matches else 'matches no GPU UUID'}"
                break
            if matches[0] in out:
                return [], f"CUDA_VISIBLE_DEVICES={value!r} repeats a device: CUDA then exposes no device"
            out.append(matches[0])
    else:
        for e in entries:
            i = _strtoul(e)
            if i < 0 or i >= n:
                stop = f"entry {e!r} is not a device index (0..{n - 1})" if n else f"entry {e!r}: no devices"
                break
            if i in out:
                return [], f"CUDA_VISIBLE_DEVICES={value!r} repeats a device: CUDA then exposes no device"
            out.append(i)
    note = None
    if stop:
        note = f"CUDA_VISIBLE_DEVICES={value!r}: {stop}; CUDA stops there, {len(out)} device(s) visible"
    return out, note
