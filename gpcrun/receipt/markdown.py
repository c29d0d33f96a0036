"""A receipt as Markdown, for bug reports: a summary table, the command and the full JSON."""
from __future__ import annotations

import json
from typing import Any

from .docs import ReceiptDoc


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "null"
    if isinstance(x, float):
        return f"{x:.2f}{unit}"
    return f"{x}{unit}"


def to_markdown(doc: dict) -> str:
    r = ReceiptDoc.from_json(doc)
    m, model, out, pl, env = r.measured, r.model, r.outcome, r.plan.placement, r.envelope
    gpu_txt = ", ".join(f"{g.name} ({(g.total_bytes or 0) >> 20} MiB)" for g in r.hardware.gpus) or "none"
    dec, pre = m.decode_tok_s, m.prefill_tok_s
    lines = [
        f"**gpcrun receipt** `{r.id}` — {out.kind}: {out.reason}",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{model.file_name}` ({model.architecture}, {_fmt((model.size_bytes or 0) / 2**30)} GiB) |",
        *([f"| **served model** | not the planned one: {doc['measured']['model_check'].get('reason')} |"]
          if m.model_same is False else []),
        f"| llama.cpp | {r.llama_cpp_build_info} |",
        f"| hardware | {r.hardware.cpu_model} x{r.hardware.cores_logical}; GPUs: {gpu_txt} |",
        f"| placement | ctx {pl.ctx}, -ngl {pl.ngl}, --n-cpu-moe {pl.n_cpu_moe}, KV {pl.type_k} |",
        f"| prefill | {_fmt(pre.mean)} ± {_fmt(pre.sd)} tok/s |",
        f"| decode | {_fmt(dec.mean)} ± {_fmt(dec.sd)} tok/s (forecast {_fmt(m.forecast_decode_tok_s)}, error {_fmt(m.prediction_error_pct, ' %')}) |",
        f"| TTFT p50 / ITL p50 | {_fmt(m.ttft_p50_ms)} ms / {_fmt(m.itl_p50_ms)} ms |",
        f"| peak RSS / min host available | {_fmt((env.peak_child_rss_bytes or 0) / 2**20)} MiB / {_fmt((env.min_host_available_bytes or 0) / 2**30)} GiB |",
        "",
        "<details><summary>command</summary>",
        "",
        "```",
        " ".join(r.argv),
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
