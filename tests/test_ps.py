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


def test_metrics_for_prometheus_port_and_textfile(tmp_path, llama_server_bin, tiny_models):
    """--metrics-port serves the watchdog's figures as Prometheus text; --metrics-textfile writes the same for
    node_exporter and is removed when the run ends (no stale 'ready')."""
    import urllib.request

    from tests.llama_server import free_port
    env = _env(tmp_path, llama_server_bin)
    port, prom = free_port(), tmp_path / "gpcrun.prom"
    proc, _ = serve_until_ready(["--metrics-port", str(port), "--metrics-textfile", str(prom),
                                 str(tiny_models["tiny-llama-q8_0"]), "--", "-c", "512", "-t", "1", "-tb", "1"], env)
    try:
        def scrape():
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        wait_until(lambda: 'state="ready"} 1' in scrape(), 10)
        text = scrape()
        for name in ("gpcrun_host_available_bytes", "gpcrun_host_term_line_bytes", "gpcrun_server_rss_bytes",
                     "gpcrun_plan_bytes", "gpcrun_watchdog_firings_total"):
            assert f"# TYPE {name} " in text, name
        wait_until(lambda: prom.exists() and "gpcrun_server_rss_bytes" in prom.read_text(), 15)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert not prom.exists()


def test_metrics_render_is_prometheus_text():
    from gpcrun.launch.metrics import render
    text = render({"host_available_seen_bytes": 5, "host_term_line_bytes": 2, "child_rss_bytes": 3,
                   "gpus": [{"free_bytes": 7, "used_bytes": 1, "child_bytes": None, "power_mw": 100,
                             "temperature_c": 40}]}, "loading", {"CPU": 9, "CUDA0": 4}, 1, "r1")
    assert 'gpcrun_server_state{run="r1",state="loading"} 1' in text
    assert 'gpcrun_gpu_free_bytes{run="r1",gpu="0"} 7' in text and "gpcrun_gpu_server_bytes" not in text
    assert 'gpcrun_plan_bytes{run="r1",device="CUDA0"} 4' in text
    assert text.count("# TYPE gpcrun_server_state gauge") == 1 and text.endswith("\n")


def test_serve_json_events_and_help_with_a_model(tmp_path, llama_server_bin, tiny_models):
    """serve --json: JSON lines planned -> loading -> ready (URL) -> stopping -> stopped (outcome) on stdout;
    `gpcrun serve MODEL -- --help` is llama-server's help, exit 0 (it used to start the model and fail, exit 11)."""
    env = _env(tmp_path, llama_server_bin)
    model = str(tiny_models["tiny-llama-q8_0"])
    proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "serve", "--quiet", "--json", model, "--", "-c", "512",
                             "-t", "1", "-tb", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    events = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "ready":
                break
        proc.send_signal(signal.SIGTERM)
        events += [json.loads(line) for line in proc.stdout]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    names = [e["event"] for e in events]
    assert names == ["planned", "loading", "ready", "stopping", "stopped"], names
    assert events[0]["verdict"] == "ship" and events[2]["url"].startswith("http://127.0.0.1:")
    assert events[-1]["outcome"]["kind"] == "clean_stop" and all("t_unix" in e for e in events)
    h = _gpcrun("serve", model, "--", "--help", env=env)
    assert h.returncode == 0 and "--ctx-size" in h.stdout, h.stderr[-500:]
