"""`gpcrun serve` end to end, as a subprocess: the real llama-server (tiny models and SmolLM2) and
tests/fake_server.py for faults (crashes, a SIGTERM-deaf server, a memory leak the watchdog must stop).

No sleeps as synchronisation: every wait polls a condition against a deadline. Every process a test starts is
gone (or a zombie: pid 1 here does not reap) when the test ends.
"""
from __future__ import annotations

import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from gpcrun.hardware.host import read_host_memory
from gpcrun.launch.run import free_port
from tests.proc_util import assert_none_survive, gone, limited_child_cgroup, wait_until

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_server.py")
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------ helpers





class Serve:
    """One `gpcrun serve` subprocess with its own GPCRUN_HOME; remembers every descendant it saw."""

    def __init__(self, home: Path, *args: str, preexec_fn=None, env: dict | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.stderr_path = home / f"gpcrun-{time.monotonic_ns()}.stderr"
        self._err = open(self.stderr_path, "wb")
        env = dict(os.environ, GPCRUN_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "serve", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                     preexec_fn=preexec_fn)
        self.seen: set[int] = set()

    def children(self) -> list[int]:
        try:
            kids = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            kids = []
        self.seen.update(kids)
        return kids

    def run_dir(self) -> Path | None:
        runs = sorted((self.home / "runs").glob("*")) if (self.home / "runs").exists() else []
        return runs[-1] if runs else None

    def events(self) -> list[dict]:
        d = self.run_dir()
        p = d / "events.jsonl" if d else None
        if not p or not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def server_pid(self) -> int | None:
        for e in self.events():
            if e["to_state"] == "loading" and e["note"].startswith("pid "):
                pid = int(e["note"].split()[1])
                self.seen.add(pid)
                return pid
        return None

    def state(self) -> str | None:
        ev = self.events()
        return ev[-1]["to_state"] if ev else None

    def wait_state(self, state: str, timeout_s: float) -> bool:
        ok = wait_until(lambda: self.state() == state or self.proc.poll() is not None, timeout_s)
        self.server_pid()
        return bool(ok) and self.state() == state

    def wait(self, timeout_s: float = 30) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._err.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def cleanup(self) -> None:
        self.children()
        self.server_pid()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._err.closed:
            self._err.close()
        for pid in self.seen:  # the PDEATHSIG normally did this already
            if not gone(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serve(tmp_path):
    made: list[Serve] = []
    n = [0]

    def start(*args: str, preexec_fn=None, env: dict | None = None) -> Serve:
        n[0] += 1
        s = Serve(tmp_path / f"home{n[0]}", *args, preexec_fn=preexec_fn, env=env)
        made.append(s)
        return s

    yield start
    for s in made:
        s.cleanup()
    assert_none_survive([pid for s in made for pid in s.seen | {s.proc.pid}])


def completion_ok(url: str) -> bool:
    try:
        if requests.get(url + "/health", timeout=2).status_code != 200:
            return False
        r = requests.post(url + "/completion", json={"prompt": "Hello", "n_predict": 2, "cache_prompt": False},
                          timeout=30)
        return r.status_code == 200 and "content" in r.json()
    except (requests.RequestException, ValueError):
        return False


def real_args(bin_path: Path, model: Path, port: int, *extra: str) -> list[str]:
    return [str(model), "--quiet", "--server-bin", str(bin_path), *extra, "--", "--port", str(port), "-t", "1",
            "-tb", "1"]


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------------ real server

@pytest.mark.parametrize("model_name,sig", [("tiny-llama-q8_0", signal.SIGINT), ("smollm2", signal.SIGTERM),
                                            ("tiny-llama-q8_0", signal.SIGTERM)])
def test_serve_real_ready_then_signal_is_a_clean_stop(serve, llama_server_bin, tiny_models, smollm2, model_name,
                                                       sig):
    model = smollm2 if model_name == "smollm2" else tiny_models[model_name]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s = serve(*real_args(llama_server_bin, model, port))
    assert s.wait_state("ready", 60), s.stderr()
    assert completion_ok(url)
    server = s.server_pid()
    assert server and not gone(server)
    assert psutil.Process(server).exe() == str(llama_server_bin.resolve())
    # a few watchdog samples while it serves
    assert wait_until(lambda: len((s.run_dir() / "samples.jsonl").read_text().splitlines()) >= 2, 10)
    s.proc.send_signal(sig)
    assert s.wait(30) == 0, s.stderr()
    assert gone(server)
    d = s.run_dir()
    for name in ("plan.json", "argv.json", "server.log", "events.jsonl", "samples.jsonl", "run.json"):
        assert (d / name).is_file(), name
    assert not (d / "incident.json").exists()
    log = (d / "server.log").read_text(errors="replace")
    assert "gpcrun attempt 1" in log and "load_model: loading model" in log and f"127.0.0.1:{port}" in log
    argv = json.loads((d / "argv.json").read_text())
    assert argv[0] == str(llama_server_bin) and str(model) in argv
    assert argv[argv.index("--port") + 1] == str(port) and argv[argv.index("--host") + 1] == "127.0.0.1"
    plan = json.loads((d / "plan.json").read_text())
    assert plan["verdict"] == "ship"
    states = [e["to_state"] for e in s.events()]
    assert states == ["starting", "loading", "ready", "stopping", "stopped"]
    assert f"received {signal.Signals(sig).name}" in s.events()[3]["note"]
    samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert samples and all(x["host_available_bytes"] > 0 for x in samples)
    assert any(x["child_rss_bytes"] for x in samples)
    run = json.loads((d / "run.json").read_text())
    assert run["outcome"]["kind"] == "clean_stop" and run["outcome"]["exit_code"] == 0
    assert run["envelope"]["samples"] == len(samples) > 0
    assert run["envelope"]["peak_child_rss_bytes"] > 0 and run["ready_s"] > 0 and run["firing"] is None
    assert "clean_stop" in last_line(s.stderr())


PLANTED = {"key": "sk-planted-0042abcdef", "hf": "hf_PlantedToken123456789", "url": "urlpass-7788"}


def test_run_directory_is_private_and_holds_no_secret(serve, llama_server_bin, tiny_models):
    """--api-key, HF_TOKEN and a URL password in the environment: none reaches any file under GPCRUN_HOME (plan,
    argv, events, samples, log, run.json); the run directory is 0700 and every file in it 0600."""
    import stat
    port = free_port()
    env = {"HF_TOKEN": PLANTED["hf"], "HF_ENDPOINT": f"https://me:{PLANTED['url']}@hub.example"}
    s = serve(*real_args(llama_server_bin, tiny_models["tiny-llama-q8_0"], port, ), "--api-key", PLANTED["key"],
              env=env)
    assert s.wait_state("ready", 60), s.stderr()
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait(30) == 0, s.stderr()
    d = s.run_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    names = sorted(p.name for p in d.iterdir())
    assert {"argv.json", "plan.json", "events.jsonl", "samples.jsonl", "server.log", "run.json"} <= set(names)
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    argv = json.loads((d / "argv.json").read_text())
    assert argv[argv.index("--api-key") + 1] == "<redacted>"
    for p in s.home.rglob("*"):
        if p.is_file() and not p.name.endswith(".stderr"):
            data = p.read_bytes()
            assert not [k for k, v in PLANTED.items() if v.encode() in data], p
    assert not [k for k, v in PLANTED.items() if v in s.stderr()]


def test_serve_no_plan_passes_args_untouched(serve, llama_server_bin, tiny_models):
    model = tiny_models["tiny-llama-q8_0"]
    port = free_port()
    s = serve(*real_args(llama_server_bin, model, port, "--no-plan"))
    assert s.wait_state("ready", 60), s.stderr()
    d = s.run_dir()
    assert json.loads((d / "argv.json").read_text()) == [
        str(llama_server_bin), "-m", str(model), "--port", str(port), "-t", "1", "-tb", "1", "--host", "127.0.0.1"]
    assert not (d / "plan.json").exists()
    assert psutil.Process(s.server_pid()).cmdline()[1:] == json.loads((d / "argv.json").read_text())[1:]
    s.proc.send_signal(signal.SIGINT)
    assert s.wait(30) == 0


@pytest.mark.parametrize("refuse", [["--floor", "1e9"], ["--ctx", "100000000"]], ids=["floor", "ctx"])
def test_refused_plan_exits_10_without_starting(serve, llama_server_bin, tiny_models, refuse):
    port = free_port()
    s = serve(*real_args(llama_server_bin, tiny_models["tiny-llama-q8_0"], port, *refuse))
    assert s.wait(60) == 10, s.stderr()
    assert "refused" in s.stderr()
    d = s.run_dir()
    assert (d / "plan.json").exists() and json.loads((d / "plan.json").read_text())["verdict"] != "ship"
    for name in ("argv.json", "server.log", "events.jsonl", "run.json"):
        assert not (d / name).exists(), name


def test_force_starts_a_refused_plan(serve, llama_server_bin, tiny_models):
    port = free_port()
    s = serve(*real_args(llama_server_bin, tiny_models["tiny-llama-q8_0"], port, "--floor", "1e9", "--force"))
    assert s.wait_state("ready", 60), s.stderr()
    assert completion_ok(f"http://127.0.0.1:{port}")
    s.proc.send_signal(signal.SIGINT)
    assert s.wait(30) == 0
    assert "refuse" in s.stderr()


def test_bad_flag_exits_11_with_a_one_line_reason(serve, llama_server_bin, tiny_models):
    port = free_port()
    s = serve(*real_args(llama_server_bin, tiny_models["tiny-llama-q8_0"], port), "--no-such-flag")
    assert s.wait(60) == 11, s.stderr()
    line = last_line(s.stderr())
    assert line.startswith("gpcrun: load_failed:") and "--no-such-flag" in line, line
    run = json.loads((s.run_dir() / "run.json").read_text())
    assert run["outcome"]["cause"] == "bad_flag"


def test_missing_model_exits_3(serve, llama_server_bin, tmp_path):
    s = serve(str(tmp_path / "missing.gguf"), "--quiet", "--server-bin", str(llama_server_bin))
    assert s.wait(60) == 3
    assert "missing.gguf" in last_line(s.stderr())
    assert s.run_dir() is None  # nothing was started


def test_port_in_use_exits_11(serve, llama_server_bin, tiny_models):
    """Another process listens on --port: nothing is started (it would be taken for our server: 'ready', then
    'crashed'); exit 11, cause port_in_use, at once."""
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        t0 = time.monotonic()
        s = serve(*real_args(llama_server_bin, tiny_models["tiny-llama-q8_0"], port, "--no-plan"))
        assert s.wait(60) == 11, s.stderr()
    assert time.monotonic() - t0 < 15 and s.server_pid() is None
    assert "port is already in use" in last_line(s.stderr())
    assert json.loads((s.run_dir() / "run.json").read_text())["outcome"]["cause"] == "port_in_use"


# ------------------------------------------------------------------------------------------------ orphans

def test_kill_9_of_gpcrun_never_orphans_llama_server(serve, llama_server_bin, tiny_models, record_property):
    """20 rounds: gpcrun serve with the real server on a tiny model, ready, kill -9 gpcrun, the server is gone
    (dead or a zombie) within 2 s (PR_SET_PDEATHSIG)."""
    model = tiny_models["tiny-llama-q8_0"]
    passed, times = 0, []
    for i in range(20):
        port = free_port()
        s = serve(*real_args(llama_server_bin, model, port, "--no-plan"))
        assert s.wait_state("ready", 60), s.stderr()
        server = s.server_pid()
        assert server and not gone(server)
        t0 = time.monotonic()
        s.proc.kill()
        s.wait(10)
        ok = wait_until(lambda: gone(server), 2.0, step_s=0.005)
        times.append(time.monotonic() - t0)
        passed += bool(ok)
        assert ok, f"round {i}: llama-server {server} outlived gpcrun by 2 s"
    record_property("orphan_rounds_passed", passed)
    print(f"\norphan: {passed}/20 gone; kill->gone max {max(times) * 1000:.0f} ms")


# ------------------------------------------------------------------------------------------------ memory bomb

def _shim(tmp_path: Path, progress: Path, *extra: str) -> Path:
    shim = tmp_path / "fake-llama-server"
    shim.write_text("#!/bin/sh\n"
                    f"exec {sys.executable} {FAKE} --mode leak --leak-mb-per-s 1000 --leak-max-mb 1500 "
                    f"--leak-hold-s 3 --max-lifetime-s 30 --leak-progress {progress} {' '.join(extra)} \"$@\"\n")
    shim.chmod(0o755)
    return shim


def _progress(path: Path) -> tuple[list[float], list[int], float | None]:
    ts, alloc, term = [], [], None
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "term":
            term = float(parts[1])
        elif parts[0] == "ignored-term":
            continue
        elif len(parts) == 2:
            ts.append(float(parts[0]))
            alloc.append(int(parts[1]))
    return ts, alloc, term


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def breach_latency(run_dir: Path, progress: Path) -> dict:
    """Signal time minus the time the leak crossed the SIGTERM line. The crossing is computed from the last
    watchdog sample above the line: it had (available - line) bytes left, which the leak used up at the
    moment its progress file shows that many more bytes allocated."""
    inc = json.loads((run_dir / "incident.json").read_text())
    line = inc["limits"]["host_term_available_bytes"]
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    i = next(k for k, x in enumerate(samples) if x["host_available_seen_bytes"] < line)
    if i == 0:
        raise ValueError("the first sample was already below the line")
    before = samples[i - 1]
    ts, alloc, term = _progress(progress)
    if not ts or term is None:
        raise ValueError("the leak had not started or got no SIGTERM")
    a_before = _interp(ts, alloc, before["t_wall"])
    a_cross = a_before + (before["host_available_seen_bytes"] - line)
    if a_cross > alloc[-1]:
        raise ValueError("the line was crossed by something other than the leak")
    t_cross = _interp(alloc, ts, a_cross)  # allocation grows monotonically
    return {"latency_s": term - t_cross, "sent_latency_s": inc["signal_t_wall"] - t_cross,
            "leaked_mib": alloc[-1] / MIB, "samples": len(samples), "rule": inc["rule"]}


def run_bomb(serve, tmp_path: Path, model: Path, term_below_now_mib: int = 400, kill_below_now_mib: int = 1100,
             preexec_fn=None, available=None, fake_args: tuple[str, ...] = (),
             grace_s: float = 2) -> tuple[Serve, dict, Path]:
    progress = tmp_path / f"progress-{time.monotonic_ns()}.txt"
    shim = _shim(tmp_path, progress, *fake_args)
    avail_mib = (available or read_host_memory().effective_available_bytes) // MIB
    port = free_port()
    s = serve(str(model), "--no-plan", "--quiet", "--server-bin", str(shim),
              "--min-host-available", str(avail_mib - term_below_now_mib),
              "--kill-host-available", str(avail_mib - kill_below_now_mib), "--grace", str(grace_s),
              "--", "--port", str(port), preexec_fn=preexec_fn)
    wait_until(lambda: s.server_pid() or s.proc.poll() is not None, 10)
    rc = s.wait(30)
    return s, {"rc": rc, "avail_mib": avail_mib}, progress


def disturbed(s: Serve, progress: Path, avail_mib: int, tolerance_mib: int = 200) -> str | None:
    """Why a round cannot be judged: other processes on this machine moved available memory by more than
    tolerance_mib between the measurement the lines were set from and the start of the leak."""
    d = s.run_dir()
    if d is None or not (d / "samples.jsonl").exists():
        return None
    ts, _alloc, _term = _progress(progress) if progress.exists() else ([], [], None)
    start = ts[0] if ts else float("inf")
    pre = [json.loads(x)["host_available_seen_bytes"] // MIB for x in (d / "samples.jsonl").read_text().splitlines()
           if json.loads(x)["t_wall"] < start]
    off = [a - avail_mib for a in pre if abs(a - avail_mib) > tolerance_mib]
    if off:
        return f"available moved by {off[0]:+d} MiB before the leak started"
    return None


def test_memory_bomb_is_stopped_by_the_watchdog_within_250_ms(serve, tmp_path, tiny_models, record_property):
    """20 rounds: a fake server leaking 1 GB/s; the SIGTERM line ~400 MiB below what is available now. Exit 13,
    incident.json with host_term, the samples and advice; the SIGTERM arrives <= 250 ms after the crossing."""
    model = tiny_models["tiny-llama-q8_0"]
    lat, sent, redone = [], [], []
    attempts = 0
    while len(lat) < 20:
        attempts += 1
        assert attempts <= 26, f"too many rounds disturbed by other memory use: {redone}"
        s, res, progress = run_bomb(serve, tmp_path, model)
        d = s.run_dir()
        why = disturbed(s, progress, res["avail_mib"])
        if why:
            redone.append(why)
            continue
        assert res["rc"] == 13, s.stderr()
        assert "watchdog" in last_line(s.stderr())
        inc = json.loads((d / "incident.json").read_text())
        try:
            m = breach_latency(d, progress)
        except ValueError as e:  # another process on this machine moved memory by hundreds of MiB
            redone.append(str(e))
            continue
        assert inc["rule"] == "host_term" and inc["signal"] == "SIGTERM"
        assert inc["samples"] and inc["advice"] and inc["argv"][0].endswith("fake-llama-server")
        run = json.loads((d / "run.json").read_text())
        assert run["outcome"]["kind"] == "watchdog_abort" and run["outcome"]["cause"] == "host_term"
        assert run["firing"]["rule"] == "host_term" and run["envelope"]["limits_fired"] == ["host_term"]
        states = [e["to_state"] for e in s.events()]
        assert states == ["starting", "loading", "ready", "stopping", "stopped"], states
        assert s.events()[3]["note"] == "watchdog host_term"
        # stopped before the 1500 MiB the leak wanted (the line is relative to what was available at the
        # start, and other processes here move that by hundreds of MiB: no tighter bound)
        assert m["leaked_mib"] < 1400
        lat.append(m["latency_s"])
        sent.append(m["sent_latency_s"])
    ms = sorted(x * 1000 for x in lat)
    summary = (f"memory bomb: 20/20 exit 13 host_term; breach->SIGTERM received ms: min {ms[0]:.0f} median "
               f"{statistics.median(ms):.0f} max {ms[-1]:.0f}; all {[round(x) for x in ms]}; "
               f"redone {len(redone)} {redone}")
    record_property("memory_bomb", summary)
    print("\n" + summary)
    assert max(lat) <= 0.25, summary
    assert all(a <= b + 0.05 for a, b in zip(sent, lat))  # sent before it was received


def _bomb_undisturbed(serve, tmp_path, model, tries: int = 4, **kw):
    fake_args = list(kw.get("fake_args", ()))
    logs = [Path(fake_args[i + 1]) for i, a in enumerate(fake_args[:-1]) if a == "--signal-log"]
    for _ in range(tries):
        for log in logs:  # a retried round must not count the signals of the round it replaces
            log.unlink(missing_ok=True)
        s, res, progress = run_bomb(serve, tmp_path, model, **kw)
        why = disturbed(s, progress, res["avail_mib"])
        if not why:
            return s, res, progress
    pytest.fail(f"other processes kept moving available memory by > 200 MiB: {why}")


def test_sigterm_deaf_leak_gets_sigkill_at_the_kill_line(serve, tmp_path, tiny_models):
    """The leaking server ignores SIGTERM: right after the SIGTERM the watchdog keeps sampling and the SIGKILL
    line acts at once (no waiting out the 2 s settle time while memory keeps filling)."""
    siglog = tmp_path / "signals.txt"
    s, res, progress = _bomb_undisturbed(serve, tmp_path, tiny_models["tiny-llama-q8_0"], term_below_now_mib=300,
                                         kill_below_now_mib=700,
                                         fake_args=("--ignore-sigterm", "--signal-log", str(siglog)))
    d = s.run_dir()
    assert res["rc"] == 13, s.stderr()
    assert json.loads((d / "incident.json").read_text())["rule"] == "host_term"
    run = json.loads((d / "run.json").read_text())
    assert run["envelope"]["limits_fired"] == ["host_term", "host_kill"]
    ev = s.events()
    assert [e["to_state"] for e in ev][-2:] == ["stopping", "stopped"]
    assert ev[-2]["note"] == "watchdog host_term" and ev[-1]["note"] == "exited by signal SIGKILL"
    assert len(siglog.read_text().splitlines()) == 1
    _ts, alloc, _ = _progress(progress)
    # killed on the way to its 1500 MiB: had the watchdog waited out its 2 s settle time after the SIGTERM, the
    # 1 GB/s leak would have reached 1500 and held. (A tighter bound near the 700 MiB line failed in a fresh-clone
    # run when other processes freed memory during the leak and the line was crossed later.)
    assert alloc[-1] < 1450 * MIB
    assert "SIGKILL" in s.stderr()


def test_sigterm_deaf_server_after_a_watchdog_sigterm_is_killed_after_the_grace(serve, tmp_path, tiny_models):
    """The leak stops between the lines and ignores SIGTERM: gpcrun's --grace (1 s) after the watchdog's SIGTERM
    ends it with SIGKILL, not the watchdog's later repeat and not the leak's own exit."""
    siglog = tmp_path / "signals.txt"
    # 800 MB leaked against a line 200 MB down: room for other processes freeing memory meanwhile (a fresh-clone
    # run saw available fall only 268 MB while 620 MB leaked, with the line at 300 MB)
    s, res, progress = _bomb_undisturbed(serve, tmp_path, tiny_models["tiny-llama-q8_0"], term_below_now_mib=200,
                                         kill_below_now_mib=1400,
                                         fake_args=("--ignore-sigterm", "--signal-log", str(siglog),
                                                    "--leak-max-mb", "800", "--leak-hold-s", "5"), grace_s=1)
    d = s.run_dir()
    assert res["rc"] == 13, s.stderr()
    ev = s.events()
    assert ev[-2]["note"] == "watchdog host_term" and ev[-1]["note"] == "exited by signal SIGKILL"
    took = ev[-1]["t_mono"] - ev[-2]["t_mono"]
    assert 0.9 <= took < 1.9, took  # --grace 1, before the watchdog's 2 s settle time would repeat
    assert len(siglog.read_text().splitlines()) == 1
    assert json.loads((d / "run.json").read_text())["envelope"]["limits_fired"] == ["host_term"]


def test_a_repeated_watchdog_term_waits_out_the_grace(serve, tmp_path, tiny_models):
    """Still below the SIGTERM line (not the kill line) after the watchdog's 2 s settle time: the server keeps its
    --grace (3 s) before the SIGKILL; before this fix the repeat killed it at 2 s with 1 GB still free."""
    siglog = tmp_path / "signals.txt"
    s, res, progress = _bomb_undisturbed(serve, tmp_path, tiny_models["tiny-llama-q8_0"], term_below_now_mib=200,
                                         kill_below_now_mib=1400,
                                         fake_args=("--ignore-sigterm", "--signal-log", str(siglog),
                                                    "--leak-max-mb", "800", "--leak-hold-s", "8"), grace_s=3)
    assert res["rc"] == 13, s.stderr()
    ev = s.events()
    assert ev[-2]["note"] == "watchdog host_term" and ev[-1]["note"] == "exited by signal SIGKILL"
    took = ev[-1]["t_mono"] - ev[-2]["t_mono"]
    assert 2.9 <= took < 4.5, took
    assert len(siglog.read_text().splitlines()) == 1
    assert json.loads((s.run_dir() / "run.json").read_text())["envelope"]["limits_fired"] == ["host_term"]


# ------------------------------------------------------------------------------------------------ a real cgroup



def _cg_oom_kills(child: str) -> int | None:
    for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
        p = Path(child, name)
        if p.exists():
            for line in p.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    return None


def test_watchdog_fires_before_the_kernel_oom_killer_in_a_memory_cgroup(serve, tmp_path, tiny_models,
                                                                        record_property):
    """gpcrun (and so llama-server) alone in a child memory cgroup limited to 800 MiB; the leak would pass the
    limit, the watchdog (SIGTERM at 300 MiB headroom, SIGKILL at 100) must stop it before the kernel does."""
    limit = 800 * MIB
    child, _ = limited_child_cgroup(limit, "gpcrun-serve-test")
    procs = os.path.join(child, "cgroup.procs")

    def enter():  # in the forked child before exec: only the gpcrun process moves
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    try:
        # available as the cgroup sees it: the limit (the new cgroup is empty)
        s, res, progress = run_bomb(serve, tmp_path, tiny_models["tiny-llama-q8_0"],
                                    term_below_now_mib=500, kill_below_now_mib=700, preexec_fn=enter,
                                    available=limit)
        oom = _cg_oom_kills(child)
        peak = Path(child, "memory.max_usage_in_bytes")
        peak_b = int(peak.read_text()) if peak.exists() else None
    finally:
        ok = wait_until(lambda: _rmdir(child), 10, step_s=0.1)
    assert ok, f"could not remove {child}"
    d = s.run_dir()
    assert res["rc"] == 13, s.stderr()
    inc = json.loads((d / "incident.json").read_text())
    assert inc["rule"] == "host_term"
    samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["cgroup_max_bytes"] == limit  # the watchdog read the cgroup, not the host
    assert samples[0]["host_limit_bytes"] == limit
    assert oom == 0, "the kernel OOM killer fired first"
    try:
        m = breach_latency(d, progress)
        lat = f"leaked {m['leaked_mib']:.0f} MiB, breach->SIGTERM {m['latency_s'] * 1000:.0f} ms"
    except ValueError as e:  # gpcrun's own memory and page cache share the cgroup: not always attributable
        lat = f"latency not attributable to the leak alone ({e})"
    msg = (f"cgroup {limit // MIB} MiB: exit 13 host_term, oom_kill {oom}, peak usage "
           f"{None if peak_b is None else peak_b // MIB} MiB, {lat}")
    record_property("cgroup", msg)
    print("\n" + msg)
    assert peak_b is None or peak_b < limit


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ faults via gpcrun

@pytest.mark.parametrize("mode,extra,code,words", [
    ("die-loading", [], 11, ["could not be loaded"]),
    ("sigill", [], 11, ["SIGILL"]),
    ("oom-log", [], 11, ["host memory allocation failed"]),
    ("never-ready", ["--ready-timeout", "1"], 14, ["did not become ready"]),
    # stuck after a GGML_ASSERT (deaf to SIGTERM): stopped when the line appears, not at the load timeout
    ("assert-hang", ["--ready-timeout", "60"], 11, ["failed an assertion", "a->ne[2] == b->ne[0]"]),
])
def test_faults_through_gpcrun(serve, tmp_path, tiny_models, mode, extra, code, words):
    shim = tmp_path / "fake"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode {mode} --max-lifetime-s 30 \"$@\"\n")
    shim.chmod(0o755)
    t0 = time.monotonic()
    s = serve(str(tiny_models["tiny-llama-q8_0"]), "--no-plan", "--quiet", "--server-bin", str(shim), *extra,
              "--", "--port", str(free_port()))
    assert s.wait(30) == code, s.stderr()
    assert time.monotonic() - t0 < 10
    line = last_line(s.stderr())
    for w in words:
        assert w in line, line
    assert json.loads((s.run_dir() / "run.json").read_text())["outcome"]["exit_code"] == code


def test_a_stopped_server_is_found_unresponsive(serve, tmp_path, tiny_models):
    """SIGSTOP after ready (a debugger, a deadlock): /health gets no answer; with --liveness-timeout 2 gpcrun stops
    it and says so: exit 17, outcome unresponsive, the server gone."""
    shim = tmp_path / "fake"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode ok --max-lifetime-s 60 \"$@\"\n")
    shim.chmod(0o755)
    s = serve(str(tiny_models["tiny-llama-q8_0"]), "--no-plan", "--quiet", "--server-bin", str(shim),
              "--liveness-timeout", "2", "--grace", "1", "--", "--port", str(free_port()))
    assert s.wait_state("ready", 20), s.stderr()
    server = s.server_pid()
    os.kill(server, signal.SIGSTOP)
    t0 = time.monotonic()
    assert s.wait(30) == 17, s.stderr()
    assert time.monotonic() - t0 < 10
    assert gone(server)
    run = json.loads((s.run_dir() / "run.json").read_text())
    assert run["outcome"]["kind"] == "unresponsive" and "no answer" in run["outcome"]["reason"]


def test_sigterm_deaf_server_is_killed_after_the_grace(serve, tmp_path, tiny_models):
    siglog = tmp_path / "signals.txt"
    shim = tmp_path / "fake"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode ignore-sigterm --signal-log {siglog} "
                    f"--max-lifetime-s 30 \"$@\"\n")
    shim.chmod(0o755)
    s = serve(str(tiny_models["tiny-llama-q8_0"]), "--no-plan", "--quiet", "--server-bin", str(shim),
              "--grace", "0.5", "--", "--port", str(free_port()))
    assert s.wait_state("ready", 20), s.stderr()
    server = s.server_pid()
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGINT)
    assert s.wait(20) == 0
    assert 0.5 <= time.monotonic() - t0 < 5
    assert gone(server)
    assert len(siglog.read_text().splitlines()) == 1  # one SIGTERM, then SIGKILL
    assert "clean_stop" in last_line(s.stderr())


def test_restart_on_failure_after_a_crash(tmp_path, tiny_models):
    """The library behind --restart on-failure: a server that crashes after it was ready is restarted with
    backoff, max_restarts times, then the crash is the outcome (exit 12)."""
    from gpcrun.launch.run import RunOptions, ServerRun, server_argv

    port = free_port()
    argv = server_argv(sys.executable, [str(FAKE), "--mode", "crash", "--die-after-ms", "100", "--max-lifetime-s",
                                        "30", "-m", str(tiny_models["tiny-llama-q8_0"])], port=port)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    said: list[str] = []
    opts = RunOptions(argv=argv, run_dir=run_dir, ready_timeout_s=20, grace_s=1, restart="on-failure",
                      max_restarts=2, backoff_s=0.05, quiet=True, use_nvml=False, echo=said.append)
    t0 = time.monotonic()
    run = ServerRun(opts)
    result = run.run_until_stopped()
    assert time.monotonic() - t0 < 20
    assert run.ready_event.is_set()  # it was ready before each crash
    assert result.attempts == 3
    assert (result.outcome.kind, result.outcome.exit_code, result.outcome.cause) == ("crashed", 12, "exit_code")
    assert sum("restarting in" in m for m in said) == 2
    log = (run_dir / "server.log").read_text()
    assert "gpcrun attempt 3" in log
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    pids = [int(e["note"].split()[1]) for e in events if e["to_state"] == "loading"]
    assert len(pids) == 3 and all(wait_until(lambda p=p: gone(p), 2) for p in pids)
    assert [e["to_state"] for e in events].count("failed") == 3
    assert json.loads((run_dir / "run.json").read_text())["attempts"] == 3
