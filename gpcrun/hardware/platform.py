"""Platform and CPU facts: OS, kernel, distro, container, WSL, CPU model, cores, ISA, AMX, CPU quota. No psutil.

Read from /proc and /etc under an injectable root. CPU counting of the live root is passed in by hardware.host
(psutil's); ``read_platform_with`` does the rest.
"""
from __future__ import annotations

import ctypes
import os
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .cgroup import cpu_quota
from .hostfs import EMPTY as _EMPTY, doc as _doc, freeze as _freeze, read_under as _read, under as _path


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


def read_platform_with(root: str = "/", env: Mapping[str, str] | None = None,
                       cpu_count: Callable[..., int | None] | None = None,
                       count_source: str = "cpu_count") -> Platform:
    """The platform under ``root``. For the live root, cores are counted by ``cpu_count(logical=...)``
    (hardware.host passes psutil's, count_source "psutil:cpu_count"); without one they are unknown."""
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
        who = count_source.split(":", 1)[0]
        if cpu_count is None:
            phys = got("cores_physical", None, "", "no CPU counter for the live root")
            logi = got("cores_logical", None, "", "no CPU counter for the live root")
        else:
            phys = got("cores_physical", cpu_count(logical=False), f"{count_source}(logical=False)",
                       f"{who} could not count physical cores")
            logi = got("cores_logical", cpu_count(logical=True), count_source, f"{who} could not count CPUs")
        try:
            usable = got("cpus_usable", len(os.sched_getaffinity(0)), "os.sched_getaffinity", "")
        except (AttributeError, OSError) as e:
            usable = got("cpus_usable", None, "", f"sched_getaffinity: {e}")
    else:
        phys = got("cores_physical", ci["physical"], "proc:cpuinfo:physical id+core id",
                   "/proc/cpuinfo has no physical id/core id")
        logi = got("cores_logical", ci["logical"], "proc:cpuinfo:processor", "/proc/cpuinfo lists no processors")
        usable = got("cpus_usable", None, "", "affinity is read only for the live root")
    quota, qsrc = cpu_quota(root)
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
