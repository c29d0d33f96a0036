"""What the watchdog samples and keeps: one Sample of host, cgroup, the server's tree and each GPU (make_sampler
over the real machine), and the Envelope of peaks and minima that goes into run.json and receipts."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..hardware.host import tree_memory_bytes


@dataclass(frozen=True)
class GpuSample:
    index: int
    free_bytes: int | None
    used_bytes: int | None
    child_bytes: int | None  # the server's own VRAM (per-process NVML), None when unknown
    power_mw: int | None
    power_limit_mw: int | None
    temperature_c: int | None
    unified_memory: bool = False


@dataclass(frozen=True)
class Sample:
    t_mono: float
    t_wall: float
    host_available_bytes: int | None  # effective: min(host MemAvailable, cgroup max - current)
    host_limit_bytes: int | None  # effective limit: min(host total, cgroup max)
    swap_free_bytes: int | None
    cgroup_current_bytes: int | None
    cgroup_max_bytes: int | None
    psi_some_avg10: float | None
    child_rss_bytes: int | None  # the server's whole process tree
    gpus: tuple[GpuSample, ...] = ()
    child_anon_bytes: int | None = None  # the tree's anonymous resident memory (rss - file-backed - shmem)
    # a router's model instances: ({"pid", "model", "rss_bytes", "anon_bytes", "vram_bytes"}, ...)
    models: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["gpus"] = [g.__dict__ for g in self.gpus]
        if not self.models:
            d.pop("models")
        else:
            d["models"] = [dict(m) for m in self.models]
        return d


# ----------------------------------------------------------------------------------------------- sampling

def make_sampler(child_pid: Callable[[], int | None], nvml=None, gpu_static: Sequence = (),
                 host_reader=None, clock: Callable[[], float] = time.monotonic,
                 models_of: Callable[[int], Sequence[tuple[int, str]]] | None = None,
                 observe: Callable[[Sequence[dict]], None] | None = None) -> Callable[[], Sample]:
    """A sample() over the real machine: host/cgroup memory, the child's tree RSS, and per GPU (an open
    hardware.nvml.NvmlSession plus its inventory devices for the static power limit and unified flag).
    models_of(pid): a router's model instances as (pid, model name), each sampled on its own (and shown to
    observe())."""
    if host_reader is None:
        from ..hardware.host import read_host_memory
        host_reader = read_host_memory
    static = list(gpu_static)

    def sample() -> Sample:
        hm = host_reader()
        cg = hm.cgroup
        pid = child_pid()
        rss, anon = tree_memory_bytes(pid) if pid else (None, None)
        gpus: tuple[GpuSample, ...] = ()
        vols = ()
        if nvml is not None:
            vols = nvml.sample({g.nvml_index: bool(g.unified_memory) for g in static})
            gpus = tuple(_gpu_sample(static[i] if i < len(static) else None, i, v, pid) for i, v in enumerate(vols))
        models = ()
        if models_of is not None and pid:
            models = tuple(_model_sample(mpid, name, vols) for mpid, name in models_of(pid))
            if observe is not None:
                observe(models)
        return Sample(clock(), time.time(), hm.effective_available_bytes, hm.effective_limit_bytes,
                      hm.swap_free_bytes, getattr(cg, "current_bytes", None), getattr(cg, "max_bytes", None),
                      getattr(getattr(cg, "pressure", None), "some_avg10_pct", None),
                      rss, gpus, anon, models)
    return sample


def _model_sample(pid: int, name: str, vols) -> dict:
    rss, anon = tree_memory_bytes(pid)
    vram = [p.used_bytes for v in vols for p in (v.processes or ()) if p.pid == pid and p.used_bytes is not None]
    return {"pid": pid, "model": name, "rss_bytes": rss, "anon_bytes": anon, "vram_bytes": sum(vram) if vram else None}


def _gpu_sample(static, i: int, v, pid: int | None) -> GpuSample:
    procs = v.processes or ()
    child = None
    if pid is not None:
        mine = [p.used_bytes for p in procs if p.pid == pid and p.used_bytes is not None]
        child = sum(mine) if mine else None
    return GpuSample(static.cuda_index if static else i, v.free_bytes, v.used_bytes, child, v.power_draw_mw,
                     static.power_limit_mw if static else None, v.temperature_c,
                     bool(static.unified_memory) if static else False)


# ----------------------------------------------------------------------------------------------- envelope

@dataclass
class Envelope:
    """Peaks and minima over a run: the safety envelope that goes into receipts."""

    samples: int = 0
    min_host_available_bytes: int | None = None
    peak_host_used_fraction: float | None = None
    peak_child_rss_bytes: int | None = None
    peak_gpu_used_bytes: dict = field(default_factory=dict)
    peak_child_vram_bytes: dict = field(default_factory=dict)
    peak_power_fraction: float | None = None
    peak_temperature_c: int | None = None
    limits_fired: list = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.samples += 1
        if s.host_available_bytes is not None:
            self.min_host_available_bytes = _min(self.min_host_available_bytes, s.host_available_bytes)
            if s.host_limit_bytes:
                used = 1 - s.host_available_bytes / s.host_limit_bytes
                self.peak_host_used_fraction = _max(self.peak_host_used_fraction, round(used, 4))
        self.peak_child_rss_bytes = _max(self.peak_child_rss_bytes, s.child_rss_bytes)
        for g in s.gpus:
            k = str(g.index)
            self.peak_gpu_used_bytes[k] = _max(self.peak_gpu_used_bytes.get(k), g.used_bytes)
            self.peak_child_vram_bytes[k] = _max(self.peak_child_vram_bytes.get(k), g.child_bytes)
            if g.power_mw is not None and g.power_limit_mw:
                self.peak_power_fraction = _max(self.peak_power_fraction, round(g.power_mw / g.power_limit_mw, 4))
            self.peak_temperature_c = _max(self.peak_temperature_c, g.temperature_c)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _min(a, b):
    return b if a is None else (a if b is None else min(a, b))


def _max(a, b):
    return b if a is None else (a if b is None else max(a, b))
