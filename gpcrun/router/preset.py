"""llama-server's router sources as llama.cpp reads them (common/preset.cpp): the --models-preset INI and the
--models-dir scan, and the INI gpcrun writes back with each model's planned arguments.

INI grammar (parse_ini_from_file's PEG): lines are `[section]`, `key = value`, `; comment` / `# comment` or blank;
a key is [a-zA-Z_][a-zA-Z0-9_.-]*; a value ends at whitespace followed by ; or # or the line end; a line that is
none of these fails the whole file. Keys before any section belong to "default" (COMMON_PRESET_DEFAULT_NAME);
`[*]` is the global section every model inherits; `version` is skipped. A later duplicate key in a section wins.
Not mirrored: canonical_tag() of a `repo:TAG` section name (HF cache names), remote-preset key filtering.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import UsageError

DEFAULT_SECTION = "default"  # common/preset.h COMMON_PRESET_DEFAULT_NAME
GLOBAL_SECTION = "*"
# options only a preset knows (arg.cpp common_params_add_preset_options): not llama-server arguments
PRESET_ONLY = frozenset(("load-on-startup", "stop-timeout", "dedup-cache-models", "LLAMA_ARG_PRESET_LOAD_ON_STARTUP",
                         "LLAMA_ARG_PRESET_STOP_TIMEOUT", "LLAMA_ARG_PRESET_DEDUP_CACHE_MODELS"))
# what the router removes or sets itself for a child (server-models.cpp unset_reserved_args, update_args)
ROUTER_OWNED = frozenset(("ssl-key-file", "ssl-cert-file", "api-key", "api-key-file", "models-dir", "models-max",
                          "models-preset", "models-autoload", "host", "port", "alias", "log-colors"))
DRAFT_PREFIXES = ("mtp-", "dspark-", "dflash-")  # preset.cpp draft_prefixes

_KV = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)[ \t]*=[ \t]*(.*)$")
_HEADER = re.compile(r"\[[ \t]*([^\]]+)\][ \t]*(?:[;#].*)?$")


class PresetError(UsageError):
    pass


def _strip_eol(rest: str) -> str:
    """The value part of a line: up to the first run of whitespace followed by ; or #, or by the end."""
    m = re.search(r"[ \t]*(?:[;#]|$)", rest)
    return rest[:m.start()] if m else rest


def parse_ini(text: str, where: str = "preset") -> dict[str, dict[str, str]]:
    """{section: {key: value}} in file order, as llama.cpp parses a --models-preset file (PresetError where it fails)."""
    out: dict[str, dict[str, str]] = {}
    section = DEFAULT_SECTION
    for n, raw in enumerate(re.split(r"\r\n|\n|\r", text), 1):
        line = raw
        stripped = line.lstrip(" \t")
        if not stripped or stripped[0] in ";#":
            continue  # blank-line, comment-line
        if line.startswith("["):
            m = _HEADER.match(line)
            if not m:
                raise PresetError(f"{where}:{n}: llama.cpp cannot parse this line: {raw.strip()[:80]!r}")
            section = m.group(1)
            out[section] = {}
            continue
        m = _KV.match(line)
        if not m:
            raise PresetError(f"{where}:{n}: llama.cpp cannot parse this line (a key starts the line, `key = value`):"
                              f" {raw.strip()[:80]!r}")
        out.setdefault(section, {})[m.group(1)] = _strip_eol(m.group(2))
    return out


def _quote_ok(value: str) -> bool:
    return not re.search(r"[;#\r\n]", value) and value == value.strip(" \t")


def render_ini(sections: Mapping[str, Mapping[str, str]], header: str = "") -> str:
    """The INI text of {section: {key: value}} (values llama.cpp would read back unchanged)."""
    lines = [f"; {h}" for h in header.splitlines()] + ["version = 1", ""]
    for name, kv in sections.items():
        if name in (DEFAULT_SECTION, GLOBAL_SECTION) and not kv:
            continue
        lines.append(f"[{name}]")
        for k, v in kv.items():
            if not _quote_ok(str(v)):
                raise PresetError(f"[{name}] {k} = {v!r}: llama.cpp's preset format cannot carry this value")
            lines.append(f"{k} = {v}")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class DirModel:
    name: str
    path: str
    mmproj: str | None = None
    draft: str | None = None


def _is_mmproj(fname: str) -> bool:
    return "mmproj" in fname


def _is_draft(fname: str) -> bool:
    return fname.startswith(DRAFT_PREFIXES)


def scan_models_dir(models_dir: str) -> list[DirModel]:
    """The models llama-server's router finds in --models-dir (preset.cpp load_from_models_dir): every *.gguf at
    the top that is not a projector or a draft, named by the file without .gguf; every subdirectory with a model
    (its first shard '-00001-of-', else a model file), named by the directory, with its mmproj and draft."""
    if not os.path.isdir(models_dir):
        raise PresetError(f"--models-dir {models_dir}: does not exist or is not a directory (llama-server refuses it)")
    out: list[DirModel] = []
    for entry in sorted(os.scandir(models_dir), key=lambda e: e.name):
        if entry.is_dir():
            model = first_shard = mmproj = draft = None
            for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not f.is_file() or not f.name.endswith(".gguf"):
                    continue
                if _is_mmproj(f.name):
                    mmproj = f.path
                elif _is_draft(f.name):
                    draft = draft or f.path
                elif "-00001-of-" in f.name:
                    first_shard = f.path
                else:
                    model = f.path
            if first_shard or model:
                out.append(DirModel(entry.name, first_shard or model, mmproj, draft))
        elif entry.is_file() and entry.name.endswith(".gguf") and not (_is_mmproj(entry.name) or
                                                                        _is_draft(entry.name)):
            out.append(DirModel(entry.name.replace(".gguf", ""), entry.path))
    return out


@dataclass
class RouterModel:
    """One model the router will list: its options as the preset gives them (global, then its own section)."""

    name: str
    source: str  # "models_dir" | "preset"
    own: dict[str, str] = field(default_factory=dict)  # its preset section, raw keys as written
    dir_model: DirModel | None = None


def router_models(models_dir: str | None, preset_path: str | None) -> tuple[dict[str, str], dict[str, RouterModel]]:
    """(global [*] options, {name: RouterModel}) from --models-dir and --models-preset, merged like
    server-models.cpp load_models(): a preset section named like a directory model configures it; another
    section is a model of its own (it must name `model` or an HF repo)."""
    models: dict[str, RouterModel] = {}
    for d in scan_models_dir(models_dir) if models_dir else ():
        models[d.name] = RouterModel(d.name, "models_dir", {}, d)
    glob: dict[str, str] = {}
    if preset_path:
        try:
            with open(preset_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise PresetError(f"--models-preset {preset_path}: {e.strerror or e}") from None
        for name, kv in parse_ini(text, preset_path).items():
            kv = {k: v for k, v in kv.items() if k != "version"}
            if name == GLOBAL_SECTION:
                glob = kv
            elif name == DEFAULT_SECTION and not kv:
                continue
            elif name in models:
                models[name].own.update(kv)
            else:
                models[name] = RouterModel(name, "preset", dict(kv))
    return glob, models


def option_tokens(options: Mapping[str, str], grammar) -> tuple[list[str], list[str]]:
    """(llama-server arguments, keys it does not know) for preset options, read as llama.cpp maps a key: an
    LLAMA_ARG_* name, or a flag without its dashes (long or short); a boolean's value picks its flag or its
    negation (preset.cpp parse_bool_arg); preset-only options are left out."""
    argv: list[str] = []
    unknown: list[str] = []
    by_env = {o.env: o for o in grammar.options if o.env}
    for key, value in options.items():
        if key in PRESET_ONLY:
            continue
        o = by_env.get(key)
        positive = True
        if o is None:
            hit = grammar.lookup("--" + key) or grammar.lookup("-" + key)
            if hit is None:
                unknown.append(key)
                continue
            o, positive = hit
        if o.arity == 0:
            truthy = value.strip().lower() in ("1", "true", "on", "yes", "enabled")
            on = truthy if positive else not truthy
            if on:
                argv.append(o.names[-1] if o.names else "--" + key)
            elif o.neg_names:
                argv.append(o.neg_names[0])
        else:
            argv += [next((n for n in o.names if n.startswith("--")), o.names[0]), value]
    return argv, unknown


def model_tokens(m: RouterModel, glob: Mapping[str, str], grammar) -> tuple[list[str], list[str]]:
    """The model's arguments before the router's own command line: global, then its section, then its files."""
    opts = dict(glob)
    opts.update(m.own)
    argv, unknown = option_tokens(opts, grammar)
    if m.dir_model is not None:
        d = m.dir_model
        files = ["--model", d.path] + (["--mmproj", d.mmproj] if d.mmproj else [])
        argv = files + argv  # a preset's own model key, if any, comes later and wins (merge order)
    return argv, unknown
