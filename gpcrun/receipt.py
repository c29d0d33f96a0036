"""Receipts: one JSON document per bench/serve run (schema gpcrun/schemas/receipt.schema.json), written
atomically, indexed in SQLite (WAL), rendered as Markdown for bug reports, and read back to calibrate forecasts.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
import statistics
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import __version__
from .errors import ReceiptError
from .paths import gpcrun_home

SCHEMA_ID = "gpcrun.receipt/1"
REDACTED = "<redacted>"
_SECRET_FLAGS = {"--api-key", "--api-key-file", "--ssl-key-file", "--hf-token", "-hft"}
_SECRET_ENV = re.compile(r"((^|_)(TOKEN|KEY|SECRET|KEY_FILE|CREDENTIALS)|PASSWORD|PASSWD)$", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")
# Secret values shorter than this are only redacted where they are known to be (argv, env), not searched for in
# every string of the receipt: replacing a 3-character key everywhere would corrupt numbers and names.
_MIN_SCRUB_LEN = 6
# a secret flag and its value quoted inside free text (an outcome reason: "rejected an argument: --api-key=k")
_FLAG_IN_TEXT = re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in sorted(_SECRET_FLAGS, key=len, reverse=True))
                           + r")(=|\s+)(['\"]?)(?!<redacted>)[^\s'\",;)]+")
_ID_RE = re.compile(r"^r[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")  # as in the schema


def new_id() -> str:
    return "r" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


# ----------------------------------------------------------------------------------------------- redaction

def redact_argv(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for a in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name = a.split("=", 1)[0]
        if name in _SECRET_FLAGS:
            if "=" in a:
                out.append(f"{name}={REDACTED}")
            else:
                out.append(a)
                hide_next = True
            continue
        out.append(_HF_TOKEN.sub(REDACTED, a))
    return out


def secret_values(argv: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """The literal secrets in an argv (values of secret flags) and an environment (*_TOKEN, *_KEY... values)."""
    out: set[str] = set()
    args = list(argv)
    for i, a in enumerate(args):
        name, eq, val = a.partition("=")
        if name in _SECRET_FLAGS:
            v = val if eq else (args[i + 1] if i + 1 < len(args) else "")
            if v:
                out.add(v)
    out.update(v for k, v in env.items() if v and _SECRET_ENV.search(k))
    return out


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Only the variables that shape a run are kept; any *_TOKEN/*_KEY value is redacted."""
    keep = {}
    for k, v in env.items():
        if k.startswith(("LLAMA_", "GGML_", "CUDA_", "GPCRUN_", "HF_", "OMP_")) or _SECRET_ENV.search(k):
            keep[k] = REDACTED if _SECRET_ENV.search(k) or _HF_TOKEN.search(v) else v
    return dict(sorted(keep.items()))


def scrub(doc: Any, secrets_: Iterable[str] = ()) -> Any:
    """Every string list that carries a secret flag is redacted like an argv (the plan's argv, a run's argv);
    hf_ tokens and the given literal secrets (long enough to search for) are replaced in every string."""
    lits = sorted({s for s in secrets_ if len(s) >= _MIN_SCRUB_LEN}, key=len, reverse=True)

    def fix_str(x: str) -> str:
        for s in lits:
            if s in x:
                x = x.replace(s, REDACTED)
        if "-" in x:
            x = _FLAG_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED, x)
        return _HF_TOKEN.sub(REDACTED, x)

    def fix(x):
        if isinstance(x, str):
            return fix_str(x)
        if isinstance(x, list):
            if any(isinstance(v, str) and v.split("=", 1)[0] in _SECRET_FLAGS for v in x):
                x = redact_argv([v if isinstance(v, str) else str(v) for v in x]) \
                    if all(isinstance(v, str) for v in x) else x
            return [fix(v) for v in x]
        if isinstance(x, dict):
            return {fix(k) if isinstance(k, str) else k: fix(v) for k, v in x.items()}
        return x
    return fix(doc)


def _token_re(word: str) -> re.Pattern:
    # whole names only: the host "vm" must not turn "llvm" into "ll<host>", home "/home/a" must spare "/home/ab"
    return re.compile(r"(?<![A-Za-z0-9_.-])" + re.escape(word) + r"(?![A-Za-z0-9_-])")


def redact_paths(doc: Any, home: str | None = None, hostname: str | None = None) -> Any:
    """Replace the home directory with ~ and the host name with <host> everywhere in a JSON document."""
    home = (home or os.path.expanduser("~")).rstrip("/")
    hostname = hostname or socket.gethostname()
    home_re = re.compile(re.escape(home) + r"(?=/|$|[^A-Za-z0-9_.-])") if home and home != "/" else None
    names = {hostname, hostname.split(".")[0]} if hostname else set()
    host_res = [_token_re(n) for n in sorted(names, key=len, reverse=True) if len(n) >= 2]

    def fix(x):
        if isinstance(x, str):
            if home_re is not None:
                x = home_re.sub("~", x)
            for rx in host_res:
                x = rx.sub("<host>", x)
            return x
        if isinstance(x, list):
            return [fix(v) for v in x]
        if isinstance(x, dict):
            return {fix(k): fix(v) for k, v in x.items()}
        return x
    return fix(doc)


# ----------------------------------------------------------------------------------------------- build

def build_receipt(*, kind: str, hardware: dict | None, model: dict | None, plan: dict | None, argv: Sequence[str],
                  env: Mapping[str, str], llama_cpp: dict | None, measured: dict | None, envelope: dict | None,
                  outcome: dict, run_dir: str | None = None, redact_path_names: bool = False,
                  receipt_id: str | None = None) -> dict:
    doc = {
        "schema": SCHEMA_ID,
        "id": receipt_id or new_id(),
        "gpcrun_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": kind,
        "hardware": hardware,
        "hardware_fingerprint": (hardware or {}).get("fingerprint"),
        "model": model,
        "plan": plan,
        "command": {"argv": redact_argv(argv), "env": redact_env(env)},
        "llama_cpp": llama_cpp,
        "measured": measured,
        "envelope": envelope,
        "outcome": outcome,
        "run_dir": run_dir,
    }
    # the plan (its argv holds the user's pass-through args), an outcome reason quoting an argument...: a secret
    # must not survive anywhere in the document, not only in command.argv
    plan_argv = ((plan or {}).get("argv") or []) if isinstance(plan, dict) else []
    rid = doc["id"]
    doc = scrub(doc, secret_values([*argv, *plan_argv], env))
    doc["id"] = rid  # the store's file name; never a secret
    return redact_paths(doc) if redact_path_names else doc


def compare_with_forecast(plan: dict | None, decode_mean: float | None, floor: float | None) -> dict:
    """Prediction error vs the calibrated forecast, efficiency vs the ceiling, in-band, cleared-floor."""
    f = ((plan or {}).get("plan") or {}).get("forecast") or {}
    fc, ceil, band = f.get("decode_tok_s"), f.get("decode_ceiling_tok_s"), f.get("decode_band_tok_s")
    out: dict[str, Any] = {"forecast_decode_tok_s": fc, "forecast_calibrated": f.get("calibrated"),
                           "ceiling_decode_tok_s": ceil, "band_decode_tok_s": band,
                           "prediction_error_pct": None, "efficiency_vs_ceiling": None, "in_band": None,
                           "cleared_floor": None, "floor_tok_s": floor}
    if decode_mean is None:
        return out
    if fc:
        out["prediction_error_pct"] = round(100 * (fc - decode_mean) / decode_mean, 2)
    if ceil:
        out["efficiency_vs_ceiling"] = round(decode_mean / ceil, 4)
    if band:
        out["in_band"] = band[0] <= decode_mean <= band[1]
    if floor is not None:
        out["cleared_floor"] = decode_mean >= floor
    return out


# ----------------------------------------------------------------------------------------------- schema

def load_schema() -> dict:
    return json.loads(resources.files("gpcrun").joinpath("schemas/receipt.schema.json").read_text())


def validate(doc: Any) -> list[str]:
    """Schema errors as 'path: message' lines (empty when valid)."""
    import jsonschema  # validation only: keep it off the import path of every other command

    v = jsonschema.Draft202012Validator(load_schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {_one_line(e.message)}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def _one_line(msg: str, limit: int = 300) -> str:
    # jsonschema quotes the offending instance: a whole sub-document can follow "is not of type"
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def read_receipt(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_bytes()  # json decodes UTF-8 itself: bad bytes are "not JSON", not a crash
    except FileNotFoundError:
        raise ReceiptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReceiptError(f"{path}: is a directory") from None
    except OSError as e:
        raise ReceiptError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as e:  # UnicodeDecodeError included
        raise ReceiptError(f"{path}: not JSON ({_one_line(str(e))})") from None


# ----------------------------------------------------------------------------------------------- store

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_COLUMNS = ("id", "created_utc", "kind", "model_name", "model_fingerprint", "hardware_fingerprint", "architecture",
            "outcome", "decode_tok_s", "prefill_tok_s", "forecast_decode_tok_s", "ceiling_decode_tok_s", "ctx",
            "ngl", "n_cpu_moe", "type_k", "threads", "watchdog_fired", "path")


def _row(doc: dict, path: Path) -> tuple:
    m = doc.get("measured") or {}
    pl = (((doc.get("plan") or {}).get("plan") or {}).get("placement")) or {}
    model = doc.get("model") or {}
    env = doc.get("envelope") or {}
    return (doc["id"], doc.get("created_utc"), doc.get("kind"), model.get("file_name"), model.get("header_sha256"),
            doc.get("hardware_fingerprint"), model.get("architecture"), (doc.get("outcome") or {}).get("kind"),
            ((m.get("decode_tok_s") or {}).get("mean")), ((m.get("prefill_tok_s") or {}).get("mean")),
            m.get("forecast_decode_tok_s"), m.get("ceiling_decode_tok_s"), pl.get("ctx"), pl.get("ngl"),
            pl.get("n_cpu_moe"), pl.get("type_k"), argv_threads((doc.get("command") or {}).get("argv") or []),
            int(bool([r for r in env.get("limits_fired") or [] if not str(r).endswith("_warn")])), str(path))


def _row_of_file(p: Path) -> tuple | None:
    """Index row of a receipt file; None for a file that is not a receipt (not JSON, not an object, no id)."""
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            return None
        return _row(doc, p)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def argv_threads(argv: Sequence[str]) -> int | None:
    for i, a in enumerate(argv):
        if a in ("-t", "--threads") and i + 1 < len(argv):
            try:
                return int(argv[i + 1])
            except ValueError:
                return None
    return None


class ReceiptStore:
    """GPCRUN_HOME/receipts/<id>.json plus index.sqlite. The JSON files are the truth; the index is rebuilt
    from them when it is missing or unreadable, and brought up to date with them whenever a store opens (a
    process killed between writing a file and indexing it leaves a file the index does not know yet)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else gpcrun_home() / "receipts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self._db: sqlite3.Connection | None = None

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
        return {p.stem: p for p in self.root.glob("r*.json") if _ID_RE.match(p.stem)}

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
                if row is not None:
                    db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})", row)

    def _clean_tmp(self) -> None:
        # ".<id>.json.<pid>.tmp": what a writer killed mid-write leaves; never a receipt (the glob is r*.json)
        for p in self.root.glob(".r*.json.*.tmp"):
            try:
                pid = int(p.name.rsplit(".", 2)[-2])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                p.unlink(missing_ok=True)

    def save(self, doc: dict) -> Path:
        path = self.root / f"{doc['id']}.json"
        _atomic_write(path, json.dumps(doc, indent=2, default=str) + "\n")
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
                if row is not None:
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


# ----------------------------------------------------------------------------------------------- calibration

def calibrate(rows: Iterable[dict], model_fp: str | None, hardware_fp: str | None, arch: str | None,
              threads: int | None = None) -> "Calibration | None":
    """Realised efficiency (measured decode / ceiling) from good receipts: same model and hardware first,
    else same hardware and architecture (wider band). Failed runs and runs where the watchdog fired don't count."""
    good = [r for r in rows if r.get("outcome") == "clean_stop" and not r.get("watchdog_fired")
            and r.get("decode_tok_s") and r.get("ceiling_decode_tok_s")]
    exact = [r for r in good if r.get("model_fingerprint") == model_fp and r.get("hardware_fingerprint") == hardware_fp]
    arch_ = [r for r in good if r.get("hardware_fingerprint") == hardware_fp and r.get("architecture") == arch]
    # CPU decode speed depends on the thread count: runs at the same -t (None = llama.cpp's default) first;
    # runs at other thread counts only when there are none, with a wider band
    tiers = [(exact, "same model and hardware", 1.0), (arch_, "same hardware and architecture", 2.0)]
    pool, how, widen = [], "", 1.0
    for same_threads in (True, False):
        for cands, how, widen in tiers:
            pool = [r for r in cands if r.get("threads") == threads] if same_threads else cands
            if pool:
                break
        if pool:
            if not same_threads:
                how, widen = how + ", other thread counts", widen * 1.5
            break
    if not pool:
        return None
    effs = [r["decode_tok_s"] / r["ceiling_decode_tok_s"] for r in pool]
    eff = statistics.median(effs)
    spread = statistics.stdev(effs) / eff if len(effs) > 1 else 0.0
    # band narrows as receipts accumulate: 15 % at one receipt, ~5 % floor, plus the observed spread
    half = min(0.9, widen * max(0.05, 0.15 / len(effs) ** 0.5 + 2 * spread))
    from .plan import Calibration
    return Calibration(eff, (1 - half, 1 + half), len(effs), f"calibrated from {len(effs)} receipt(s), {how}")


def load_calibration(info, target, threads: int | None = None, store: "ReceiptStore | None" = None):
    """Calibration for this model on this machine from the receipt store, or None (uncalibrated)."""
    from .model import header_sha256
    store = store or ReceiptStore()
    rows = store.query()
    if not rows:
        return None
    return calibrate(rows, header_sha256(info), target.fingerprint, info.architecture, threads)


# ----------------------------------------------------------------------------------------------- markdown

def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "null"
    if isinstance(x, float):
        return f"{x:.2f}{unit}"
    return f"{x}{unit}"


def to_markdown(doc: dict) -> str:
    m = doc.get("measured") or {}
    model = doc.get("model") or {}
    hw = doc.get("hardware") or {}
    out = doc.get("outcome") or {}
    pl = (((doc.get("plan") or {}).get("plan") or {}).get("placement")) or {}
    gpus = ((hw.get("gpus") or {}).get("devices") or [])
    plat = hw.get("platform") or {}
    gpu_txt = ", ".join(f"{g.get('name')} ({(g.get('total_bytes') or 0) >> 20} MiB)" for g in gpus) or "none"
    dec, pre = m.get("decode_tok_s") or {}, m.get("prefill_tok_s") or {}
    lines = [
        f"**gpcrun receipt** `{doc.get('id')}` — {out.get('kind')}: {out.get('reason')}",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{model.get('file_name')}` ({model.get('architecture')}, {_fmt((model.get('size_bytes') or 0) / 2**30)} GiB) |",
        f"| llama.cpp | {(doc.get('llama_cpp') or {}).get('build_info')} |",
        f"| hardware | {plat.get('cpu_model')} x{plat.get('cores_logical')}; GPUs: {gpu_txt} |",
        f"| placement | ctx {pl.get('ctx')}, -ngl {pl.get('ngl')}, --n-cpu-moe {pl.get('n_cpu_moe')}, KV {pl.get('type_k')} |",
        f"| prefill | {_fmt(pre.get('mean'))} ± {_fmt(pre.get('sd'))} tok/s |",
        f"| decode | {_fmt(dec.get('mean'))} ± {_fmt(dec.get('sd'))} tok/s (forecast {_fmt(m.get('forecast_decode_tok_s'))}, error {_fmt(m.get('prediction_error_pct'), ' %')}) |",
        f"| TTFT p50 / ITL p50 | {_fmt((m.get('ttft_ms') or {}).get('p50'))} ms / {_fmt((m.get('itl_ms') or {}).get('p50'))} ms |",
        f"| peak RSS / min host available | {_fmt(((doc.get('envelope') or {}).get('peak_child_rss_bytes') or 0) / 2**20)} MiB / {_fmt(((doc.get('envelope') or {}).get('min_host_available_bytes') or 0) / 2**30)} GiB |",
        "",
        "<details><summary>command</summary>",
        "",
        "```",
        " ".join((doc.get("command") or {}).get("argv") or []),
        "```",
        "</details>",
        "",
        "<details><summary>full receipt (JSON)</summary>",
        "",
        "```json",
        json.dumps(doc, indent=1, default=str),
        "```",
        "</details>",
    ]
    return "\n".join(lines)
