"""Where a GGUF file's big string arrays (vocabularies, merges) end, remembered per file: walking 100k+ strings
in Python costs ~50 ms per read of SmolLM2's header, at every `gpcrun serve`. The file is found by its identity
(device, inode, size, mtime in ns), and an entry is used only when the bytes it covers hash the same (sha256 of
the array, ~1 ms for SmolLM2's 1.6 MB): a file rewritten in place, even within one mtime tick, is walked again.
A cache that cannot be read or written is no cache.
"""
from __future__ import annotations

import hashlib
import os

from ..atomic import read_json_bounded
from ..paths import cache_dir

_MAX_BYTES = 64 * 1024


def _path(st: os.stat_result):
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return cache_dir() / "gguf-skips" / (hashlib.sha256(key).hexdigest()[:32] + ".json")


def load_skips(st: os.stat_result) -> dict | None:
    """{array start offset (str): end offset} for this file, {} when unknown, None when caching is off."""
    if os.environ.get("GPCRUN_NO_SKIP_CACHE") == "1":
        return None
    try:
        doc = read_json_bounded(_path(st), _MAX_BYTES)
    except (OSError, ValueError):
        return {}
    return dict(doc) if isinstance(doc, dict) else {}


def _digest(buf, pos: int, end: int) -> str:
    return hashlib.sha256(memoryview(buf)[pos:end]).hexdigest()[:32]


def known_end(skips: dict | None, buf, pos: int, count: int, size: int) -> int | None:
    """The end of the string array at pos when the cache knows it and those bytes are the same; else None."""
    entry = skips.get(str(pos)) if skips else None
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)):
        return None
    end = entry[0]
    if not pos + 8 * count <= end <= size or _digest(buf, pos, end) != entry[1]:
        return None
    return end


def remember_end(skips: dict | None, buf, pos: int, end: int) -> None:
    if skips is not None:
        skips[str(pos)] = [end, _digest(buf, pos, end)]


def save_skips(st: os.stat_result, skips: dict) -> None:
    from ..atomic import write_json_atomic
    try:
        p = _path(st)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(p, skips, durable=False)
    except OSError:
        pass
