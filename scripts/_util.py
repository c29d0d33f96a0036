"""Stdlib helpers shared by the set-up scripts (they run before gpcrun's own dependencies are installed)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root(arg: str | None = None) -> Path:
    """$GPCRUN_CACHE, else $XDG_CACHE_HOME/gpcrun, else ~/.cache/gpcrun (the rule of gpcrun.paths.cache_dir)."""
    if arg:
        return Path(arg).expanduser().resolve()
    if os.environ.get("GPCRUN_CACHE"):
        return Path(os.environ["GPCRUN_CACHE"]).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpcrun"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
