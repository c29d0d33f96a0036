"""Calibration with llama.cpp's own kernels (llama-bench on synthetic models): run.py measures and caches,
synth.py writes the models. The pure use of the figures is gpcrun/plan/rates.py."""
from __future__ import annotations

from pathlib import Path

from .run import FILE, SCHEMA, calibrate, load_cached, load_or_calibrate, thread_points


def llc_bytes(root: str = "/") -> int | None:
    """The largest CPU cache of cpu0 (sysfs cache/index*/size, e.g. '32768K'); None when unreadable."""
    best = None
    for d in sorted(Path(root, "sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            txt = (d / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:].upper(), 1)
        try:
            n = int(txt.rstrip("KMGkmg")) * mult
        except ValueError:
            continue
        best = max(best or 0, n)
    return best


__all__ = ["FILE", "SCHEMA", "calibrate", "llc_bytes", "load_cached", "load_or_calibrate", "thread_points"]
