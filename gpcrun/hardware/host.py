"""Host memory, cgroups (v2 and v1), platform and CPU, read from /proc and /sys. The only module using psutil.

Every reader takes ``root`` (default "/") so tests point it at captured trees (tests/data/host/*). psutil reads
the live /proc only, so it is used when root is "/"; under another root the same numbers come from
<root>/proc/meminfo and <root>/proc/cpuinfo, and each value's source says which.
Unknown values are None and carry a reason in ``unknown``; known values name their source in ``sources``.
"""
from __future__ import annotations

import ctypes
import os
import platform as _platform
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import psutil

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX rounded to a page (9223372036854771712); anything this big is none.
_V1_UNLIMITED_BYTES = 1 << 62
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _path(root: str, p: str) -> str:
    return os.path.join(root, p.lstrip("/"))


def _read(root: str, p: str) -> str | None:
    try:
        with open(_path(root, p), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _freeze(d: dict) -> Mapping[str, str]:
    return MappingProxyType(dict(d)) if d else _EMPTY


def _doc(obj, fields: Iterable[str]) -> dict:
    out = {k: getattr(obj, k) for k in fields}
    out["sources"] = dict(obj.sources)
    out["unknown"] = dict(obj.unknown)
    return out


# ---------------------------------------------------------------- mount table

@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str  # the subtree of the filesystem mounted there (cgroup mounts in containers are not "/")
    fstype: str
    source: str
    options: str
    super_options: str


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if len(parts) < sep + 3:
            continue
        out.append(Mount(mount_point=_unescape(parts[4]), root=_unescape(parts[3]), fstype=parts[sep + 1],
                         source=_unescape(parts[sep + 2]), options=parts[5],
                         super_options=parts[sep + 3] if len(parts) > sep + 3 else ""))
    return out


def read_mounts(root: str = "/") -> list[Mount]:
    """The mount table of this process (<root>/proc/self/mountinfo); [] when unreadable."""
    return parse_mountinfo(_read(root, "/proc/self/mountinfo") or "")


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding absolute ``path``: longest mount point prefix, the later of stacked mounts."""
    best = None
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if path == mp or mp == "/" or path.startswith(mp + "/"):
            if best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/"):
                best = m
    return best


# ---------------------------------------------------------------- cgroups

@dataclass(frozen=True)
class CgroupLocation:
    version: int  # 1 or 2
    path: str  # as /proc/self/cgroup names it
    dirs: tuple[str, ...]  # own directory first, then ancestors up to the mount's top (absolute, under root)
    note: str | None = None


def _parse_proc_cgroup(text: str) -> list[tuple[str, list[str], str]]:
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return out


def _dirs_for(root: str, mount: Mount, cg_path: str) -> tuple[tuple[str, ...], str | None]:
    base = _path(root, mount.mount_point)
    note = None
    mroot = mount.root.rstrip("/")
    if ".." not in cg_path.split("/") and (cg_path == mount.root or cg_path.startswith(mroot + "/")):
        rel = cg_path[len(mroot):].strip("/")
    else:
        # a cgroup outside the mounted subtree (nested namespaces, "/.."): only the mount's top is reachable
        rel = ""
        note = f"cgroup {cg_path} is outside the mounted subtree {mount.root}; read {mount.mount_point}"
    parts = [p for p in rel.split("/") if p]
    dirs = [os.path.join(base, *parts[:i]) if i else base for i in range(len(parts), -1, -1)]
    return tuple(dirs), note


def locate_cgroup(controller: str = "memory", root: str = "/") -> CgroupLocation | None:
    """Where this process's cgroup for ``controller`` lives: the v1 hierarchy carrying it, else cgroup2 if enabled."""
    entries = _parse_proc_cgroup(_read(root, "/proc/self/cgroup") or "")
    mounts = read_mounts(root)
    for _hid, ctrls, cg_path in entries:
        if controller in ctrls:
            m = next((m for m in mounts if m.fstype == "cgroup" and controller in m.super_options.split(",")), None)
            if m is not None:
                dirs, note = _dirs_for(root, m, cg_path)
                return CgroupLocation(1, cg_path, dirs, note)
    for hid, ctrls, cg_path in entries:
        if hid == "0" and not ctrls:
            m = next((m for m in mounts if m.fstype == "cgroup2"), None)
            if m is None:
                return None
            dirs, note = _dirs_for(root, m, cg_path)
            avail = (_read_abs(os.path.join(dirs[-1], "cgroup.controllers")) or "").split()
            if controller in avail or any(os.path.exists(os.path.join(d, f"{controller}.max")) for d in dirs):
                return CgroupLocation(2, cg_path, dirs, note)
            return None
    return None


def _read_abs(p: str) -> str | None:
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _int_or_max(text: str | None, version: int) -> tuple[bool, int | None]:
    """(file present, bytes or None for no limit)."""
    if text is None:
        return False, None
    t = text.strip()
    if t == "max":
        return True, None
    try:
        v = int(t)
    except ValueError:
        return False, None
    if version == 1 and v >= _V1_UNLIMITED_BYTES:
        return True, None
    return True, v


def _kv(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


@dataclass(frozen=True)
class Pressure:
    """PSI: share of wall time some/all tasks stalled on memory (percent), and the stall total (microseconds)."""
    some_avg10_pct: float
    some_avg60_pct: float
    some_total_us: int
    full_avg10_pct: float | None
    full_avg60_pct: float | None
    full_total_us: int | None
    source: str

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("some_avg10_pct", "some_avg60_pct", "some_total_us",
                                              "full_avg10_pct", "full_avg60_pct", "full_total_us", "source")}


def parse_pressure(text: str, source: str) -> Pressure | None:
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("some", "full"):
            rows[parts[0]] = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if "some" not in rows:
        return None
    s, f = rows["some"], rows.get("full")
    try:
        return Pressure(float(s["avg10"]), float(s["avg60"]), int(s["total"]),
                        float(f["avg10"]) if f else None, float(f["avg60"]) if f else None,
                        int(f["total"]) if f else None, source)
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup of this process. max/current/swap are those of ``limit_cgroup``, the ancestor (or self)
    with the smallest limit; headroom is the least max - current over all limited ancestors (a parent shared
    with siblings can leave less than the child's own limit). All None when no ancestor sets a limit."""
    version: int
    path: str
    limit_cgroup: str | None
    max_bytes: int | None
    current_bytes: int | None
    headroom_bytes: int | None  # least max - current over limited ancestors: what this process may still allocate
    swap_max_bytes: int | None  # v2: swap alone; v1: memory+swap (memory.memsw.limit_in_bytes)
    oom_kill_count: int | None
    pressure: Pressure | None
    sources: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict:
        d = _doc(self, ("version", "path", "limit_cgroup", "max_bytes", "current_bytes", "headroom_bytes",
                        "swap_max_bytes", "oom_kill_count"))
        d["pressure"] = self.pressure.to_json() if self.pressure else None
        return d


def _cg_name(loc: CgroupLocation, d: str) -> str:
    # the cgroup path of an ancestor directory, in /proc/self/cgroup's terms
    depth = loc.dirs.index(d)
    parts = [p for p in loc.path.split("/") if p]
    return "/" + "/".join(parts[:max(len(parts) - depth, 0)]) if depth or parts else "/"


def read_cgroup_memory(root: str = "/") -> CgroupMemory | None:
    """This process's memory cgroup (v2 or v1), None when neither is mounted."""
    loc = locate_cgroup("memory", root)
    if loc is None:
        return None
    v = loc.version
    tag = "cgroup2" if v == 2 else "cgroup1"
    f_max, f_cur = ("memory.max", "memory.current") if v == 2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    sources: dict[str, str] = {}
    unknown: dict[str, str] = {}
    cands = []  # (headroom, dir, max, current, file the max came from)
    for d in loc.dirs:
        present, mx = _int_or_max(_read_abs(os.path.join(d, f_max)), v)
        if not present or mx is None:
            continue
        _, cur = _int_or_max(_read_abs(os.path.join(d, f_cur)), 1)
        if cur is not None:
            cands.append((max(mx - cur, 0), d, mx, cur, f_max))
    if v == 1:
        # hierarchical_memory_limit also sees ancestors this mount hides (a container's parent); their usage is
        # not readable, so own usage stands in (an upper bound on the headroom)
        hl = _kv(_read_abs(os.path.join(loc.dirs[0], "memory.stat"))).get("hierarchical_memory_limit")
        _, own_cur = _int_or_max(_read_abs(os.path.join(loc.dirs[0], f_cur)), 1)
        if hl is not None and hl < _V1_UNLIMITED_BYTES and own_cur is not None \
                and all(hl < c[2] for c in cands):
            cands.append((max(hl - own_cur, 0), loc.dirs[0], hl, own_cur, "memory.stat:hierarchical_memory_limit"))
    limit_cgroup = mx = cur = head = swap = None
    if cands:
        # the smallest limit bounds the process; the least headroom (a parent shared with siblings) bounds it now
        _, d, mx, cur, f_lim = min(cands, key=lambda c: c[2])
        head, hd, _, _, f_head = min(cands, key=lambda c: c[0])
        limit_cgroup = _cg_name(loc, d)
        sources.update(max_bytes=f"{tag}:{f_lim}@{limit_cgroup}", current_bytes=f"{tag}:{f_cur}@{limit_cgroup}",
                       headroom_bytes=f"{tag}:{f_head}-{f_cur}@{_cg_name(loc, hd)}")
        f_swap = "memory.swap.max" if v == 2 else "memory.memsw.limit_in_bytes"
        present, swap = _int_or_max(_read_abs(os.path.join(d, f_swap)), v)
        if present and swap is not None:
            sources["swap_max_bytes"] = f"{tag}:{f_swap}@{limit_cgroup}"
        else:
            unknown["swap_max_bytes"] = (f"{f_swap} not present (no swap accounting)" if not present
                                         else f"{f_swap} sets no limit")
    else:
        for k in ("max_bytes", "current_bytes", "headroom_bytes", "swap_max_bytes"):
            unknown[k] = f"no memory limit on {loc.path} or its ancestors ({f_max})"
    if loc.note:
        unknown["cgroup_dirs"] = loc.note
    if v == 2:
        ev = _kv(_read_abs(os.path.join(loc.dirs[0], "memory.events")))
        oom, src = ev.get("oom_kill"), f"{tag}:memory.events:oom_kill"
    else:
        ev = _kv(_read_abs(os.path.join(loc.dirs[0], "memory.oom_control")))
        oom, src = ev.get("oom_kill"), f"{tag}:memory.oom_control:oom_kill"
    if oom is None:
        unknown["oom_kill_count"] = f"{src.split(':', 1)[1].rsplit(':', 1)[0]} has no oom_kill line"
    else:
        sources["oom_kill_count"] = src
    return CgroupMemory(version=v, path=loc.path, limit_cgroup=limit_cgroup, max_bytes=mx, current_bytes=cur,
                        headroom_bytes=head, swap_max_bytes=swap, oom_kill_count=oom,
                        pressure=_read_pressure(root, loc), sources=_freeze(sources), unknown=_freeze(unknown))


def _read_pressure(root: str, mem_loc: CgroupLocation) -> Pressure | None:
    # PSI lives in cgroup2 even when the memory controller is on v1 (hybrid); else the host-wide /proc/pressure
    v2 = mem_loc if mem_loc.version == 2 else None
    if v2 is None:
        entries = _parse_proc_cgroup(_read(root, "/proc/self/cgroup") or "")
        m = next((m for m in read_mounts(root) if m.fstype == "cgroup2"), None)
        path = next((p for hid, c, p in entries if hid == "0" and not c), None)
        if m is not None and path is not None:
            dirs, note = _dirs_for(root, m, path)
            v2 = CgroupLocation(2, path, dirs, note)
    if v2 is not None:
        text = _read_abs(os.path.join(v2.dirs[0], "memory.pressure"))
        if text:
            p = parse_pressure(text, f"cgroup2:memory.pressure@{v2.path}")
            if p:
                return p
    text = _read(root, "/proc/pressure/memory")
    return parse_pressure(text, "proc:/proc/pressure/memory (host-wide)") if text else None


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


# ---------------------------------------------------------------- platform and CPU

# ISA extensions that decide which llama.cpp CPU kernels run.
_ISA_EXACT = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "bmi2",
              "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16", "svei8mm", "svebf16", "sme"}


def _isa(flags: set[str]) -> tuple[str, ...]:
    return tuple(sorted(f for f in flags if f in _ISA_EXACT or f.startswith(("avx512", "amx"))))


def parse_cpuinfo(text: str) -> dict:
    """model, logical count, physical cores (distinct package/core pairs) and flags of /proc/cpuinfo."""
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    model = None
    flags: set[str] = set()
    cores = set()
    logical = 0
    for b in blocks:
        kv = {}
        for line in b.splitlines():
            if ":" in line:
                k, _, v = line.partition(":")
                kv[k.strip()] = v.strip()
        if "processor" in kv:
            logical += 1
        model = model or kv.get("model name") or kv.get("Model") or kv.get("cpu model")
        flags |= set((kv.get("flags") or kv.get("Features") or "").split())
        if "physical id" in kv and "core id" in kv:
            cores.add((kv["physical id"], kv["core id"]))
    return {"model": model, "logical": logical or None, "physical": len(cores) or None, "flags": flags}


def _amx_permitted() -> bool | None:
    """Whether the kernel lets this process use AMX tile data (ARCH_GET_XCOMP_SUPP bit 18), live x86-64 only."""
    if _platform.system() != "Linux" or _platform.machine() != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = ctypes.c_uint64(0)
        # SYS_arch_prctl = 158, ARCH_GET_XCOMP_SUPP = 0x1021: read-only query of permitted xfeatures
        if libc.syscall(158, 0x1021, ctypes.byref(mask)) != 0:
            return None
        return bool(mask.value & (1 << 18))
    except (OSError, AttributeError):
        return None


def _cpu_quota(root: str) -> tuple[float | None, str]:
    loc = locate_cgroup("cpu", root)
    if loc is None:
        return None, "no cpu cgroup controller mounted"
    best = None
    for d in loc.dirs:
        if loc.version == 2:
            parts = (_read_abs(os.path.join(d, "cpu.max")) or "").split()
            if len(parts) == 2 and parts[0] != "max":
                q = int(parts[0]) / int(parts[1])
                best = (q, d, "cgroup2:cpu.max") if best is None or q < best[0] else best
        else:
            qt, pt = _read_abs(os.path.join(d, "cpu.cfs_quota_us")), _read_abs(os.path.join(d, "cpu.cfs_period_us"))
            if qt and pt and int(qt) > 0 and int(pt) > 0:
                q = int(qt) / int(pt)
                best = (q, d, "cgroup1:cpu.cfs_quota_us/cpu.cfs_period_us") if best is None or q < best[0] else best
    if best is None:
        return None, f"no CPU quota on {loc.path} or its ancestors"
    return round(best[0], 3), f"{best[2]}@{_cg_name(loc, best[1])}"


def _os_release(root: str) -> str | None:
    text = _read(root, "/etc/os-release") or _read(root, "/usr/lib/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Platform:
    os: str | None
    arch: str | None
    kernel_release: str | None
    kernel_version: str | None
    distro: str | None
    container: str | None  # docker / podman / kubernetes / lxc / systemd-nspawn / containerd, None when none seen
    container_evidence: tuple[str, ...]
    wsl: str | None  # "wsl2" / "wsl1"
    uvm_oversubscription_supported: bool | None  # whether the OS lets CUDA managed memory exceed VRAM
    cpu_model: str | None
    cores_physical: int | None
    cores_logical: int | None
    cpus_usable: int | None  # sched_getaffinity: the CPUs this process may run on
    cpu_quota_cores: float | None  # cgroup CPU quota in cores (cpu.max / cfs_quota)
    isa: tuple[str, ...]
    hypervisor: bool | None
    amx_permitted: bool | None
    warnings: tuple[str, ...]
    sources: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    unknown: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict:
        d = _doc(self, ("os", "arch", "kernel_release", "kernel_version", "distro", "container",
                        "container_evidence", "wsl", "uvm_oversubscription_supported", "cpu_model",
                        "cores_physical", "cores_logical", "cpus_usable", "cpu_quota_cores", "isa", "hypervisor",
                        "amx_permitted", "warnings"))
        d["container_evidence"] = list(self.container_evidence)
        d["isa"] = list(self.isa)
        d["warnings"] = list(self.warnings)
        return d


_CGROUP_HINTS = (("kubepods", "kubernetes"), ("libpod", "podman"), ("docker", "docker"), ("containerd", "containerd"),
                 ("crio", "cri-o"), ("lxc", "lxc"), ("machine.slice", "systemd-nspawn"))


def detect_container(root: str = "/", env: Mapping[str, str] | None = None) -> tuple[str | None, tuple[str, ...]]:
    env = os.environ if env is None else env
    kinds: list[str] = []
    evidence: list[str] = []
    if env.get("KUBERNETES_SERVICE_HOST"):
        kinds.append("kubernetes")
        evidence.append("env:KUBERNETES_SERVICE_HOST")
    if os.path.exists(_path(root, "/run/.containerenv")):
        kinds.append("podman")
        evidence.append("file:/run/.containerenv")
    if os.path.exists(_path(root, "/.dockerenv")):
        kinds.append("docker")
        evidence.append("file:/.dockerenv")
    cg = _read(root, "/proc/self/cgroup") or ""
    for hint, kind in _CGROUP_HINTS:
        if re.search(rf"[/:.-]{re.escape(hint)}", cg):
            kinds.append(kind)
            evidence.append(f"cgroup-path:{hint}")
            break
    penv = _read(root, "/proc/1/environ")
    if penv:
        m = re.search(r"(?:^|\0)container=([^\0]+)", penv)
        if m:
            kinds.append(m.group(1))
            evidence.append(f"pid1-env:container={m.group(1)}")
    return (kinds[0] if kinds else None), tuple(evidence)


def read_platform(root: str = "/", env: Mapping[str, str] | None = None) -> Platform:
    live = root == "/"
    sources: dict[str, str] = {}
    unknown: dict[str, str] = {}
    warnings: list[str] = []

    def got(k, v, src, why):
        (sources.__setitem__(k, src) if v is not None else unknown.__setitem__(k, why))
        return v

    ostype = (_read(root, "/proc/sys/kernel/ostype") or "").strip() or None
    os_name = got("os", _platform.system() if live else ostype, "platform.system" if live else "proc:kernel/ostype",
                  "/proc/sys/kernel/ostype unreadable")
    arch = got("arch", _platform.machine() or None if live else None, "platform.machine",
               "read only for the live root")
    release = got("kernel_release", (_read(root, "/proc/sys/kernel/osrelease") or "").strip() or None,
                  "proc:sys/kernel/osrelease", "/proc/sys/kernel/osrelease unreadable")
    version = got("kernel_version", (_read(root, "/proc/version") or "").strip() or None, "proc:version",
                  "/proc/version unreadable")
    distro = got("distro", _os_release(root), "file:/etc/os-release:PRETTY_NAME", "no /etc/os-release")
    container, evidence = detect_container(root, env)
    if container is None:
        sources["container"] = "none: no /.dockerenv, /run/.containerenv, k8s env, container cgroup path or pid-1 env"
    else:
        sources["container"] = ",".join(evidence)
    vtext = (version or "") + " " + (release or "")
    wsl = None
    if re.search(r"microsoft", vtext, re.I):
        # WSL2 kernels are "...-microsoft-standard-WSL2"; WSL1 fakes a "Microsoft" kernel string
        wsl = "wsl2" if ("WSL2" in vtext or "microsoft-standard" in vtext) else "wsl1"
        sources["wsl"] = "proc:version contains 'microsoft'"
    else:
        sources["wsl"] = "none: /proc/version has no 'microsoft'"
    if wsl:
        uvm = False
        sources["uvm_oversubscription_supported"] = f"{wsl}: CUDA on WSL has no managed-memory oversubscription"
    elif os_name == "Linux":
        uvm = True
        sources["uvm_oversubscription_supported"] = "native Linux: CUDA managed memory may exceed VRAM (Pascal+)"
    elif os_name == "Windows":
        uvm = False
        sources["uvm_oversubscription_supported"] = "Windows: CUDA managed memory cannot exceed VRAM"
    else:
        uvm = None
        unknown["uvm_oversubscription_supported"] = "OS unknown"
    ci = parse_cpuinfo(_read(root, "/proc/cpuinfo") or "")
    model = got("cpu_model", ci["model"], "proc:cpuinfo:model name", "/proc/cpuinfo has no model name")
    if live:
        phys = got("cores_physical", psutil.cpu_count(logical=False), "psutil:cpu_count(logical=False)",
                   "psutil could not count physical cores")
        logi = got("cores_logical", psutil.cpu_count(logical=True), "psutil:cpu_count", "psutil could not count CPUs")
        try:
            usable = got("cpus_usable", len(os.sched_getaffinity(0)), "os.sched_getaffinity", "")
        except (AttributeError, OSError) as e:
            usable = got("cpus_usable", None, "", f"sched_getaffinity: {e}")
    else:
        phys = got("cores_physical", ci["physical"], "proc:cpuinfo:physical id+core id",
                   "/proc/cpuinfo has no physical id/core id")
        logi = got("cores_logical", ci["logical"], "proc:cpuinfo:processor", "/proc/cpuinfo lists no processors")
        usable = got("cpus_usable", None, "", "affinity is read only for the live root")
    quota, qsrc = _cpu_quota(root)
    got("cpu_quota_cores", quota, qsrc, qsrc)
    flags = ci["flags"]
    isa = _isa(flags)
    sources["isa"] = "proc:cpuinfo:flags"
    hyper = "hypervisor" in flags if flags else None
    got("hypervisor", hyper, "proc:cpuinfo:flags:hypervisor", "/proc/cpuinfo has no flags")
    amx = _amx_permitted() if live else None
    got("amx_permitted", amx, "arch_prctl(ARCH_GET_XCOMP_SUPP):XTILEDATA",
        "read only for the live root on x86-64 Linux")
    amx_flags = [f for f in isa if f.startswith("amx")]
    if amx_flags and (hyper or amx is False):
        why = ("the kernel does not permit AMX tile data" if amx is False
               else "a virtual machine may advertise AMX without enabling it")
        warnings.append(f"CPU advertises {','.join(amx_flags)} but {why}: llama.cpp built with GGML_NATIVE=ON can"
                        " die with SIGILL; build with -DGGML_NATIVE=OFF (or without AMX)")
    if quota is not None and logi is not None and quota < logi:
        warnings.append(f"cgroup CPU quota is {quota:g} cores of {logi} logical CPUs: size --threads to the quota")
    return Platform(os_name, arch, release, version, distro, container, evidence, wsl, uvm, model, phys, logi,
                    usable, quota, isa, hyper, amx, tuple(warnings), _freeze(sources), _freeze(unknown))
