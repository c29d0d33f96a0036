"""What `gpcrun serve` imports before llama-server is spawned (issue 15's start-up target, measured side by side
in scripts/bench/startup.py): modules it cannot need there stay unloaded, and the caches that spare work at
start (gguf-py's type tables) give the same tables as reading gguf-py itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpcrun.model import ggml
from tests.gguf_factory import llama_kvs, write_gguf

ROOT = Path(__file__).resolve().parents[1]

# what the pre-spawn path of `gpcrun serve MODEL.gguf` loads, then what it reads
_PRESPAWN = """
import json, sys
from gpcrun.hardware import nvml
nvml.DRIVER_NODES = ()  # a host without an NVIDIA driver, whatever this one has
import gpcrun.cli.main, gpcrun.cli.serve_cmd, gpcrun.pipeline, gpcrun.planning, gpcrun.launch.run
import gpcrun.hardware.profile, gpcrun.plan, gpcrun.receipt.calibration, gpcrun.receipt.store, gpcrun.targets
from gpcrun.planning import resolve_model
resolve_model(sys.argv[1])
nvml.read_gpus()
from gpcrun.receipt import argv_threads, load_calibration  # the calibration reader, through the package
print(json.dumps(sorted(sys.modules)))
"""

# loaded only when used: a hub ref, NVML on a host with a driver, a receipt written or shown, --metrics-port,
# the first HTTP request to the server (after the spawn), weights read with numpy
_NOT_BEFORE_SPAWN = ("pynvml", "gguf.constants", "gpcrun.hub", "http.client", "gpcrun.receipt.docs",
                     "gpcrun.receipt.markdown", "gpcrun.receipt.build", "gpcrun.launch.metrics", "requests", "numpy")


def _modules(code: str, *args: str, cache: Path) -> set[str]:
    env = {"PATH": "/usr/bin:/bin", "GPCRUN_CACHE": str(cache), "GPCRUN_HOME": str(cache / "home")}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return set(json.loads(p.stdout.splitlines()[-1]))


def test_serve_prespawn_path_leaves_unneeded_modules_unloaded(tmp_path):
    model = tmp_path / "m.gguf"
    write_gguf(model, llama_kvs())
    _modules(_PRESPAWN, str(model), cache=tmp_path)  # the first start of the day writes the caches
    loaded = _modules(_PRESPAWN, str(model), cache=tmp_path)
    assert "gpcrun.model.ggml" in loaded and "gpcrun.receipt.calibration" in loaded
    assert sorted(m for m in _NOT_BEFORE_SPAWN if m in loaded) == []


def test_gguf_tables_cache_matches_gguf_py_and_survives_a_bad_file(tmp_path, monkeypatch):
    from gguf import constants as c
    fresh = {k: {int(i): (tuple(v) if isinstance(v, list) else v) for i, v in t.items()}
             for k, t in ggml._tables_from(c).items()}
    assert fresh["quant_sizes"] == {int(k): tuple(v) for k, v in c.GGML_QUANT_SIZES.items()}
    monkeypatch.setenv("GPCRUN_CACHE", str(tmp_path))
    assert ggml._load_tables() == fresh  # computed, then written
    (cached,) = (tmp_path / "gguf-tables").glob("*.json")
    assert ggml._load_tables() == fresh  # read back
    cached.write_text("{not json")
    assert ggml._load_tables() == fresh  # a broken cache is no cache
    cached.write_text(json.dumps({"quant_sizes": {}}))
    assert ggml._load_tables() == fresh
    assert ggml.GGML_QUANT_SIZES == fresh["quant_sizes"] and ggml.GGML_TYPE_NAMES == fresh["type_names"]


def test_receipt_package_names_resolve_lazily():
    import gpcrun.receipt as r
    for name in r.__all__:
        assert getattr(r, name) is not None, name
    with pytest.raises(AttributeError):
        r.no_such_name  # noqa: B018
