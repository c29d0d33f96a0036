"""The watchdog's view in the Prometheus text format, for the tools people already run: `gpcrun serve
--metrics-port N` (an HTTP /metrics on 127.0.0.1, beside llama-server's own `--metrics`) or `--metrics-textfile
PATH` (node_exporter's textfile collector: rewritten atomically every few seconds). Opt-in; names are
gpcrun_<what>_<unit> (Prometheus conventions), one series per GPU by index.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Mapping

from ..atomic import write_text_atomic

_STATES = ("starting", "loading", "ready", "stopping")


def _line(out: list, name: str, value, help_: str, kind: str = "gauge", labels: Mapping[str, str] | None = None,
          seen: set | None = None) -> None:
    if value is None:
        return
    if seen is not None and name not in seen:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        seen.add(name)
    lab = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    out.append(f"{name}{lab} {value}")


def render(sample: Mapping | None, state: str, planned: Mapping[str, int | None], firings: int,
           run_id: str) -> str:
    """Pure: the exposition text for one look (sample: a samples.jsonl row; planned: device -> bytes)."""
    out: list[str] = []
    seen: set = set()
    run = {"run": run_id}
    for st in _STATES:
        _line(out, "gpcrun_server_state", int(st == state), "1 for the supervised server's current state",
              labels={**run, "state": st}, seen=seen)
    _line(out, "gpcrun_watchdog_firings_total", firings, "watchdog actions taken (SIGTERM, SIGKILL)", "counter",
          run, seen)
    for dev, b in sorted((k, v) for k, v in planned.items() if k):
        _line(out, "gpcrun_plan_bytes", b, "what the plan said the device holds", labels={**run, "device": dev},
              seen=seen)
    s = sample or {}
    for key, name, help_ in (
            ("host_available_seen_bytes", "gpcrun_host_available_bytes",
             "effective host memory available as the watchdog judges it (cgroup included)"),
            ("host_term_line_bytes", "gpcrun_host_term_line_bytes", "the watchdog sends SIGTERM below this"),
            ("host_limit_bytes", "gpcrun_host_limit_bytes", "effective host memory limit (cgroup included)"),
            ("child_rss_bytes", "gpcrun_server_rss_bytes", "llama-server's process tree resident memory"),
            ("psi_some_avg10", "gpcrun_host_memory_pressure_some_avg10", "PSI memory some avg10 (%)")):
        _line(out, name, s.get(key), help_, labels=run, seen=seen)
    for i, g in enumerate(s.get("gpus") or ()):
        if not isinstance(g, Mapping):
            continue
        lab = {**run, "gpu": str(i)}
        _line(out, "gpcrun_gpu_free_bytes", g.get("free_bytes"), "free VRAM per GPU (NVML)", labels=lab, seen=seen)
        _line(out, "gpcrun_gpu_used_bytes", g.get("used_bytes"), "used VRAM per GPU (NVML)", labels=lab, seen=seen)
        _line(out, "gpcrun_gpu_server_bytes", g.get("child_bytes"), "llama-server's own VRAM (NVML per process)",
              labels=lab, seen=seen)
        _line(out, "gpcrun_gpu_power_milliwatts", g.get("power_mw"), "GPU power draw", labels=lab, seen=seen)
        _line(out, "gpcrun_gpu_temperature_celsius", g.get("temperature_c"), "GPU temperature", labels=lab,
              seen=seen)
    return "\n".join(out) + "\n"


class MetricsExporter:
    """Serves or writes render(provider()) until stopped; failures to write warn once through `warn`."""

    def __init__(self, provider: Callable[[], str], port: int | None = None, textfile: str | Path | None = None,
                 interval_s: float = 5.0, warn: Callable[[str], None] = lambda m: None) -> None:
        self.provider, self.port, self.textfile, self.interval_s, self.warn = provider, port, textfile, interval_s, warn
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._warned = False

    def start(self) -> None:
        if self.port is not None:
            provider = self.provider

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self):  # noqa: N802 - http.server's name
                    if self.path.split("?")[0] != "/metrics":
                        self.send_error(404)
                        return
                    body = provider().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args):
                    pass

            self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self.port = self._httpd.server_address[1]
            t = threading.Thread(target=self._httpd.serve_forever, name="gpcrun-metrics-http", daemon=True)
            t.start()
            self._threads.append(t)
        if self.textfile is not None:
            t = threading.Thread(target=self._write_loop, name="gpcrun-metrics-file", daemon=True)
            t.start()
            self._threads.append(t)

    def _write_once(self) -> None:
        try:
            write_text_atomic(self.textfile, self.provider(), durable=False, mode=0o644)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.warn(f"cannot write the metrics textfile {self.textfile} ({e.strerror or e}); serving goes on")

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._write_once()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:  # before the joins: serve_forever returns only after shutdown()
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(2)
        if self.textfile is not None:  # the server is gone: no stale "ready" for node_exporter to keep reporting
            try:
                Path(self.textfile).unlink()
            except OSError:
                pass


def exporter_for(run) -> MetricsExporter | None:
    """The exporter a ServerRun asked for (RunOptions.metrics_port / metrics_textfile), started; None if neither."""
    o = run.opts
    if o.metrics_port is None and not o.metrics_textfile:
        return None
    from ..runs import _planned
    planned = _planned(o.run_dir)

    def provider() -> str:
        wd = run.watchdog
        return render(wd.last_row if wd else None, run.record.doc.get("state") or "starting", planned,
                      len(wd.firings) if wd else 0, o.run_dir.name)

    exp = MetricsExporter(provider, o.metrics_port, o.metrics_textfile, warn=lambda m: o.echo(f"gpcrun: warning: {m}"))
    try:
        exp.start()
    except OSError as e:  # the port is taken: serving goes on without it, and says so
        o.echo(f"gpcrun: warning: cannot serve metrics on 127.0.0.1:{o.metrics_port} ({e.strerror or e})")
        return None
    if exp.port is not None:
        o.echo(f"gpcrun: metrics at http://127.0.0.1:{exp.port}/metrics")
    return exp
