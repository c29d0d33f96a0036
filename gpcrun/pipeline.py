"""The one run pipeline behind `serve`, `bench` and `batch`:

    resolve the model (path, split shards, hub ref: header only) -> plan -> (download a hub ref only if the plan
    ships) -> supervised, watched llama-server -> optional benchmark -> outcome -> receipt

`run(cfg)` returns a typed RunResult and never raises for a refused plan, a server that fails or a bench that
fails: those are outcomes (gpcrun/exits.py). Bad input (no such model, bad arguments) raises a GpcrunError.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import UsageError
from .exits import Exit
from .launch.outcome import Outcome
from .launch.signals import on_termination


@dataclass
class RunConfig:
    model: str | None  # MODEL as given (path or hub ref); None: llama-server's own -m / LLAMA_ARG_MODEL
    server_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None  # the environment llama-server will see (default: os.environ)
    ctx: int | None = None
    kv_type: str | None = None
    parallel: int | None = None
    floor_tok_s: float = 1.0
    margin_mib: float | None = None
    plan: bool = True  # False: --no-plan, the arguments go through untouched
    force: bool = False  # start even when the plan refuses
    server_bin: str | None = None
    bench: object | None = None  # a bench.BenchConfig: measure once ready, then stop
    timeout_s: float | None = None  # the whole run (load + bench), for batch jobs
    ready_timeout_s: float | None = None
    grace_s: float = 10.0
    liveness_timeout_s: float = 60.0  # after ready: no answer to /health this long -> unresponsive (0: off)
    restart: str = "no"
    max_restarts: int = 3
    limits: object | None = None  # launch.watchdog.Limits (default: from the effective host limit)
    quiet: bool = False  # do not echo llama-server's log
    log_max_bytes: int | None = None  # server.log's cap (None: launch.logcap.DEFAULT_LOG_MAX_BYTES)
    echo: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))
    on_plan: Callable[[object, list], None] | None = None  # shown the plan and its changes before anything starts
    runs_root: Path | None = None
    command: str = "serve"  # what `gpcrun ps` calls the run: serve, bench or batch
    metrics_port: int | None = None  # Prometheus exposition of the watchdog (launch/metrics.py)
    metrics_textfile: str | None = None
    on_event: Callable[[dict], None] | None = None  # run state changes (loading, ready, stopping): serve --json
    store: object | None = None  # receipt.ReceiptStore; None with write_receipt: the default store
    write_receipt: bool = False
    redact_paths: bool = False
    auto_port: bool = False  # pick a free port unless the user set one (bench, batch)
    handle_signals: bool = True  # SIGINT/SIGTERM stop the server cleanly (off for callers that own signals)


@dataclass
class RunResult:
    outcome: Outcome
    model: object | None = None  # planning.ResolvedModel
    plan: object | None = None  # plan.Plan
    plan_doc: dict | None = None  # plan.json: the plan and its changes to the command line, with reasons
    argv: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    measured: dict | None = None
    envelope: dict | None = None
    receipt: dict | None = None
    receipt_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


def _model_ref(cfg: RunConfig, sa) -> tuple[str | None, bool]:
    """(the reference gpcrun plans from, whether llama-server's own arguments name the model)."""
    from .server_args import settings
    src = settings.model_source(sa)
    if cfg.model:
        if src.kind in ("path", "hf", "url"):
            raise UsageError(f"MODEL {cfg.model} and llama-server's own {src.value} both name the model: give one")
        return cfg.model, False
    if src.kind == "path":
        return src.value, True
    if src.kind == "hf":  # llama.cpp's -hf syntax is gpcrun's OWNER/REPO[:QUANT]; -hff names the file
        repo = src.value.split(":", 1)[0]
        return (f"hf://{repo}/{src.hf_file}" if src.hf_file else src.value), True
    if not cfg.plan:
        return None, True  # --no-plan: llama-server gets exactly what it was given
    if src.kind == "url":
        raise UsageError("-mu/--model-url: gpcrun cannot read that model's header before llama-server downloads it;"
                         " run it unplanned with gpcrun serve --no-plan -- ...")
    if src.kind == "router":
        return None, True  # router/serve.py plans each of its models
    raise UsageError("no model: give MODEL, or llama-server's -m/--model, -hf/--hf-repo or LLAMA_ARG_MODEL")


def _is_router(sa) -> bool:
    from .server_args import settings
    return settings.model_source(sa).kind == "router"


def run(cfg: RunConfig) -> RunResult:
    from .launch.binary import find_tool
    from .planning import resolve_model, server_args
    env = os.environ if cfg.env is None else cfg.env
    binary = find_tool("llama-server", cfg.server_bin)
    if cfg.plan:
        sa = server_args(list(cfg.server_args), env, str(binary))
    else:  # --no-plan: the arguments go through untouched; read only to find -m when MODEL is not given
        from .server_args import ServerArgs
        sa = ServerArgs.parse(list(cfg.server_args), env, strict=False)
    ref, user_model = _model_ref(cfg, sa)
    t_start = time.monotonic()  # a job's timeout_s covers all of it: header, calibration, download, load, bench
    res = RunResult(Outcome.of(Exit.OK, None, "not started"))
    profile = None
    phase = ["reading the model's header"]
    try:
        with _deadline(cfg.timeout_s):
            res.model = resolve_model(ref) if ref is not None else None
            if cfg.write_receipt:
                phase[0] = "measuring this machine"
                from .hardware.profile import get_profile
                profile = get_profile().to_json()
            phase[0] = "planning"
            if cfg.plan and ref is None and _is_router(sa):
                from .router.serve import prepare_router
                args = prepare_router(cfg, res, sa, env, str(binary))
            else:
                args = _prepare(cfg, res, sa, env, user_model, phase)
    except _Deadline:
        res.outcome = Outcome.of(Exit.TIMEOUT, "job_timeout", f"the job exceeded its {cfg.timeout_s:g} s limit while"
                                                               f" {phase[0]}")
        return _finish(cfg, res, profile, env)
    if args is None:  # refused
        return _finish(cfg, res, profile, env)
    if cfg.bench is not None and "--metrics" not in args:
        args.append("--metrics")
    _serve(cfg, res, str(binary), args, t_start)
    return _finish(cfg, res, profile, env)


def _prepare(cfg: RunConfig, res: RunResult, sa, env, user_model: bool, phase: list) -> list[str] | None:
    """Plan (or not), the run directory, the hub download when the plan ships: llama-server's arguments, or None
    when the plan refused (res.outcome says so)."""
    from .launch.run import new_run_dir
    from .planning import build_request, plan_with_document
    model = res.model
    res.run_dir = run_dir = new_run_dir(cfg.runs_root)
    if cfg.plan:
        slots = cfg.parallel
        if cfg.bench is not None and getattr(cfg.bench, "concurrency", ()):
            slots = max(slots or 1, *cfg.bench.concurrency)
        req = build_request(cfg.ctx, cfg.kv_type, slots, cfg.floor_tok_s, cfg.margin_mib, sa)
        if cfg.limits is not None:  # planner and watchdog agree: the host margin is the SIGTERM line
            req = replace(req, host_margin_bytes=cfg.limits.host_term_available_bytes)
        plan, res.plan_doc = plan_with_document(model, req, sa, requested={"ctx": cfg.ctx, "kv_type": cfg.kv_type,
                                                                              "parallel": slots})
        res.plan = plan
        from .launch.run import write_run_doc
        from .redact import secret_values
        write_run_doc(run_dir / "plan.json", res.plan_doc, secret_values(sa.argv(), env))
        if cfg.on_plan:
            cfg.on_plan(plan, res.plan_doc["changes"])
        if plan.verdict != "ship" and not cfg.force:
            res.argv = list(plan.argv)
            res.outcome = Outcome.of(Exit.REFUSED, "plan", "; ".join(plan.reasons))
            return None
        args = list(plan.argv) if plan.argv else [*([] if user_model else ["-m", model.ref]), *sa.argv()]
    else:
        args = ["-m", model.ref, *cfg.server_args] if cfg.model else list(cfg.server_args)
    if model is not None and model.is_hub and not user_model:  # the plan ships: only now fetch the weights
        phase[0] = "downloading the model"
        args[args.index("-m") + 1] = model.local_path()
    return args


def _log_tail(run_dir, lines: int = 80) -> str | None:
    """llama-server's last lines for the receipt (the failure's lines are there; build_receipt scrubs secrets)."""
    if not run_dir:
        return None
    from .runs import log_tail
    text, _ = log_tail(run_dir, lines, max_bytes=64 * 1024)
    return text or None


class _Deadline(BaseException):
    """A job's timeout_s ran out before llama-server started (a BaseException: no `except Exception` on the way
    swallows it)."""


@contextlib.contextmanager
def _deadline(timeout_s: float | None):
    """SIGALRM after timeout_s, raised as _Deadline where the main thread is (a blocking read, llama-bench under
    subprocess.run, which kills it on the way out). Main thread only (batch runs its jobs there); elsewhere, and
    without a timeout, nothing is armed."""
    if not timeout_s or threading.current_thread() is not threading.main_thread():
        yield
        return

    due = time.monotonic() + timeout_s

    def fire(signum, frame):
        if time.monotonic() >= due - 0.05:
            raise _Deadline()
        if callable(old):  # a SIGALRM from outside: what it meant before (batch: stop like SIGTERM)
            old(signum, frame)
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _serve(cfg: RunConfig, res: RunResult, binary: str, args: list[str], t_start: float) -> None:
    from .launch.run import RunOptions, ServerRun, free_port, server_argv, url_of
    from .server_args import ServerArgs
    has_port = ServerArgs.parse(args, cfg.env or os.environ, strict=False).is_set("port")
    current: dict = {}
    try:
        for port_try in (1, 2):
            res.argv = argv = server_argv(binary, args, port=None if has_port or not cfg.auto_port else free_port())
            if port_try == 1:
                _say_listen_changes(cfg, argv[1 + len(args):], has_port)
            size = res.model.info.file_size_bytes if res.model is not None else None
            run = ServerRun(RunOptions(argv=argv, run_dir=res.run_dir, model_bytes=size,
                                       ready_timeout_s=cfg.ready_timeout_s or _left(cfg, t_start),
                                       grace_s=cfg.grace_s,
                                       liveness_timeout_s=cfg.liveness_timeout_s,
                                       limits=cfg.limits, restart=cfg.restart, max_restarts=cfg.max_restarts,
                                       quiet=cfg.quiet, echo=cfg.echo, command=cfg.command,
                                       metrics_port=cfg.metrics_port, metrics_textfile=cfg.metrics_textfile,
                                       on_event=cfg.on_event,
                                       model_label=_label(res),
                                       **({"log_max_bytes": cfg.log_max_bytes} if cfg.log_max_bytes else {})))
            if cfg.bench is None:  # serve: in this thread, until a signal, a death or the watchdog
                if cfg.handle_signals:
                    run.install_signal_handlers()
                rr = run.run_until_stopped()
                res.outcome, res.envelope = rr.outcome, rr.envelope
                return
            box: dict = {}
            th = threading.Thread(target=lambda run=run, box=box: box.update(r=run.run_until_stopped()),
                                  name="gpcrun-run", daemon=True)
            current.update(run=run, th=th, clients=[])
            if cfg.handle_signals:
                _bench_signals(run, current["clients"])
            th.start()
            while not run.ready_event.wait(0.1):
                if not th.is_alive():
                    break
            if run.ready_event.is_set() or has_port or not cfg.auto_port or port_try == 2:
                break
            th.join()
            rr = box.get("r")
            if not (rr and rr.outcome.cause == "port_in_use"):
                break
            # free_port() released the port before llama-server bound it and another process took it
            cfg.echo(f"gpcrun: port {url_of(argv).rsplit(':', 1)[1]} was taken before llama-server bound it;"
                     " retrying")
        _bench_and_stop(cfg, res, run, th, box, current["clients"], t_start)
    except KeyboardInterrupt:  # the caller's signal handling raised: stop and reap the server before going up
        if current:
            current["run"].request_stop("interrupted")
            current["th"].join(30)
        raise


def _label(res: RunResult) -> str | None:  # the model as `gpcrun ps` shows it: MODEL, or a router's model count
    models = getattr(res.plan, "models", None)
    return res.model.ref if res.model is not None else f"router: {len(models)} models" if models is not None else None


def _left(cfg: RunConfig, t_start: float) -> float | None:
    """What a job's timeout_s leaves for loading (planning and a download came out of it)."""
    return None if not cfg.timeout_s else max(0.001, cfg.timeout_s - (time.monotonic() - t_start))


def _say_listen_changes(cfg: RunConfig, added: list[str], has_port: bool) -> None:
    """--host/--port that gpcrun writes (printed like the plan's changes, with their reasons)."""
    why = {"--host": "llama-server's default (127.0.0.1), written out",
           "--port": ("a free port, for the benchmark's own server" if cfg.auto_port and not has_port
                      else "llama-server's default (8080), written out")}
    for flag, value in zip(added[::2], added[1::2]):
        cfg.echo(f"  + {flag} {value}: {why.get(flag, 'set by gpcrun')}")


def _bench_signals(run, clients: list) -> None:
    run.install_signal_handlers()
    stop_on_signal = signal.getsignal(signal.SIGTERM)

    def on_signal(signum, frame):
        stop_on_signal(signum, frame)
        for c in clients:  # llama-server would wait for our request in flight until its SIGKILL
            c.abort()
    on_termination(on_signal)


def _bench_and_stop(cfg: RunConfig, res: RunResult, run, th, box: dict, clients: list, t_start: float) -> None:
    from .bench import BenchClient, run_bench
    from .server_args import ServerArgs, settings
    bench_error = None
    timer = None
    if run.ready_event.is_set():
        if cfg.timeout_s:  # the job's time limit covers the bench too: what the load left of it
            left = max(0.0, cfg.timeout_s - (time.monotonic() - t_start))
            timer = threading.Timer(left, lambda: run.request_stop("job timeout"))
            timer.daemon = True  # an interrupt (batch: SIGTERM) must not leave gpcrun waiting for it to expire
            timer.start()
        try:
            key = settings.api_key(ServerArgs.parse(res.argv[1:], cfg.env or os.environ, strict=False))
            client = BenchClient(run.url, timeout_s=cfg.timeout_s or 600.0, api_key=key)
            clients.append(client)
            try:
                res.measured = run_bench(client, cfg.bench, cfg.echo, cancel=run._stop_requested.is_set).to_json()
            finally:
                client.s.close()  # an idle keep-alive connection would hold a stopping server up
        except Exception as e:  # noqa: BLE001 - recorded in the outcome and the receipt
            bench_error = str(e) if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: {e}"
        except BaseException:
            if timer:
                timer.cancel()
            raise
    timed_out = timer is not None and not timer.is_alive() and run._stop_reason == "job timeout"
    if timer:
        timer.cancel()
    stop = run._stop_reason if run._stop_requested.is_set() and not timed_out else ""  # a signal during the bench
    if not run._stop_requested.is_set():
        run.request_stop("bench finished")
    th.join()
    rr = box.get("r")
    res.envelope = rr.envelope if rr else None
    res.outcome = rr.outcome if rr else Outcome.of(Exit.CRASHED, "gpcrun", "the supervised run ended without a"
                                                    " result")
    if timed_out:
        res.outcome = Outcome.of(Exit.TIMEOUT, "job_timeout", f"the job exceeded its {cfg.timeout_s:g} s limit")
    elif res.outcome.kind == "clean_stop" and bench_error:
        res.outcome = Outcome.of(Exit.BENCH_FAILED, "interrupted" if stop else "bench",
                                 (f"interrupted ({stop}): " if stop else "") + bench_error)
    if res.measured is not None and run.watchdog is not None:
        res.measured["peak_rss_bytes"] = run.watchdog.envelope.peak_child_rss_bytes
        res.measured["peak_vram_bytes"] = run.watchdog.envelope.peak_child_vram_bytes or None


def _finish(cfg: RunConfig, res: RunResult, profile: dict | None, env: Mapping[str, str]) -> RunResult:
    if not cfg.write_receipt:
        return res
    from .receipt import ReceiptStore, build_receipt, compare_with_forecast
    plan_doc = res.plan_doc
    if res.measured is not None and res.model is not None:
        from .planning import served_model_check
        check = res.measured["model_check"] = served_model_check(res.model, (res.measured.get("server") or {})
                                                                 .get("model_path"))
        if check["same"] is False:
            cfg.echo(f"gpcrun: warning: {check['reason']}")
    if res.measured is not None:
        res.measured.update(compare_with_forecast(plan_doc, res.measured["decode_tok_s"]["mean"], cfg.floor_tok_s))
    build = ((res.measured or {}).get("server") or {}).get("build_info")
    llama_cpp = {"build_info": build}
    if res.argv:  # the binary that ran: its --version, and the sdist / cmake flags of the project's own build
        from .launch.binary import build_info
        llama_cpp.update(build_info(res.argv[0]))
    res.receipt = build_receipt(kind="bench", hardware=profile, model=res.model.receipt_doc() if res.model else None,
                                plan=plan_doc, argv=res.argv, env=env, llama_cpp=llama_cpp,
                                measured=res.measured, envelope=res.envelope, outcome=res.outcome.to_json(),
                                run_dir=str(res.run_dir) if res.run_dir else None,
                                redact_path_names=cfg.redact_paths, log_tail=_log_tail(res.run_dir))
    store = cfg.store if cfg.store is not None else ReceiptStore()
    res.receipt_path = store.save(res.receipt)
    return res


def attach(url: str, bench_cfg, *, api_key: str | None = None, floor_tok_s: float = 1.0, store=None,
           redact_paths: bool = False, echo: Callable[[str], None] = lambda m: None,
           model: str | None = None) -> RunResult:
    """`gpcrun bench --url [--model NAME]`: measure a server somebody else runs (or a router's model)."""
    from .bench import BenchClient, run_bench
    from .hardware.profile import get_profile
    res = RunResult(Outcome.of(Exit.OK, None, "attached to " + url))
    try:
        client = BenchClient(url, api_key=api_key, model=model)
        try:
            res.measured = run_bench(client, bench_cfg, echo).to_json()
        finally:
            client.s.close()
    except Exception as e:  # noqa: BLE001 - the receipt records the failure
        res.outcome = Outcome.of(Exit.BENCH_FAILED, "bench", str(e) if isinstance(e, (OSError, ValueError))
                                 else f"{type(e).__name__}: {e}")
    cfg = RunConfig(model=None, floor_tok_s=floor_tok_s, store=store, write_receipt=True, redact_paths=redact_paths)
    return _finish(cfg, res, get_profile().to_json(), os.environ)
