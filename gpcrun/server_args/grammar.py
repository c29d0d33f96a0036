"""The grammar of llama-server's arguments: every option's names, arity, value type, `LLAMA_ARG_*` name, default.

Read from the llama-server binary in use (`--help`, parsed by help.py, cached by the binary's identity), merged
with the table generated from the pinned llama.cpp's `common/arg.cpp` (table.json, scripts/gen_server_args.py),
which alone knows value types (int or string), negative forms (`--no-...`) and whether repeating an option
accumulates. Without a binary, the table is the grammar.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..atomic import write_json_atomic
from ..paths import cache_dir
from .help import parse_help

TABLE_PATH = Path(__file__).with_name("table.json")
HELP_TIMEOUT_S = 5.0  # llama-server prints --help in ~30 ms; something slower is not a llama-server


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]  # as llama-server spells them: short first, then long
    neg_names: tuple[str, ...] = ()  # '--no-xxx' forms of a boolean option
    arity: int = 1  # values that follow the flag: 0, 1 or 2
    value_type: str = "string"  # flag | bool | int | string
    env: str | None = None  # LLAMA_ARG_* (or LLAMA_API_KEY ...)
    repeat: str = "last"  # "last": the last occurrence wins; "append": every occurrence counts, env first
    default: str | None = None  # as --help prints it
    value_hint: str | None = None

    @property
    def key(self) -> str:
        """Stable name: the first long name without dashes ('ctx-size', 'gpu-layers', 'parallel')."""
        long = [n for n in self.names if n.startswith("--")]
        return (long[0] if long else self.names[0]).lstrip("-")

    @property
    def neg_env(self) -> str | None:
        """arg.cpp get_value_from_env: a boolean option also reads LLAMA_ARG_NO_* (any value means false)."""
        if self.env and self.neg_names:
            return self.env.replace("LLAMA_ARG_", "LLAMA_ARG_NO_", 1)
        return None

    @classmethod
    def from_json(cls, d: dict) -> "Option":
        return cls(tuple(d["names"]), tuple(d.get("neg_names") or ()), int(d.get("arity", 1)),
                   d.get("value_type", "string"), d.get("env"), d.get("repeat", "last"), d.get("default"),
                   d.get("value_hint"))


@dataclass(frozen=True)
class Grammar:
    options: tuple[Option, ...]
    source: str  # "llama-server --help (<path>)" or "table (<llama.cpp version>)"
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for o in self.options:
            for n in (*o.names, *o.neg_names):
                self._by_name[n] = o

    def lookup(self, token: str) -> tuple[Option, bool] | None:
        """(option, positive) for a flag as llama-server matches it: '--' flags with '_' read as '-', no '=value'
        splitting (common_params_parse_ex); None for anything llama-server would reject as unknown."""
        name = token.replace("_", "-") if token.startswith("--") else token
        o = self._by_name.get(name)
        if o is None:
            return None
        return o, name not in o.neg_names

    def by_key(self, key: str) -> Option | None:
        return next((o for o in self.options if o.key == key), None)

    def __contains__(self, name: str) -> bool:
        return self.lookup(name) is not None


@lru_cache(maxsize=1)
def shipped_table() -> tuple[dict, tuple[Option, ...]]:
    doc = json.loads(TABLE_PATH.read_text())
    return doc, tuple(Option.from_json(d) for d in doc["options"])


def table_grammar() -> Grammar:
    doc, opts = shipped_table()
    return Grammar(opts, f"table ({doc.get('llama_cpp')}, {doc.get('source')})")


def merge_help(help_opts: list[dict], source: str) -> Grammar:
    """The binary's options (its names, env, defaults), typed by the table where the table knows them."""
    _, table = shipped_table()
    by_name = {n: o for o in table for n in (*o.names, *o.neg_names)}
    out = []
    for h in help_opts:
        t = next((by_name[n] for n in h["names"] if n in by_name), None)
        if t is not None:
            neg = tuple(n for n in h["names"] if n in t.neg_names)
            pos = tuple(n for n in h["names"] if n not in t.neg_names)
            out.append(Option(pos, neg, t.arity, t.value_type, h["env"] or t.env, t.repeat, h["default"],
                              h["value_hint"]))
        else:  # newer than the table: the hint says whether it takes a value
            arity = 0 if not h["value_hint"] else (2 if len(h["value_hint"].split()) == 2 else 1)
            out.append(Option(tuple(h["names"]), (), arity, "flag" if arity == 0 else "string", h["env"], "last",
                              h["default"], h["value_hint"]))
    return Grammar(tuple(out), source)


def _identity(binary: Path) -> str:
    st = binary.stat()
    return hashlib.sha256(f"{binary.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()[:24]


def grammar_for(binary: str | os.PathLike | None) -> Grammar:
    """The grammar of this llama-server (its --help, cached by path, size and mtime), else the shipped table."""
    if binary is None:
        return table_grammar()
    b = Path(binary)
    try:
        key = _identity(b)
    except OSError:
        return table_grammar()
    cache = cache_dir() / "server-args" / f"{key}.json"
    try:
        help_opts = json.loads(cache.read_text())
    except (OSError, ValueError):
        help_opts = None
    if help_opts is None:
        try:
            proc = subprocess.run([str(b), "--help"], capture_output=True, text=True, timeout=HELP_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, env={**os.environ, "LLAMA_LOG_COLORS": "off"})
        except (OSError, subprocess.SubprocessError):
            return table_grammar()
        help_opts = parse_help(proc.stdout)
        if len(help_opts) < 20:  # not a llama-server (or it failed): the table is better than nothing
            return table_grammar()
        try:
            write_json_atomic(cache, help_opts, durable=False)
        except OSError:
            pass
    return merge_help(help_opts, f"llama-server --help ({b})")
