"""One owner of the llama-server Popen: explicit states, readiness, stop, and a log of every transition.

Stop = one SIGTERM to the child's process group (a second one makes llama-server exit(1) at once), a grace
period, SIGKILL to the group, reap. The child starts in its own session and, on Linux, with a parent-death
signal, so `kill -9` of gpcrun never leaves a llama-server holding memory.
"""
from __future__ import annotations

import ctypes
import enum
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic import open_private
from .logcap import CappedLog, Pump


class State(enum.Enum):
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


ALLOWED: dict[State, set[State]] = {
    State.STARTING: {State.LOADING, State.FAILED},
    State.LOADING: {State.READY, State.STOPPING, State.FAILED},
    State.READY: {State.STOPPING, State.FAILED},
    State.STOPPING: {State.STOPPED, State.FAILED},
    State.STOPPED: set(),
    State.FAILED: set(),
}


class TransitionError(RuntimeError):
    pass


@dataclass(frozen=True)
class Transition:
    t_wall: float
    t_mono: float
    from_state: str
    to_state: str
    note: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup(parent_pid: int) -> Callable[[], None] | None:
    if _prctl is None:
        return None

    def setup() -> None:  # runs in the child between fork and exec: no allocation, no locks
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(137)
    return setup


class Supervisor:
    """Runs one llama-server process. Not thread-safe for control calls; `state` reads are."""

    def __init__(self, argv: list[str], log_path: Path, events_path: Path | None = None,
                 env: dict | None = None, clock: Callable[[], float] = time.monotonic,
                 on_transition: Callable[[Transition], None] | None = None,
                 redact: Callable[[str], str] = str, sink: CappedLog | None = None) -> None:
        """redact: applied to each transition's note before it is kept or written (secrets out of events.jsonl).
        sink: the child's output goes through a pipe into it (bounded log, live listeners); without one it is
        appended to log_path directly."""
        self.argv = list(argv)
        self.redact = redact
        self.log_path = Path(log_path)
        self.events_path = Path(events_path) if events_path else None
        self.env = env
        self.clock = clock
        self.on_transition = on_transition
        self.proc: subprocess.Popen | None = None
        self.state = State.STARTING
        self.transitions: list[Transition] = []
        self.returncode: int | None = None
        self.term_sent_at: float | None = None
        self.kill_sent_at: float | None = None
        self._lock = threading.RLock()
        self._log_file = None
        self.sink = sink
        self._pump: Pump | None = None
        self._record(None, State.STARTING, "created")

    # --------------------------------------------------------------------------------- states

    def _record(self, old: State | None, new: State, note: str) -> None:
        tr = Transition(time.time(), self.clock(), old.value if old else "", new.value, self.redact(note))
        self.transitions.append(tr)
        if self.events_path:
            with open_private(self.events_path, "a") as f:
                f.write(json.dumps(tr.to_json()) + "\n")
        if self.on_transition:
            self.on_transition(tr)

    def _to(self, new: State, note: str = "") -> None:
        with self._lock:
            old = self.state
            if new not in ALLOWED[old]:
                raise TransitionError(f"{old.value} -> {new.value} is not allowed")
            self.state = new
            self._record(old, new, note)  # under the lock: events.jsonl keeps the order of the transitions

    def _to_if(self, sources: tuple[State, ...], new: State, note: str = "") -> bool:
        """Check-and-move in one step (the watchdog thread and the main thread both move the state)."""
        with self._lock:
            if self.state not in sources:
                return False
            self._to(new, note)
            return True

    # --------------------------------------------------------------------------------- life

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        read_fd = None
        if self.sink is not None:
            read_fd, out = os.pipe()  # both ends close-on-exec; Popen dup2()s `out` onto the child's 1 and 2
        else:
            self._log_file = out = open_private(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
                                         preexec_fn=_child_setup(os.getpid()))
        except OSError as e:
            if read_fd is not None:
                os.close(read_fd)
                os.close(out)
            self._to(State.FAILED, f"could not start {self.argv[0]}: {e.strerror or e}")
            raise
        if read_fd is not None:
            os.close(out)  # the child holds the only write end: EOF when it (and its group) are gone
            self._pump = Pump(read_fd, self.sink)
        self._to(State.LOADING, f"pid {self.proc.pid}")

    def poll(self) -> int | None:
        """Reap if exited; a death outside STOPPING moves to FAILED."""
        if self.proc is None:
            return self.returncode
        rc = self.proc.poll()
        if rc is not None and self.returncode is None:
            self.returncode = rc
            if not self._to_if((State.LOADING, State.READY), State.FAILED, f"exited {_describe_rc(rc)}"):
                self._to_if((State.STOPPING,), State.STOPPED, f"exited {_describe_rc(rc)}")
        return rc

    def wait_ready(self, url: str, timeout_s: float, on_progress: Callable[[float], None] | None = None,
                   poll_interval_s: float = 0.05, cancel: Callable[[], bool] | None = None,
                   api_key: str | None = None) -> bool:
        """True once /health is 200 and a real 1-token completion answers; False when the child died,
        timeout_s passed or cancel() said so (the caller decides what to do). Never sleeps past a child's
        death; a /health that does not answer costs at most the time left (capped at 2 s) per try."""
        t0 = self.clock()
        from ..server_args import ServerArgs, settings
        sa = ServerArgs.parse(list(self.argv[1:]), os.environ, strict=False)
        warmup = sa.flag("warmup") is not False
        router = settings.model_source(sa).kind == "router"
        import requests  # here, not at start-up: llama-server is already loading

        from .endpoint import session_for
        with session_for(url, api_key) as session:  # TCP, IPv6, UNIX socket or TLS; the API key sent
            while True:
                if self.poll() is not None:
                    return False
                if self.state is not State.LOADING:
                    return self.state is State.READY
                if cancel is not None and cancel():
                    return False
                elapsed = self.clock() - t0
                if elapsed > timeout_s:
                    return False
                if on_progress:
                    on_progress(elapsed)
                try:
                    health_timeout = max(0.25, min(2.0, timeout_s - elapsed))
                    if session.get(url + "/health", timeout=health_timeout).status_code == 200:
                        note = self._probe(session, url, warmup, router)
                        if note:
                            return self._to_if((State.LOADING,), State.READY,
                                               f"{note} after {self.clock() - t0:.2f} s")
                except (requests.RequestException, ValueError):
                    pass
                if cancel is not None and cancel():
                    return False
                # small models are ready in a fraction of a second: poll finely at first (a refused connection
                # costs microseconds), then every poll_interval_s (scripts/bench/startup.py)
                time.sleep(min(poll_interval_s, 0.01) if self.clock() - t0 < 3.0 else poll_interval_s)

    @staticmethod
    def _probe(session, url: str, warmup: bool, router: bool = False) -> str | None:
        """Readiness beyond /health 200 that leaves the user's /metrics alone. With llama.cpp's warmup (the
        default: common_init runs one decode before /health turns 200) the model has already run: /props is
        read (served without inference, not counted). With --no-warmup nothing has run yet: a 1-token
        completion proves it does, and shows once in /metrics (llamacpp:prompt_tokens_total ...). A router
        (--models-dir/--models-preset) loads models on demand: its /models list answering is its readiness."""
        if router:
            r = session.get(url + "/models", timeout=10)
            return "/health 200 and the router's /models answered" if r.status_code == 200 else None
        if warmup:
            r = session.get(url + "/props", timeout=10)
            return "/health 200 after llama.cpp's warmup, /props answered" if r.status_code == 200 else None
        r = session.post(url + "/completion", json={"prompt": "Hi", "n_predict": 1, "cache_prompt": False},
                         timeout=60)
        if r.status_code == 200 and "content" in r.json():
            return "/health 200 and a 1-token completion (--no-warmup)"
        return None

    def signal_group(self, sig: int) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def begin_stop(self, reason: str) -> bool:
        """LOADING/READY -> STOPPING (atomic); False when the server is already stopping or gone."""
        return self._to_if((State.LOADING, State.READY), State.STOPPING, reason)

    def send_term(self) -> bool:
        """The ONE SIGTERM of a stop (a second one makes llama-server exit(1) at once); False if already sent."""
        with self._lock:
            if self.term_sent_at is not None:
                return False
            self.term_sent_at = self.clock()
        return self.signal_group(signal.SIGTERM)

    def stop(self, reason: str, grace_s: float = 10.0) -> int | None:
        """ONE SIGTERM to the group, wait what is left of grace_s since it was sent, SIGKILL the group, reap.
        Idempotent; a SIGTERM the watchdog already sent counts as this stop's one."""
        if self.proc is None:
            return None
        self.poll()
        self.begin_stop(reason)
        if self.returncode is None:
            self.send_term()
        left = grace_s - (self.clock() - self.term_sent_at) if self.term_sent_at is not None else grace_s
        try:
            self.proc.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            self.kill_sent_at = self.clock()
            self.signal_group(signal.SIGKILL)
            self.proc.wait()
        self._kill_leftovers()
        self.poll()
        self.close()
        return self.returncode

    def kill_now(self, reason: str) -> None:
        """SIGKILL the group at once (watchdog: memory is about to run out)."""
        self.begin_stop(reason)
        self.kill_sent_at = self.clock()
        self.signal_group(signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        # anything the server forked into its group dies with it
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        if self._pump is not None:
            self._pump.join(2.0)  # the last words of the server (EOF once its group is gone)
            self._pump = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"by signal {-rc}"
    return f"with code {rc}"
