"""Watchdog: sample -> decide -> act. Stops llama-server before the kernel or the driver runs out of memory.

`decide(limits, samples)` is pure and table-tested. The loop re-reads memory right before it signals, and after
a kill waits before judging again. Polling adapts between poll_min_s and poll_max_s to the time left before
the headroom is gone at the current fill rate (earlyoom's rule of thumb).
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from ..atomic import open_private
from .sampling import Envelope, Sample

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    host_term_available_bytes: int  # SIGTERM below this
    host_kill_available_bytes: int  # SIGKILL below this
    gpu_min_free_bytes: int = 256 * MIB
    gpu_consecutive: int = 3
    temp_warn_c: int | None = 85
    temp_abort_c: int | None = None  # the user's limit: abort when sustained
    power_warn_frac: float | None = 1.0
    power_abort_frac: float | None = None
    sustained_s: float = 10.0
    poll_min_s: float = 0.1
    poll_max_s: float = 1.0
    # earlyoom's rule of thumb: poll as if memory could fill this fast even while it looks idle, so a load or
    # a leak that starts between two polls cannot eat the headroom above the SIGTERM line unseen
    assumed_fill_bytes_per_s: float = 6000 * MIB
    # how far back the server's own growth is checked against the fall of host available memory (see seen_available)
    accounting_window_s: float = 10.0

    @classmethod
    def defaults(cls, host_limit_bytes: int | None, **kw) -> "Limits":
        """The planner's host margin is the SIGTERM line: max(5 %, min(1 GiB, 12.5 %)) of the limit; 2.5 % ->
        SIGKILL (plan/constants.py, documented in the README)."""
        from ..plan.constants import host_kill_line_bytes, host_term_line_bytes
        return cls(host_term_available_bytes=host_term_line_bytes(host_limit_bytes),
                   host_kill_available_bytes=host_kill_line_bytes(host_limit_bytes), **kw)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Action:
    kind: str  # "none" | "warn" | "term" | "kill"
    rule: str = ""
    message: str = ""


NONE = Action("none")


def seen_available(limits: Limits, samples: Sequence[Sample]) -> int | None:
    """Host memory available as the watchdog judges it: the newest reading, lowered where it has not yet fallen by
    what the server itself took. For each sample r of the last accounting_window_s, available now is at most
    available(r) - (the server's anonymous memory now - then): its own new anonymous pages cannot come back from
    the page cache (memory it freed loosens that bound; the newest reading still caps it). Where the kernel's accounting is current this changes nothing (the reading already fell by at
    least that much, unless other processes freed memory meanwhile); where it lags behind allocations (a gVisor
    sandbox's synthesised /proc/meminfo fell 54-700 MiB while 512-873 MiB were allocated), a fast leak is seen as
    it happens, not a second later. Pure."""
    if not samples:
        return None
    s = samples[-1]
    av = s.host_available_bytes
    if av is None or s.child_anon_bytes is None:
        return av
    for r in samples:
        if (r.host_available_bytes is not None and r.child_anon_bytes is not None
                and s.t_mono - r.t_mono <= limits.accounting_window_s):
            av = min(av, r.host_available_bytes - (s.child_anon_bytes - r.child_anon_bytes))
    return av


def decide(limits: Limits, samples: Sequence[Sample]) -> Action:
    """The most severe action the newest samples call for. Pure."""
    if not samples:
        return NONE
    samples = list(samples)
    s = samples[-1]
    av = seen_available(limits, samples)
    lag = ""
    if av is not None and s.host_available_bytes is not None and av < s.host_available_bytes:
        lag = f" (MemAvailable still reads {s.host_available_bytes // MIB} MiB; the server's own growth says less)"
    if av is not None and av < limits.host_kill_available_bytes:
        return Action("kill", "host_kill", f"host memory available {av // MIB} MiB is below the kill line"
                      f" {limits.host_kill_available_bytes // MIB} MiB{lag}")
    if av is not None and av < limits.host_term_available_bytes:
        return Action("term", "host_term", f"host memory available {av // MIB} MiB is below"
                      f" {limits.host_term_available_bytes // MIB} MiB{lag}")
    n = limits.gpu_consecutive
    if len(samples) >= n:
        recent = samples[-n:]
        for g in s.gpus:
            frees = [next((x.free_bytes for x in r.gpus if x.index == g.index), None) for r in recent]
            if g.unified_memory:
                continue  # unified memory: VRAM pressure is host pressure, judged above
            if all(f is not None and f < limits.gpu_min_free_bytes for f in frees):
                return Action("term", "gpu_free", f"GPU {g.index} free VRAM {frees[-1] // MIB} MiB below"
                              f" {limits.gpu_min_free_bytes // MIB} MiB for {n} samples")
    sustained = [r for r in samples if s.t_mono - r.t_mono <= limits.sustained_s]
    span_ok = sustained and s.t_mono - sustained[0].t_mono >= limits.sustained_s * 0.9
    warn = None
    for g in s.gpus:
        if g.temperature_c is not None:
            if limits.temp_abort_c is not None and span_ok and all(
                    _gpu(r, g.index, "temperature_c", -1) >= limits.temp_abort_c for r in sustained):
                return Action("term", "gpu_temp", f"GPU {g.index} at {g.temperature_c} C for"
                              f" {limits.sustained_s:g} s (limit {limits.temp_abort_c} C)")
            if limits.temp_warn_c is not None and g.temperature_c >= limits.temp_warn_c:
                warn = warn or Action("warn", "gpu_temp_warn", f"GPU {g.index} at {g.temperature_c} C")
        if g.power_mw is not None and g.power_limit_mw:
            frac = g.power_mw / g.power_limit_mw
            if limits.power_abort_frac is not None and span_ok and all(
                    _gpu(r, g.index, "power_mw", 0) / g.power_limit_mw >= limits.power_abort_frac
                    for r in sustained):
                return Action("term", "gpu_power", f"GPU {g.index} at {100 * frac:.0f} % of its power limit for"
                              f" {limits.sustained_s:g} s")
            if limits.power_warn_frac is not None and frac >= limits.power_warn_frac:
                warn = warn or Action("warn", "gpu_power_warn", f"GPU {g.index} at {100 * frac:.0f} % power limit")
    return warn or NONE


def _gpu(s: Sample, index: int, attr: str, default):
    for g in s.gpus:
        if g.index == index:
            v = getattr(g, attr)
            return default if v is None else v
    return default


def next_interval(limits: Limits, samples: Sequence[Sample]) -> float:
    """Time until the headroom above the SIGTERM line is gone, / 4, clamped to [poll_min_s, poll_max_s].
    Host memory is assumed to fill at least at assumed_fill_bytes_per_s (faster when measured faster); a GPU's
    free VRAM at its measured rate. Slow when idle with a wide headroom, fast when memory moves or is short."""
    samples = list(samples)
    if len(samples) < 2:
        return limits.poll_min_s
    a, b = samples[len(samples) - 2], samples[len(samples) - 1]
    dt = b.t_mono - a.t_mono
    av_a, av_b = seen_available(limits, samples[:-1]), seen_available(limits, samples)
    if dt <= 0 or av_a is None or av_b is None:
        return limits.poll_min_s
    host_rate = max((av_a - av_b) / dt,  # bytes/s being used up
                    limits.assumed_fill_bytes_per_s or 0.0)
    times = []
    if host_rate > 0:
        times.append((av_b - limits.host_term_available_bytes) / host_rate)
    for g_b in b.gpus:
        g_a = next((x for x in a.gpus if x.index == g_b.index), None)
        if g_b.unified_memory or not g_a or g_a.free_bytes is None or g_b.free_bytes is None:
            continue
        gr = (g_a.free_bytes - g_b.free_bytes) / dt
        if gr > 0:
            times.append((g_b.free_bytes - limits.gpu_min_free_bytes) / gr)
    if not times:
        return limits.poll_max_s
    return max(limits.poll_min_s, min(limits.poll_max_s, min(times) / 4))


# ----------------------------------------------------------------------------------------------- loop

@dataclass(frozen=True)
class Firing:
    action: Action
    t_mono: float
    t_wall: float
    sample: Sample | None  # None: the watchdog could not read memory (watchdog_blind)
    reread: Sample | None


class Watchdog:
    """Background thread: sample -> decide -> act. `act(action)` signals the child (the supervisor owns it)."""

    def __init__(self, limits: Limits, sample: Callable[[], Sample], act: Callable[[Action], None],
                 on_warn: Callable[[Action], None] | None = None, samples_path=None, keep: int = 120,
                 after_kill_wait_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 blind_limit_s: float = 5.0) -> None:
        self.limits = limits
        self.sample = sample
        self.act = act
        self.on_warn = on_warn
        self.samples_path = samples_path
        self.recent: deque[Sample] = deque(maxlen=keep)
        self.last_row: dict | None = None
        self.envelope = Envelope()
        self.firings: list[Firing] = []
        self.after_kill_wait_s = after_kill_wait_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self.cpu_s = 0.0  # thread CPU time spent sampling and deciding
        self.blind_limit_s = blind_limit_s
        self._blind_since: float | None = None
        self._seen_memory = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpcrun-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _record(self, s: Sample) -> None:
        self.recent.append(s)
        self.envelope.add(s)
        row = s.to_json()
        row["host_available_seen_bytes"] = seen_available(self.limits, self.recent)  # what decide() judged
        row["host_term_line_bytes"] = self.limits.host_term_available_bytes  # `gpcrun ps` shows both
        self.last_row = row  # the newest samples.jsonl row, also for the metrics exporter (launch/metrics.py)
        if self.samples_path:
            try:
                with open_private(self.samples_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:  # a full or read-only disk: keep watching from memory, say so once
                self._warn_once(Action("warn", "samples_unwritable", f"cannot write {self.samples_path.name}"
                                       f" ({e.strerror or e}); the watchdog keeps deciding from memory"))

    def _settling(self, action: Action) -> bool:
        """True while the server was just signalled and gets after_kill_wait_s to exit: a repeat of the same
        or a milder action waits; a SIGKILL line crossed after a SIGTERM acts at once."""
        if not self.firings:
            return False
        last = self.firings[-1]
        if self.clock() - last.t_mono >= self.after_kill_wait_s:
            return False
        return not (action.kind == "kill" and last.action.kind == "term")

    def step(self) -> float:
        """One sample -> decide -> act round; returns the seconds to wait before the next."""
        c0 = time.thread_time()
        s = self.sample()
        self._record(s)
        action = decide(self.limits, self.recent)
        wait = next_interval(self.limits, self.recent)
        if action.kind in ("term", "kill") and not self._settling(action):
            again = self.sample()  # re-read right before signalling: never act on a stale number
            self._record(again)
            confirmed = decide(self.limits, self.recent)
            if confirmed.kind in ("term", "kill") and not self._settling(confirmed):
                self.cpu_s += time.thread_time() - c0
                self._fire(confirmed, s, again)
                # after a SIGTERM keep watching at the normal pace for the kill line; after a SIGKILL wait
                return self.after_kill_wait_s if confirmed.kind == "kill" else min(wait, self.after_kill_wait_s)
        elif action.kind == "warn":
            self._warn_once(action, limit=True)
        self.cpu_s += time.thread_time() - c0
        return wait

    def _fire(self, action: Action, sample: Sample | None, reread: Sample | None) -> None:
        self.firings.append(Firing(action, self.clock(), time.time(), sample, reread))
        if action.rule not in self.envelope.limits_fired:
            self.envelope.limits_fired.append(action.rule)
        self.act(action)

    def _warn_once(self, action: Action, limit: bool = False) -> None:
        """A warning, once per rule; limit=True: a limit's warning (temperature, power), kept in the envelope."""
        if action.rule in self._warned:
            return
        self._warned.add(action.rule)
        if limit and action.rule not in self.envelope.limits_fired:
            self.envelope.limits_fired.append(action.rule)
        if self.on_warn:
            try:
                self.on_warn(action)
            except Exception:  # noqa: BLE001 - a broken console must not end the watchdog
                pass

    def tick(self) -> float:
        """One step that never raises: the watchdog's own errors (a sampler exception) do not end it. When it can
        no longer read host memory (an exception, or the reading gone after it was there) for blind_limit_s,
        it stops the server rather than leave it unwatched (fails closed: rule watchdog_blind)."""
        try:
            wait = self.step()
            s = self.recent[-1] if self.recent else None
            blind_err = None
            if s is not None and s.host_available_bytes is not None:
                self._seen_memory = True
            elif self._seen_memory:
                blind_err = "host available memory is no longer readable"
        except Exception as e:  # noqa: BLE001 - anything the sampler or a reader raises
            wait, blind_err = self.limits.poll_min_s, f"{type(e).__name__}: {e}"
        if blind_err is None:
            self._blind_since = None
            return wait
        now = self.clock()
        if self._blind_since is None:
            self._blind_since = now
            self._warn_once(Action("warn", "watchdog_error", f"the watchdog cannot read memory ({blind_err});"
                                   f" the server is stopped if this lasts {self.blind_limit_s:g} s"))
        if now - self._blind_since >= self.blind_limit_s and not self.firings:
            self._fire(Action("term", "watchdog_blind", f"the watchdog could not read memory for"
                              f" {now - self._blind_since:.1f} s ({blind_err}): stopped rather than run unwatched"),
                       None, None)
            return self.after_kill_wait_s
        return wait

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.tick()
            self._stop.wait(wait)
