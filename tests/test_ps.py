"""`gpcrun ps / logs / stop` on real processes: a real llama-server under `gpcrun serve`, seen from another
process; a gpcrun killed with -9 shows as dead once and its run.json is completed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.proc_util import serve_until_ready, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _gpcrun(*args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _env(tmp_path, llama_server_bin):
    return {**os.environ, "GPCRUN_HOME": str(tmp_path / "home"), "GPCRUN_LLAMA_SERVER": str(llama_server_bin),
            "GPCRUN_CALIBRATE": "off"}


def test_ps_logs_and_stop_see_a_running_serve(tmp_path, llama_server_bin, tiny_models):
    env = _env(tmp_path, llama_server_bin)
    model = tiny_models["tiny-llama-q8_0"]
    proc, url = serve_until_ready([str(model), "--", "-c", "512", "-t", "1", "-tb", "1"], env)
    try:
        p = _gpcrun("ps", "--json", env=env)
        assert p.returncode == 0, p.stderr
        (run,) = json.loads(p.stdout)["runs"]
        assert (run["state"], run["command"], run["url"]) == ("ready", "serve", url)
        assert run["model"].endswith("tiny-llama-q8_0.gguf") and run["gpcrun_pid"] == proc.pid
        assert run["server_pid"] and run["server_rss_bytes"] > 0 and run["planned"].get("CPU", 0) > 0
        text = _gpcrun("ps", env=env).stdout
        assert run["run_id"] in text and "ready" in text
        logs = _gpcrun("logs", run["run_id"][:17], "-n", "400", env=env)
        assert logs.returncode == 0 and "llama_server" in logs.stdout, logs.stderr
        stop = _gpcrun("stop", run["run_id"], "--json", env=env)
        assert stop.returncode == 0, stop.stderr
        doc = json.loads(stop.stdout)
        assert doc["state"] == "finished" and doc["outcome"]["kind"] == "clean_stop", doc
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert json.loads(_gpcrun("ps", "--json", env=env).stdout)["runs"] == []
    assert _gpcrun("stop", "nope", env=env).returncode == 2


def test_a_gpcrun_killed_with_9_shows_dead_once_and_its_run_json_is_completed(tmp_path, llama_server_bin,
                                                                              tiny_models):
    env = _env(tmp_path, llama_server_bin)
    proc, _ = serve_until_ready([str(tiny_models["tiny-llama-q8_0"]), "--", "-c", "512", "-t", "1", "-tb", "1"], env)
    (run,) = json.loads(_gpcrun("ps", "--json", env=env).stdout)["runs"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not os.path.exists(f"/proc/{run['server_pid']}"), 10)  # PR_SET_PDEATHSIG
    (dead,) = json.loads(_gpcrun("ps", "--json", env=env).stdout)["runs"]
    assert dead["state"] == "dead" and dead["outcome"]["kind"] == "gpcrun_died", dead
    run_json = json.loads((Path(run["run_dir"]) / "run.json").read_text())
    assert run_json["outcome"]["kind"] == "gpcrun_died" and run_json["completed_by"] == "gpcrun ps"
    assert json.loads(_gpcrun("ps", "--json", env=env).stdout)["runs"] == []  # shown once, then gone
    assert (Path(run["run_dir"]) / "status.json").stat().st_mode & 0o777 == 0o600
    t0 = time.monotonic()
    logs = _gpcrun("logs", run["run_id"], "--follow", env=env)  # a dead run: prints the tail and ends
    assert logs.returncode == 0 and time.monotonic() - t0 < 30
