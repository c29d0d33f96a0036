"""Admission by memory for a llama-server router: when the router starts loading a model, the models already
resident are unloaded (the least recently loaded first, through POST /models/unload) until the planned bytes of
all that stays, the new one included, fit in what each device can give (router/admission.py to_unload).

The router loads on demand and decides by count only (--models-max, LRU: server-models.cpp); gpcrun cannot see a
request before the router does, so it watches GET /models (every POLL_S) and acts as soon as a model is
`loading`: a model's weights and buffers are read and allocated over the following load time, so the unload
lands before most of its memory does (a model that loads between two looks is caught just after). The watchdog
(router_watch.py) stays the backstop for what is not planned.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from ..atomic import append_json_line, read_json_bounded
from ..router.admission import Footprint, footprint_of, to_unload
from .router_watch import unload_model

POLL_S = 0.25
RESIDENT = ("loaded", "sleeping")


def plan_footprints(run_dir: Path) -> tuple[dict[str, Footprint], dict[str, int]] | None:
    """(footprint per model, budget per device) from a router run's plan.json; None without one (--no-plan)."""
    try:
        doc = read_json_bounded(run_dir / "plan.json")
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != "gpcrun.router-plan/1":
        return None
    fps = {m["name"]: footprint_of(m["name"], m["memory"]) for m in doc.get("models") or () if m.get("memory")}
    budget = (doc.get("admission") or {}).get("budget_bytes") or {}
    return (fps, {k: int(v) for k, v in budget.items()}) if fps and budget else None


class Admission:
    """The loop: statuses from the router, the order in which models became resident, unloads before a load."""

    def __init__(self, url: str, session_factory: Callable, footprints: Mapping[str, Footprint],
                 budget: Mapping[str, int], run_dir: Path, echo: Callable[[str], None]) -> None:
        self.url = url
        self.session_factory = session_factory
        self.footprints = dict(footprints)
        self.budget = dict(budget)
        self.run_dir = run_dir
        self.echo = echo
        self.order: list[str] = []  # resident models, least recently loaded first
        self.unloading: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, statuses: Mapping[str, str]) -> list[tuple[str, str]]:
        """One look at the router's statuses: the (new model, model to unload) pairs to act on now. A model is new
        when it is loading or resident and was neither at the last look (a small model loads between two);
        the residents, least recently loaded first, make room for the newest until all that stays fits."""
        active = (*RESIDENT, "loading")
        self.unloading &= {n for n, st in statuses.items() if st in active}  # asked to go, not gone yet
        new = [n for n, st in statuses.items() if st in active and n not in self.order and n not in self.unloading]
        self.order = [n for n in self.order if statuses.get(n) in active] + new
        if not new:
            return []
        newest = new[-1]
        victims = to_unload(newest, [n for n in self.order if n != newest], self.footprints, self.budget)
        self.order = [n for n in self.order if n not in victims]
        self.unloading |= set(victims)
        return [(newest, v) for v in victims]

    def _statuses(self, s) -> dict[str, str]:
        r = s.get(self.url + "/models", timeout=2)
        r.raise_for_status()
        return {m["id"]: (m.get("status") or {}).get("value", "") for m in r.json().get("data") or ()}

    def _run(self) -> None:
        with self.session_factory() as s:
            while not self._stop.is_set():
                try:
                    pairs = self.step(self._statuses(s))
                except Exception:  # noqa: BLE001 - the router restarting or stopping: look again later
                    pairs = []
                for loading, victim in pairs:
                    self._unload(s, loading, victim)
                self._stop.wait(POLL_S)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpcrun-admission", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _unload(self, s, loading: str, victim: str) -> None:
        ok = unload_model(s, self.url, victim, timeout_s=5)
        self.echo(f"gpcrun: admission: {loading} is loading and would not fit beside {victim}: "
                  + ("unloaded it first" if ok else "could not unload it (the watchdog still guards memory)"))
        append_json_line(self.run_dir / "admissions.jsonl", {"t_wall": time.time(), "loading": loading,
                                                             "unloaded": victim, "ok": ok})
