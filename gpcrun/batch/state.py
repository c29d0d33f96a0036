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
from ..errors import BatchLocked, BatchOutputUnsafe
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
                     (j.id, j.index, j.model, j.label, json.dumps(j.public_settings(), sort_keys=True), "pending"))

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

    def recover(self, max_attempts: int = 2, storage_failed: Iterable[str] = ()) -> list[str]:
        """Jobs left 'running' by a dead gpcrun: back to pending (retried once), or failed after that. A job in
        storage_failed was stopped by a full or read-only disk (OutputLock.previous_storage_failure): pending
        again, the attempt not counted."""
        notes = []
        storage_failed = set(storage_failed)
        for r in self.all():
            if r["state"] != "running":
                continue
            if r["id"] in storage_failed:
                self._tx("UPDATE jobs SET state='pending', attempts=max(attempts-1, 0) WHERE id=?", (r["id"],))
                notes.append(f"job {r['idx']} ({r['label']}) was stopped by a full or read-only disk: it runs again"
                             " (not counted as an attempt)")
            elif r["attempts"] < max_attempts:
                self._tx("UPDATE jobs SET state='pending' WHERE id=?", (r["id"],))
                notes.append(f"job {r['idx']} ({r['label']}) was running when gpcrun died: retrying once")
            else:
                self._tx("UPDATE jobs SET state='failed', outcome='interrupted', exit_code=?, finished_at=? "
                         "WHERE id=?", (Exit.INTERRUPTED.code, time.time(), r["id"]))
                notes.append(f"job {r['idx']} ({r['label']}) was interrupted twice: marked failed")
        return notes


def open_for_reading(out_dir: Path) -> sqlite3.Connection:
    """OUT/state.sqlite for reading only (`batch report`): nothing is created or changed, and a directory on a
    read-only filesystem is read as it is (immutable: no -shm can be made there)."""
    db = Path(out_dir) / "state.sqlite"
    ro = not os.access(out_dir, os.W_OK)
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro" + ("&immutable=1" if ro else ""), uri=True, timeout=30)
    try:
        con.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.OperationalError:
        con.close()
        if ro:
            raise
        # a directory this user cannot change (another's batch): the file as it is on disk
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=30)
    return con


def read_jobs(out_dir: Path) -> list[dict]:
    con = open_for_reading(out_dir)
    try:
        cur = con.execute("SELECT * FROM jobs ORDER BY idx")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


# what a batch opens by name in its output directory; a symbolic link there would make the batch user write through
# it (SQLite and mkdir follow links): whoever could plant it could overwrite any file of that user
_OWN_NAMES = ("batch.lock", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "state.sqlite-journal", "runs",
              "receipts")


def refuse_planted_links(out_dir: Path) -> None:
    links = [n for n in _OWN_NAMES if (Path(out_dir) / n).is_symlink()]
    if links:
        what = "is a symbolic link" if len(links) == 1 else "are symbolic links"
        raise BatchOutputUnsafe(f"{out_dir}: {', '.join(links)} {what}; a batch never writes through links in its output"
                         " directory (remove them, or use another --out)")


_LOCK_BYTES = 512  # the lock file's size, written once: a note fits in it without new disk blocks


class OutputLock:
    """Exclusive flock on OUT/batch.lock for the life of a batch run (released by the kernel if we die).

    The file holds the pid, and room for one note written in place when a full or read-only disk stopped a job
    (`note_storage_failure`): rewriting blocks the file already has needs no free space, so the next run can tell
    that job from one that killed gpcrun (`previous_storage_failure`)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "batch.lock"
        self.fd: int | None = None
        self.previous_storage_failure: str | None = None  # the job id the last run's note named

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_planted_links(self.path.parent)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").split("\n")[0].strip()
            os.close(self.fd)
            self.fd = None
            raise BatchLocked(f"{self.path.parent}: another gpcrun batch is using this output directory"
                              + (f" (pid {holder})" if holder else "")) from None
        before = os.pread(self.fd, _LOCK_BYTES, 0).decode(errors="replace").split("\n")
        self.previous_storage_failure = next((ln.split()[1] for ln in before if ln.startswith("storage-failed ")
                                              and len(ln.split()) == 2), None)
        self._write(f"{os.getpid()}\n")
        return self

    def _write(self, text: str) -> None:
        data = text.encode()[:_LOCK_BYTES].ljust(_LOCK_BYTES, b" ")
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def note_storage_failure(self, job_id: str) -> bool:
        """Best effort: True when the note is on disk."""
        try:
            self._write(f"{os.getpid()}\nstorage-failed {job_id}\n")
            return True
        except OSError:
            return False

    def clear_note(self) -> None:
        try:
            self._write(f"{os.getpid()}\n")
        except OSError:
            pass

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
