"""Golden documents that pin gpcrun's behaviour across refactors: `inspect --json` of every generated model and
SmolLM2, and the plan (`plan --json`'s document) for each on fixed targets and requests.

The targets are fixed here (not read from this machine's profile), so a golden file is the same on every machine.
Regenerate only when a difference is a deliberate, named fix:

    .venv/bin/python tests/golden.py --write        # writes tests/golden/*.json

Paths are replaced by file names so that cache locations do not matter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MIB = 1 << 20
GIB = 1 << 30

_ISA = ("avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c", "fma")


def _targets():
    from gpcrun.plan import DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, DeviceTarget, Target
    host = DeviceTarget("CPU", "host", 20 * GIB, 25e9, source="golden", limit_bytes=24 * GIB)
    small_host = DeviceTarget("CPU", "host", 1300 * MIB, 25e9, source="golden", limit_bytes=2 * GIB)

    def gpu(i, free_mib, bw=1.0e12):
        return DeviceTarget(f"CUDA{i}", "gpu", free_mib * MIB, bw, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, 82e12,
                            "golden")
    return {
        "cpu": Target(host, (), "golden-cpu", 2, _ISA),
        "cpu_noisa": Target(host, (), "golden-cpu0", 2, ()),
        "small_host": Target(small_host, (), "golden-small", 2, _ISA),
        "gpu_roomy": Target(host, (gpu(0, 20000),), "golden-gpu", 8, _ISA),
        "gpu_tight": Target(host, (gpu(0, 1800),), "golden-gpu-tight", 8, _ISA),
        "two_gpus": Target(host, (gpu(0, 1500), gpu(1, 1700, 0.5e12)), "golden-2gpu", 8, _ISA),
    }


# (name, request keyword arguments, llama-server args after --)
REQUESTS = [
    ("default", {}, []),
    ("ctx2048_np2", {"ctx": 2048, "parallel": 2}, []),
    ("kv_q8", {"kv_type": "q8_0", "ctx": 8192}, []),
    ("pinned", {}, ["-ngl", "3", "-ctk", "q8_0", "-c", "4096", "-t", "2"]),
    ("np_auto_fa", {}, ["-np", "-1", "-fa", "on", "-ub", "128"]),
    ("ot_cpu_moe", {}, ["--n-cpu-moe", "1", "-ot", "blk\\.0\\.ffn_.*=CPU"]),
    ("floor", {"floor_tok_s": 100000.0}, []),
]


def _norm(x, names):
    if isinstance(x, dict):
        return {k: _norm(v, names) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v, names) for v in x]
    if isinstance(x, str) and x in names:
        return names[x]
    return x


def model_paths() -> dict[str, Path]:
    """name -> path: the generated tiny models and SmolLM2 (built/fetched like the test fixtures do)."""
    from gpcrun.launch.binary import find_tool
    quant = find_tool("llama-quantize")
    out = subprocess.run([sys.executable, "scripts/gen_models.py", "--quantize", str(quant)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    models = {k: Path(v) for k, v in json.loads(out)["models"].items()}
    smol = subprocess.run([sys.executable, "scripts/fetch_demo_model.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    models["smollm2"] = Path(smol)
    return models


def inspect_doc(path: Path) -> dict:
    from gpcrun.model import load_model
    info = load_model(str(path))
    names = {str(s.path): os.path.basename(str(s.path)) for s in info.shards}
    names[info.path] = os.path.basename(info.path)
    return _norm(info.to_json("f16"), names)


def plan_docs(path: Path) -> dict:
    """target name -> request name -> the plan document."""
    from gpcrun.model import load_model
    from gpcrun.plan import make_plan
    from tests.golden_api import build_request
    info = load_model(str(path))
    names = {info.path: os.path.basename(info.path)}
    out: dict = {}
    for tname, target in _targets().items():
        for rname, kw, args in REQUESTS:
            req = build_request(kw, args)
            out.setdefault(tname, {})[rname] = _norm(make_plan(info, target, req).to_json(), names)
    return out


def documents(path: Path) -> dict:
    return {"inspect": inspect_doc(path), "plans": plan_docs(path)}


def main(argv: list[str]) -> int:
    if "--write" not in argv:
        print(__doc__)
        return 2
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, path in sorted(model_paths().items()):
        doc = documents(path)
        (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {name}.json")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
