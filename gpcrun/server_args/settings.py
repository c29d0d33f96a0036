"""Typed reading of a ServerArgs: what llama-server will do about the model, memory, placement and listening.

Every field is what the user set (by flag or LLAMA_ARG_*), or None when llama-server's own default applies;
the planner and launcher decide from these, and never override a value that is set.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..model.kvcache import KV_CACHE_TYPES
from .command import ServerArgs, ServerArgsError

SECRET_KEYS = ("api-key", "api-key-file", "ssl-key-file", "hf-token")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "path" | "hf" | "url" | "router" | "none"
    value: str | None
    hf_file: str | None = None


@dataclass(frozen=True)
class Listen:
    hosts: tuple[str, ...]  # llama-server's --host list (comma-separated); default 127.0.0.1
    port: int  # default 8080
    api_prefix: str  # '' unless --api-prefix
    tls: bool  # --ssl-key-file and --ssl-cert-file
    host_set: bool
    port_set: bool


def model_source(sa: ServerArgs) -> ModelSource:
    for key, kind in (("model", "path"), ("hf-repo", "hf"), ("model-url", "url")):
        v = sa.value(key)
        if v:
            return ModelSource(kind, v, sa.value("hf-file") if kind == "hf" else None)
    if sa.value("models-dir") or sa.value("models-preset"):
        return ModelSource("router", sa.value("models-dir") or sa.value("models-preset"))
    return ModelSource("none", None)


def listen(sa: ServerArgs) -> Listen:
    host = sa.value("host")
    hosts = tuple(h.strip() for h in host.split(",") if h.strip()) if host else ("127.0.0.1",)
    port = sa.int_value("port")
    return Listen(hosts, 8080 if port is None else port, (sa.value("api-prefix") or "").rstrip("/"),
                  bool(sa.value("ssl-key-file") and sa.value("ssl-cert-file")), host is not None, port is not None)


def api_key(sa: ServerArgs) -> str | None:
    """The first key a client must send (--api-key / LLAMA_API_KEY lists, else the first line of --api-key-file)."""
    for v in sa.values("api-key"):
        k = next((x for x in v.split(",") if x), None)
        if k:
            return k
    for path in sa.values("api-key-file"):
        try:
            with open(path) as f:
                k = next((ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")), None)
        except OSError:
            return None  # llama-server fails to load with the same file: the outcome says why
        if k:
            return k
    return None


def secret_values(sa: ServerArgs) -> set[str]:
    """Literal secrets in the command line and the LLAMA_* environment it reads."""
    out: set[str] = set()
    for key in SECRET_KEYS:
        for v in sa.values(key):
            out.add(v)
            out.update(x for x in v.split(",") if x)
    return out


def threads(sa: ServerArgs) -> int | None:
    return sa.int_value("threads")


def secret_flags(grammar=None) -> frozenset[str]:
    """Every spelling of the options whose values are secrets (--api-key, -hft ...), from the grammar."""
    from .grammar import table_grammar
    g = grammar or table_grammar()
    return frozenset(n for o in g.options if o.key in SECRET_KEYS for n in (*o.names, *o.neg_names))


def ngl(sa: ServerArgs) -> int | None:
    """-ngl N|auto|all: None for auto (or unset), 10**6 for all (llama.cpp: -2 = all, -1 = auto)."""
    a = sa.last("gpu-layers")
    v = a.values[0] if a is not None else None
    if v is None or v in ("auto", "-1"):
        return None
    if v in ("all", "-2"):
        return 10 ** 6
    try:
        return int(v)
    except ValueError:
        raise ServerArgsError(f"{a.spelled} expects an integer, got {v!r} (or auto, all)", "-ngl", a) from None


def overrides(sa: ServerArgs) -> tuple[tuple[str, str], ...]:
    """-ot pattern=BUFT,... in order (first match wins in llama.cpp)."""
    out = []
    for a in sa._occurrences("override-tensor"):
        for part in a.values[0].split(","):
            if "=" not in part:
                raise ServerArgsError(f"-ot expects pattern=BUFFER_TYPE, got {part!r}", "-ot", a)
            pat, buft = part.split("=", 1)  # llama.cpp splits at the first '='
            try:
                re.compile(pat)
            except re.error as e:
                raise ServerArgsError(f"-ot pattern {pat!r} is not a valid regex: {e}", "-ot", a) from None
            out.append((pat, buft))
    return tuple(out)


def cache_type(sa: ServerArgs, key: str) -> str | None:
    a = sa.last(key)
    v = a.values[0] if a is not None else None
    if v is not None and v not in KV_CACHE_TYPES:
        raise ServerArgsError(f"unknown KV cache type {v!r} (one of {', '.join(KV_CACHE_TYPES)})", key, a)
    return v


def tensor_split(sa: ServerArgs) -> tuple[float, ...] | None:
    v = sa.value("tensor-split")
    if v is None:
        return None
    try:
        return tuple(float(x) for x in re.split(r"[,/]", v) if x != "")
    except ValueError:
        raise ServerArgsError(f"{sa.last('tensor-split').spelled} expects proportions like 3,1", "-ts",
                              sa.last("tensor-split")) from None


def files(sa: ServerArgs) -> dict[str, list[str]]:
    """Extra files llama-server loads besides the model: draft model, projector, LoRA adapters, control vectors."""
    def csv(key: str) -> list[str]:  # comma-separated lists, appended over repeats (parse_csv_row)
        return [x for v in sa.values(key) for x in v.split(",") if x]
    return {"draft": sa.values("spec-draft-model"), "draft_hf": sa.values("spec-draft-hf"),
            "mmproj": sa.values("mmproj"),
            "lora": csv("lora") + [x.rsplit(":", 1)[0] for x in csv("lora-scaled")],
            "control_vector": csv("control-vector") + [x.rsplit(":", 1)[0] for x in csv("control-vector-scaled")]}


def mmproj_auto(sa: ServerArgs) -> bool:
    """Whether llama-server's -hf also loads the repo's projector (common/arg.cpp: download_mmproj unless
    --no-mmproj, --mmproj or --mmproj-url)."""
    return sa.flag("mmproj-auto") is not False and not sa.value("mmproj") and not sa.value("mmproj-url")


def mmproj_offload(sa: ServerArgs) -> bool:
    """The projector goes to the GPU unless --no-mmproj-offload or -mmdev none (common/arg.cpp)."""
    return sa.flag("mmproj-offload") is not False and sa.value("mmproj-device") != "none"
