"""Which supervised servers run on this machine: each run directory's `status.json` (what gpcrun is doing, its pid,
the server's pid and URL), and `$GPCRUN_HOME/active/<run id>.json` pointing at run directories wherever they are
(batch jobs keep theirs under the batch output). Written atomically, 0600, by the running gpcrun; read by
`gpcrun ps/logs/stop` (gpcrun/runs.py). A run whose gpcrun died keeps its entry until the next look, which
completes its run.json.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..atomic import PRIVATE, read_json_bounded, write_json_atomic
from ..paths import gpcrun_home

STATUS_SCHEMA = "gpcrun.status/1"


def active_dir(home: Path | None = None) -> Path:
    return (home or gpcrun_home()) / "active"


def process_start_ticks(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it names one
    process, so a pid reused after gpcrun died is not taken for it."""
    try:
        text = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    try:
        return int(text[text.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


class RunRecord:
    """The running gpcrun's side: register, update, unregister; failures to write never end the run."""

    def __init__(self, run_dir: Path, command: str, model: str | None, url: str, home: Path | None = None,
                 on_change=None):
        self.run_dir = Path(run_dir)
        self.on_change = on_change  # called with a copy of the document when the state changes
        self.entry = active_dir(home) / f"{self.run_dir.name}.json"
        pid = os.getpid()
        self.doc = {"schema": STATUS_SCHEMA, "run_id": self.run_dir.name, "run_dir": str(self.run_dir),
                    "command": command, "model": model, "url": url, "state": "starting", "gpcrun_pid": pid,
                    "gpcrun_start_ticks": process_start_ticks(pid), "server_pid": None,
                    "started_at_unix": round(time.time(), 3), "ready_at_unix": None, "attempt": 0}

    def register(self) -> None:
        self._write_status()
        try:
            self.entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json_atomic(self.entry, {"run_dir": str(self.run_dir)}, durable=False, mode=PRIVATE)
        except OSError:
            pass

    def update(self, **changes) -> None:
        before = self.doc.get("state")
        self.doc.update(changes)
        self._write_status()
        if self.on_change is not None and self.doc.get("state") != before:
            try:
                self.on_change({k: self.doc[k] for k in ("state", "run_id", "run_dir", "url", "server_pid",
                                                          "attempt")})
            except Exception:  # noqa: BLE001 - a reader's failure never ends the run
                pass

    def unregister(self) -> None:
        try:
            self.entry.unlink()
        except OSError:
            pass

    def _write_status(self) -> None:
        try:
            write_json_atomic(self.run_dir / "status.json", self.doc, durable=False, mode=PRIVATE)
        except OSError:
            pass


def read_status(run_dir: Path) -> dict | None:
    try:
        doc = read_json_bounded(Path(run_dir) / "status.json")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == STATUS_SCHEMA else None


def active_run_dirs(home: Path | None = None) -> list[tuple[Path, Path]]:
    """(entry file, run directory) for every registered run, oldest first."""
    out = []
    d = active_dir(home)
    try:
        entries = sorted(d.glob("*.json"))
    except OSError:
        return []
    for e in entries:
        try:
            doc = read_json_bounded(e)
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("run_dir"), str):
            out.append((e, Path(doc["run_dir"])))
        else:
            try:
                e.unlink()  # a damaged entry names nothing
            except OSError:
                pass
    return out
