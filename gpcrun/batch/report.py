"""Batch reports: the summary row of each job (from its receipt), rendered as a table, Markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..atomic import write_json_atomic, write_text_atomic
from ..errors import BatchError
from ..receipt.docs import ReceiptDoc
from .jobs import Job
from .state import read_jobs


SUMMARY_COLUMNS = ("job", "model", "config", "verdict", "forecast_tok_s", "prefill_tok_s", "decode_tok_s",
                   "error_pct", "peak_vram_mib", "peak_ram_mib", "outcome")


def job_summary(doc: Mapping[str, Any]) -> dict:
    """The batch table's numbers from a receipt."""
    r = ReceiptDoc.from_json(doc)
    m, env = r.measured, r.envelope
    vram = env.peak_child_vram_bytes
    return {"verdict": r.plan.verdict, "forecast_tok_s": r.plan.shown.forecast.decode_tok_s,
            "prefill_tok_s": m.prefill_tok_s.mean, "decode_tok_s": m.decode_tok_s.mean,
            "error_pct": m.prediction_error_pct,
            "peak_vram_mib": round(max(v for v in vram.values() if v) / 2**20, 1) if any(vram.values()) else None,
            "peak_ram_mib": round(env.peak_child_rss_bytes / 2**20, 1) if env.peak_child_rss_bytes else None}


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
    from ..fmt import table
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
    write_json_atomic(out_dir / "summary.json", list(rows))
    write_text_atomic(out_dir / "summary.csv", render_csv(rows))
    write_text_atomic(out_dir / "summary.md", render_markdown(rows) + "\n")


def collect(dirs: Sequence[Path]) -> list[dict]:
    """Summary rows from one or more batch output directories (gpcrun batch report)."""
    rows: list[tuple[int, int, dict]] = []
    for n, d in enumerate(dirs):
        db = Path(d) / "state.sqlite"
        if not db.exists():
            raise BatchError(f"{d}: no state.sqlite (not a gpcrun batch output directory)")
        for r in read_jobs(Path(d)):  # read only: a finished batch on a read-only disk reports as well
            row = summary_row(r)
            row["job"] = f"{Path(d).name}:{row['job']}" if len(dirs) > 1 else row["job"]
            rows.append((r["idx"], n, row))
    # the shards of one batch (shard-I-of-N, same N) merge back into the expansion order of the whole batch
    shard_ns = {m.group(1) if (m := re.fullmatch(r"shard-\d+-of-(\d+)", Path(d).resolve().name)) else None
                for d in dirs}
    if len(dirs) > 1 and len(shard_ns) == 1 and None not in shard_ns:
        rows.sort(key=lambda t: (t[0], t[1]))
    return [row for _, _, row in rows]
