"""Parse `llama-server --help`: the options the binary in use really has, their environment variables and defaults.

The text comes from common/arg.cpp `common_arg::to_string()`: each option starts at column 0 with its names
(args then args_neg, joined by ", ") and value hints; its help follows, wrapped at 40 leading spaces; `set_env`
appends "(env: LLAMA_ARG_...)" and most help strings end with "(default: ...)".
"""
from __future__ import annotations

import re

_ENV = re.compile(r"\(env: ([A-Z0-9_]+)\)")
_DEFAULT = re.compile(r"\(default: ([^()]*(?:\([^()]*\)[^()]*)*)\)")
_SECTION = re.compile(r"^----- .* -----$")


def _entries(text: str) -> list[tuple[str, str]]:
    """(head, help) per option: head = names + hints, help = the joined help text."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or _SECTION.match(line.strip()):
            continue
        if line.startswith("-"):
            head, help_ = (line[:40], line[40:]) if len(line) > 40 and line[37:40] == "   " else (line, "")
            out.append([head.rstrip(), help_.strip()])
        elif out and line.startswith(" "):
            out[-1][1] = (out[-1][1] + " " + line.strip()).strip()
    return [(h, t) for h, t in out]


def parse_head(head: str) -> tuple[list[str], str | None]:
    """'-ngl, --gpu-layers, --n-gpu-layers N' -> (['-ngl', '--gpu-layers', '--n-gpu-layers'], 'N')."""
    names, rest = [], head.split()
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("-") or len(tok) < 2 or tok[1].isdigit():
            break
        names.append(tok.rstrip(","))
        i += 1
        if not tok.endswith(","):
            break
    hint = " ".join(rest[i:]) or None
    return names, hint


def parse_help(text: str) -> list[dict]:
    """Every option in a llama-server --help text: names, value hint, env, default (None when not printed)."""
    opts = []
    for head, help_ in _entries(text):
        names, hint = parse_head(head)
        if not names:
            continue
        env = _ENV.search(help_)
        dflt = _DEFAULT.search(help_)
        opts.append({"names": names, "value_hint": hint, "env": env.group(1) if env else None,
                     "default": dflt.group(1).strip() if dflt else None})
    return opts
