"""`gpcrun plan` for a machine you don't own: another machine's profile (with its calibration), or a host
described by its threads and decode bandwidth; bad input is a one-line usage error."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.test_hub import one_error_line


def _plan(model, *args, env=None, rc=0):
    p = subprocess.run([sys.executable, "-m", "gpcrun", "plan", str(model), "--json", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == rc, p.stderr[-2000:]
    return p


def test_described_host(tiny_models, tmp_path):
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path))
    doc = json.loads(_plan(tiny_models["tiny-llama-q8_0"], "--cpu-threads", "14", "--cpu-bandwidth", "47",
                           env=env).stdout)
    host = doc["target"]["devices"][0]
    assert doc["target"]["threads"] == 14 and "described" in host["decode_rates"]["source"]
    assert "-t 14" in doc["plan"]["forecast"]["method"]


def test_another_machines_profile(tiny_models, tmp_path):
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path))
    prof = json.loads(subprocess.run([sys.executable, "-m", "gpcrun", "profile", "--json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    prof["platform"]["cores_physical"] = 32
    prof["calibration"] = {"method": "llama-bench (another machine)", "measured_at_unix": 1, "decode": [
        {"type": "Q8_0", "threads": 32, "tok_s": 100.0, "bytes_per_s": 80e9, "samples_tok_s": [99.0, 101.0]}]}
    f = tmp_path / "other.json"
    f.write_text(json.dumps(prof))
    doc = json.loads(_plan(tiny_models["tiny-llama-q8_0"], "--profile", str(f), env=env).stdout)
    assert doc["target"]["threads"] == 32 and doc["plan"]["forecast"]["calibrated"]
    assert "another machine" in doc["target"]["devices"][0]["decode_rates"]["source"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for path in (bad, tmp_path / "missing.json"):
        line = one_error_line(_plan(tiny_models["tiny-llama-q8_0"], "--profile", str(path), env=env, rc=2))
        assert "--profile" in line
