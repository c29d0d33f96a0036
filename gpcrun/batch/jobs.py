"""Job files: a TOML [batch] / [[models]] / [matrix] document -> the deterministic list of jobs (models x settings)."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BatchError

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

    def public_settings(self) -> dict:
        """The settings with secrets in server_args redacted (--api-key VALUE ...): what state.sqlite, the summaries
        and the console get; the job file stays the one source of the real values."""
        from ..redact import redact_argv, scrub, secret_values
        args = list(self.settings.get("server_args") or [])
        return scrub(dict(self.settings, server_args=redact_argv(args)), secret_values(args, {}))

    def describe(self) -> str:
        s = self.public_settings()
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
MODEL_KEYS = ("path", "ref", "url", "model", "name", "server_args")  # url (+ model): a running server or router


def _known_keys(table: Mapping, known: Sequence[str], where: str, source: str) -> None:
    unknown = set(table) - set(known)
    if unknown:
        raise BatchError(f"{source}: unknown {where} keys {sorted(unknown)} (known: {', '.join(known)})")


MAX_JOBS = 10_000  # a bigger matrix is refused unless asked for (--max-jobs): it is more likely a typo than a plan


def parse_jobs(text: str, base_dir: Path, source: str = "JOBS.toml",
               env: Mapping[str, str] | None = None, max_jobs: int = MAX_JOBS) -> tuple[dict, list[Job]]:
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
    n_jobs = len(models) if isinstance(models, list) else 0
    for _, vals in axes:
        n_jobs *= len(vals)
    if n_jobs > max_jobs:  # before expanding anything: 10^6 jobs would take minutes just to list
        raise BatchError(f"{source}: the matrix expands to {n_jobs} jobs, more than {max_jobs}: split it, or pass"
                         f" --max-jobs {n_jobs}")
    jobs: list[Job] = []
    for mi, m in enumerate(models):
        if not isinstance(m, dict) or not (m.get("path") or m.get("ref") or m.get("url")):
            raise BatchError(f"{source}: models[{mi}] needs 'path', 'ref' or 'url'")
        unknown = set(m) - set(MODEL_KEYS)
        if unknown:
            raise BatchError(f"{source}: models[{mi}]: unknown keys {sorted(unknown)} (known: {', '.join(MODEL_KEYS)})")
        if sum(bool(m.get(k)) for k in ("path", "ref", "url")) > 1:
            raise BatchError(f"{source}: models[{mi}]: give one of 'path', 'ref' and 'url'")
        if m.get("url") and m.get("server_args"):
            raise BatchError(f"{source}: models[{mi}]: a 'url' job starts no server: server_args do not apply")
        if m.get("model") and not m.get("url"):
            raise BatchError(f"{source}: models[{mi}]: 'model' names a model behind a router's 'url'")
        for k in ("path", "ref", "url", "model", "name"):
            if k in m and not isinstance(m[k], str):
                raise BatchError(f"{source}: models[{mi}].{k} must be a string")
        model_args = m.get("server_args") or []
        if not isinstance(model_args, list) or not all(isinstance(a, str) for a in model_args):
            raise BatchError(f"{source}: models[{mi}].server_args must be a list of strings")
        spec = m.get("url") or m.get("ref") or _expand_path(m["path"], env, f"{source}: models[{mi}].path")
        if m.get("path") and not os.path.isabs(spec) and "://" not in spec:
            spec = str((base_dir / spec).resolve())
        label = m.get("name") or m.get("model") or os.path.basename(str(spec))
        for combo in itertools.product(*[vals for _, vals in axes]) if axes else [()]:
            s = dict(defaults)
            for (k, _), v in zip(axes, combo):
                s[k] = v
            _check_settings(s, source)
            s["server_args"] = list(model_args) + list(s["server_args"])
            if m.get("url"):
                s["url"], s["router_model"] = m["url"], m.get("model")
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
    from ..model import KV_CACHE_TYPES
    if s["ctx"] is not None and (not _is_int(s["ctx"]) or s["ctx"] < 0):
        raise BatchError(f"{source}: ctx must be a non-negative integer, got {s['ctx']!r}")
    if s["kv_type"] is not None and s["kv_type"] not in KV_CACHE_TYPES:
        raise BatchError(f"{source}: kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {s['kv_type']!r}")
    if not isinstance(s["server_args"], list) or not all(isinstance(a, str) for a in s["server_args"]):
        raise BatchError(f"{source}: server_args must be a list of strings")
    if not isinstance(s["concurrency"], list) or not all(_is_int(c) and c >= 1 for c in s["concurrency"]):
        raise BatchError(f"{source}: concurrency must be a list of integers >= 1")
    for k in ("timeout_s",):
        if not isinstance(s[k], (int, float)) or isinstance(s[k], bool) or not math.isfinite(s[k]) or s[k] <= 0:
            raise BatchError(f"{source}: {k} must be a positive finite number, got {s[k]!r}")
    for k in ("prompt_tokens", "gen_tokens", "repetitions", "parallel"):
        if not _is_int(s[k]) or s[k] < 1:
            raise BatchError(f"{source}: {k} must be an integer >= 1, got {s[k]!r}")


def _check_server_args(args: list[str], where: str) -> None:
    """The planner reads some llama-server flags (-c, -ngl, -ctk...): a value it cannot parse is a job-file error
    now, not a failure in the middle of the batch."""
    from ..plan import parse_server_args
    from ..server_args import ServerArgsError
    try:
        parse_server_args(args)
    except ServerArgsError as e:
        raise BatchError(f"{where}: server_args: {e}") from None
