#!/usr/bin/env python3
"""A stand-in llama-server for fault injection (stdlib only), selected by --mode.

It accepts and ignores llama-server's flags (-m, -c, -t, ...), reads --host/--port and serves /health and
/completion like llama-server does. Every mode is bounded: the process exits by itself after --max-lifetime-s.

Modes:
  ok              /health 503 for --ready-after-ms, then 200; /completion answers {"content": ...} and /props
                  {"total_slots": 1, ...} (both 503 before --completion-after-ms when that is given)
  ignore-sigterm  like ok, but SIGTERM is ignored (each one is logged to --signal-log); only SIGKILL stops it
  die-loading     /health 503; after --die-after-ms prints "error loading model" and exits 1
  hang-health     accepts connections but never answers /health
  never-ready     /health 503 forever
  leak            like ok; --leak-after-ms after the first completion or /props it allocates and touches memory at
                  --leak-mb-per-s up to --leak-max-mb, appending "<unix time> <bytes allocated>" lines to
                  --leak-progress; holds it --leak-hold-s, then frees it and exits 0. SIGTERM is logged to the
                  progress file as "term <unix time>" and ends the process at once.
  oom-log         prints "failed to allocate buffer for kv cache" and exits 1
  assert-hang     prints a GGML_ASSERT line like ggml_abort does, then hangs ignoring SIGTERM (a backtrace handler
                  that never returns)
  sigill          kills itself with SIGILL
  crash           like ok; --die-after-ms after the first completion or /props it exits 2 with no message

Any mode: --spam-mb N writes N MB of numbered log lines as fast as it can from the start (a burst like -lv 4 under
load), then "fake: spam done, <lines> lines".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIB = 1 << 20
MODES = ("ok", "ignore-sigterm", "die-loading", "hang-health", "never-ready", "leak", "oom-log", "sigill", "crash",
         "assert-hang")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    p.add_argument("--mode", choices=MODES, default="ok")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--ready-after-ms", type=float, default=100)
    p.add_argument("--completion-after-ms", type=float, default=None,
                   help="/completion answers 503 until then (default: same as --ready-after-ms)")
    p.add_argument("--die-after-ms", type=float, default=150)
    p.add_argument("--max-lifetime-s", type=float, default=60)
    p.add_argument("--signal-log", default=None)
    p.add_argument("--ignore-sigterm", action="store_true", help="any mode: log SIGTERM and carry on")
    p.add_argument("--leak-mb-per-s", type=float, default=1000)
    p.add_argument("--leak-max-mb", type=float, default=1500)
    p.add_argument("--leak-after-ms", type=float, default=200)
    p.add_argument("--leak-hold-s", type=float, default=3)
    p.add_argument("--leak-progress", default=None)
    p.add_argument("--spam-mb", type=float, default=0)
    p.add_argument("--no-warmup", action="store_true", help="like llama-server's: gpcrun then probes /completion")
    args, _ignored = p.parse_known_args(argv)  # llama-server flags and their values
    args.leak_max_mb = min(args.leak_max_mb, 2000)  # never a real memory bomb
    return args


def say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class Leak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fd = os.open(args.leak_progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) \
            if args.leak_progress else None
        self.started = threading.Event()
        self.blocks: list[bytes] = []

    def log(self, line: str) -> None:
        if self.fd is not None:
            os.write(self.fd, (line + "\n").encode())

    def trigger(self) -> None:
        if not self.started.is_set():
            self.started.set()
            threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        a = self.args
        time.sleep(a.leak_after_ms / 1000)
        rate = a.leak_mb_per_s * MIB
        limit = int(a.leak_max_mb * MIB)
        chunk = 8 * MIB
        allocated = 0
        self.log(f"{time.time():.6f} 0")
        t0 = time.monotonic()
        while allocated + chunk <= limit:
            delay = t0 + (allocated + chunk) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.blocks.append(b"\x01" * chunk)  # memset: every page touched
            allocated += chunk
            self.log(f"{time.time():.6f} {allocated}")
        say(f"fake: leaked {allocated // MIB} MiB; holding {a.leak_hold_s:g} s")
        time.sleep(a.leak_hold_s)
        self.blocks.clear()
        self.log("done")
        os._exit(0)


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:  # like llama-server: usage, exit 0 (gpcrun reads it for the grammar)
        print("fake llama-server: a test double; see tests/fake_server.py")
        return
    if "--list-devices" in argv:  # like a CPU-only llama-server build: no device to offload to
        print("Available devices:\n  (none)")
        return
    args = parse(argv)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGILL must not leave core files
    t_start = time.monotonic()
    say(f"fake llama-server: mode {args.mode}, pid {os.getpid()}, {args.host}:{args.port}")

    def lifetime() -> None:
        time.sleep(args.max_lifetime_s)
        say("fake: max lifetime reached")
        os._exit(3)
    threading.Thread(target=lifetime, daemon=True).start()

    if args.spam_mb > 0:
        def spam() -> None:
            line = "x" * 109  # 128 bytes a line
            n = int(args.spam_mb * MIB) // 128
            out = sys.stdout.buffer
            for i in range(n):
                out.write(f"spam {i:012d} {line}\n".encode())
            out.flush()
            say(f"fake: spam done, {n} lines")
        threading.Thread(target=spam, daemon=True).start()

    if args.mode == "oom-log":
        say("llama_kv_cache: failed to allocate buffer for kv cache")
        say("llama_init_from_model: failed to initialize the context")
        sys.exit(1)
    if args.mode == "assert-hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("load_tensors: loading model tensors")
        say("/llama.cpp/ggml/src/ggml.c:1934: GGML_ASSERT(a->ne[2] == b->ne[0]) failed")
        time.sleep(args.max_lifetime_s)
        sys.exit(99)
    if args.mode == "sigill":
        os.kill(os.getpid(), signal.SIGILL)
        time.sleep(5)
        sys.exit(99)

    leak = Leak(args) if args.mode == "leak" else None

    def on_term(signum, _frame) -> None:
        t = time.time()
        if args.mode == "ignore-sigterm" or args.ignore_sigterm:
            if leak is not None:
                leak.log(f"ignored-term {t:.6f}")
            if args.signal_log:
                with open(args.signal_log, "a") as f:
                    f.write(f"{signal.Signals(signum).name} {t:.6f}\n")
            return
        if leak is not None:
            leak.log(f"term {t:.6f}")
        say("fake: SIGTERM, exiting")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)

    def ready(after_ms: float | None = None) -> bool:
        if args.mode in ("never-ready", "die-loading"):
            return False
        return (time.monotonic() - t_start) * 1000 >= (args.ready_after_ms if after_ms is None else after_ms)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # quiet
            pass

        def _send(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                if args.mode == "hang-health":
                    time.sleep(args.max_lifetime_s)
                    return
                if ready():
                    self._send(200, {"status": "ok"})
                else:
                    self._send(503, {"error": {"code": 503, "message": "Loading model"}})
            elif self.path.startswith("/props"):  # gpcrun's readiness read after llama.cpp's warmup
                if not ready(args.completion_after_ms):
                    self._send(503, {"error": {"code": 503, "message": "Loading model"}})
                    return
                self._send(200, {"total_slots": 1, "default_generation_settings": {"n_ctx": 512}})
                if leak is not None:
                    leak.trigger()
                if args.mode == "crash":
                    threading.Timer(args.die_after_ms / 1000, os._exit, (2,)).start()
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            if not self.path.startswith("/completion"):
                self._send(404, {"error": "not found"})
            elif not ready(args.completion_after_ms):
                self._send(503, {"error": {"code": 503, "message": "Loading model"}})
            else:
                self._send(200, {"content": " fake", "tokens_predicted": 1})
                if leak is not None:
                    leak.trigger()
                if args.mode == "crash":
                    threading.Timer(args.die_after_ms / 1000, os._exit, (2,)).start()

    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    say(f"fake: listening on {args.host}:{args.port}")
    if args.mode == "die-loading":
        def die() -> None:
            time.sleep(args.die_after_ms / 1000)
            say("llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' data is not within the"
                " file bounds")
            say("srv    load_model: failed to load model")
            os._exit(1)
        threading.Thread(target=die, daemon=True).start()
    srv.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
