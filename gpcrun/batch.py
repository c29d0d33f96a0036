"""Unattended batches: a TOML job file -> models x settings matrix -> plan, serve, bench, receipt per job.

State lives in OUT/state.sqlite (WAL, one transaction per state change) so a batch run again resumes: finished
jobs are not redone, a job that was running when gpcrun died is retried once, and two gpcrun processes on the
same output directory are refused (an flock on OUT/batch.lock). Sharding (--shard I/N, Slurm job arrays,
Kubernetes Indexed Jobs) takes every N-th job of the deterministic expansion order.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import BatchError, BatchLocked, GpcrunError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MATRIX_KEYS = ("ctx", "kv_type", "parallel", "server_args", "concurrency", "timeout_s", "prompt_tokens", "gen_tokens",
               "repetitions")
JOB_DEFAULTS = {"ctx": None, "kv_type": None, "parallel": 1, "server_args": [], "concurrency": [],
                "timeout_s": 1800.0, "prompt_tokens": 512, "gen_tokens": 128, "repetitions": 3}
STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Job:
    index: int  # position in the expansion order (sharding and display)
    id: str  # stable: hash of the model spec and the settings
    model: str  # path or hub ref, as written in the job file
    label: str
    settings: Mapping[str, Any]

    def describe(self) -> str:
        s = self.settings
        parts = []
        if s.get("ctx"):
            parts.append(f"ctx {s['ctx']}")
        if s.get("kv_type"):
            parts.append(f"KV {s['kv_type']}")
        if s.get("parallel", 1) != 1:
            parts.append(f"np {s['parallel']}")
        if s.get("server_args"):
            parts.append(" ".join(s["server_args"]))
        if s.get("concurrency"):
            parts.append("conc " + ",".join(map(str, s["concurrency"])))
        return ", ".join(parts) or "defaults"


BATCH_KEYS = MATRIX_KEYS + ("output",)
MODEL_KEYS = ("path", "ref", "name", "server_args")


def _known_keys(table: Mapping, known: Sequence[str], where: str, source: str) -> None:
    unknown = set(table) - set(known)
    if unknown:
        raise BatchError(f"{source}: unknown {where} keys {sorted(unknown)} (known: {', '.join(known)})")


def parse_jobs(text: str, base_dir: Path, source: str = "JOBS.toml",
               env: Mapping[str, str] | None = None) -> tuple[dict, list[Job]]:
    """Parse and expand a job file. Relative model paths are relative to the job file; `~` and `$VAR` /
    `${VAR}` in a model path are expanded from the environment (an unset variable is an error)."""
    env = os.environ if env is None else env
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BatchError(f"{source}: not valid TOML ({e})") from None
    _known_keys(doc, ("batch", "models", "matrix"), "top-level", source)
    batch = doc.get("batch") or {}
    if not isinstance(batch, dict):
        raise BatchError(f"{source}: [batch] must be a table")
    _known_keys(batch, BATCH_KEYS, "[batch]", source)
    if "output" in batch and not isinstance(batch["output"], str):
        raise BatchError(f"{source}: [batch] output must be a string (a directory)")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise BatchError(f"{source}: needs at least one [[models]] entry with a path or ref")
    matrix = doc.get("matrix") or {}
    if not isinstance(matrix, dict):
        raise BatchError(f"{source}: [matrix] must be a table")
    _known_keys(matrix, MATRIX_KEYS, "[matrix]", source)
    defaults = dict(JOB_DEFAULTS)
    for k in MATRIX_KEYS:
        if k in batch:
            defaults[k] = batch[k]
    axes = []
    for k in MATRIX_KEYS:
        if k in matrix:
            vals = matrix[k]
            if not isinstance(vals, list) or not vals:
                raise BatchError(f"{source}: [matrix] {k} must be a non-empty list")
            axes.append((k, vals))
    jobs: list[Job] = []
    for mi, m in enumerate(models):
        if not isinstance(m, dict) or not (m.get("path") or m.get("ref")):
            raise BatchError(f"{source}: models[{mi}] needs 'path' or 'ref'")
        unknown = set(m) - set(MODEL_KEYS)
        if unknown:
            raise BatchError(f"{source}: models[{mi}]: unknown keys {sorted(unknown)} (known: {', '.join(MODEL_KEYS)})")
        if m.get("path") and m.get("ref"):
            raise BatchError(f"{source}: models[{mi}]: give 'path' or 'ref', not both")
        for k in ("path", "ref", "name"):
            if k in m and not isinstance(m[k], str):
                raise BatchError(f"{source}: models[{mi}].{k} must be a string")
        model_args = m.get("server_args") or []
        if not isinstance(model_args, list) or not all(isinstance(a, str) for a in model_args):
            raise BatchError(f"{source}: models[{mi}].server_args must be a list of strings")
        spec = m.get("ref") or _expand_path(m["path"], env, f"{source}: models[{mi}].path")
        if m.get("path") and not os.path.isabs(spec) and "://" not in spec:
            spec = str((base_dir / spec).resolve())
        label = m.get("name") or os.path.basename(str(spec))
        for combo in itertools.product(*[vals for _, vals in axes]) if axes else [()]:
            s = dict(defaults)
            for (k, _), v in zip(axes, combo):
                s[k] = v
            _check_settings(s, source)
            s["server_args"] = list(model_args) + list(s["server_args"])
            _check_server_args(s["server_args"], f"{source}: models[{mi}] ({label})")
            jid = hashlib.sha256(json.dumps({"model": spec, "settings": s}, sort_keys=True).encode()).hexdigest()[:12]
            jobs.append(Job(len(jobs), jid, spec, label, s))
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise BatchError(f"{source}: two jobs are identical (same model and settings)")
    return batch, jobs


def _expand_path(path: str, env: Mapping[str, str], where: str) -> str:
    def var(mt: "re.Match") -> str:
        name = mt.group(1) or mt.group(2)
        if not env.get(name):
            raise BatchError(f"{where}: ${name} is not set (in {path!r})")
        return env[name]
    out = re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", var, path)
    return os.path.expanduser(out)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_settings(s: dict, source: str) -> None:
    from .model import KV_CACHE_TYPES
    if s["ctx"] is not None and (not _is_int(s["ctx"]) or s["ctx"] < 0):
        raise BatchError(f"{source}: ctx must be a non-negative integer, got {s['ctx']!r}")
    if s["kv_type"] is not None and s["kv_type"] not in KV_CACHE_TYPES:
        raise BatchError(f"{source}: kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {s['kv_type']!r}")
    if not isinstance(s["server_args"], list) or not all(isinstance(a, str) for a in s["server_args"]):
        raise BatchError(f"{source}: server_args must be a list of strings")
    if not isinstance(s["concurrency"], list) or not all(_is_int(c) and c >= 1 for c in s["concurrency"]):
        raise BatchError(f"{source}: concurrency must be a list of integers >= 1")
    for k in ("timeout_s",):
        if not isinstance(s[k], (int, float)) or isinstance(s[k], bool) or s[k] <= 0:
            raise BatchError(f"{source}: {k} must be a positive number, got {s[k]!r}")
    for k in ("prompt_tokens", "gen_tokens", "repetitions", "parallel"):
        if not _is_int(s[k]) or s[k] < 1:
            raise BatchError(f"{source}: {k} must be an integer >= 1, got {s[k]!r}")


def _check_server_args(args: list[str], where: str) -> None:
    """The planner reads some llama-server flags (-c, -ngl, -ctk...): a value it cannot parse is a job-file error
    now, not a failure in the middle of the batch."""
    from .plan import PlanArgError, parse_server_args
    try:
        parse_server_args(args)
    except PlanArgError as e:
        raise BatchError(f"{where}: server_args: {e}") from None


# ----------------------------------------------------------------------------------------------- sharding

def shard_from_env(env: Mapping[str, str]) -> tuple[int, int] | None:
    """Slurm job arrays (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, with SLURM_ARRAY_TASK_MIN as offset and
    SLURM_ARRAY_TASK_STEP as stride: --array=0-3, 1-4 and 0-6:2 all give shards 0..3 of 4) or Kubernetes Indexed
    Jobs (JOB_COMPLETION_INDEX with GPCRUN_SHARD_COUNT, which the manifest sets)."""
    def num(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise BatchError(f"${name}={env[name]!r} is not an integer") from None

    if env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
        if not env.get("SLURM_ARRAY_TASK_COUNT"):
            raise BatchError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        tid, count = num("SLURM_ARRAY_TASK_ID"), num("SLURM_ARRAY_TASK_COUNT")
        offset = num("SLURM_ARRAY_TASK_MIN") if env.get("SLURM_ARRAY_TASK_MIN") else 0
        step = num("SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
        k, rem = divmod(tid - offset, max(step, 1))
        if rem or not 0 <= k < count:
            raise BatchError(f"Slurm array task {tid} (min {offset}, step {step}, count {count}) is not one of "
                             f"{count} evenly spaced tasks: use --array=0-{count - 1}, or pass --shard I/N")
        return k, count
    if env.get("JOB_COMPLETION_INDEX") not in (None, ""):
        if not env.get("GPCRUN_SHARD_COUNT"):
            raise BatchError("JOB_COMPLETION_INDEX is set: also set GPCRUN_SHARD_COUNT to the Job's completions")
        i, n = num("JOB_COMPLETION_INDEX"), num("GPCRUN_SHARD_COUNT")
        if n < 1 or not 0 <= i < n:
            raise BatchError(f"JOB_COMPLETION_INDEX={i} is outside 0..GPCRUN_SHARD_COUNT-1 ({n}): set "
                             "GPCRUN_SHARD_COUNT to the Job's completions")
        return i, n
    return None


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BatchError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BatchError(f"--shard {text}: need 0 <= I < N")
    return i, n


def select_shard(jobs: Sequence[Job], shard: tuple[int, int] | None) -> list[Job]:
    if shard is None:
        return list(jobs)
    i, n = shard
    return [j for j in jobs if j.index % n == i]


# ----------------------------------------------------------------------------------------------- state

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
                         "WHERE id=?", (1, time.time(), r["id"]))
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


# ----------------------------------------------------------------------------------------------- report

SUMMARY_COLUMNS = ("job", "model", "config", "verdict", "forecast_tok_s", "prefill_tok_s", "decode_tok_s",
                   "error_pct", "peak_vram_mib", "peak_ram_mib", "outcome")


def summary_row(job_row: Mapping[str, Any]) -> dict:
    s = json.loads(job_row.get("summary") or "{}")
    settings = json.loads(job_row.get("settings") or "{}")
    job = Job(job_row["idx"], job_row["id"], job_row["model"], job_row["label"], settings)
    return {"job": job_row["idx"], "model": job_row["label"], "config": job.describe(),
            "verdict": s.get("verdict"), "forecast_tok_s": s.get("forecast_tok_s"),
            "prefill_tok_s": s.get("prefill_tok_s"), "decode_tok_s": s.get("decode_tok_s"),
            "error_pct": s.get("error_pct"), "peak_vram_mib": s.get("peak_vram_mib"),
            "peak_ram_mib": s.get("peak_ram_mib"), "outcome": job_row.get("outcome") or job_row["state"]}


def _cell(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def render_table(rows: Sequence[dict]) -> str:
    from .fmt import table
    return table([[_cell(r[c]) for c in SUMMARY_COLUMNS] for r in rows], list(SUMMARY_COLUMNS),
                 "llllrrrrrrl")


def render_markdown(rows: Sequence[dict]) -> str:
    out = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    out += ["| " + " | ".join(_cell(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    return "\n".join(out)


def render_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS))
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_reports(out_dir: Path, rows: Sequence[dict]) -> None:
    from .launch.run import write_json_atomic
    write_json_atomic(out_dir / "summary.json", list(rows))
    for name, text in (("summary.csv", render_csv(rows)), ("summary.md", render_markdown(rows) + "\n")):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)


def collect(dirs: Sequence[Path]) -> list[dict]:
    """Summary rows from one or more batch output directories (gpcrun batch report)."""
    rows: list[tuple[int, int, dict]] = []
    for n, d in enumerate(dirs):
        db = Path(d) / "state.sqlite"
        if not db.exists():
            raise BatchError(f"{d}: no state.sqlite (not a gpcrun batch output directory)")
        st = BatchState(Path(d))
        try:
            for r in st.all():
                row = summary_row(r)
                row["job"] = f"{Path(d).name}:{row['job']}" if len(dirs) > 1 else row["job"]
                rows.append((r["idx"], n, row))
        finally:
            st.close()
    # the shards of one batch (shard-I-of-N, same N) merge back into the expansion order of the whole batch
    shard_ns = {m.group(1) if (m := re.fullmatch(r"shard-\d+-of-(\d+)", Path(d).resolve().name)) else None
                for d in dirs}
    if len(dirs) > 1 and len(shard_ns) == 1 and None not in shard_ns:
        rows.sort(key=lambda t: (t[0], t[1]))
    return [row for _, _, row in rows]


# ----------------------------------------------------------------------------------------------- run

@dataclass
class BatchRunner:
    jobs: list[Job]
    out_dir: Path
    run_job: Callable[[Job, Path], dict]  # -> {"ok", "receipt", "outcome", "exit_code", "summary"}
    echo: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))
    banner: str = ""  # echoed once the output directory is ours (a refused second gpcrun prints only its error)

    def run(self) -> list[dict]:
        with OutputLock(self.out_dir):
            if self.banner:
                self.echo(self.banner)
            st = BatchState(self.out_dir)
            try:
                st.sync(self.jobs)
                for note in st.recover():
                    self.echo(f"gpcrun batch: {note}")
                todo = [j for j in self.jobs if (st.get(j.id) or {}).get("state") == "pending"]
                done = len(self.jobs) - len(todo)
                if done:
                    self.echo(f"gpcrun batch: resuming: {done} of {len(self.jobs)} job(s) already finished")
                for k, job in enumerate(todo):
                    self.echo(f"gpcrun batch: [{done + k + 1}/{len(self.jobs)}] {job.label}: {job.describe()}")
                    st.mark_running(job.id)
                    try:
                        res = self.run_job(job, self.out_dir)
                    except KeyboardInterrupt:  # SIGINT/SIGTERM (scancel, a time limit): stop, resume later
                        st.mark_interrupted(job.id)
                        self.echo(f"gpcrun batch: interrupted; job {job.index} ({job.label}) runs again on resume")
                        raise
                    except GpcrunError as e:
                        res = {"ok": False, "receipt": None, "outcome": "error", "exit_code": 1,
                               "summary": {"error": str(e)}}
                    except Exception as e:  # noqa: BLE001 - one job's bug must not end the batch
                        res = {"ok": False, "receipt": None, "outcome": "error", "exit_code": 1,
                               "summary": {"error": f"internal error: {type(e).__name__}: {e}"}}
                    if res["outcome"] == "error":
                        self.echo(f"gpcrun batch:   error: {res['summary'].get('error')}")
                    st.mark_finished(job.id, res["ok"], res.get("receipt"), res["outcome"], res["exit_code"],
                                     res.get("summary") or {})
                    self.echo(f"gpcrun batch:   -> {res['outcome']}")
                rows = [summary_row(st.get(j.id)) for j in self.jobs]
                write_reports(self.out_dir, rows)
                return rows
            finally:
                st.close()
