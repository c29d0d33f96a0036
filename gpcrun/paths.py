"""Where gpcrun keeps state (GPCRUN_HOME) and caches (GPCRUN_CACHE). Both injectable by environment."""
from __future__ import annotations

import os
from pathlib import Path


def gpcrun_home() -> Path:
    return Path(os.environ.get("GPCRUN_HOME") or Path.home() / ".gpcrun").expanduser()


def cache_dir() -> Path:
    """Same rule as scripts/build_llama.py: $GPCRUN_CACHE, else $XDG_CACHE_HOME/gpcrun, else ~/.cache/gpcrun."""
    if os.environ.get("GPCRUN_CACHE"):
        return Path(os.environ["GPCRUN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpcrun"
