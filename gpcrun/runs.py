"""What runs on this machine (`gpcrun ps`), its log (`gpcrun logs`) and stopping it (`gpcrun stop`): the library
behind those commands, reading what every supervising gpcrun registers (launch/registry.py).

A run is `ready`/`loading`/`starting`/`stopping` while its gpcrun lives (the pid and its start time from /proc
both match), `finished` once its run.json exists, and `dead` when its gpcrun is gone without one (killed with -9,
an OOM kill of gpcrun itself): that look writes run.json with outcome `gpcrun_died`, so nothing stays "ready"
forever. Figures next to the plan: the server's RSS now (psutil), the last watchdog sample (samples.jsonl: host
available vs the watchdog's lines, VRAM per GPU).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunNotFound
from .atomic import read_json_bounded
from .launch.registry import active_run_dirs, process_start_ticks, read_status
from .paths import gpcrun_home


@dataclass
class RunView:
    run_id: str
    run_dir: Path
    state: str  # starting | loading | ready | stopping | finished | dead
    command: str | None = None
    model: str | None = None
    url: str | None = None
    gpcrun_pid: int | None = None
    server_pid: int | None = None
    uptime_s: float | None = None
    server_rss_bytes: int | None = None
    last_sample: dict = field(default_factory=dict)
    planned: dict = field(default_factory=dict)
    outcome: dict | None = None
    # a router: [{"model", "running", "pid", "rss_bytes", "vram_bytes", "planned_bytes"}] per model it lists
    models: list = field(default_factory=list)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        return d


def _alive(pid: int | None, start_ticks: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process holds the pid now, or ours under another uid: the start time decides
    return start_ticks is None or process_start_ticks(pid) == start_ticks


def _rss(pid: int | None) -> int | None:
    """The server's process tree RSS now (hardware/host.py, the one psutil user)."""
    if not pid:
        return None
    from .hardware.host import tree_rss_bytes
    try:
        return tree_rss_bytes(pid)
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return None


def _tail(path: Path, max_bytes: int) -> tuple[bytes, int] | None:
    """(the last max_bytes of a file, its size), None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - max_bytes))
            return f.read(), end
    except OSError:
        return None


def _last_sample(run_dir: Path, max_bytes: int = 65536) -> dict:
    """The last whole line of samples.jsonl (the tail only is read)."""
    tail = _tail(run_dir / "samples.jsonl", max_bytes)
    if tail is None:
        return {}
    import json
    for line in reversed(tail[0].splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        return doc if isinstance(doc, dict) else {}
    return {}


def _planned(run_dir: Path) -> dict:
    """What the plan said each device would hold (plan.json's memory map of the chosen placement), bytes by
    device name."""
    try:
        doc = read_json_bounded(run_dir / "plan.json")
    except (OSError, ValueError):
        return {}
    plan = doc.get("plan") if isinstance(doc, dict) else None  # plan.json: {"plan": {"memory": [...]}, ...}
    mem = plan.get("memory") if isinstance(plan, dict) else None
    if not isinstance(mem, list):
        return {}
    return {m.get("device"): m.get("total_bytes") for m in mem if isinstance(m, dict)}


def _router_models(run_dir: Path, sample: dict) -> list[dict]:
    """A router's models: each planned one (plan.json "models") with its instance now, if the last watchdog
    sample saw one running (its pid, RSS and VRAM)."""
    try:
        doc = read_json_bounded(run_dir / "plan.json")
    except (OSError, ValueError):
        return []
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        return []
    live = {m.get("model"): m for m in sample.get("models") or () if isinstance(m, dict)}
    out = []
    for m in models:
        if not isinstance(m, dict):
            continue
        mem = {r.get("device"): r.get("total_bytes") for r in m.get("memory") or () if isinstance(r, dict)}
        now = live.get(m.get("name")) or {}
        out.append({"model": m.get("name"), "running": bool(now), "pid": now.get("pid"),
                    "rss_bytes": now.get("rss_bytes"), "vram_bytes": now.get("vram_bytes"),
                    "planned_bytes": mem, "verdict": m.get("verdict")})
    return out


def _finish_dead(run_dir: Path, status: dict) -> dict:
    """run.json for a run whose gpcrun died: the outcome says so; llama-server died with it (PR_SET_PDEATHSIG)."""
    from .launch.run import write_run_doc
    outcome = {"kind": "gpcrun_died", "exit_code": None, "cause": "gpcrun_died",
               "reason": f"gpcrun (pid {status.get('gpcrun_pid')}) ended without finishing the run; its last state"
                         f" was {status.get('state')!r}"}
    doc = {"outcome": outcome, "attempts": status.get("attempt"), "run_dir": str(run_dir), "url": status.get("url"),
           "ready_s": None, "envelope": {}, "watchdog_cpu_s": None, "firing": None,
           "completed_by": "gpcrun ps", "completed_at_unix": round(time.time(), 3)}
    try:
        write_run_doc(run_dir / "run.json", doc)
    except OSError:
        pass
    return outcome


def view(run_dir: Path, now: float | None = None) -> RunView:
    """One run as `ps` shows it; a dead run gets its run.json here."""
    now = time.time() if now is None else now
    run_dir = Path(run_dir)
    st = read_status(run_dir) or {}
    v = RunView(run_dir.name, run_dir, st.get("state") or "unknown", st.get("command"), st.get("model"),
                st.get("url"), st.get("gpcrun_pid"), st.get("server_pid"))
    run_json = run_dir / "run.json"
    if run_json.exists():
        try:
            v.outcome = (read_json_bounded(run_json) or {}).get("outcome")
        except (OSError, ValueError, AttributeError):
            v.outcome = None
        v.state = "finished"
        return v
    if not _alive(st.get("gpcrun_pid"), st.get("gpcrun_start_ticks")):
        v.state = "dead"
        v.outcome = _finish_dead(run_dir, st) if st else None
        return v
    if st.get("started_at_unix"):
        v.uptime_s = round(now - float(st["started_at_unix"]), 1)
    v.server_rss_bytes = _rss(v.server_pid)
    v.last_sample = _last_sample(run_dir)
    v.planned = _planned(run_dir)
    v.models = _router_models(run_dir, v.last_sample)
    return v


def list_runs(home: Path | None = None, include_finished: bool = False, recent: int = 10) -> list[RunView]:
    """Every registered run; finished and dead ones leave the registry as they are seen. include_finished: also
    the `recent` newest finished runs under $GPCRUN_HOME/runs (batch runs live under their batch output)."""
    out = []
    if include_finished:
        try:
            dirs = sorted((d for d in ((home or gpcrun_home()) / "runs").iterdir() if (d / "run.json").exists()),
                          key=lambda d: d.name)[-recent:]
        except OSError:
            dirs = []
        out += [view(d) for d in dirs]
    for entry, run_dir in active_run_dirs(home):
        v = view(run_dir)
        if v.state in ("finished", "dead"):
            try:
                entry.unlink()
            except OSError:
                pass
            if v.state == "finished":
                continue  # listed above when asked for
        out.append(v)
    return out


def find_run(ref: str, home: Path | None = None) -> Path:
    """A run directory by its id or a unique prefix of it: registered runs first, then $GPCRUN_HOME/runs."""
    if not ref or "/" in ref or ref in (".", ".."):
        raise RunNotFound(f"no run {ref!r}: give a run id as `gpcrun ps` prints it")
    seen: dict[str, Path] = {}
    for _, d in active_run_dirs(home):
        seen.setdefault(d.name, d)
    root = (home or gpcrun_home()) / "runs"
    try:
        for d in root.iterdir():
            seen.setdefault(d.name, d)
    except OSError:
        pass
    if ref in seen:
        return seen[ref]
    hits = sorted(n for n in seen if n.startswith(ref))
    if len(hits) == 1:
        return seen[hits[0]]
    if not hits:
        raise RunNotFound(f"no run {ref!r} (see `gpcrun ps --all`)")
    raise RunNotFound(f"{ref!r} names {len(hits)} runs ({', '.join(hits[:3])}{' ...' if len(hits) > 3 else ''});"
                      " give more of the id")


def stop_run(run_dir: Path, timeout_s: float = 30.0) -> RunView:
    """SIGTERM the run's gpcrun (it stops llama-server within its grace, writes run.json and the receipt) and wait
    for run.json; a run that is already over is returned as it is."""
    v = view(run_dir)
    if v.state in ("finished", "dead"):
        return v
    st = read_status(run_dir) or {}
    try:
        os.kill(int(st["gpcrun_pid"]), signal.SIGTERM)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return view(run_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run_dir / "run.json").exists() or not _alive(st.get("gpcrun_pid"), st.get("gpcrun_start_ticks")):
            break
        time.sleep(0.05)
    return view(run_dir)


def log_tail(run_dir: Path, lines: int = 50, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """(the last `lines` lines of server.log, the offset its end is at), reading at most max_bytes."""
    tail = _tail(Path(run_dir) / "server.log", max_bytes)
    if tail is None:
        return "", 0
    data, end = tail
    text = data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []
    return "\n".join(text) + ("\n" if text else ""), end


def log_since(run_dir: Path, offset: int, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """What server.log gained since offset (from its start again if it was rotated to a shorter size)."""
    p = Path(run_dir) / "server.log"
    try:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end < offset:
                offset = 0
            f.seek(offset)
            data = f.read(max_bytes)
    except OSError:
        return "", offset
    return data.decode("utf-8", "replace"), offset + len(data)
