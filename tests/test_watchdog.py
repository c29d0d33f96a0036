"""The watchdog: pure decide() and next_interval() tables, the Envelope, step()'s re-read before acting, and
make_sampler over a fake host reader and a fake NVML session."""
from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from gpcrun.launch.sampling import Envelope, GpuSample, Sample, make_sampler
from gpcrun.launch.watchdog import GIB, MIB, NONE, Action, Limits, Watchdog, decide, next_interval, seen_available

LIM = Limits(host_term_available_bytes=2 * GIB, host_kill_available_bytes=1 * GIB, gpu_min_free_bytes=256 * MIB,
             gpu_consecutive=3, temp_warn_c=85, temp_abort_c=90, power_warn_frac=1.0, power_abort_frac=1.1,
             sustained_s=10.0, poll_min_s=0.1, poll_max_s=1.0)


def gpu(free_mib=8000, index=0, temp=None, power_w=None, limit_w=None, unified=False, used_mib=1000, child_mib=None):
    return GpuSample(index, None if free_mib is None else free_mib * MIB, used_mib * MIB,
                     None if child_mib is None else child_mib * MIB, None if power_w is None else power_w * 1000,
                     None if limit_w is None else limit_w * 1000, temp, unified)


def smp(t=0.0, avail_gib=10.0, gpus=(), limit_gib=32.0, rss_mib=500, anon_mib=None):
    return Sample(t, 1e9 + t, None if avail_gib is None else int(avail_gib * GIB), int(limit_gib * GIB), 0, None,
                  None, None, None if rss_mib is None else rss_mib * MIB, tuple(gpus),
                  None if anon_mib is None else anon_mib * MIB)


def series(*avail_gib, dt=0.5, gpus=None):
    return [smp(i * dt, a, gpus[i] if gpus else ()) for i, a in enumerate(avail_gib)]


def every(n, dt, **g):
    return [smp(i * dt, 10, [gpu(**g)]) for i in range(n)]


# ------------------------------------------------------------------------------------------------ decide

DECIDE = [
    ("no samples", [], "none", ""),
    ("plenty of host memory", series(10, 9, 8), "none", ""),
    ("just above the term line", series(2.01), "none", ""),
    ("below the term line", series(10, 1.9), "term", "host_term"),
    ("below the kill line", series(10, 0.9), "kill", "host_kill"),
    ("kill line wins over a GPU rule", [smp(i, 0.5, [gpu(100)]) for i in range(3)], "kill", "host_kill"),
    ("unknown host memory", series(None), "none", ""),
    ("GPU free low 3 samples in a row", [smp(i, 10, [gpu(f)]) for i, f in enumerate([200, 100, 50])], "term",
     "gpu_free"),
    ("GPU free low 2 samples only", [smp(i, 10, [gpu(f)]) for i, f in enumerate([8000, 100, 50])], "none", ""),
    ("GPU free low but only 2 samples exist", [smp(i, 10, [gpu(100)]) for i in range(2)], "none", ""),
    ("GPU recovered in the newest sample", [smp(i, 10, [gpu(f)]) for i, f in enumerate([100, 100, 300])], "none",
     ""),
    ("GPU free unknown in one sample", [smp(i, 10, [gpu(f)]) for i, f in enumerate([100, None, 100])], "none", ""),
    ("second GPU low, first fine", [smp(i, 10, [gpu(8000, 0), gpu(100, 1)]) for i in range(3)], "term",
     "gpu_free"),
    ("unified-memory GPU ignored for the VRAM rule", [smp(i, 10, [gpu(10, unified=True)]) for i in range(5)],
     "none", ""),
    ("temperature at warn", [smp(0, 10, [gpu(temp=86)])], "warn", "gpu_temp_warn"),
    ("temperature at abort, not sustained", [smp(t, 10, [gpu(temp=95)]) for t in (0, 2, 4)], "warn",
     "gpu_temp_warn"),
    ("temperature at abort for 10 s", every(11, 1.0, temp=91), "term", "gpu_temp"),
    ("temperature dipped once within 10 s", [smp(t, 10, [gpu(temp=80 if t == 5 else 91)]) for t in range(11)],
     "warn", "gpu_temp_warn"),
    ("power at the limit: warn", [smp(0, 10, [gpu(power_w=300, limit_w=300)])], "warn", "gpu_power_warn"),
    ("power over abort for 10 s", every(11, 1.0, power_w=340, limit_w=300), "term", "gpu_power"),
    ("power over abort, not sustained", every(4, 1.0, power_w=340, limit_w=300), "warn", "gpu_power_warn"),
    ("power limit unknown", every(11, 1.0, power_w=340, limit_w=None), "none", ""),
    ("host term wins over temperature", [smp(t, 1.5 if t == 10 else 10, [gpu(temp=95)]) for t in range(11)],
     "term", "host_term"),
]


@pytest.mark.parametrize("name,samples,kind,rule", DECIDE, ids=[d[0] for d in DECIDE])
def test_decide(name, samples, kind, rule):
    a = decide(LIM, samples)
    assert (a.kind, a.rule) == (kind, rule), a
    if kind != "none":
        assert a.message


def test_decide_without_abort_limits_only_warns():
    lim = Limits(host_term_available_bytes=GIB, host_kill_available_bytes=0)  # temp_abort_c/power_abort None
    assert decide(lim, every(30, 1.0, temp=99, power_w=400, limit_w=300)).kind == "warn"
    assert decide(Limits(GIB, 0, temp_warn_c=None, power_warn_frac=None), every(3, 1.0, temp=99)) is NONE


def test_decide_is_pure():
    s = [smp(i, 10, [gpu(100)]) for i in range(3)]
    before = json.dumps([x.to_json() for x in s])
    assert decide(LIM, s) == decide(LIM, tuple(s)) == decide(LIM, s)
    assert json.dumps([x.to_json() for x in s]) == before


def test_default_limits():
    lim = Limits.defaults(64 * GIB)
    assert lim.host_term_available_bytes == int(0.05 * 64 * GIB)
    assert lim.host_kill_available_bytes == int(0.025 * 64 * GIB)
    small = Limits.defaults(8 * GIB)
    assert small.host_term_available_bytes == GIB  # max(5 %, min(1 GiB, 12.5 %))
    assert Limits.defaults(None).host_term_available_bytes == GIB  # the limit unknown: 1 GiB
    # a small container: the lines scale with its limit (a 1 GiB floor would sit above an 800 MiB limit)
    tiny = Limits.defaults(800 * MIB)
    assert (tiny.host_term_available_bytes, tiny.host_kill_available_bytes) == (100 * MIB, 20 * MIB)
    assert Limits.defaults(4 * GIB).host_term_available_bytes == 512 * MIB


def test_planner_margin_is_the_watchdog_line():
    """A 181 MiB plan in an 800 MiB container ships (margin 100 MiB, the SIGTERM line), and a user's
    --min-host-available becomes the planner's host margin (pipeline: Request.host_margin_bytes)."""
    from gpcrun.plan import DeviceTarget, Request, Target
    from gpcrun.plan.layout import LayoutTable
    from gpcrun.plan.memory import memory_map
    from gpcrun.plan.types import Placement
    from tests.synthetic import moe_model
    table = LayoutTable(moe_model(n_layer=2, n_expert=4, n_expert_used=2, n_vocab=1000), (), 0)
    host = DeviceTarget("CPU", "host", 700 * MIB, 10e9, limit_bytes=800 * MIB)
    pl = Placement(ngl=0, n_cpu_moe=0, ctx=512, type_k="f16", type_v="f16")
    mem = memory_map(table, Target(host), pl, Request(ctx=512))[0]
    assert mem.margin_bytes == Limits.defaults(800 * MIB).host_term_available_bytes == 100 * MIB
    mine = memory_map(table, Target(host), pl, Request(ctx=512, host_margin_bytes=300 * MIB))[0]
    assert mine.margin_bytes == 300 * MIB


# ------------------------------------------------------------------------------------------------ seen_available

def grow(*rows, dt=0.25):
    """(available GiB, server anonymous MiB) per sample, dt apart."""
    return [smp(i * dt, a, anon_mib=m) for i, (a, m) in enumerate(rows)]


@pytest.mark.parametrize("name,samples,seen_gib", [
    ("no samples", [], None),
    ("accounting current: the reading fell with the growth", grow((10, 0), (9, 1024), (8, 2048)), 8),
    ("accounting lags: reading still 10, the server took 3 GiB", grow((10, 0), (10, 1024), (10, 3072)), 7),
    ("half seen: the reading fell 1 of 3 GiB", grow((10, 0), (9.5, 1024), (9, 3072)), 7),
    ("the server freed memory: nothing to add", grow((8, 3072), (8, 1024), (9, 0)), 9),
    ("others freed what the server took: the growth still counts", grow((10, 0), (10, 2048)), 8),
    ("anonymous memory unknown: the reading as is", grow((10, None), (10, None)), 10),
    ("unknown in the older sample: skipped", grow((10, None), (10, 1024), (10, 1024)), 10),
    ("older than the window: not held against now", [smp(0, 10, anon_mib=0), smp(11, 10, anon_mib=2048)], 10),
    ("within the window", [smp(0, 10, anon_mib=0), smp(9.5, 10, anon_mib=2048)], 8),
])
def test_seen_available(name, samples, seen_gib):
    got = seen_available(LIM, samples)
    assert got == (None if seen_gib is None else int(seen_gib * GIB)), name


def test_decide_sees_a_leak_the_reading_has_not_caught_up_with():
    lagging = grow((10, 0), (10, 4096), (10, 8704), dt=0.1)  # 8.5 GiB in 0.2 s, the reading unmoved
    assert decide(LIM, lagging[:2]) == NONE
    a = decide(LIM, lagging)
    assert (a.kind, a.rule) == ("term", "host_term") and "MemAvailable still reads 10240 MiB" in a.message
    assert decide(LIM, lagging + [smp(0.3, 10, anon_mib=9300)]).kind == "kill"


def test_next_interval_polls_fast_while_the_server_grows_unseen():
    lim = Limits(host_term_available_bytes=2 * GIB, host_kill_available_bytes=1 * GIB, assumed_fill_bytes_per_s=0)
    assert next_interval(lim, grow((10, 0), (10, 0), dt=0.5)) == lim.poll_max_s
    assert next_interval(lim, grow((10, 0), (10, 4096), dt=0.5)) < 0.6  # 8 GiB/s seen: 4 GiB of headroom left


# ------------------------------------------------------------------------------------------------ next_interval

IDLE = Limits(host_term_available_bytes=2 * GIB, host_kill_available_bytes=GIB, poll_min_s=0.1, poll_max_s=1.0,
              assumed_fill_bytes_per_s=6000 * MIB)


@pytest.mark.parametrize("name,samples,lim,expect", [
    ("one sample: fast", series(20), IDLE, 0.1),
    ("idle with a wide headroom: slow", series(40, 40), IDLE, 1.0),
    ("memory freed: slow", series(30, 40), IDLE, 1.0),
    ("filling at 1 GiB/s: the assumed 6000 MiB/s is faster", series(13, 12.5), IDLE, 10.5 * 1024 / 6000 / 4),
    ("filling at 10 GiB/s: the measured rate is faster", series(20, 15), IDLE, 13 / 10 / 4),
    ("filling at 50 GiB/s: clamped to poll_min", series(30, 5), IDLE, 0.1),
    ("idle but only 1 GiB above the line: fast (earlyoom rule)", series(3, 3), IDLE, 0.1),
    ("below the line already: poll_min", series(1.5, 1.5), IDLE, 0.1),
    ("no assumed rate: idle is poll_max", series(3, 3), Limits(2 * GIB, GIB, assumed_fill_bytes_per_s=0), 1.0),
    ("measured rate without assumed rate", series(12, 11), Limits(2 * GIB, GIB, assumed_fill_bytes_per_s=0,
                                                                   poll_max_s=5.0), 9 / 2 / 4),
    ("GPU filling fast: its headroom decides", series(40, 40, gpus=[[gpu(4000)], [gpu(2000)]]), IDLE,
     (2000 - 256) / 4000 / 4),
    ("unified GPU ignored", series(40, 40, gpus=[[gpu(4000, unified=True)], [gpu(100, unified=True)]]), IDLE,
     1.0),
    ("host memory unknown", series(None, None), IDLE, 0.1),
])
def test_next_interval(name, samples, lim, expect):
    got = next_interval(lim, samples)
    assert got == pytest.approx(expect, rel=1e-6)
    assert lim.poll_min_s <= got <= lim.poll_max_s


def test_next_interval_custom_clamps():
    lim = Limits(2 * GIB, GIB, poll_min_s=0.25, poll_max_s=3.0)
    assert next_interval(lim, series(200, 200)) == 3.0  # (198 GiB / 6000 MiB/s / 4) > 3
    assert next_interval(lim, series(30, 10)) == 0.25


# ------------------------------------------------------------------------------------------------ envelope

def test_envelope_peaks_and_minima():
    e = Envelope()
    e.add(smp(0, 10, [gpu(8000, used_mib=1000, child_mib=500, temp=60, power_w=100, limit_w=300)], rss_mib=100))
    e.add(smp(1, 4, [gpu(6000, used_mib=3000, child_mib=2500, temp=75, power_w=250, limit_w=300)], rss_mib=900))
    e.add(smp(2, 8, [gpu(7000, used_mib=2000, child_mib=None, temp=None, power_w=None, limit_w=300)], rss_mib=400))
    e.add(smp(3, None, [], rss_mib=None))
    d = e.to_json()
    assert d["samples"] == 4
    assert d["min_host_available_bytes"] == 4 * GIB
    assert d["peak_host_used_fraction"] == pytest.approx(1 - 4 / 32, abs=1e-4)
    assert d["peak_child_rss_bytes"] == 900 * MIB
    assert d["peak_gpu_used_bytes"] == {"0": 3000 * MIB}
    assert d["peak_child_vram_bytes"] == {"0": 2500 * MIB}
    assert d["peak_power_fraction"] == pytest.approx(250 / 300, abs=1e-4)
    assert d["peak_temperature_c"] == 75
    json.dumps(d)


def test_empty_envelope():
    d = Envelope().to_json()
    assert d["samples"] == 0 and d["min_host_available_bytes"] is None and d["limits_fired"] == []


# ------------------------------------------------------------------------------------------------ step

class Script:
    """A sampler that returns the given host-available values (GiB) in order, on a fake clock."""

    def __init__(self, *avail_gib):
        self.values = list(avail_gib)
        self.t = 0.0
        self.calls = 0

    def clock(self) -> float:
        return self.t

    def __call__(self) -> Sample:
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        self.t += 0.01
        if isinstance(v, Exception):
            raise v
        return smp(self.t, v)


def make_wd(script: Script, tmp_path=None, **kw):
    acts: list[Action] = []
    warns: list[Action] = []
    wd = Watchdog(LIM, script, acts.append, on_warn=warns.append,
                  samples_path=(tmp_path / "samples.jsonl") if tmp_path else None, clock=script.clock, **kw)
    return wd, acts, warns


def test_a_full_disk_does_not_end_the_watchdog(tmp_path):
    """samples.jsonl cannot be written (here: a directory in its place): one warning, and it keeps deciding."""
    (tmp_path / "samples.jsonl").mkdir()
    script = Script(10, 10, 1.5, 1.4)
    wd, acts, warns = make_wd(script, tmp_path)
    wd.tick()
    wd.tick()
    wd.tick()
    assert [w.rule for w in warns] == ["samples_unwritable"] and [a.rule for a in acts] == ["host_term"]


def test_sampler_errors_do_not_end_the_watchdog_and_blindness_fails_closed():
    """A reader that raises now and then: warned once, the watchdog goes on; one that keeps raising (or loses the
    reading it had) for blind_limit_s: the server is stopped rather than left unwatched."""
    err = OSError(5, "Input/output error")
    script = Script(10, err, 10, 10)
    wd, acts, warns = make_wd(script, blind_limit_s=1.0)
    for _ in range(4):
        wd.tick()
    assert [w.rule for w in warns] == ["watchdog_error"] and acts == [] and "Input/output error" in warns[0].message
    script = Script(10, *[err] * 200)
    wd, acts, warns = make_wd(script, blind_limit_s=1.0)
    n = 0
    while not acts and n < 300:
        wd.tick()
        script.t += 0.1
        n += 1
    assert [a.rule for a in acts] == ["watchdog_blind"] and acts[0].kind == "term"
    assert 1.0 <= script.t <= 1.5 and wd.envelope.limits_fired == ["watchdog_blind"]
    wd.tick()
    assert len(acts) == 1  # once
    script = Script(10, None, None)  # the reading itself gone after it was there
    wd, acts, warns = make_wd(script, blind_limit_s=0.05)
    for _ in range(20):
        wd.tick()
        script.t += 0.01
    assert [a.rule for a in acts] == ["watchdog_blind"] and "no longer readable" in acts[0].message
    script = Script(None, None)  # never readable (an old kernel without MemAvailable): not blindness
    wd, acts, warns = make_wd(script, blind_limit_s=0.05)
    for _ in range(20):
        wd.tick()
        script.t += 0.01
    assert acts == []


def test_step_rereads_before_acting_and_does_not_act_on_a_recovered_value(tmp_path):
    script = Script(1.5, 5.0)  # a breach, then the re-read shows it recovered
    wd, acts, _ = make_wd(script, tmp_path)
    wd.step()
    assert acts == [] and wd.firings == [] and script.calls == 2
    assert wd.envelope.limits_fired == []
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2  # both reads are recorded


def test_step_acts_when_the_reread_confirms():
    script = Script(1.5, 1.4)
    wd, acts, _ = make_wd(script)
    wait = wd.step()
    assert [a.rule for a in acts] == ["host_term"] and script.calls == 2
    f = wd.firings[0]
    assert f.sample.host_available_bytes == int(1.5 * GIB) and f.reread.host_available_bytes == int(1.4 * GIB)
    assert wd.envelope.limits_fired == ["host_term"]
    assert wait <= LIM.poll_max_s  # after a SIGTERM it keeps watching for the kill line


def test_step_reread_can_escalate_to_kill():
    script = Script(1.5, 0.5)
    wd, acts, _ = make_wd(script)
    assert wd.step() == wd.after_kill_wait_s  # after a SIGKILL it waits
    assert [a.kind for a in acts] == ["kill"]


def test_after_a_term_a_repeat_waits_but_the_kill_line_acts_at_once():
    script = Script(1.5, 1.5, 1.4, 1.4, 0.5, 0.5)
    wd, acts, _ = make_wd(script, after_kill_wait_s=2.0)
    wd.step()  # term
    wd.step()  # still below the term line within the grace: no second action, no re-read
    assert [a.kind for a in acts] == ["term"] and script.calls == 3
    wd.step()  # below the term line again, still settling
    wd.step()  # below the kill line: SIGKILL now
    assert [a.kind for a in acts] == ["term", "kill"]
    script.t += 5.0  # past the wait: a repeated breach acts again (the run escalates it)
    wd.step()
    assert [a.kind for a in acts] == ["term", "kill", "kill"]


def test_warn_is_reported_once():
    lim = Limits(GIB, 0, temp_warn_c=80)
    warns: list[Action] = []
    s = iter([smp(i, 10, [gpu(temp=85)]) for i in range(5)])
    wd = Watchdog(lim, lambda: next(s), lambda a: pytest.fail("must not act"), on_warn=warns.append)
    for _ in range(5):
        wd.step()
    assert [w.rule for w in warns] == ["gpu_temp_warn"] and wd.envelope.limits_fired == ["gpu_temp_warn"]


def test_thread_runs_and_stops_and_counts_cpu():
    script = Script(10.0)
    wd = Watchdog(Limits(GIB, 0, poll_min_s=0.01, poll_max_s=0.01, assumed_fill_bytes_per_s=0), script,
                  lambda a: None)
    wd.start()
    deadline = time.monotonic() + 5
    while script.calls < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    wd.stop()
    assert script.calls >= 5 and not wd._thread.is_alive()
    assert wd.cpu_s >= 0 and wd.envelope.samples == script.calls


# ------------------------------------------------------------------------------------------------ make_sampler

class FakeNvmlSession:
    """What make_sampler uses of hardware.nvml.NvmlSession: sample(unified by nvml index) -> volatiles."""

    def __init__(self, volatiles):
        self.volatiles = volatiles
        self.asked = []

    def sample(self, unified=None):
        self.asked.append(dict(unified or {}))
        return tuple(self.volatiles)


def _vol(free, used, procs, power=150_000, temp=60):
    return SimpleNamespace(free_bytes=free, used_bytes=used, power_draw_mw=power, temperature_c=temp,
                           processes=procs)


def _host(avail=20 * GIB, limit=32 * GIB, cgroup=None):
    return lambda: SimpleNamespace(effective_available_bytes=avail, effective_limit_bytes=limit,
                                   swap_free_bytes=0, cgroup=cgroup)


def test_make_sampler_with_fake_nvml_reads_the_childs_vram_and_free():
    child = os.getpid()  # a live pid so tree_rss_bytes has something to read
    procs0 = (SimpleNamespace(pid=child, used_bytes=3 * GIB), SimpleNamespace(pid=12345678, used_bytes=GIB))
    procs1 = (SimpleNamespace(pid=999999, used_bytes=GIB),)
    nvml = FakeNvmlSession([_vol(5 * GIB, 19 * GIB, procs0), _vol(40 * GIB, GIB, procs1, power=None, temp=None)])
    static = [SimpleNamespace(nvml_index=0, cuda_index=1, unified_memory=False, power_limit_mw=300_000),
              SimpleNamespace(nvml_index=1, cuda_index=0, unified_memory=None, power_limit_mw=None)]
    cg = SimpleNamespace(current_bytes=3 * GIB, max_bytes=8 * GIB, pressure=SimpleNamespace(some_avg10_pct=1.5))
    t = iter([5.0, 6.0])
    sample = make_sampler(lambda: child, nvml, static, _host(4 * GIB, 8 * GIB, cg), clock=lambda: next(t))
    s = sample()
    assert nvml.asked == [{0: False, 1: False}]
    assert s.t_mono == 5.0 and s.host_available_bytes == 4 * GIB and s.host_limit_bytes == 8 * GIB
    assert (s.cgroup_current_bytes, s.cgroup_max_bytes, s.psi_some_avg10) == (3 * GIB, 8 * GIB, 1.5)
    assert s.child_rss_bytes and s.child_rss_bytes > 1 * MIB
    g0, g1 = s.gpus
    assert (g0.index, g0.free_bytes, g0.used_bytes, g0.child_bytes) == (1, 5 * GIB, 19 * GIB, 3 * GIB)
    assert (g0.power_mw, g0.power_limit_mw, g0.temperature_c) == (150_000, 300_000, 60)
    assert (g1.index, g1.free_bytes, g1.child_bytes, g1.power_mw) == (0, 40 * GIB, None, None)
    json.dumps(s.to_json())
    assert sample().t_mono == 6.0


def test_make_sampler_child_vram_sums_its_contexts_and_handles_unknowns():
    child = os.getpid()
    procs = (SimpleNamespace(pid=child, used_bytes=GIB), SimpleNamespace(pid=child, used_bytes=2 * GIB),
             SimpleNamespace(pid=child, used_bytes=None))
    nvml = FakeNvmlSession([_vol(None, None, procs), _vol(GIB, GIB, None)])
    static = [SimpleNamespace(nvml_index=0, cuda_index=0, unified_memory=True, power_limit_mw=None),
              SimpleNamespace(nvml_index=1, cuda_index=1, unified_memory=False, power_limit_mw=None)]
    s = make_sampler(lambda: child, nvml, static, _host())()
    assert nvml.asked == [{0: True, 1: False}]
    assert s.gpus[0].child_bytes == 3 * GIB and s.gpus[0].unified_memory is True
    assert s.gpus[1].child_bytes is None  # process list unreadable
    assert s.cgroup_max_bytes is None


def test_make_sampler_without_child_or_gpu():
    s = make_sampler(lambda: None, None, (), _host())()
    assert s.child_rss_bytes is None and s.gpus == ()
    gone = make_sampler(lambda: 2 ** 22 + 12345, None, (), _host())()  # no such pid
    assert gone.child_rss_bytes is None


def test_make_sampler_real_host():
    s = make_sampler(lambda: os.getpid())()
    assert s.host_available_bytes and s.host_limit_bytes and 0 < s.host_available_bytes <= s.host_limit_bytes
    assert s.child_rss_bytes > 0
