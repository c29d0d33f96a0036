"""Hub refs: parsing (hf://OWNER/REPO[@REV]/FILE.gguf, OWNER/REPO[:QUANT]) and choosing a repo's files the way
llama.cpp's -hf does (common/download.cpp: the quant tag, the default Q4_K_M then Q8_0, all shards of a split)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import HubError
from ..model import shard_paths
from ..model.shards import SPLIT_RE as _SPLIT_RE

DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # llama.cpp's -hf default tags, in order
_NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")  # llama.cpp gguf_filename_is_model
_NAME = r"\w(?:[\w.-]*\w)?"  # a hub owner or repo name: no leading/trailing '.' or '-' ("./x" is a local path)
_SHORT_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[\w.-]+))?$")
_URI_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>refs/pr/\d+|refs/convert/[\w.-]+|[^/:]+))?"
                     r"(?::(?P<quant>[\w.-]+)|/(?P<path>.+))?$")
_TAG_RE = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    text: str
    repo: str
    revision: str | None  # None: the repo's default branch
    file: str | None  # a path in the repo (hf://...FILE.gguf), else chosen by quant
    quant: str | None


def is_hub_ref(arg: str | os.PathLike) -> bool:
    """True for hf://... and for OWNER/REPO[:QUANT] that is not an existing local path (nor a *.gguf name)."""
    s = str(arg)
    if os.path.exists(s):
        return False
    if s.startswith("hf://"):
        return True
    return bool(_SHORT_RE.match(s)) and not s.lower().endswith(".gguf")


def parse_ref(text: str) -> HubRef:
    s = str(text)
    if s.startswith("hf://"):
        body = s[len("hf://"):].strip("/")
        if body.startswith("models/"):
            body = body[len("models/"):]
        elif body.split("/", 1)[0] in ("datasets", "spaces", "buckets", "kernels"):
            raise HubError(f"{s}: only model repos are supported")
        m = _URI_RE.match(body)
        if not m:
            raise HubError(f"{s}: not a hub ref (hf://OWNER/REPO[@REVISION]/path/FILE.gguf)")
        path = m.group("path")
        if path is not None and not path.lower().endswith(".gguf"):
            raise HubError(f"{s}: a hf:// ref must name a .gguf file (or use OWNER/REPO:QUANT)")
        rev = unquote(m.group("rev")) if m.group("rev") else None
        return HubRef(s, m.group("repo"), rev, path, m.group("quant"))
    m = _SHORT_RE.match(s)
    if not m:
        raise HubError(f"{s}: not a hub ref (OWNER/REPO[:QUANT] or hf://OWNER/REPO/FILE.gguf)")
    return HubRef(s, m.group("repo"), None, None, m.group("quant"))


def quant_tag(path: str) -> str | None:
    """The quant tag of a GGUF file name, as llama.cpp reads it: Q4_K_M from model-Q4_K_M-00001-of-00002.gguf."""
    name = path.rsplit("/", 1)[-1]
    if not name.lower().endswith(".gguf"):
        return None
    stem = name[:-5]
    m = _SPLIT_RE.match(name)
    if m:
        stem = m.group("prefix").rsplit("/", 1)[-1]
    t = _TAG_RE.search(stem)
    return t.group(1).upper() if t else None


def _is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.lower().endswith(".gguf") and not any(x in name.lower() for x in _NOT_MODEL)


def _is_first_shard(path: str) -> bool:
    m = _SPLIT_RE.match(path.rsplit("/", 1)[-1])
    return m is None or int(m.group("no")) == 1


def _safe_path(repo: str, path: str) -> str:
    """A repo path that is safe to mirror under the cache (no absolute path, no '..')."""
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(f"{repo}: refusing the file name {path!r}")
    return path


def _with_shards(repo: str, path: str, listing: list[str]) -> list[str]:
    files = [_safe_path(repo, f) for f in shard_paths(path)]
    have = set(listing)
    for i, f in enumerate(files):
        if f not in have:
            raise HubError(f"{repo}: split model {files[0]} is missing shard {i + 1} of {len(files)} ({f})")
    return files


def select_files(ref: HubRef, listing: list[str]) -> list[str]:
    """The repo paths (shard order) that ref names in a repo holding these files."""
    where = ref.repo + (f"@{ref.revision}" if ref.revision else "")
    ggufs = [p for p in listing if p.lower().endswith(".gguf")]
    if ref.file is not None:
        if ref.file not in listing:
            raise HubError(f"{where}: no file {ref.file!r}; .gguf files: " + (", ".join(ggufs) or "none"))
        return _with_shards(ref.repo, ref.file, listing)
    models = [p for p in ggufs if _is_model_file(p)]
    if not models:
        raise HubError(f"{where}: no .gguf model files in the repo" + (f" (only: {', '.join(ggufs)})" if ggufs else ""))
    for tag in ([ref.quant] if ref.quant else list(DEFAULT_QUANTS)):
        exact = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)  # llama.cpp's pattern: Q4_K matches Q4_K.gguf, not Q4_K_M
        for match in (exact.search, lambda p, t=tag.lower(): t in p.lower()):
            hits = [p for p in models if match(p) and _is_first_shard(p)]
            if hits:
                singles = [p for p in hits if not _SPLIT_RE.match(p.rsplit("/", 1)[-1])]
                return _with_shards(ref.repo, (singles or hits)[0], listing)
    if ref.quant:
        tags = list(dict.fromkeys(t for t in map(quant_tag, models) if t))
        avail = ", ".join(tags) if tags else ", ".join(models)
        raise HubError(f"{where}: no .gguf file matches quant {ref.quant!r}; available: {avail}")
    return _with_shards(ref.repo, next(p for p in models if _is_first_shard(p)), listing)


def _quant_bits(tag: str | None) -> int:
    """llama.cpp's extract_quant_bits: the first number of the tag (Q4_K_M -> 4, F16 -> 16), 0 without one."""
    m = re.search(r"\d+", tag or "")
    return int(m.group()) if m else 0


def select_sibling(model: str, listing: list[str], keyword: str = "mmproj", tag: str = "") -> str | None:
    """The sidecar file llama-server's -hf loads beside `model` (common/download.cpp find_best_sibling; for the
    projector find_best_mmproj calls it with keyword "mmproj" and no tag): a .gguf whose path contains keyword,
    in the model's directory or one above it; the deepest shared directory wins, then an exact "-TAG." match,
    then the quant bits closest to the tag's (or the model file's); the first in listing order on a tie."""
    model_dir = model.split("/")[:-1]
    want_bits = _quant_bits(tag.upper()) if tag else _quant_bits(quant_tag(model))
    best, best_key = None, None
    for f in listing:
        if not f.endswith(".gguf") or keyword not in f:
            continue
        sib_dir = f.split("/")[:-1]
        if sib_dir != model_dir[:len(sib_dir)]:  # std::mismatch: the sibling's directory must prefix the model's
            continue
        exact = bool(tag) and f"-{tag.upper()}." in f.upper()
        key = (len(sib_dir), exact, -abs(_quant_bits(quant_tag(f)) - want_bits))
        if best_key is None or key > best_key:
            best, best_key = f, key
    return best
