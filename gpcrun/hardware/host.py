"""Host memory, the process tree's RSS and the live CPU count: the only module using psutil.

Every reader takes ``root`` (default "/") so tests point it at captured trees (tests/data/host/*). psutil reads
the live /proc only, so it is used when root is "/"; under another root the same numbers come from
<root>/proc/meminfo and <root>/proc/cpuinfo, and each value's source says which.
Unknown values are None and carry a reason in ``unknown``; known values name their source in ``sources``.

cgroups, mounts and PSI are parsed in hardware.cgroup, platform and CPU facts in hardware.platform; their names
are importable from here too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import psutil

from .cgroup import (CgroupLocation, CgroupMemory, Mount, Pressure, cpu_quota, locate_cgroup,  # noqa: F401
                     mount_for, parse_mountinfo, parse_pressure, read_cgroup_memory, read_mounts)
from .hostfs import EMPTY as _EMPTY, doc as _doc, freeze as _freeze, read_under as _read
from .platform import Platform, detect_container, parse_cpuinfo, read_platform_with  # noqa: F401


# ---------------------------------------------------------------- host memory

@dataclass(frozen=True)
class HostMemory:
    """Host RAM and swap, the memory cgroup, and what this process may really still allocate.

    effective_available_bytes = min(host available, cgroup headroom); effective_limit_bytes = min(host total,
    cgroup max). llama.cpp's --fit sees only the host numbers; these are the ones to plan with.
    """
    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    cgroup: CgroupMemory | None
    effective_available_bytes: int | None
    effective_limit_bytes: int | None
    sources: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict:
        d = _doc(self, ("total_bytes", "available_bytes", "swap_total_bytes", "swap_free_bytes",
                        "effective_available_bytes", "effective_limit_bytes"))
        d["cgroup"] = self.cgroup.to_json() if self.cgroup else None
        return d


def parse_meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return out


def read_host_memory(root: str = "/") -> HostMemory:
    """Cheap (a few small files): the watchdog calls this every poll."""
    sources: dict[str, str] = {}
    unknown: dict[str, str] = {}
    vals: dict[str, int | None] = {}
    if root == "/":
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        vals = {"total_bytes": vm.total, "available_bytes": vm.available, "swap_total_bytes": sw.total,
                "swap_free_bytes": sw.free}
        sources.update({k: f"psutil:{'virtual_memory' if 'swap' not in k else 'swap_memory'}" for k in vals})
    else:
        mi = parse_meminfo(_read(root, "/proc/meminfo") or "")
        for k, key in (("total_bytes", "MemTotal"), ("available_bytes", "MemAvailable"),
                       ("swap_total_bytes", "SwapTotal"), ("swap_free_bytes", "SwapFree")):
            vals[k] = mi.get(key)
            if key in mi:
                sources[k] = f"proc:meminfo:{key}"
            else:
                unknown[k] = f"/proc/meminfo has no {key}"
    cg = read_cgroup_memory(root)
    avail, total = vals["available_bytes"], vals["total_bytes"]
    eff_av, eff_lim = avail, total
    src_av = sources.get("available_bytes", "")
    src_lim = sources.get("total_bytes", "")
    if cg is not None and cg.headroom_bytes is not None:
        eff_av = cg.headroom_bytes if avail is None else min(avail, cg.headroom_bytes)
        eff_lim = cg.max_bytes if total is None else min(total, cg.max_bytes)
        src_av = f"min({src_av or 'unknown'}, {cg.sources['headroom_bytes']})"
        src_lim = f"min({src_lim or 'unknown'}, {cg.sources['max_bytes']})"
    for k, v, s in (("effective_available_bytes", eff_av, src_av), ("effective_limit_bytes", eff_lim, src_lim)):
        if v is None:
            unknown[k] = "host memory unknown and no cgroup limit"
        else:
            sources[k] = s
    return HostMemory(vals["total_bytes"], vals["available_bytes"], vals["swap_total_bytes"],
                      vals["swap_free_bytes"], cg, eff_av, eff_lim, _freeze(sources), _freeze(unknown))


# ---------------------------------------------------------------- platform (live CPU count) and processes

def read_platform(root: str = "/", env: Mapping[str, str] | None = None) -> Platform:
    """OS, kernel, container, WSL, CPU and ISA under ``root`` (hardware.platform); psutil counts the live cores."""
    return read_platform_with(root, env, cpu_count=psutil.cpu_count, count_source="psutil:cpu_count")


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` and all its descendants; None when the process is gone or unreadable."""
    return tree_memory_bytes(pid)[0]


def tree_memory_bytes(pid: int) -> tuple[int | None, int | None]:
    """(resident, anonymous resident) bytes of ``pid`` and all its descendants, (None, None) when the process is
    gone or unreadable. Anonymous = rss - shared (psutil's Linux memory_info: /proc/PID/statm resident minus
    file-backed and shmem pages): memory only this tree holds, which the page cache cannot give back."""
    try:
        p = psutil.Process(pid)
        infos = [x.memory_info() for x in [p] + p.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None, None
    rss = sum(i.rss for i in infos)
    anon = sum(max(0, i.rss - getattr(i, "shared", 0)) for i in infos)
    return rss, anon


def child_processes(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of each direct child of ``pid`` (a llama-server router's model instances); [] when it is gone."""
    try:
        kids = psutil.Process(pid).children()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []
    out = []
    for k in kids:
        try:
            out.append((k.pid, k.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out
