"""Supervisor: the state table, readiness, failures while loading, load timeouts, stop escalation, the event
log, the child's own session and its parent-death signal, against tests/fake_server.py (real processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpcrun.launch.outcome import classify
from gpcrun.launch.run import free_port
from gpcrun.launch.supervisor import ALLOWED, State, Supervisor, TransitionError

FAKE = Path(__file__).with_name("fake_server.py")
S = State


def fake_argv(mode: str, port: int, *extra: str) -> list[str]:
    # llama-server-like flags the fake ignores, as gpcrun would pass them
    return [sys.executable, str(FAKE), "-m", "/models/x.gguf", "-c", "512", "-t", "1", "--mode", mode,
            "--max-lifetime-s", "30", *extra, "--host", "127.0.0.1", "--port", str(port)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(cond, timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return cond()


@pytest.fixture
def sups(tmp_path):
    """Make supervisors over the fake server; every child is gone (or a zombie) when the test ends."""
    made: list[Supervisor] = []

    def make(mode: str, *extra: str, argv: list[str] | None = None) -> tuple[Supervisor, str]:
        port = free_port()
        n = len(made)
        sup = Supervisor(argv or fake_argv(mode, port, *extra), tmp_path / f"server{n}.log",
                         tmp_path / f"events{n}.jsonl")
        made.append(sup)
        return sup, f"http://127.0.0.1:{port}"

    yield make
    pids = [s.pid for s in made if s.pid]
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            s.stop("test teardown", grace_s=0.5)
    for pid in pids:
        assert wait_until(lambda: gone(pid), 2.0), f"child {pid} survived the test"


# ------------------------------------------------------------------------------------------------ the table

EXPECTED = {
    S.STARTING: {S.LOADING, S.FAILED},
    S.LOADING: {S.READY, S.STOPPING, S.FAILED},
    S.READY: {S.STOPPING, S.FAILED},
    S.STOPPING: {S.STOPPED, S.FAILED},
    S.STOPPED: set(),
    S.FAILED: set(),
}


def test_allowed_table_is_the_documented_one():
    assert ALLOWED == EXPECTED


@pytest.mark.parametrize("src", list(S), ids=lambda s: s.value)
@pytest.mark.parametrize("dst", list(S), ids=lambda s: s.value)
def test_transitions(tmp_path, src, dst):
    sup = Supervisor(["/bin/true"], tmp_path / "log", tmp_path / "events.jsonl")
    sup.state = src  # put it there directly: only the move under test goes through _to
    if dst in EXPECTED[src]:
        sup._to(dst, "test")
        assert sup.state is dst
        assert sup.transitions[-1].from_state == src.value and sup.transitions[-1].to_state == dst.value
    else:
        with pytest.raises(TransitionError, match=f"{src.value} -> {dst.value}"):
            sup._to(dst, "test")
        assert sup.state is src
        assert len(sup.transitions) == 1  # only "created"


def test_terminal_states_and_conditional_moves(tmp_path):
    sup = Supervisor(["/bin/true"], tmp_path / "log")
    assert sup.state is S.STARTING and sup.transitions[0].to_state == "starting"
    assert not sup.begin_stop("nothing to stop yet")  # STARTING cannot stop
    sup._to(S.LOADING)
    assert sup.begin_stop("x") and sup.state is S.STOPPING
    assert not sup.begin_stop("again")  # no second STOPPING
    sup._to(S.STOPPED)
    for dst in S:
        with pytest.raises(TransitionError):
            sup._to(dst)


# ------------------------------------------------------------------------------------------------ readiness

def test_ready_only_after_health_200_and_a_completion(sups):
    # --no-warmup: nothing has run at /health 200, so readiness needs a completion; /health is 200 after 0.2 s,
    # but /completion answers 503 until 0.8 s: ready only after both
    sup, url = sups("ok", "--ready-after-ms", "200", "--completion-after-ms", "800", "--no-warmup")
    t0 = time.monotonic()
    sup.start()
    assert sup.state is S.LOADING
    assert sup.wait_ready(url, 20)
    took = time.monotonic() - t0
    assert sup.state is S.READY and took >= 0.8
    tr = sup.transitions[-1]
    assert (tr.from_state, tr.to_state) == ("loading", "ready") and "completion" in tr.note
    assert sup.stop("done", grace_s=5) == 0
    assert sup.state is S.STOPPED and sup.kill_sent_at is None


def test_ready_with_warmup_reads_props_not_a_completion(sups):
    """llama.cpp's warmup already decoded once before /health 200: readiness reads /props (uncounted) instead."""
    sup, url = sups("ok", "--ready-after-ms", "200")
    sup.start()
    assert sup.wait_ready(url, 20)
    assert "warmup" in sup.transitions[-1].note and "completion" not in sup.transitions[-1].note
    assert sup.stop("done", grace_s=5) == 0


def test_die_while_loading_fails_fast(sups):
    sup, url = sups("die-loading", "--die-after-ms", "200")
    t0 = time.monotonic()
    sup.start()
    assert not sup.wait_ready(url, 30)
    assert time.monotonic() - t0 < 5  # the death, not the 30 s timeout, ended the wait
    assert sup.state is S.FAILED and sup.returncode == 1
    assert sup.transitions[-1].note == "exited with code 1"
    sup.stop("after failure")  # idempotent on a dead child: no signal, stays FAILED
    assert sup.state is S.FAILED and sup.term_sent_at is None
    log = sup.log_path.read_text()
    assert "error loading model" in log
    o = classify(sup.returncode, "loading", log)
    assert (o.kind, o.cause, o.exit_code) == ("load_failed", "model_invalid", 11)


def test_never_ready_times_out(sups):
    sup, url = sups("never-ready")
    sup.start()
    t0 = time.monotonic()
    assert not sup.wait_ready(url, 1.0)
    took = time.monotonic() - t0
    assert 1.0 <= took < 2.5 and sup.state is S.LOADING
    sup.stop("load timeout", grace_s=5)
    assert sup.state is S.STOPPED and sup.returncode == 0 and sup.kill_sent_at is None


def test_hanging_health_times_out_on_time(sups):
    sup, url = sups("hang-health")
    sup.start()
    t0 = time.monotonic()
    assert not sup.wait_ready(url, 1.0)
    assert time.monotonic() - t0 < 2.5  # a /health that never answers does not stretch the timeout
    sup.stop("load timeout", grace_s=5)
    assert sup.state is S.STOPPED


def test_cancel_ends_the_wait(sups):
    sup, url = sups("never-ready")
    sup.start()
    t0 = time.monotonic()
    assert not sup.wait_ready(url, 30, cancel=lambda: time.monotonic() - t0 > 0.3)
    assert time.monotonic() - t0 < 1.5 and sup.state is S.LOADING
    sup.stop("cancelled", grace_s=5)


@pytest.mark.parametrize("mode,rc,cause", [("sigill", -signal.SIGILL, "sigill"), ("oom-log", 1, "host_oom")])
def test_crashes_while_loading_are_classified(sups, mode, rc, cause):
    sup, url = sups(mode)
    sup.start()
    assert not sup.wait_ready(url, 30)
    assert sup.state is S.FAILED and sup.returncode == rc
    o = classify(sup.returncode, "loading", sup.log_path.read_text())
    assert o.cause == cause and o.exit_code == 11


def test_death_after_ready_is_failed(sups):
    sup, url = sups("ok")
    sup.start()
    assert sup.wait_ready(url, 20)
    os.kill(sup.pid, signal.SIGKILL)  # from outside, as the OOM killer would
    assert wait_until(lambda: sup.poll() is not None, 5)
    assert sup.state is S.FAILED and sup.returncode == -signal.SIGKILL
    assert sup.transitions[-1].note == "exited by signal SIGKILL"


def test_start_failure_is_failed(tmp_path):
    sup = Supervisor([str(tmp_path / "no-such-binary")], tmp_path / "log", tmp_path / "events.jsonl")
    with pytest.raises(OSError):
        sup.start()
    assert sup.state is S.FAILED and "could not start" in sup.transitions[-1].note
    assert sup.stop("nothing") is None


# ------------------------------------------------------------------------------------------------ stop

def test_stop_escalates_to_sigkill_after_the_grace_with_exactly_one_sigterm(sups, tmp_path):
    siglog = tmp_path / "signals.txt"
    sup, url = sups("ignore-sigterm", "--signal-log", str(siglog))
    sup.start()
    assert sup.wait_ready(url, 20)
    t0 = time.monotonic()
    rc = sup.stop("test", grace_s=0.5)
    took = time.monotonic() - t0
    assert rc == -signal.SIGKILL and sup.state is S.STOPPED
    assert sup.kill_sent_at is not None and sup.kill_sent_at - sup.term_sent_at == pytest.approx(0.5, abs=0.25)
    assert 0.5 <= took < 3
    sup.stop("again", grace_s=0.5)  # idempotent: no further signals
    lines = siglog.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SIGTERM"), lines
    assert [t.to_state for t in sup.transitions] == ["starting", "loading", "ready", "stopping", "stopped"]


def test_stop_counts_the_grace_from_an_earlier_sigterm(sups, tmp_path):
    siglog = tmp_path / "signals.txt"
    sup, url = sups("ignore-sigterm", "--signal-log", str(siglog))
    sup.start()
    assert sup.wait_ready(url, 20)
    assert sup.begin_stop("watchdog host_term") and sup.send_term()
    assert not sup.send_term()  # the one SIGTERM is spent
    assert wait_until(lambda: siglog.exists(), 5)
    time.sleep(0.3)  # the grace period is the subject here: let part of it pass before stop()
    t0 = time.monotonic()
    assert sup.stop("stop", grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 0.45
    assert len(siglog.read_text().splitlines()) == 1


def test_clean_stop_needs_no_sigkill(sups):
    sup, url = sups("ok")
    sup.start()
    assert sup.wait_ready(url, 20)
    t0 = time.monotonic()
    assert sup.stop("bye", grace_s=10) == 0
    assert time.monotonic() - t0 < 2 and sup.kill_sent_at is None and sup.state is S.STOPPED


def test_kill_now(sups):
    sup, url = sups("ignore-sigterm")
    sup.start()
    assert sup.wait_ready(url, 20)
    sup.kill_now("watchdog host_kill")
    assert sup.state is S.STOPPING
    assert wait_until(lambda: sup.poll() is not None, 5)
    assert sup.state is S.STOPPED and sup.returncode == -signal.SIGKILL and sup.term_sent_at is None


# ------------------------------------------------------------------------------------------------ event log

def test_events_jsonl_has_every_transition_with_timestamps(sups):
    sup, url = sups("ok")
    wall0 = time.time()
    sup.start()
    assert sup.wait_ready(url, 20)
    sup.stop("user", grace_s=5)
    events = [json.loads(line) for line in sup.events_path.read_text().splitlines()]
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        ("", "starting"), ("starting", "loading"), ("loading", "ready"), ("ready", "stopping"),
        ("stopping", "stopped")]
    assert events == [t.to_json() for t in sup.transitions]
    assert events[1]["note"] == f"pid {sup.pid}" and events[3]["note"] == "user"
    for a, b in zip(events, events[1:]):
        assert a["t_mono"] <= b["t_mono"] and a["t_wall"] <= b["t_wall"]
    assert wall0 - 1 <= events[0]["t_wall"] <= time.time()


# ------------------------------------------------------------------------------------------------ process hygiene

def test_child_has_its_own_session_and_group(sups):
    sup, url = sups("ok")
    sup.start()
    assert os.getsid(sup.pid) == sup.pid and os.getpgid(sup.pid) == sup.pid
    assert os.getsid(sup.pid) != os.getsid(0)
    assert sup.wait_ready(url, 20)
    sup.stop("bye", grace_s=5)


_ORPHAN_PARENT = """
import sys, time
from pathlib import Path
from gpcrun.launch.supervisor import Supervisor
sup = Supervisor(sys.argv[2:], Path(sys.argv[1]))
sup.start()
print(sup.pid, flush=True)
time.sleep(30)
"""


def test_parent_death_kills_the_child(tmp_path):
    """PR_SET_PDEATHSIG is not visible in /proc: check it by killing the supervising process with SIGKILL."""
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, str(tmp_path / "log"),
                               *fake_argv("ignore-sigterm", port)], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: gone(child), 2.0), "the server outlived its supervisor"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        parent.stdout.close()
        if child and not gone(child):
            os.killpg(child, signal.SIGKILL)
