"""cgroups (v2 and v1), the mount table and PSI, parsed from /proc and /sys under an injectable root. No psutil.

Every reader takes ``root`` (default "/") so tests point it at captured trees (tests/data/host/*). Unknown values
are None and carry a reason in ``unknown``; known values name their source in ``sources``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from .hostfs import EMPTY as _EMPTY, doc as _doc, freeze as _freeze, read_abs as _read_abs, read_under as _read, \
    under as _path

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX rounded to a page (9223372036854771712); anything this big is none.
_V1_UNLIMITED_BYTES = 1 << 62


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
    cands = []  # (headroom, dir, max, current, file the max came from, inactive file bytes)
    for d in loc.dirs:
        present, mx = _int_or_max(_read_abs(os.path.join(d, f_max)), v)
        if not present or mx is None:
            continue
        _, cur = _int_or_max(_read_abs(os.path.join(d, f_cur)), 1)
        if cur is not None:
            cache = _inactive_file(d, v)
            cands.append((max(mx - cur + (cache or 0), 0), d, mx, cur, f_max, cache))
    if v == 1:
        # hierarchical_memory_limit also sees ancestors this mount hides (a container's parent); their usage is
        # not readable, so own usage stands in (an upper bound on the headroom)
        hl = _kv(_read_abs(os.path.join(loc.dirs[0], "memory.stat"))).get("hierarchical_memory_limit")
        _, own_cur = _int_or_max(_read_abs(os.path.join(loc.dirs[0], f_cur)), 1)
        if hl is not None and hl < _V1_UNLIMITED_BYTES and own_cur is not None \
                and all(hl < c[2] for c in cands):
            cache = _inactive_file(loc.dirs[0], v)
            cands.append((max(hl - own_cur + (cache or 0), 0), loc.dirs[0], hl, own_cur,
                          "memory.stat:hierarchical_memory_limit", cache))
    limit_cgroup = mx = cur = head = swap = None
    if cands:
        # the smallest limit bounds the process; the least headroom (a parent shared with siblings) bounds it now
        _, d, mx, cur, f_lim, _ = min(cands, key=lambda c: c[2])
        head, hd, _, _, f_head, cache = min(cands, key=lambda c: c[0])
        limit_cgroup = _cg_name(loc, d)
        stat_key = "inactive_file" if v == 2 else "total_inactive_file"
        used = f_cur if cache is None else f"({f_cur}-memory.stat:{stat_key})"
        sources.update(max_bytes=f"{tag}:{f_lim}@{limit_cgroup}", current_bytes=f"{tag}:{f_cur}@{limit_cgroup}",
                       headroom_bytes=f"{tag}:{f_head}-{used}@{_cg_name(loc, hd)}")
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


def _inactive_file(d: str, version: int) -> int | None:
    """Page cache on the cgroup's inactive list: charged to memory.current, but the kernel reclaims it before it
    would OOM-kill anything (reading a 1.2 GB file in a container must not look like 1.2 GB used). What is left
    is what the kernel cannot give back (anon, active file, kernel memory): systemd-oomd and the kernel's own
    memory.high throttling judge the same way. v1: total_inactive_file (this cgroup and its children)."""
    st = _kv(_read_abs(os.path.join(d, "memory.stat")))
    v = st.get("inactive_file") if version == 2 else st.get("total_inactive_file", st.get("inactive_file"))
    return v if isinstance(v, int) and v >= 0 else None


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


# ---------------------------------------------------------------- CPU quota

def cpu_quota(root: str = "/") -> tuple[float | None, str]:
    """The cgroup CPU quota in cores (the least over this cgroup and its ancestors) and its source, or None and
    why."""
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
