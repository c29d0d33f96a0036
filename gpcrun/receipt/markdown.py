"""A receipt as Markdown, paste-ready for a llama.cpp bug report: what its templates ask for (name and version,
backends and devices, OS, hardware, model, the exact command, the relevant log output) in a summary table, then the
command, the tail of llama-server's log and the full JSON in collapsed blocks. Unknown values say "unknown" and
why, never `None`/`null`; the whole stays under MAX_MARKDOWN_CHARS (GitHub comments stop at 65,536), trimming
the log first and the JSON second.
"""
from __future__ import annotations

import json
from typing import Any

from .docs import ReceiptDoc

MAX_MARKDOWN_CHARS = 60_000


def _fmt(x: Any, unit: str = "", unknown: str = "unknown") -> str:
    if x is None:
        return unknown
    if isinstance(x, float):
        return f"{x:.2f}{unit}"
    return f"{x}{unit}"


def _get(doc: Any, *keys: str) -> Any:
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _llama_cpp(doc: dict) -> str:
    from ..launch.binary import describe_build
    lc = doc.get("llama_cpp") if isinstance(doc.get("llama_cpp"), dict) else {}
    parts = []
    if lc.get("version") or lc.get("sdist"):
        parts.append(describe_build(lc))
    if lc.get("build_info") and lc.get("build_info") not in " ".join(parts):
        parts.append(f"server reports {lc['build_info']}")
    if lc.get("cmake_flags"):
        parts.append("cmake " + " ".join(f"`{f}`" for f in lc["cmake_flags"]))
    return "; ".join(parts) or "unknown (the server was not reached, and no binary was run)"


def _devices(doc: dict, r: ReceiptDoc) -> str:
    devs = _get(doc, "plan", "target", "devices")
    names = [f"{d.get('name')} ({d.get('kind')})" for d in devs if isinstance(d, dict)] if isinstance(devs, list) else []
    gpus = ", ".join(f"{g.name} ({(g.total_bytes or 0) >> 20} MiB)" for g in r.hardware.gpus) or "no NVIDIA GPU"
    return (", ".join(names) + "; " if names else "") + gpus


def _os(doc: dict) -> str:
    p = _get(doc, "hardware", "platform") or {}
    bits = [p.get("distro") or p.get("os"), p.get("kernel_release"), p.get("arch")]
    txt = ", ".join(str(b) for b in bits if b)
    if p.get("container"):
        txt += f" (in {p['container']})"
    return txt or "unknown (no hardware profile in this receipt)"


def _model(doc: dict, r: ReceiptDoc) -> str:
    m = doc.get("model") if isinstance(doc.get("model"), dict) else None
    if not m:
        return "unknown (attached to a running server: `gpcrun bench --url`)"
    size = f"{(r.model.size_bytes or 0) / 2**30:.2f} GiB" if r.model.size_bytes else "size unknown"
    src = f"hub `{m['hub'].get('repo')}@{m['hub'].get('commit', '')[:12]}`" if isinstance(m.get("hub"), dict) else \
        f"`{m.get('path') or r.model.file_name}`"
    sha = f", header sha256 `{str(m.get('header_sha256'))[:16]}...`" if m.get("header_sha256") else ""
    return f"`{r.model.file_name}` ({r.model.architecture or 'architecture unknown'}, {size}) from {src}{sha}"


def _placement(r: ReceiptDoc) -> str:
    pl = r.plan.placement
    if pl.ctx is None and pl.ngl is None:
        return "not planned (`--no-plan`, or attached with `--url`)"
    txt = f"ctx {_fmt(pl.ctx)}, -ngl {_fmt(pl.ngl)}, KV {_fmt(pl.type_k)}"
    return txt + (f", --n-cpu-moe {pl.n_cpu_moe}" if pl.n_cpu_moe else "")


def _decode(doc: dict, r: ReceiptDoc) -> str:
    m = r.measured
    if m.decode_tok_s.mean is None:
        return f"not measured ({r.outcome.kind or 'no outcome'})"
    txt = f"{_fmt(m.decode_tok_s.mean)} ± {_fmt(m.decode_tok_s.sd, unknown='?')} tok/s"
    if m.forecast_decode_tok_s is not None:
        in_band = _get(doc, "measured", "in_band")
        band = _get(doc, "measured", "band_decode_tok_s")
        where = ""
        if in_band is not None and isinstance(band, list) and len(band) == 2:
            where = (f"; {'inside' if in_band else 'outside'} the forecast band "
                     f"{_fmt(band[0])}-{_fmt(band[1])} tok/s")
        err = m.prediction_error_pct  # 100 (forecast - measured) / measured
        how = (f"the forecast {abs(err):.1f} % {'above' if err >= 0 else 'below'} the measurement"
               if err is not None else "error unknown")
        txt += f" (forecast {_fmt(m.forecast_decode_tok_s)}: {how}{where})"
    return txt


def _memory(r: ReceiptDoc) -> str:
    env = r.envelope
    if env.peak_child_rss_bytes is None and env.min_host_available_bytes is None:
        return "not sampled (the server never ran under the watchdog)"
    rss = (f"peak RSS {env.peak_child_rss_bytes / 2**20:.2f} MiB" if env.peak_child_rss_bytes
           else "peak RSS not sampled (the server ended before the first sample)")
    host = (f"min host available {env.min_host_available_bytes / 2**30:.2f} GiB" if env.min_host_available_bytes
            else "host memory not sampled")
    return f"{rss}, {host}"


def to_markdown(doc: dict, max_chars: int = MAX_MARKDOWN_CHARS) -> str:
    r = ReceiptDoc.from_json(doc)
    m, out = r.measured, r.outcome
    pre = m.prefill_tok_s
    head = [
        f"**gpcrun receipt** `{r.id}` — {out.kind or 'unknown'}: {out.reason or 'no reason recorded'}",
        "",
        "| | |",
        "|---|---|",
        f"| model | {_model(doc, r)} |",
        *([f"| **served model** | not the planned one: {_get(doc, 'measured', 'model_check', 'reason')} |"]
          if m.model_same is False else []),
        f"| llama.cpp | {_llama_cpp(doc)} |",
        f"| OS | {_os(doc)} |",
        f"| hardware | {r.hardware.cpu_model or 'CPU unknown'} x{_fmt(r.hardware.cores_logical)}; devices: "
        f"{_devices(doc, r)} |",
        f"| placement | {_placement(r)} |",
        f"| prefill | {_fmt(pre.mean) + ' ± ' + _fmt(pre.sd, unknown='?') + ' tok/s' if pre.mean is not None else 'not measured'} |",
        f"| decode | {_decode(doc, r)} |",
        f"| TTFT p50 / ITL p50 | {_fmt(m.ttft_p50_ms, ' ms', 'not measured')} / {_fmt(m.itl_p50_ms, ' ms', 'not measured')} |",
        f"| memory | {_memory(r)} |",
        f"| exit | {_fmt(out.exit_code)} |",
        "",
        "<details><summary>command</summary>",
        "",
        "```",
        " ".join(r.argv) or "(attached to a running server)",
        "```",
        "</details>",
        "",
    ]
    log = doc.get("log_tail") if isinstance(doc.get("log_tail"), str) else ""
    full = json.dumps(doc, indent=1, default=str)

    def render(log_lines: list[str], with_json: bool) -> str:
        parts = list(head)
        if log_lines:
            parts += ["<details><summary>llama-server log (last lines)</summary>", "", "```", *log_lines, "```",
                      "</details>", ""]
        if with_json:
            parts += ["<details><summary>full receipt (JSON)</summary>", "", "```json", full, "```", "</details>"]
        else:
            parts += [f"(the full receipt JSON is {len(full)} characters: `gpcrun receipt show {r.id} --json`)"]
        return "\n".join(parts)

    lines = log.splitlines()
    text = render(lines, True)
    while len(text) > max_chars and lines:  # the log goes first, from its oldest lines
        lines = lines[len(lines) // 4 + 1:]
        text = render(lines, True)
    if len(text) > max_chars:
        lines = log.splitlines()
        text = render(lines, False)
        while len(text) > max_chars and lines:
            lines = lines[len(lines) // 4 + 1:]
            text = render(lines, False)
    return text
