"""Find the llama-server binary: --server-bin, then $GPCRUN_LLAMA_SERVER, then the build cache, then PATH."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ServerBinaryNotFound
from ..paths import cache_dir


def _usable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_tool(name: str = "llama-server", explicit: str | None = None, env: dict | None = None) -> Path:
    """Resolve a llama.cpp tool (llama-server, llama-bench, llama-quantize, llama-fit-params)."""
    env = os.environ if env is None else env
    tried: list[str] = []
    if explicit:
        p = Path(explicit).expanduser()
        if _usable(p):
            return p
        raise ServerBinaryNotFound([f"--server-bin {explicit} (not an executable file)"], name)
    var = "GPCRUN_LLAMA_SERVER"
    if env.get(var):
        p = Path(env[var]).expanduser()
        if name != "llama-server":
            p = p.with_name(name)
        if _usable(p):
            return p
        tried.append(f"${var}={env[var]} ({'not executable' if p.exists() else 'missing'})")
    else:
        tried.append(f"${var} (unset)")
    root = Path(env["GPCRUN_CACHE"]).expanduser() if env.get("GPCRUN_CACHE") else cache_dir()
    for ptr_name in ("current", "current-cuda"):
        ptr = root / "llama.cpp" / ptr_name
        if ptr.is_file():
            p = Path(ptr.read_text().strip()) / name
            if _usable(p):
                return p
            tried.append(f"build cache {p} (missing)")
    if not any(t.startswith("build cache") for t in tried):
        tried.append(f"build cache {root / 'llama.cpp'} (empty)")
    found = shutil.which(name, path=env.get("PATH"))
    if found:
        return Path(found)
    tried.append(f"{name} on PATH (not found)")
    raise ServerBinaryNotFound(tried, name)
