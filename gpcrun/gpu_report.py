"""The GPU check's report (pure): what scripts/gpu_check collects on a GPU machine, parsed and compared.

Inputs are the tools' own outputs: `nvidia-smi --query-gpu/--query-compute-apps ... --format=csv,noheader,nounits`,
llama.cpp's memory breakdown table (common/fit.cpp common_memory_breakdown_print, printed at -lv 4 at start-up and
exit: `| - CUDA0 (H200) | total = free + (self = model + context + compute) + unaccounted |`), gpcrun's plan and
run documents. Everything is a figure or None with the reason; nothing here runs a process.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

MIB = 1 << 20
GPU_QUERY = "index,uuid,name,pci.bus_id,memory.total,memory.used,memory.free,power.draw,power.limit,temperature.gpu"
APPS_QUERY = "pid,used_memory"

_DEV_ROW = re.compile(r"\|\s+-\s+(?P<name>\S+)\s+\((?P<desc>[^)]*)\)\s*\|\s*(?P<total>\d+)\s*=\s*(?P<free>\d+)\s*\+"
                      r"\s*\(\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\)"
                      r"\s*\+\s*(?P<unaccounted>-?\d+)\s*\|")
_OTHER_ROW = re.compile(r"\|\s+-\s+(?P<name>[^|]+?)\s*\|\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)"
                        r"\s*\+\s*(?P<compute>\d+)\s*\|")


def _num(v: str) -> float | None:
    v = v.strip()
    if not v or v.startswith("[") or v.lower() in ("n/a", "[n/a]", "[not supported]"):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def parse_smi_gpus(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits` -> one dict per GPU (bytes, mW, C)."""
    out = []
    for line in text.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) < 10:
            continue
        total, used, free, power, limit, temp = (_num(x) for x in f[4:10])
        out.append({"index": int(f[0]), "uuid": f[1], "name": f[2], "pci_bus_id": f[3],
                    "total_bytes": None if total is None else int(total * MIB),
                    "used_bytes": None if used is None else int(used * MIB),
                    "free_bytes": None if free is None else int(free * MIB),
                    "power_mw": None if power is None else int(power * 1000),
                    "power_limit_mw": None if limit is None else int(limit * 1000),
                    "temperature_c": None if temp is None else int(temp)})
    return out


def parse_smi_apps(text: str) -> dict[int, int]:
    """`nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits` -> {pid: bytes}."""
    out: dict[int, int] = {}
    for line in text.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 2 and f[0].isdigit() and _num(f[1]) is not None:
            out[int(f[0])] = out.get(int(f[0]), 0) + int(_num(f[1]) * MIB)
    return out


def parse_breakdown(text: str) -> list[list[dict]]:
    """Every memory breakdown table in a llama-server log (-lv 4), in order: rows in bytes per device, Host and
    other buffer types. The last one is printed at exit, after the run."""
    tables: list[list[dict]] = []
    for line in text.splitlines():
        if "memory breakdown [MiB]" in line:
            tables.append([])
            continue
        if not tables or "common_memory_breakdown_print" not in line and "| " not in line:
            continue
        m = _DEV_ROW.search(line)
        if m:
            row = {"kind": "device", "name": m["name"], "description": m["desc"]}
            row.update({f"{k}_bytes": int(m[k]) * MIB for k in ("total", "free", "self", "model", "context",
                                                                  "compute", "unaccounted")})
            tables[-1].append(row)
            continue
        m = _OTHER_ROW.search(line)
        if m:
            name = m["name"].strip()
            row = {"kind": "host" if name == "Host" else "buffer_type", "name": name}
            row.update({f"{k}_bytes": int(m[k]) * MIB for k in ("self", "model", "context", "compute")})
            tables[-1].append(row)
    return [t for t in tables if t]


def compare_profile(profile_gpus: Sequence[Mapping], smi: Sequence[Mapping]) -> list[dict]:
    """gpcrun's NVML profile against nvidia-smi, GPU by GPU (matched by UUID, else index)."""
    rows = []
    for s in smi:
        p = next((g for g in profile_gpus if g.get("uuid") and g.get("uuid") == s["uuid"]), None) or \
            next((g for g in profile_gpus if g.get("nvml_index") == s["index"]), None)
        if p is None:
            rows.append({"index": s["index"], "ok": False, "reason": "gpcrun's profile does not list this GPU"})
            continue
        total_diff = None if p.get("total_bytes") is None or s["total_bytes"] is None else \
            abs(int(p["total_bytes"]) - s["total_bytes"])
        ok = p.get("name") == s["name"] and total_diff is not None and total_diff < MIB and \
            str(p.get("pci_bus_id", "")).lower().endswith(s["pci_bus_id"].lower()[-12:])
        rows.append({"index": s["index"], "name": s["name"], "ok": ok, "total_diff_bytes": total_diff,
                     "profile": {k: p.get(k) for k in ("name", "pci_bus_id", "total_bytes", "compute_capability")},
                     "smi": {k: s[k] for k in ("name", "pci_bus_id", "total_bytes")}})
    return rows


def _plan_gpu_self(plan_doc: Mapping) -> dict[str, int]:
    ev = plan_doc.get("plan") or plan_doc.get("nearest") or {}
    return {m["device"]: int(m.get("self_bytes") or 0) for m in ev.get("memory") or () if m.get("kind") == "gpu"}


def vram_row(label: str, plan_doc: Mapping, breakdown: Sequence[Mapping], nvml_process_bytes: int | None) -> dict:
    """One placement: gpcrun's planned GPU 'self' against llama.cpp's, and NVML's per-process figure; the CUDA
    runtime's overhead is NVML minus llama.cpp's self (measured, per driver)."""
    planned = _plan_gpu_self(plan_doc)
    llama = {r["name"]: r["self_bytes"] for r in breakdown if r["kind"] == "device"}
    plan_total = sum(planned.values()) if planned else None
    llama_total = sum(llama.values()) if llama else None
    err = None if not plan_total or not llama_total else round(100.0 * (plan_total - llama_total) / llama_total, 2)
    overhead = None if nvml_process_bytes is None or llama_total is None else nvml_process_bytes - llama_total
    return {"placement": label, "plan_self_bytes": plan_total, "llama_self_bytes": llama_total,
            "nvml_process_bytes": nvml_process_bytes, "cuda_overhead_bytes": overhead, "plan_error_pct": err,
            "per_device": {"plan": planned, "llama": llama}}


def speed_row(label: str, receipt: Mapping) -> dict:
    """Forecast against measurement from a bench receipt (decode and prefill)."""
    m = receipt.get("measured") or {}
    f = ((receipt.get("plan") or {}).get("plan") or {}).get("forecast") or {}

    def err(fc, ms):
        return None if not fc or not ms else round(100.0 * (fc - ms) / ms, 2)
    d = (m.get("decode_tok_s") or {}).get("mean")
    p = (m.get("prefill_tok_s") or {}).get("mean")
    return {"placement": label, "decode_forecast": f.get("decode_tok_s"), "decode_measured": d,
            "decode_error_pct": err(f.get("decode_tok_s"), d), "prefill_forecast": f.get("prefill_tok_s"),
            "prefill_measured": p, "prefill_error_pct": err(f.get("prefill_tok_s"), p),
            "outcome": (receipt.get("outcome") or {}).get("kind")}


def watchdog_row(incident: Mapping | None, samples: Sequence[Mapping], server_log: str, gpu_line_bytes: int) -> dict:
    """The VRAM watchdog for real: the first sample under the line, the signal, and no CUDA OOM in the log."""
    first = next((s for s in samples if any((g.get("free_bytes") is not None and g["free_bytes"] < gpu_line_bytes)
                                            for g in s.get("gpus") or ())), None)
    t_sig = (incident or {}).get("signal_t_wall")
    oom = [ln for ln in server_log.splitlines() if re.search(r"out of memory|cudaMalloc failed|CUDA error", ln)]
    return {"fired": incident is not None, "rule": (incident or {}).get("rule"), "signal": (incident or {}).get("signal"),
            "breach_to_signal_s": None if first is None or t_sig is None else round(t_sig - first["t_wall"], 3),
            "cuda_oom_lines": oom[:5], "ok": incident is not None and not oom}


def power_row(envelope: Mapping) -> dict:
    """Power and temperature in a run's envelope (launch/sampling.Envelope: peak power fraction and temperature)."""
    p, t = envelope.get("peak_power_fraction"), envelope.get("peak_temperature_c")
    return {"peak_power_fraction": p, "peak_temperature_c": t, "ok": p is not None and t is not None,
            "peak_child_vram_bytes": envelope.get("peak_child_vram_bytes")}


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "unknown"
    if unit == "MiB":
        return f"{v / MIB:.0f} MiB"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def _table(title: str, rows: Sequence[Mapping], cols: Sequence[tuple[str, str, str | None]]) -> list[str]:
    """A titled Markdown table of rows: (header, key, unit) per column; unit None: the value as it is."""
    if not rows:
        return []
    out = ["", f"## {title}", "", "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    return out + ["| " + " | ".join(str(r[k]) if u is None else _fmt(r[k], u) for _, k, u in cols) + " |"
                  for r in rows]


def render_markdown(report: Mapping) -> str:
    """The report as a GitHub-ready summary: each step's status, then its figures."""
    out = [f"# gpcrun GPU check — {report.get('machine', 'unknown machine')}", "",
           f"{report.get('started_utc', '')}; {report.get('elapsed_s', '?')} s; gpcrun {report.get('gpcrun', '?')};"
           f" llama.cpp {report.get('llama_cpp', 'unknown')}", "", "| step | status | note |", "|---|---|---|"]
    for name, st in (report.get("steps") or {}).items():
        out.append(f"| {name} | {st.get('status')} | {str(st.get('reason') or '').replace('|', '/')[:200]} |")
    steps = report.get("steps") or {}

    def step(kind: str) -> dict:  # "vram", or "recorded vram" in a self-test
        return next((v for k, v in steps.items() if k.split()[-1] == kind and isinstance(v, dict)), {})
    out += _table("VRAM: plan vs llama.cpp vs NVML", step("vram").get("rows") or [], (
        ("placement", "placement", None), ("plan self", "plan_self_bytes", "MiB"),
        ("llama.cpp self", "llama_self_bytes", "MiB"), ("NVML process", "nvml_process_bytes", "MiB"),
        ("CUDA overhead", "cuda_overhead_bytes", "MiB"), ("plan error", "plan_error_pct", " %")))
    out += _table("Speed: forecast vs measured", step("speed").get("rows") or [], (
        ("placement", "placement", None), ("decode forecast", "decode_forecast", ""),
        ("decode measured", "decode_measured", ""), ("error", "decode_error_pct", " %"),
        ("prefill forecast", "prefill_forecast", ""), ("prefill measured", "prefill_measured", ""),
        ("error", "prefill_error_pct", " %")))
    wd = step("watchdog").get("row")
    if wd:
        out += ["", "## VRAM watchdog", "", f"fired: {wd['fired']} ({wd['rule']}, {wd['signal']}); breach to"
                f" signal {_fmt(wd['breach_to_signal_s'], ' s')}; CUDA OOM lines in the log: {len(wd['cuda_oom_lines'])}"]
    return "\n".join(out) + "\n"
