"""A batch job's timeout_s covers the whole job, planning included (issue 13): a hub that accepts the connection
and never answers, a planner that hangs. The job ends as `timeout` (exit 14 in its row), the batch goes on to the
next job and exits 16."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gpcrun.exits import Exit

ROOT = Path(__file__).resolve().parents[1]


def test_a_silent_hub_is_cut_off_by_the_job_timeout(tmp_path):
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        jobs = tmp_path / "jobs.toml"
        jobs.write_text("[batch]\ntimeout_s = 1.5\n[[models]]\npath = 'hf://someone/some-repo/model-Q4_0.gguf'\n"
                        "[[models]]\npath = 'hf://someone/other-repo/model-Q8_0.gguf'\n")
        env = dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"), GPCRUN_CALIBRATE="off",
                   HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}", HF_HUB_OFFLINE="0")
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "gpcrun", "batch", str(jobs), "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    assert r.returncode == Exit.BATCH_INCOMPLETE.code, r.stderr
    rows = json.loads(r.stdout)
    assert [row["outcome"] for row in rows] == ["timeout", "timeout"]
    assert took < 20, f"two 1.5 s jobs took {took:.1f} s"  # not the hub client's own 15/60 s timeouts
    out = tmp_path / "jobs-out"
    receipts = [json.loads(p.read_text()) for p in (out / "receipts").rglob("*.json")]
    reasons = {rc["outcome"]["reason"] for rc in receipts if "outcome" in rc}
    assert any("exceeded its 1.5 s limit while reading the model's header" in x for x in reasons), reasons


def test_a_hanging_planner_is_cut_off_in_process(tmp_path, monkeypatch):
    """Fault injection: planning that never returns (a calibration stuck, a huge header): the pipeline ends it
    at the job's deadline and says so; nothing was started."""
    import gpcrun.planning as planning
    from gpcrun.bench import BenchConfig
    from gpcrun.pipeline import RunConfig, run
    from gpcrun.receipt import ReceiptStore

    def hangs(*a, **k):
        time.sleep(60)
    monkeypatch.setattr(planning, "plan_with_document", hangs)
    monkeypatch.setenv("GPCRUN_HOME", str(tmp_path / "home"))
    from tests.gguf_factory import write_tiny_llama
    model = write_tiny_llama(tmp_path / "m.gguf")[0]
    from gpcrun.hardware.profile import get_profile
    get_profile()  # measured once, cached: the deadline falls in planning
    t0 = time.monotonic()
    res = run(RunConfig(model=str(model), bench=BenchConfig(8, 4, 1, True, (1,)), timeout_s=1.0, quiet=True,
                        echo=lambda m: None, runs_root=tmp_path / "runs", store=ReceiptStore(tmp_path / "r"),
                        write_receipt=True, auto_port=True, handle_signals=False, server_bin=sys.executable))
    assert time.monotonic() - t0 < 5
    assert res.outcome.kind == "timeout" and res.outcome.exit_code == Exit.TIMEOUT.code
    assert res.outcome.reason.endswith("while planning")
    assert res.receipt_path is not None and res.receipt_path.exists()


def test_sigterm_during_a_batch_benchmark_ends_at_once(tmp_path, tiny_models, llama_server_bin):
    """SIGTERM 0.5 s into a job's benchmark (a scheduler's time limit): gpcrun ends within seconds, exit 130, the
    job pending with its retry unspent. It used to wait out the job's timeout_s timer (60 s) before exiting."""
    import signal
    import sqlite3
    jobs = tmp_path / "jobs.toml"
    jobs.write_text("[batch]\nprompt_tokens = 16\ngen_tokens = 256\nrepetitions = 50\ntimeout_s = 120\n"
                    "server_args = ['-t', '1', '-tb', '1']\n"
                    f"[[models]]\npath = '{tiny_models['tiny-llama-q8_0']}'\n")
    out = tmp_path / "out"
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"), GPCRUN_CALIBRATE="off",
               GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    p = subprocess.Popen([sys.executable, "-m", "gpcrun", "batch", str(jobs), "--out", str(out)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if any('"ready"' in e.read_text() for e in out.glob("runs/*/events.jsonl")):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=90)[1]
    took = time.monotonic() - t0
    assert p.returncode == Exit.INTERRUPTED.code, err
    assert took < 15, f"{took:.1f} s from SIGTERM to exit"
    assert "gpcrun: interrupted by SIGTERM" in err
    con = sqlite3.connect(out / "state.sqlite")
    assert con.execute("SELECT state, attempts FROM jobs").fetchall() == [("pending", 0)]
    con.close()
