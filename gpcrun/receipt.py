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
_SECRET_ENV = re.compile(r"(_TOKEN|_KEY|_SECRET|PASSWORD)$", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


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


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Only the variables that shape a run are kept; any *_TOKEN/*_KEY value is redacted."""
    keep = {}
    for k, v in env.items():
        if k.startswith(("LLAMA_", "GGML_", "CUDA_", "GPCRUN_", "HF_", "OMP_")) or _SECRET_ENV.search(k):
            keep[k] = REDACTED if _SECRET_ENV.search(k) or _HF_TOKEN.search(v) else v
    return dict(sorted(keep.items()))


def redact_paths(doc: Any, home: str | None = None, hostname: str | None = None) -> Any:
    """Replace the home directory with ~ and the host name with <host> everywhere in a JSON document."""
    home = home or os.path.expanduser("~")
    hostname = hostname or socket.gethostname()

    def fix(x):
        if isinstance(x, str):
            if home and home != "/" and home in x:
                x = x.replace(home, "~")
            if hostname and len(hostname) > 2 and hostname in x:
                x = x.replace(hostname, "<host>")
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
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def read_receipt(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ReceiptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReceiptError(f"{path}: is a directory") from None
    except OSError as e:
        raise ReceiptError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ReceiptError(f"{path}: not JSON ({e})") from None


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
    from them when it is missing or unreadable."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else gpcrun_home() / "receipts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self._db: sqlite3.Connection | None = None

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open()
            except sqlite3.DatabaseError:  # corrupt: rebuild from the JSON files
                for suffix in ("", "-wal", "-shm"):
                    Path(str(self.db_path) + suffix).unlink(missing_ok=True)
                self._db = self._open()
                self.reindex()
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"CREATE TABLE IF NOT EXISTS receipts ({', '.join(c + (' PRIMARY KEY' if c == 'id' else '') for c in _COLUMNS)})")
        db.execute("PRAGMA quick_check").fetchone()
        return db

    def save(self, doc: dict) -> Path:
        path = self.root / f"{doc['id']}.json"
        _atomic_write(path, json.dumps(doc, indent=2, default=str) + "\n")
        with self.db() as db:  # one transaction
            db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})", _row(doc, path))
        return path

    def reindex(self) -> int:
        n = 0
        db = self.db() if self._db is None else self._db
        with db:
            db.execute("DELETE FROM receipts")
            for p in sorted(self.root.glob("r*.json")):
                try:
                    doc = json.loads(p.read_text())
                    db.execute(f"INSERT OR REPLACE INTO receipts VALUES ({', '.join('?' * len(_COLUMNS))})",
                               _row(doc, p))
                    n += 1
                except (ValueError, KeyError):
                    continue
        return n

    def query(self, model: str | None = None, since: str | None = None, **eq: Any) -> list[dict]:
        where, args = [], []
        if model:
            where.append("(model_name LIKE ? OR model_fingerprint = ?)")
            args += [f"%{model}%", model]
        if since:
            where.append("created_utc >= ?")
            args.append(since)
        for k, v in eq.items():
            if k not in _COLUMNS:
                raise ValueError(k)
            where.append(f"{k} = ?")
            args.append(v)
        sql = "SELECT * FROM receipts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_utc"
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
    if threads is not None:
        same_t = [r for r in good if r.get("threads") in (threads, None)]
        good = same_t or good
    exact = [r for r in good if r.get("model_fingerprint") == model_fp and r.get("hardware_fingerprint") == hardware_fp]
    pool, how, widen = exact, "same model and hardware", 1.0
    if not pool:
        pool = [r for r in good if r.get("hardware_fingerprint") == hardware_fp and r.get("architecture") == arch]
        how, widen = "same hardware and architecture", 2.0
    if not pool:
        return None
    effs = [r["decode_tok_s"] / r["ceiling_decode_tok_s"] for r in pool]
    eff = statistics.median(effs)
    spread = statistics.stdev(effs) / eff if len(effs) > 1 else 0.0
    # band narrows as receipts accumulate: 15 % at one receipt, ~5 % floor, plus the observed spread
    half = widen * max(0.05, 0.15 / len(effs) ** 0.5 + 2 * spread)
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
