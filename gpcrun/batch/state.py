"""Batch state: OUT/state.sqlite (WAL, one transaction per state change) and the OUT/batch.lock flock."""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

from ..exits import Exit
from ..errors import BatchLocked
from .jobs import Job


class BatchState:
    """OUT/state.sqlite: one row per job; every state change is its own transaction."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.out_dir / "state.sqlite", timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, idx INTEGER, model TEXT, label TEXT, settings TEXT, state TEXT,
            attempts INTEGER DEFAULT 0, started_at REAL, finished_at REAL, receipt TEXT, outcome TEXT,
            exit_code INTEGER, summary TEXT)""")

    def close(self) -> None:
        self.db.close()

    def _tx(self, sql: str, args: Sequence) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT (disk full) has rolled back already: say the real error
                self.db.execute("ROLLBACK")
            raise

    def sync(self, jobs: Iterable[Job]) -> None:
        for j in jobs:
            self._tx("INSERT OR IGNORE INTO jobs (id, idx, model, label, settings, state) VALUES (?,?,?,?,?,?)",
                     (j.id, j.index, j.model, j.label, json.dumps(j.settings, sort_keys=True), "pending"))

    def get(self, jid: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM jobs WHERE id = ?", (jid,))
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def all(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM jobs ORDER BY idx")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def mark_interrupted(self, jid: str) -> None:
        """A signal to gpcrun stopped this job: pending again, without spending its one retry."""
        self._tx("UPDATE jobs SET state='pending', attempts=max(attempts-1, 0) WHERE id=?", (jid,))

    def mark_running(self, jid: str) -> None:
        self._tx("UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?", (time.time(), jid))

    def mark_finished(self, jid: str, ok: bool, receipt: str | None, outcome: str, exit_code: int,
                      summary: dict) -> None:
        self._tx("UPDATE jobs SET state=?, finished_at=?, receipt=?, outcome=?, exit_code=?, summary=? WHERE id=?",
                 ("done" if ok else "failed", time.time(), receipt, outcome, exit_code,
                  json.dumps(summary, default=str), jid))

    def recover(self, max_attempts: int = 2) -> list[str]:
        """Jobs left 'running' by a dead gpcrun: back to pending (retried once), or failed after that."""
        notes = []
        for r in self.all():
            if r["state"] != "running":
                continue
            if r["attempts"] < max_attempts:
                self._tx("UPDATE jobs SET state='pending' WHERE id=?", (r["id"],))
                notes.append(f"job {r['idx']} ({r['label']}) was running when gpcrun died: retrying once")
            else:
                self._tx("UPDATE jobs SET state='failed', outcome='interrupted', exit_code=?, finished_at=? "
                         "WHERE id=?", (Exit.INTERRUPTED.code, time.time(), r["id"]))
                notes.append(f"job {r['idx']} ({r['label']}) was interrupted twice: marked failed")
        return notes


class OutputLock:
    """Exclusive flock on OUT/batch.lock for the life of a batch run (released by the kernel if we die)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "batch.lock"
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise BatchLocked(f"{self.path.parent}: another gpcrun batch is using this output directory"
                              + (f" (pid {holder})" if holder else "")) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
