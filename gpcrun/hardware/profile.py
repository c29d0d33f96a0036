"""The machine as it is now: GPUs, host memory and cgroup, platform, measured bandwidths. Schema gpcrun.profile/1.

get_profile() re-reads every inventory and volatile value on each call; measured bandwidths (CPU copy, PCIe,
disks) come from the cache file $GPCRUN_HOME/profile.json until refresh=True or the hardware fingerprint
changes. The cache is the last profile document plus "cached_at", replaced atomically.

JSON document (``Profile.to_json()``, ``gpcrun profile --json``); all sizes are integer bytes, unknown is
null, and every object with values carries "sources" (field -> how it was got, e.g.
"nvml:nvmlDeviceGetMemoryInfo_v2", "cgroup2:memory.max@/user.slice", "psutil:virtual_memory") and "unknown"
(field -> why it is null):

  schema        "gpcrun.profile/1"
  read_at       ISO-8601 UTC time the inventory and volatile values were read
  fingerprint   "sha256:<16 hex>" of the static identity (see fingerprint())
  gpus          available, reason (why no devices), driver_version, cuda_driver_version, nvml_device_count,
                cuda_visible_devices (raw), notes[], devices[]: nvml_index, cuda_index, uuid, name, pci_bus_id,
                total_bytes, reserved_bytes, unified_memory, compute_capability ("8.9"),
                pcie_link_{gen,width}_{current,max}, power_limit_mw (enforced),
                volatile {free_bytes, used_bytes, power_draw_mw, temperature_c, processes[{pid, used_bytes}],
                read_at_unix_s}
  host_memory   total_bytes, available_bytes, swap_total_bytes, swap_free_bytes, effective_available_bytes
                (min of host available and cgroup max - current), effective_limit_bytes (min of host total
                and cgroup max), cgroup {version, path, limit_cgroup, max_bytes, current_bytes, headroom_bytes,
                swap_max_bytes, oom_kill_count, pressure {some/full avg10/avg60 pct, total_us, source}} or null
  platform      os, arch, kernel_release, kernel_version, distro, container, container_evidence[], wsl,
                uvm_oversubscription_supported, cpu_model, cores_physical, cores_logical, cpus_usable,
                cpu_quota_cores, isa[], hypervisor, amx_permitted, warnings[]
  bandwidth     cpu_memory {bytes_per_s (read+write), best_bytes_per_s, method, buffer_bytes, samples,
                sample_s[], measured_at, note} or null with cpu_memory_reason;
                pcie {devices[{cuda_index, pci_bus_id, uuid, h2d_bytes_per_s, d2h_bytes_per_s, buffer_bytes,
                samples, ..., method, measured_at, error}], skipped_reason, library};
                disks[{path, fstype, mount_point, device, skipped_reason, seq_read_bytes_per_s, seq_read_iops,
                rand4k_read_bytes_per_s, rand4k_read_iops, rand4k_read_lat_mean_us, method, params, fio_version,
                measured_at}]; reused_from_cache
  cache         path, reused (bandwidths taken from it), written, reason (why not written/reused)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..atomic import write_text_atomic
from ..paths import gpcrun_home
from .cudart import PcieResult, measure_pcie, normalize_bus_id
from .fio import DiskBandwidth, measure_disk
from .host import HostMemory, Platform, read_host_memory, read_platform
from .membw import CopyBandwidth, measure_cpu_copy
from .nvml import GpuInventory, read_gpus

SCHEMA = "gpcrun.profile/1"
CACHE_FILE = "profile.json"


@dataclass(frozen=True)
class Bandwidth:
    cpu_memory: CopyBandwidth | None
    cpu_memory_reason: str | None
    pcie: PcieResult
    disks: tuple[DiskBandwidth, ...]
    reused_from_cache: bool

    def to_json(self, gpus: GpuInventory | None = None) -> dict:
        by_bus = {normalize_bus_id(g.pci_bus_id): g.uuid for g in gpus.devices} if gpus else {}
        pcie = self.pcie.to_json()
        for d in pcie["devices"]:
            d["uuid"] = by_bus.get(normalize_bus_id(d["pci_bus_id"]))
        return {"cpu_memory": self.cpu_memory.to_json() if self.cpu_memory else None,
                "cpu_memory_reason": self.cpu_memory_reason, "pcie": pcie,
                "disks": [d.to_json() for d in self.disks], "reused_from_cache": self.reused_from_cache}


@dataclass(frozen=True)
class CacheInfo:
    path: str
    reused: bool
    written: bool
    reason: str | None

    def to_json(self) -> dict:
        return {"path": self.path, "reused": self.reused, "written": self.written, "reason": self.reason}


@dataclass(frozen=True)
class Profile:
    schema: str
    read_at: str
    fingerprint: str
    gpus: GpuInventory
    host_memory: HostMemory
    platform: Platform
    bandwidth: Bandwidth
    cache: CacheInfo

    def to_json(self) -> dict:
        return {"schema": self.schema, "read_at": self.read_at, "fingerprint": self.fingerprint,
                "gpus": self.gpus.to_json(), "host_memory": self.host_memory.to_json(),
                "platform": self.platform.to_json(), "bandwidth": self.bandwidth.to_json(self.gpus),
                "cache": self.cache.to_json()}


def identity(gpus: GpuInventory, host_memory: HostMemory, platform: Platform) -> dict:
    """What the fingerprint hashes: the static hardware identity, nothing volatile."""
    return {"gpus": [{"uuid": g.uuid, "name": g.name, "total_bytes": g.total_bytes} for g in gpus.devices],
            "cpu_model": platform.cpu_model, "cores_physical": platform.cores_physical,
            "cores_logical": platform.cores_logical, "host_total_bytes": host_memory.total_bytes,
            "effective_limit_bytes": host_memory.effective_limit_bytes}


def _hash(ident: dict) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(profile: Profile | None = None, *, nvml_backend: Any = None, root: str = "/",
                env: Mapping[str, str] | None = None) -> str:
    """Stable hash of GPU names/UUIDs/total memory, CPU model, cores, host total memory and the effective memory
    limit. Without a profile it reads those (cheap: no benchmark runs)."""
    if profile is not None:
        return profile.fingerprint
    return _hash(identity(read_gpus(nvml_backend, env), read_host_memory(root), read_platform(root, env)))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_cache(path: Path, fp: str) -> tuple[dict | None, str | None]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError) as e:
        return None, f"cache unreadable ({e}); measured again"
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return None, "cache has another schema; measured again"
    if doc.get("fingerprint") != fp:
        return None, f"hardware fingerprint changed ({doc.get('fingerprint')} -> {fp}); measured again"
    return doc, None


def get_profile(refresh: bool = False, disk: str | None = None, nvml_backend: Any = None, root: str = "/",
                env: Mapping[str, str] | None = None, home: str | os.PathLike | None = None, measure: bool = True,
                cpu_buffer_bytes: int = 256 << 20, pcie_lib: Any = None, disk_size_bytes: int = 128 << 20,
                disk_runtime_s: float = 2.0, write_cache: bool = True) -> Profile:
    """Read everything now; measure bandwidths unless cached (same fingerprint) and not ``refresh``.

    ``measure=False`` never runs a benchmark (cached values are still used). ``disk``: also measure the
    filesystem holding that path with fio (kept in the cache per path alongside earlier ones).
    """
    env = os.environ if env is None else env
    read_at = _now()
    gpus = read_gpus(nvml_backend, env)
    mem = read_host_memory(root)
    plat = read_platform(root, env)
    fp = _hash(identity(gpus, mem, plat))
    cache_path = Path(home) / CACHE_FILE if home is not None else gpcrun_home() / CACHE_FILE
    cached, cache_reason = (None, "refresh requested") if refresh else _load_cache(cache_path, fp)
    cbw = (cached or {}).get("bandwidth") or {}
    reused = False

    cpu, cpu_reason = None, None
    if cbw.get("cpu_memory"):
        cpu, reused = CopyBandwidth.from_json(cbw["cpu_memory"]), True
    elif measure:
        cpu = measure_cpu_copy(cpu_buffer_bytes, available_bytes=mem.effective_available_bytes)
    else:
        cpu_reason = "not measured (measurement disabled) and nothing cached"

    cp = PcieResult.from_json(cbw["pcie"]) if cbw.get("pcie") else None
    if cp is not None and cp.devices:
        pcie, reused = cp, True
    elif measure:
        pcie = measure_pcie(len(gpus.devices), lib=pcie_lib)
    else:
        pcie = PcieResult((), "not measured (measurement disabled) and nothing cached", None)

    disks = {d["path"]: DiskBandwidth.from_json(d) for d in cbw.get("disks") or []}
    if disks:
        reused = True
    if disk is not None:
        want = os.path.realpath(disk)
        want = want if os.path.isdir(want) else os.path.dirname(want)
        have = disks.get(want)
        if measure and (have is None or have.skipped_reason):
            disks[want] = measure_disk(disk, root=root, size_bytes=disk_size_bytes, runtime_s=disk_runtime_s)
        elif have is None:
            disks[want] = DiskBandwidth(want, None, None, None, "not measured (measurement disabled)")

    bw = Bandwidth(cpu, cpu_reason, pcie, tuple(disks.values()), reused)
    written, why = False, cache_reason if not reused else None
    prof = Profile(SCHEMA, read_at, fp, gpus, mem, plat, bw, CacheInfo(str(cache_path), reused, False, why))
    if write_cache and (cpu is not None or pcie.devices or disks):
        doc = prof.to_json()
        doc["cached_at"] = _now()
        try:
            write_text_atomic(cache_path, json.dumps(doc, indent=1) + "\n")
            written = True
        except OSError as e:
            why = f"cache not written: {e}"
        prof = Profile(SCHEMA, read_at, fp, gpus, mem, plat, bw, CacheInfo(str(cache_path), reused, written, why))
    return prof
