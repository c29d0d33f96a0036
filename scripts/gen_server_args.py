#!/usr/bin/env python3
"""Generate gpcrun's fallback grammar of llama-server's arguments from llama.cpp's own `common/arg.cpp`.

Reads every `add_opt(common_arg(...))` of the llama.cpp version the build script pins, keeps the options
llama-server registers (common_params_parser_init's add_opt: in LLAMA_EXAMPLE_SERVER or LLAMA_EXAMPLE_COMMON,
not excluded from SERVER), and writes for each: names, negative names (`--no-...`), arity and value type (from the
handler's signature: void/bool = flag, int, string, two strings), the `LLAMA_ARG_*` environment variable, whether
repeating it accumulates (the handler appends to a list) or the last one wins, and its default as llama-server
prints it in `--help` (when a built llama-server is given with --server; else defaults are null).

    python3 scripts/gen_server_args.py [--src LLAMA_SRC] [--server llama-server] [--out gpcrun/server_args/table.json]

Nothing in the table is typed by hand. Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "gpcrun" / "server_args" / "table.json"

# handler bodies that append to a list: repeating the flag accumulates (all values count, env value first)
_APPENDS = re.compile(r"push_back|emplace_back|\.insert\(|parse_tensor_buffer_overrides|string_parse_kv_override")


def _skip_literal(s: str, i: int) -> int:
    """i at a quote (or R"( ... )" raw string start): return the index after the literal."""
    if s.startswith('R"', i):
        close = s.index("(", i)
        delim = s[i + 2:close]
        end = s.index(")" + delim + '"', close)
        return end + len(delim) + 2
    q = s[i]
    i += 1
    while s[i] != q:
        i += 2 if s[i] == "\\" else 1
    return i + 1


def _match(s: str, i: int) -> int:
    """i at an opening bracket: index of its closing bracket (strings, chars and comments skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    while True:
        c = s[i]
        if c == '"' or c == "'" or s.startswith('R"', i):
            i = _skip_literal(s, i)
            continue
        if s.startswith("//", i):
            i = s.index("\n", i)
            continue
        if s.startswith("/*", i):
            i = s.index("*/", i) + 2
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i
        i += 1


def _split_top(s: str) -> list[str]:
    """Split at commas not inside brackets or strings; comments dropped."""
    out, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c == '"' or c == "'" or s.startswith('R"', i):
            j = _skip_literal(s, i)
            cur.append(s[i:j])
            i = j
            continue
        if s.startswith("//", i):
            i = s.index("\n", i)
            continue
        if s.startswith("/*", i):
            i = s.index("*/", i) + 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur).strip())
    return [x for x in out if x]


def _strings(s: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', s)


def _handler_kind(lam: str) -> str:
    sig = lam[lam.index("(") + 1:_match(lam, lam.index("("))]
    params = [p.strip() for p in sig.split(",")][1:]
    if not params:
        return "void"
    if len(params) == 2:
        return "str_str"
    p = params[0]
    if p.startswith("bool"):
        return "bool"
    if p.startswith("int"):
        return "int"
    return "string"


def parse_arg_cpp(text: str) -> list[dict]:
    defines = dict(re.findall(r'#define\s+(\w+)\s+"([^"]+)"', text))
    opts = []
    for m in re.finditer(r"add_opt\(\s*common_arg\(", text):
        open_i = m.end() - 1
        close_i = _match(text, open_i)
        args = _split_top(text[open_i + 1:close_i])
        end = _match(text, text.index("(", m.start()))  # add_opt's own closing paren
        chain = text[close_i + 1:end]
        names = _strings(args[0])
        neg = _strings(args[1]) if args[1].startswith("{") else []
        lam = next(a for a in args if a.startswith("["))
        kind = _handler_kind(lam)
        body = lam[lam.index("{"):]
        hints = [] if kind in ("void", "bool") else [
            _strings(a)[0] if _strings(a) else a for a in args[1:1 + (2 if kind == "str_str" else 1)]]
        ex = re.search(r"\.set_examples\(\{([^}]*)\}\)", chain)
        ex_var = re.search(r"\.set_examples\((\w+)\)", chain)
        if ex is None and ex_var is not None:  # a named list, e.g. mmproj_examples = {LLAMA_EXAMPLE_MTMD, ...}
            ex = re.search(rf"\b{ex_var.group(1)}\s*=\s*\{{([^}}]*)\}}", text)
        exc = re.search(r"\.set_excludes\(\{([^}]*)\}\)", chain)
        env = re.search(r'\.set_env\(\s*(?:"([^"]+)"|(\w+))\s*\)', chain)
        examples = re.findall(r"LLAMA_EXAMPLE_(\w+)", ex.group(1)) if ex else ["COMMON"]
        excludes = re.findall(r"LLAMA_EXAMPLE_(\w+)", exc.group(1)) if exc else []
        opts.append({
            "names": names, "neg_names": neg,
            "arity": {"void": 0, "bool": 0, "int": 1, "string": 1, "str_str": 2}[kind],
            "value_type": {"void": "flag", "bool": "bool", "int": "int", "string": "string",
                           "str_str": "string"}[kind],
            "value_hint": " ".join(hints) or None,
            "env": (env.group(1) or defines.get(env.group(2), env.group(2))) if env else None,
            "repeat": "append" if _APPENDS.search(body) and ".clear()" not in body else "last",
            "examples": examples, "excludes": excludes,
            "sampling": ".set_sampling()" in chain, "spec": ".set_spec()" in chain,
            "preset_only": ".set_preset_only()" in chain,
        })
    return opts


def for_server(opts: list[dict]) -> list[dict]:
    """common_params_parser_init's add_opt filter for LLAMA_EXAMPLE_SERVER; preset-only options are not CLI args."""
    keep = [o for o in opts if ("SERVER" in o["examples"] or "COMMON" in o["examples"])
            and "SERVER" not in o["excludes"] and not o["preset_only"]]
    # arg.cpp registers some names twice under `if (ex == LLAMA_EXAMPLE_SERVER) ... else ...` (-np): the text
    # can't show the branch, so the registration tagged SERVER wins over the untagged one
    by_name: dict[str, dict] = {}
    for o in keep:
        prev = by_name.get(o["names"][0])
        if prev is None or ("SERVER" in o["examples"] and "SERVER" not in prev["examples"]):
            by_name[o["names"][0]] = o
    keep = [o for o in keep if by_name[o["names"][0]] is o]
    for o in keep:
        for k in ("examples", "excludes", "preset_only"):
            del o[k]
    return keep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", help="llama.cpp source dir (default: scripts/build_llama.py --source-only)")
    p.add_argument("--server", help="a llama-server built from that source: its --help supplies the defaults")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)
    src = Path(a.src) if a.src else Path(subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_llama.py"), "--source-only"], check=True,
        capture_output=True, text=True).stdout.strip().splitlines()[-1])
    opts = for_server(parse_arg_cpp((src / "common" / "arg.cpp").read_text()))
    if a.server:
        sys.path.insert(0, str(ROOT))
        from gpcrun.server_args.help import parse_help
        text = subprocess.run([a.server, "--help"], capture_output=True, text=True, timeout=30).stdout
        helped = {n: h for h in parse_help(text) for n in h["names"]}
        for o in opts:
            h = helped.get(o["names"][0])
            o["default"] = h.get("default") if h else None
    version = src.name
    doc = {"schema": "gpcrun.server-args/1", "llama_cpp": version,
           "source": "common/arg.cpp" + (" + llama-server --help (defaults)" if a.server else ""),
           "generated_by": "scripts/gen_server_args.py", "options": opts}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(opts)} llama-server options from {src / 'common' / 'arg.cpp'} -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
