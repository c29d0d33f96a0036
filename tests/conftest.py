"""Session fixtures: the real llama.cpp tools (built by scripts/build_llama.py), generated tiny models,
and the SmolLM2 demo model. Missing pieces are built/fetched here, not skipped: tests run the real server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The first plan on a machine measures llama.cpp's CPU rates (~30 s, gpcrun/calibrate): tests plan in fresh
# GPCRUN_HOMEs all the time, so they use a cached calibration only; tests/test_calibrate.py runs the real one.
os.environ.setdefault("GPCRUN_CALIBRATE", "cached")


def _run_script(*args: str, timeout: float = 1800) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def llama_bin_dir() -> Path:
    """Directory holding llama-server, llama-bench, llama-quantize, llama-fit-params (cached build)."""
    from gpcrun.launch.binary import find_tool
    try:
        return find_tool("llama-server").parent
    except Exception:  # not built yet: build it (cold ~5-9 min on 2 cores, cached afterwards)
        return Path(_run_script("scripts/build_llama.py").strip().splitlines()[-1])


@pytest.fixture(scope="session")
def llama_server_bin(llama_bin_dir: Path) -> Path:
    return llama_bin_dir / "llama-server"


@pytest.fixture(scope="session")
def llama_source_dir() -> Path:
    return Path(_run_script("scripts/build_llama.py", "--source-only").strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_models(llama_bin_dir: Path) -> dict[str, Path]:
    """name -> path of the generated tiny models (dense llama and qwen3moe; f16, q8_0, q4_k_m)."""
    out = _run_script("scripts/gen_models.py", "--quantize", str(llama_bin_dir / "llama-quantize"))
    manifest = json.loads(out)
    return {k: Path(v) for k, v in manifest["models"].items()}


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return Path(_run_script("scripts/fetch_demo_model.py").strip().splitlines()[-1])


# Real-process tests: anything that needs the llama.cpp build, the generated models or SmolLM2 is `slow`, so that
# `./scripts/test --fast` (-m "not slow") runs the pure-logic tests alone.
_REAL_FIXTURES = {"llama_bin_dir", "llama_server_bin", "llama_source_dir", "tiny_models", "smollm2"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _REAL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("server"):
            item.add_marker(pytest.mark.slow)
