"""A supervised, watched llama-server run: the library behind `gpcrun serve` (and later bench and batch).

Run directory GPCRUN_HOME/runs/<id>/: plan.json, argv.json, server.log, events.jsonl (state transitions),
samples.jsonl (watchdog samples), incident.json (when the watchdog fired), run.json (outcome + envelope).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..atomic import PRIVATE, write_json_atomic
from ..exits import Exit
from ..paths import gpcrun_home
from ..redact import scrub, secret_values
from ..server_args import ServerArgs, settings
from .endpoint import port_taken, url_of
from .liveness import Liveness
from .logcap import DEFAULT_LOG_MAX_BYTES, CappedLog, ConsoleEcho
from .outcome import Outcome, advice_for, classify, fatal_line
from .signals import on_termination
from .supervisor import State, Supervisor
from .sampling import make_sampler
from .registry import RunRecord
from .watchdog import Action, Limits, Watchdog

# Load time budget: 30 s plus reading the file at 100 MB/s (a slow disk); a fixed 120 s fails big models.
LOAD_BASE_S = 30.0
LOAD_BYTES_PER_S = 100e6


def load_timeout_s(model_bytes: int | None) -> float:
    return LOAD_BASE_S + (model_bytes or 0) / LOAD_BYTES_PER_S


def new_run_dir(root: Path | None = None) -> Path:
    """A new run directory, 0700 (its files are 0600: write_run_doc, open_private): a run's command line and log
    are the user's alone."""
    root = root or gpcrun_home() / "runs"
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    d = root / run_id
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.mkdir(mode=0o700, exist_ok=False)
    os.chmod(d, 0o700)  # whatever the umask
    return d


def write_run_doc(path: Path, doc, secret_strings=()) -> None:
    """A run directory's JSON document: secrets redacted (secret flags' values, the literal secrets given, hf_
    tokens, URL credentials), written atomically, 0600."""
    write_json_atomic(path, scrub(doc, secret_strings), mode=PRIVATE)


def server_argv(server_bin: str, args: Sequence[str], host: str = "127.0.0.1", port: int | None = None,
                env: Mapping[str, str] | None = None) -> list[str]:
    """llama-server argv: the given args, plus --host/--port only where neither a flag nor LLAMA_ARG_HOST/PORT set
    them (the user wins; with neither, --port is llama-server's own default 8080, said explicitly)."""
    sa = ServerArgs.parse(list(args), os.environ if env is None else env, strict=False)
    argv = [str(server_bin), *args]
    if not sa.is_set("host"):
        argv += ["--host", host]
    elif all(h.endswith(".sock") for h in settings.listen(sa).hosts):
        return argv  # UNIX sockets only: no TCP port to name
    if not sa.is_set("port"):
        argv += ["--port", str(port if port is not None else 8080)]
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunOptions:
    argv: list[str]
    run_dir: Path
    model_bytes: int | None = None
    ready_timeout_s: float | None = None
    grace_s: float = 10.0
    liveness_timeout_s: float = 60.0  # after ready: no answer to /health this long -> unresponsive (0: off)
    limits: Limits | None = None
    restart: str = "no"  # "no" | "on-failure"
    max_restarts: int = 3
    backoff_s: float = 1.0
    quiet: bool = False
    nvml_backend: object = None
    use_nvml: bool = True
    echo: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    host_reader: Callable | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES  # server.log: head + rotating tail, never more on disk
    command: str = "serve"  # what `gpcrun ps` shows this run as: serve, bench, batch
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1 (launch/metrics.py); 0 = any free port
    metrics_textfile: str | None = None  # ... or node_exporter's textfile collector
    on_event: Callable[[dict], None] | None = None  # each state change with the status document
    model_label: str | None = None  # the model as the user named it (path or hub ref)


@dataclass
class RunResult:
    outcome: Outcome
    attempts: int
    run_dir: Path
    url: str
    ready_s: float | None
    envelope: dict
    watchdog_cpu_s: float
    firing: dict | None

    def to_json(self) -> dict:
        return {"outcome": self.outcome.to_json(), "attempts": self.attempts, "run_dir": str(self.run_dir),
                "url": self.url, "ready_s": self.ready_s, "envelope": self.envelope,
                "watchdog_cpu_s": round(self.watchdog_cpu_s, 4), "firing": self.firing}


class ServerRun:
    """Start, watch and stop llama-server; `run_until_stopped()` serves until a signal, a death or an abort."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.url = url_of(opts.argv)
        self.sup: Supervisor | None = None
        self.watchdog: Watchdog | None = None
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self._watchdog_action: Action | None = None
        self._log: CappedLog | None = None  # server.log, across attempts (closed at the end of the run)
        self.ready_s: float | None = None
        self.ready_event = threading.Event()  # set once a server became ready (run_until_stopped in a thread)
        self._nvml = None
        self._gpu_static: tuple = ()
        self._incident_written = False
        self._guard = None  # launch/router_watch.RouterGuard for a router
        self.record = RunRecord(opts.run_dir, opts.command, opts.model_label, self.url,  # `gpcrun ps`
                                on_change=opts.on_event)
        self.metrics = None  # launch/metrics.MetricsExporter when asked for
        self._dead_reason: str | None = None
        self._secrets = secret_values(opts.argv[1:], os.environ)
        write_run_doc(opts.run_dir / "argv.json", opts.argv, self._secrets)

    # ---------------------------------------------------------------------------- control from outside

    def _unresponsive(self, reason: str) -> None:
        self._dead_reason = reason
        self.opts.echo(f"gpcrun: {reason}: stopping it")
        self.request_stop("unresponsive")

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.request_stop(f"gpcrun received {signal.Signals(signum).name}")
        on_termination(handler)

    # ---------------------------------------------------------------------------- one attempt

    def _act(self, action: Action) -> None:
        """Watchdog decision -> signal. First term: ONE SIGTERM; a kill rule (the kill line crossed): SIGKILL at
        once; a repeated term: SIGKILL only once --grace has passed since the SIGTERM (until then the server is
        given its grace: stop() enforces it)."""
        sup = self.sup
        if sup is None:
            return
        if self._guard is not None and sup.term_sent_at is None and action.rule != "watchdog_blind":
            wd = self.watchdog  # a router: stop the model that grew, not the router (blind: stop it all)
            firing = self._guard.act(action, wd.recent[-1].models if wd and wd.recent else ())
            if firing["model"] is not None:
                self._write_incident(action, firing["sent"], firing["t_wall"], {k: firing[k] for k in ("model", "pid")})
            return
        if action.kind != "kill" and sup.term_sent_at is not None \
                and sup.clock() - sup.term_sent_at < self.opts.grace_s:
            return
        self._watchdog_action = self._watchdog_action or action
        kill = action.kind == "kill" or sup.term_sent_at is not None
        if kill:
            sup.kill_now(f"watchdog {action.rule}")
        else:
            sup.begin_stop(f"watchdog {action.rule}")
            sup.send_term()
        signalled_at = time.time()
        self.opts.echo(f"gpcrun: watchdog: {action.message} -> {'SIGKILL' if kill else 'SIGTERM'}")
        self._write_incident(action, "SIGKILL" if kill else "SIGTERM", signalled_at)

    def _write_incident(self, action: Action, sent: str = "", signalled_at: float | None = None,
                        extra: dict | None = None) -> None:
        if self._incident_written:
            return  # the first firing is the incident; an escalation shows in events.jsonl and run.json
        self._incident_written = True
        wd = self.watchdog
        plan = None
        p = self.opts.run_dir / "plan.json"
        if p.exists():
            try:
                plan = json.loads(p.read_text())
            except ValueError:
                plan = None
        doc = {"rule": action.rule, "kind": action.kind, "message": action.message, "signal": sent,
               "signal_t_wall": signalled_at, "t_wall": time.time(),
               "limits": self.opts.limits.to_json() if self.opts.limits else None,
               "samples": [s.to_json() for s in (wd.recent if wd else [])], "plan": plan, "argv": self.opts.argv,
               "advice": advice_for(action, plan), **(extra or {})}
        self._write_doc("incident.json", doc)

    def _write_doc(self, name: str, doc) -> None:
        """A run document, or a warning when the disk refuses it (full, read-only): the run itself goes on."""
        try:
            write_run_doc(self.opts.run_dir / name, doc, self._secrets)
        except OSError as e:
            self.opts.echo(f"gpcrun: warning: cannot write {self.opts.run_dir / name} ({e.strerror or e})")

    def _close_log(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except OSError as e:
                self.opts.echo(f"gpcrun: warning: cannot finish {self._log.path} ({e.strerror or e})")
            self._log = None

    def _open_nvml(self) -> None:
        if not self.opts.use_nvml or self._nvml is not None:
            return
        from ..hardware.nvml import NvmlSession  # without a driver node it opens nothing and imports no pynvml
        s = NvmlSession(self.opts.nvml_backend)
        if s.open():
            self._nvml = s
            inv = s.inventory()
            self._gpu_static = inv.devices

    def _api_key(self) -> str | None:
        return settings.api_key(ServerArgs.parse(self.opts.argv[1:], os.environ, strict=False))

    def _host_memory(self):
        if self.opts.host_reader is not None:
            return self.opts.host_reader()
        from ..hardware.host import read_host_memory
        return read_host_memory()

    def _oom_kills(self) -> int | None:
        return getattr(self._host_memory().cgroup, "oom_kill_count", None)

    def attempt(self, n: int) -> Outcome:
        o = self.opts
        log = o.run_dir / "server.log"
        if self._log is None:
            self._log = CappedLog(log, o.log_max_bytes)
        self._log.mark()
        self._watchdog_action = None
        # the attempt marker goes to server.log only, before the listeners: the console shows llama-server's output
        self._log.write(f"\n=== gpcrun attempt {n} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        fatal = _FatalScan()
        unlisten = [self._log.listen(fatal.feed)]
        echo = None
        if not o.quiet:
            echo = ConsoleEcho()
            unlisten.append(self._log.listen(echo))
        try:
            return self._attempt(n, fatal)
        finally:
            for stop in unlisten:
                stop()
            if echo is not None:
                echo.close()

    def _attempt(self, n: int, fatal: "_FatalScan") -> Outcome:
        o = self.opts
        oom_before = self._oom_kills()
        self.sup = sup = Supervisor(o.argv, o.run_dir / "server.log", o.run_dir / "events.jsonl",
                                    redact=lambda note: scrub(note, self._secrets), sink=self._log)
        self._open_nvml()
        if o.limits is None:
            o.limits = Limits.defaults(self._host_memory().effective_limit_bytes)
        from .router_watch import guard_for  # a router: each model sampled, a stop aimed at the one that grew
        self._guard, models_of = guard_for(self.url, self._api_key(), o)
        sampler = make_sampler(lambda: sup.pid, self._nvml, self._gpu_static, o.host_reader, models_of=models_of,
                               observe=self._guard.observe if self._guard else None)
        self.watchdog = wd = Watchdog(o.limits, sampler, self._act, on_warn=lambda a: o.echo(f"gpcrun: warning: {a.message}"),
                                      samples_path=o.run_dir / "samples.jsonl")
        t0 = time.monotonic()
        reuse = ServerArgs.parse(list(o.argv[1:]), os.environ, strict=False).flag("reuse-port")
        if not reuse and port_taken(self.url):  # a foreign process there would be taken for our server
            return Outcome.of(Exit.LOAD_FAILED, "port_in_use", f"the port is already in use: another process answers"
                              f" at {self.url}; pick another --port (nothing was started)")
        try:
            sup.start()
        except OSError as e:
            return Outcome("load_failed", 11, "exec", f"could not start {o.argv[0]}: {e.strerror or e}")
        self.record.update(state="loading", server_pid=sup.pid, attempt=n)
        wd.start()
        timeout = o.ready_timeout_s if o.ready_timeout_s is not None else load_timeout_s(o.model_bytes)
        # cancel: a signal to gpcrun is seen between two polls, not after the load timeout
        ready = sup.wait_ready(self.url, max(0.0, t0 + timeout - time.monotonic()), api_key=self._api_key(),
                               cancel=lambda: self._stop_requested.is_set() or fatal() is not None)
        if not ready and fatal() is not None and sup.poll() is None:  # it may hang in its backtrace handler
            o.echo(f"gpcrun: llama-server failed an assertion while loading: {scrub(fatal(), self._secrets)}")
            sup.kill_now("assertion failed")
        phase = "ready" if ready else "loading"
        timed_out = False
        if ready:
            self.ready_s = time.monotonic() - t0
            self.ready_event.set()
            o.echo(f"gpcrun: ready at {self.url} in {self.ready_s:.2f} s (run dir {o.run_dir})")
            self.record.update(state="ready", ready_at_unix=round(time.time(), 3))
            live = Liveness(self.url, self._api_key(), o.liveness_timeout_s, self._unresponsive)
            live.start()
            # until a signal, a death, the watchdog's SIGTERM or silence (then stop() below enforces the grace)
            while not self._stop_requested.is_set() and sup.poll() is None and sup.state is State.READY:
                self._stop_requested.wait(0.1)
            live.stop()
        elif sup.poll() is None and not self._stop_requested.is_set() and sup.state is State.LOADING:
            timed_out = True
        user_stop = self._stop_requested.is_set() and self._watchdog_action is None
        self.record.update(state="stopping")
        if sup.poll() is None:
            sup.stop(self._stop_reason or ("load timeout" if timed_out else "stopping"), o.grace_s)
        else:
            sup.stop("child exited", o.grace_s)
        wd.stop()
        if self._guard is not None:
            self._guard.close()
        oom_after = self._oom_kills()
        tail_text = self._log.recent_text()
        wa = self._watchdog_action
        out = classify(sup.returncode, phase, tail_text, oom_before, oom_after,
                       wa.rule if wa else None, wa.message if wa else "", user_stop, timed_out)
        if self._dead_reason is not None and out.kind == "clean_stop":
            return Outcome.of(Exit.UNRESPONSIVE, "liveness", self._dead_reason)
        if out.kind == "clean_stop" and phase == "loading" and self._stop_reason.startswith(("gpcrun received",
                                                                                            "interrupted")):
            return Outcome.of(Exit.INTERRUPTED, "signal", f"{self._stop_reason} while llama-server was loading")
        if out.kind == "clean_stop" and self._stop_reason:  # say who stopped it: a signal, a finished bench
            out = Outcome(out.kind, out.exit_code, out.cause, out.reason.replace("on request", self._stop_reason, 1))
        return out

    def run_until_stopped(self) -> RunResult:
        o = self.opts
        n = 0
        outcome = None
        self.record.register()
        if o.metrics_port is not None or o.metrics_textfile:  # opt-in: its http.server import is not paid otherwise
            from .metrics import exporter_for
            self.metrics = exporter_for(self)
        while True:
            n += 1
            outcome = self.attempt(n)
            if o.restart != "on-failure" or self._stop_requested.is_set() or n > o.max_restarts:
                break
            if outcome.kind in ("clean_stop", "refused"):
                break
            if outcome.kind == "watchdog_abort" or outcome.cause in ("oom_kill", "gpu_oom", "host_oom", "bad_flag",
                                                                     "model_invalid", "sigill"):
                break  # the model itself needs too much, or the setup is wrong: a restart repeats it
            delay = o.backoff_s * 2 ** (n - 1)
            o.echo(f"gpcrun: {outcome.reason}; restarting in {delay:.1f} s ({n}/{o.max_restarts})")
            if self._stop_requested.wait(delay):
                break
        wd = self.watchdog
        firing = None
        if wd and wd.firings:
            f = wd.firings[0]
            firing = {"rule": f.action.rule, "message": f.action.message, "t_mono": f.t_mono, "t_wall": f.t_wall}
        outcome = Outcome(outcome.kind, outcome.exit_code, outcome.cause, scrub(outcome.reason, self._secrets))
        result = RunResult(outcome, n, o.run_dir, self.url, self.ready_s, wd.envelope.to_json() if wd else {},
                           wd.cpu_s if wd else 0.0, firing)
        self._close_log()
        self._write_doc("run.json", result.to_json())
        self.record.unregister()
        if self.metrics is not None:
            self.metrics.stop()
        if self._nvml is not None:
            self._nvml.close()
        return result


class _FatalScan:
    """llama-server's live output (this attempt's), searched for an assertion or abort line; the first one found
    is kept. Fed chunk by chunk from the log pump; a line split between two chunks is still seen."""

    def __init__(self) -> None:
        self.carry = ""
        self.line: str | None = None

    def feed(self, chunk: bytes) -> None:
        if self.line is None:
            text = self.carry + chunk.decode(errors="replace")
            self.line = fatal_line(text)
            self.carry = text[-4096:]

    def __call__(self) -> str | None:
        return self.line
