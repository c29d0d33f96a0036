"""CPU memory bandwidth: a short, repeatable numpy copy benchmark (the only measuring module using numpy).

np.copyto of a buffer into another reads and writes it once each, so one copy moves 2 x buffer_bytes;
bytes_per_s counts both (read + write) over the median of several timed copies. Takes well under 2 s.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone

METHOD = "measured:numpy-copyto"
_MIN_BUFFER_BYTES = 16 << 20


@dataclass(frozen=True)
class CopyBandwidth:
    bytes_per_s: int  # read + write bytes per second, median run
    best_bytes_per_s: int  # fastest run
    method: str
    buffer_bytes: int
    samples: int
    sample_s: tuple[float, ...]
    measured_at: str
    note: str

    def to_json(self) -> dict:
        return {"bytes_per_s": self.bytes_per_s, "best_bytes_per_s": self.best_bytes_per_s, "method": self.method,
                "buffer_bytes": self.buffer_bytes, "samples": self.samples, "sample_s": list(self.sample_s),
                "measured_at": self.measured_at, "note": self.note}

    @classmethod
    def from_json(cls, d: dict) -> "CopyBandwidth":
        return cls(int(d["bytes_per_s"]), int(d["best_bytes_per_s"]), d["method"], int(d["buffer_bytes"]),
                   int(d["samples"]), tuple(float(x) for x in d["sample_s"]), d["measured_at"], d["note"])


def buffer_size_for(available_bytes: int | None, wanted_bytes: int) -> int:
    """Two buffers must fit comfortably: at most 1/8 of what this process may still allocate each."""
    if available_bytes is None:
        return wanted_bytes
    size = wanted_bytes
    while size > _MIN_BUFFER_BYTES and size * 8 > available_bytes:
        size //= 2
    return size


def measure_cpu_copy(buffer_bytes: int = 256 << 20, runs: int = 7, budget_s: float = 1.5,
                     available_bytes: int | None = None) -> CopyBandwidth:
    import numpy as np

    size = buffer_size_for(available_bytes, buffer_bytes)
    t_start = time.perf_counter()
    src = np.ones(size, dtype=np.uint8)  # ones, not empty: every page is touched before timing
    dst = np.zeros(size, dtype=np.uint8)
    np.copyto(dst, src)  # warm-up: faults in dst's pages and the caches/TLB
    samples: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 3 and time.perf_counter() - t_start > budget_s:
            break
    med = statistics.median(samples)
    moved = 2 * size
    return CopyBandwidth(bytes_per_s=int(moved / med), best_bytes_per_s=int(moved / min(samples)), method=METHOD,
                         buffer_bytes=size, samples=len(samples), sample_s=tuple(round(s, 6) for s in samples),
                         measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         note="bytes counted as read + write (2 x buffer per copy); median of the timed copies")
