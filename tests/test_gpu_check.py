"""scripts/gpu_check (issue 17) where there is no GPU: its self-test (the report logic on recorded tool output,
every GPU step skipped with its reason, exit 0), the report parsers on llama.cpp's real CPU output, and the
models it writes without llama-quantize, loaded by the real llama-server and planned by gpcrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from gpcrun.gpu_report import parse_breakdown, parse_smi_apps, parse_smi_gpus, render_markdown
from gpcrun.launch.run import free_port
from tests.proc_util import wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_self_test_runs_without_a_gpu_and_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi, whatever this machine has
    p = subprocess.run([sys.executable, "scripts/gpu_check", "--self-test", "--out", str(tmp_path)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAILED" not in p.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "gpcrun.gpu-check/1" and all(report["self_test"].values())
    assert report["steps"]["setup"]["status"] == "skipped" and "nvidia-smi" in report["steps"]["setup"]["reason"]
    md = (tmp_path / "summary.md").read_text()
    assert "| moe all-GPU (recorded) | 17480 MiB | 17445 MiB | 18165 MiB | 720 MiB | 0.20 % |" in md


def test_parsers_on_real_and_odd_output():
    cpu = ("0.00.021.929 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model"
           "   context   compute    unaccounted |\n0.00.021.989 I common_memory_breakdown_print: |   - Host"
           "               |                   13 =     6 +       1 +       6                |\n")
    (table,) = parse_breakdown(cpu)  # llama-server -lv 4 on this CPU build
    assert table == [{"kind": "host", "name": "Host", "self_bytes": 13 << 20, "model_bytes": 6 << 20,
                      "context_bytes": 1 << 20, "compute_bytes": 6 << 20}]
    assert parse_breakdown("no table here\n") == []
    assert parse_smi_apps("12, 100\n12, 50\n13, [N/A]\nbad line\n") == {12: 150 << 20}
    (g,) = parse_smi_gpus("1, GPU-x, NVIDIA H100 80GB HBM3, 00000000:1B:00.0, 81559, 1, 80000, [N/A], 700.00, 40\n")
    assert g["index"] == 1 and g["power_mw"] is None and g["total_bytes"] == 81559 << 20
    assert "unknown" in render_markdown({"steps": {"vram": {"status": "ok", "rows": [
        {"placement": "x", "plan_self_bytes": None, "llama_self_bytes": None, "nvml_process_bytes": None,
         "cuda_overhead_bytes": None, "plan_error_pct": None}]}}})


def test_gpu_check_models_load_in_llama_server_and_plan(tmp_path, llama_server_bin):
    env = {**os.environ, "GPCRUN_HOME": str(tmp_path / "home"), "GPCRUN_LLAMA_SERVER": str(llama_server_bin)}
    for kind in ("--moe", ""):
        path = tmp_path / f"m{kind}.gguf"
        w = subprocess.run([sys.executable, "scripts/gpu_models.py", str(path), *([kind] if kind else []), "--small",
                            "--layers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert w.returncode == 0, w.stderr
        args = ["-ngl", "99", "-c", "2048", "-np", "1", "--fit", "off"] + (["-ncmoe", "1"] if kind else [])
        plan = subprocess.run([sys.executable, "-m", "gpcrun", "plan", str(path), "--json", "--", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert plan.returncode == 0, plan.stderr
        assert json.loads(plan.stdout)["plan"]["memory"]
        port = free_port()
        proc = subprocess.Popen([str(llama_server_bin), "-m", str(path), *args, "-t", "1", "-lv", "4", "--port",
                                 str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            def done():
                try:
                    body = json.dumps({"prompt": "Hello", "n_predict": 4}).encode()
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body)
                    with urllib.request.urlopen(req, timeout=5) as r:
                        return json.loads(r.read())["tokens_predicted"] == 4
                except OSError:
                    return False
            assert wait_until(done, 60, 0.1)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            out = proc.communicate(timeout=30)[0]
        assert parse_breakdown(out)  # the exit table the GPU check reads, here with its Host row
