"""The receipt store: GPCRUN_HOME/receipts/<id>.json, written atomically, indexed in SQLite (WAL)."""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..atomic import write_text_atomic
from ..errors import ReceiptError
from ..paths import gpcrun_home
from .calibration import argv_threads
from .schema import ID_RE, read_receipt

# held shared while a receipt file is written, exclusively while temp files of dead writers are removed
_WRITE_LOCK = ".write.lock"
_COLUMNS = ("id", "created_utc", "kind", "model_name", "model_fingerprint", "hardware_fingerprint", "architecture",
            "outcome", "decode_tok_s", "prefill_tok_s", "forecast_decode_tok_s", "ceiling_decode_tok_s", "ctx",
            "ngl", "n_cpu_moe", "type_k", "threads", "watchdog_fired", "path")


_NUMERIC = frozenset(("decode_tok_s", "prefill_tok_s", "forecast_decode_tok_s", "ceiling_decode_tok_s", "ctx", "ngl",
                      "n_cpu_moe", "threads", "watchdog_fired"))


def _row(doc: dict, path: Path) -> tuple:
    from .docs import ReceiptDoc  # only when a receipt is (re)indexed: a plain query at start-up never needs it
    r = ReceiptDoc.from_json(doc)
    m, pl, model = r.measured, r.plan.placement, r.model
    # a run whose server served another model than the planned one is indexed as such: it calibrates nothing
    outcome = "model_mismatch" if m.model_same is False else r.outcome.kind
    return (r.id, r.created_utc, r.kind, model.file_name, model.header_sha256, r.hardware_fingerprint,
            model.architecture, outcome, m.decode_tok_s.mean, m.prefill_tok_s.mean, m.forecast_decode_tok_s,
            m.ceiling_decode_tok_s, pl.ctx, pl.ngl, pl.n_cpu_moe, pl.type_k, argv_threads(r.argv),
            int(r.envelope.watchdog_fired), str(path))


def _row_of_file(p: Path) -> tuple | None:
    """Index row of a receipt file; None for a file that is not a receipt (not JSON, not an object, no id, nested
    past the parser's depth, a field that is not a plain value): it is skipped, never the reason a command fails."""
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            return None
        row = _row(doc, p)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        return None
    for col, v in zip(_COLUMNS, row):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if col in _NUMERIC else isinstance(v, str)
        if v is not None and not ok:
            return None
    return row


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReceiptStore:
    """GPCRUN_HOME/receipts/<id>.json plus index.sqlite. The JSON files are the truth; the index is rebuilt
    from them when it is missing or unreadable, and brought up to date with them whenever a store opens (a
    process killed between writing a file and indexing it leaves a file the index does not know yet)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else gpcrun_home() / "receipts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self._db: sqlite3.Connection | None = None
        self.skipped: list[Path] = []  # receipt files that could not be indexed (damaged, hand-made): reported

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            missing = not self.db_path.exists()
            if missing:  # a -wal left from a deleted index must not be replayed into the new one
                self._unlink_index()
            try:
                self._db = self._open()
            except sqlite3.DatabaseError:  # corrupt: rebuild from the JSON files
                self._unlink_index()
                self._db = self._open()
                missing = True
            if missing:
                self.reindex()
            else:
                self._sync()
        return self._db

    def _unlink_index(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"CREATE TABLE IF NOT EXISTS receipts ({', '.join(c + (' PRIMARY KEY' if c == 'id' else '') for c in _COLUMNS)})")
            check = db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:  # damage SQLite reports as rows, not as an exception
                raise sqlite3.DatabaseError(f"index quick_check: {check[:3]}")
            cols = [r[1] for r in db.execute("PRAGMA table_info(receipts)")]
            if tuple(cols) != _COLUMNS:  # an index from another gpcrun version
                raise sqlite3.DatabaseError(f"index columns {cols}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _files(self) -> dict[str, Path]:
        return {p.stem: p for p in self.root.glob("r*.json") if ID_RE.match(p.stem)}

    def _sync(self) -> None:
        """Index the files the index lacks, drop rows whose file is gone, remove temp files of dead writers."""
        self._clean_tmp()
        files = self._files()
        db = self._db
        known = {r[0]: r[1] for r in db.execute("SELECT id, path FROM receipts")}
        gone = [rid for rid, path in known.items() if not Path(path).exists()]
        new = [p for stem, p in files.items() if stem not in known]
        if not gone and not new:
            return
        with db:
            db.executemany("DELETE FROM receipts WHERE id = ?", [(rid,) for rid in gone])
            for p in sorted(new):
                row = _row_of_file(p)
                if row is None:
                    self.skipped.append(p)
                else:
                    db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})", row)

    def _clean_tmp(self) -> None:
        """Remove what writers killed mid-write left: ".<id>.json.<random>.tmp" (gpcrun.atomic's temp files; older
        gpcrun wrote ".<id>.json.<pid>.tmp"), never a receipt (the glob is r*.json). Only while no writer holds the
        write lock: a live writer's temp file is not stale (it is cleaned at a later open)."""
        tmps = list(self.root.glob(".r*.json.*.tmp"))
        if not tmps:
            return
        fd = os.open(self.root / _WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            for p in tmps:
                mid = p.name.rsplit(".", 2)[-2]
                if mid.isdigit() and (int(mid) == os.getpid() or _pid_alive(int(mid))):
                    continue  # an older gpcrun's writer that does not take the lock, still running
                p.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A shared lock on the write lock file while a receipt file is written (see _clean_tmp); a killed
        writer's lock goes with its process."""
        fd = os.open(self.root / _WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def save(self, doc: dict) -> Path:
        path = self.root / f"{doc['id']}.json"
        with self._writing():
            write_text_atomic(path, json.dumps(doc, indent=2, default=str) + "\n")
        with self.db() as db:  # one transaction
            db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})", _row(doc, path))
        return path

    def reindex(self) -> int:
        n = 0
        db = self.db() if self._db is None else self._db
        self._clean_tmp()
        with db:
            db.execute("DELETE FROM receipts")
            for p in sorted(self._files().values()):
                row = _row_of_file(p)
                if row is None:
                    self.skipped.append(p)
                else:
                    db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})", row)
                    n += 1
        return n

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def query(self, model: str | None = None, since: str | None = None, **eq: Any) -> list[dict]:
        where, args = [], []
        if model:
            where.append("(model_name LIKE ? OR model_fingerprint = ?)")
            args += [f"%{model}%", model]
        if since:
            where.append("created_utc >= ?")
            args.append(since.strip().replace(" ", "T"))  # "2026-11-27 05:00" compares like the stored ISO
        for k, v in eq.items():
            if k not in _COLUMNS:
                raise ValueError(k)
            where.append(f"{k} = ?")
            args.append(v)
        sql = ("SELECT * FROM receipts" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_utc, rowid")
        return [dict(zip(_COLUMNS, r)) for r in self.db().execute(sql, args)]

    def get(self, rid: str) -> dict:
        rows = self.db().execute("SELECT path FROM receipts WHERE id = ? OR id LIKE ?", (rid, rid + "%")).fetchall()
        if len(rows) > 1:
            raise ReceiptError(f"receipt id {rid!r} is ambiguous ({len(rows)} match)")
        path = Path(rows[0][0]) if rows else self.root / f"{rid}.json"
        return read_receipt(path)
