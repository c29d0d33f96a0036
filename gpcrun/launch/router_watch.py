"""The watchdog over a llama-server router's tree: which child serves which model (the router starts each with
`--alias NAME`, server-models.cpp server_model_meta::update_args), and, when a memory line is crossed, the
child that grew is stopped instead of the whole router: unloaded through the router's POST /models/unload (it
sends the child its exit command, server-models.cpp request_stop), or signalled directly when that fails or the
kill line is crossed. The router then serves the other models on, and loads that one again on demand.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable, Sequence

from ..atomic import append_json_line


def alias_of(argv: Sequence[str]) -> str | None:
    """The model a router child serves: the value of its --alias (or -a), None for anything else."""
    for i, a in enumerate(argv[:-1]):
        if a in ("--alias", "-a"):
            return argv[i + 1]
    return None


def models_of(router_pid: int) -> list[tuple[int, str]]:
    """(pid, model name) of each model instance the router runs now."""
    from ..hardware.host import child_processes
    return [(pid, name) for pid, argv in child_processes(router_pid) if (name := alias_of(argv))]


def unload_model(session, url: str, name: str, timeout_s: float) -> bool:
    """POST /models/unload for one model of the router (server-models.cpp: it sends the child its exit command);
    False on any failure, the callers' cue for their fallback."""
    try:
        return session.post(url + "/models/unload", json={"model": name}, timeout=timeout_s).status_code == 200
    except Exception:  # noqa: BLE001 - a refused connection, a timeout, the router stopping
        return False


def pick_victim(first_rss: dict[int, int], models: Sequence[dict]) -> dict | None:
    """The child that grew most since gpcrun first saw it (resident + VRAM); the largest on a tie; None if none."""
    live = [m for m in models if m.get("rss_bytes") is not None]
    if not live:
        return None

    def size(m: dict) -> int:
        return int(m.get("rss_bytes") or 0) + int(m.get("vram_bytes") or 0)
    return max(live, key=lambda m: (size(m) - first_rss.get(m["pid"], size(m)), size(m)))


class RouterGuard:
    """Acts for the watchdog on a router: one model at a time, never the router itself while a child is there."""

    def __init__(self, url: str, api_key: str | None, run_dir, echo: Callable[[str], None],
                 unload: Callable[[str], bool] | None = None,
                 kill: Callable[[int, int], None] = os.kill) -> None:
        self.url = url
        self.api_key = api_key
        self.run_dir = run_dir
        self.echo = echo
        self._unload = unload or self._unload_http
        self._kill = kill
        self.first_rss: dict[int, int] = {}
        self.signalled: dict[int, str] = {}  # pid -> what was sent (unload, SIGTERM, SIGKILL)
        self.firings: list[dict] = []
        self.admission = None  # launch/router_admit.Admission: unloads before a load that would not fit

    def close(self) -> None:
        if self.admission is not None:
            self.admission.stop()

    def observe(self, models: Sequence[dict]) -> None:
        if self.admission is not None and self.admission._thread is None:
            self.admission.start()  # with the watchdog's first sample: the router is up
        for m in models:
            if m.get("rss_bytes") is not None:
                self.first_rss.setdefault(m["pid"], int(m["rss_bytes"]) + int(m.get("vram_bytes") or 0))

    def _unload_http(self, name: str) -> bool:
        from .endpoint import session_for
        with session_for(self.url, self.api_key) as s:
            return unload_model(s, self.url, name, timeout_s=2)  # False: signal the child instead

    def act(self, action, models: Sequence[dict]) -> dict:
        """Stop the child that grew; with no model loaded, say so and stop nothing (the router alone holds next
        to nothing). The firing is returned and appended to incidents.jsonl."""
        victim = pick_victim(self.first_rss, models)
        if victim is None:  # no model loaded: the router alone holds next to nothing, stopping it frees nothing
            firing = {"t_wall": time.time(), "rule": action.rule, "kind": action.kind, "message": action.message,
                      "model": None, "pid": None, "sent": "none", "grew_bytes": 0, "models": []}
            if not self.firings or self.firings[-1]["sent"] != "none":
                self.echo(f"gpcrun: watchdog: {action.message}; no model is loaded, nothing of the router's to stop"
                          " (the next load is watched the same way)")
                self._log(firing)
            self.firings.append(firing)
            return firing
        pid, name = victim["pid"], victim["model"]
        before = self.signalled.get(pid)
        if action.kind == "kill" or before is not None:  # escalate: unload -> SIGTERM -> SIGKILL
            sent = "SIGKILL" if action.kind == "kill" or before in ("SIGTERM", "SIGKILL") else "SIGTERM"
            try:
                self._kill(pid, signal.SIGKILL if sent == "SIGKILL" else signal.SIGTERM)
            except ProcessLookupError:
                sent = "gone"
        elif self._unload(name):
            sent = "unload"
        else:
            sent = "SIGTERM"
            try:
                self._kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                sent = "gone"
        self.signalled[pid] = sent
        firing = {"t_wall": time.time(), "rule": action.rule, "kind": action.kind, "message": action.message,
                  "model": name, "pid": pid, "sent": sent, "rss_bytes": victim.get("rss_bytes"),
                  "vram_bytes": victim.get("vram_bytes"), "grew_bytes": (int(victim.get("rss_bytes") or 0)
                                                                          + int(victim.get("vram_bytes") or 0)
                                                                          - self.first_rss.get(pid, 0)),
                  "models": [dict(m) for m in models]}
        self.firings.append(firing)
        how = {"unload": "unloaded through the router", "gone": "already gone"}.get(sent, sent)
        self.echo(f"gpcrun: watchdog: {action.message} -> model {name} (pid {pid}) {how}; the router serves on")
        self._log(firing)
        return firing

    def _log(self, firing: dict) -> None:
        append_json_line(self.run_dir / "incidents.jsonl", firing)


def guard_for(url: str, api_key: str | None, opts) -> tuple[RouterGuard | None, Callable | None]:
    """(a RouterGuard, models_of) when RunOptions.argv starts a router (--models-dir/--models-preset), else
    (None, None): a single-model server is stopped whole, as before."""
    from ..server_args import ServerArgs, settings
    if settings.model_source(ServerArgs.parse(opts.argv[1:], os.environ, strict=False)).kind != "router":
        return None, None
    guard = RouterGuard(url, api_key, opts.run_dir, opts.echo)
    from .router_admit import Admission, plan_footprints
    planned = plan_footprints(opts.run_dir)  # none under --no-plan: the count and the watchdog only
    if planned is not None:
        from .endpoint import session_for
        guard.admission = Admission(url, lambda: session_for(url, api_key), *planned, opts.run_dir, opts.echo)
    return guard, models_of
