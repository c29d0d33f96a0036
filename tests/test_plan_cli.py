"""`gpcrun plan` end to end: the installed command on real GGUF files (generated tiny models, SmolLM2).

One GPCRUN_HOME for the whole module: the first `gpcrun plan` in a fresh home measures the CPU bandwidth for
the profile cache (~1-2 s); every later call reuses it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gpcrun.model import load_model

GPCRUN = Path(sys.executable).with_name("gpcrun")
MIB = 1 << 20


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    e = dict(os.environ)
    e["GPCRUN_HOME"] = str(tmp_path_factory.mktemp("gpcrun_home"))
    e.pop("GPCRUN_DEBUG", None)
    return e


@pytest.fixture(scope="module")
def gp(env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(GPCRUN), "plan", *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120)
    return run


def plan_json(gp, model, *args, rc=0) -> dict:
    p = gp(model, "--json", *args)
    assert p.returncode == rc, p.stderr
    assert "Traceback" not in p.stderr
    return json.loads(p.stdout)


def reason_lines(text: str) -> list[str]:
    return [l[4:] for l in text.splitlines() if l.startswith("  - ")]


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    return lines[0]


# ---------------------------------------------------------------------------------------------- ship

@pytest.mark.parametrize("name", ["tiny-llama-q8_0", "tiny-qwen3moe-q4_k_m", "smollm2"])
def test_plan_table(gp, tiny_models, smollm2, name):
    path = smollm2 if name == "smollm2" else tiny_models[name]
    p = gp(path)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0] == "plan: memory map"
    assert out[1].split() == ["device", "model", "context", "compute", "other", "total", "margin", "free",
                              "headroom"]
    assert out[3].split()[0] == "CPU"
    assert any(l.startswith("decode forecast: ") and "tok/s" in l for l in out)
    assert "verdict: SHIP" in out
    assert reason_lines(p.stdout)[0].startswith("fits: --ctx ")
    cmd = out[-1]
    assert cmd.startswith("llama-server -m ")
    argv = shlex.split(cmd)[1:]
    assert argv[:2] == ["-m", str(path)] and argv[-2:] == ["--fit", "off"]


@pytest.mark.parametrize("name", ["tiny-llama-q8_0", "tiny-qwen3moe-q8_0", "tiny-qwen2moe-q8_0",
                                  "tiny-gemma3-q8_0", "tiny-deepseek2-q8_0", "tiny-mamba-q8_0", "smollm2"])
def test_plan_json(gp, tiny_models, smollm2, name):
    """Schema, and the KV cache of each kind as llama.cpp sizes it for 2 slots: full attention, SWA (gemma3:
    window 128), MLA (deepseek2: no V), recurrent (mamba2: one state per sequence, whatever the context)."""
    path = smollm2 if name == "smollm2" else tiny_models[name]
    d = plan_json(gp, path, "--parallel", "2")
    assert d["schema"] == "gpcrun.plan/1" and d["verdict"] == "ship"
    assert d["reasons"][0].startswith("fits: ") and d["nearest"] is None
    pl = d["plan"]["placement"]
    info = load_model(path)
    # the largest context: llama-server's own default for 2 slots without -c, the training context for each
    # (common/fit.cpp: n_ctx_train x n_streams when the KV cache is not unified)
    assert pl["ctx"] == info.facts["context_length"] * 2
    assert (pl["type_k"], pl["type_v"], pl["parallel"]) == ("f16", "f16", 2)
    (cpu,) = d["plan"]["memory"]  # this machine has no GPU
    assert cpu["device"] == "CPU" and cpu["fits"] is True and cpu["headroom_bytes"] >= 0
    assert cpu["total_bytes"] == cpu["self_bytes"] + cpu["other_bytes"]
    assert cpu["weights_bytes"] == info.tensor_bytes
    assert d["argv"][:2] == ["-m", str(path)] and d["argv"][d["argv"].index("-np") + 1] == "2"
    assert d["target"]["devices"][0]["kind"] == "host"
    f = d["plan"]["forecast"]
    assert f["decode_tok_s"] > 0 and f["decode_band_tok_s"][0] <= f["decode_tok_s"] <= f["decode_band_tok_s"][1]
    n_seq_ctx = -(-(-(-pl["ctx"] // 256) * 256 // 2) // 256) * 256
    want = 0
    for l in info.kv_layers("f16"):
        if l.kind == "recurrent":
            want += l.state_bytes_per_seq * 2
        elif l.kind == "swa":
            want += (l.k_bytes_per_token + l.v_bytes_per_token) * 2 * min(n_seq_ctx, -(-(l.window + 512) // 256) * 256)
        else:
            assert l.kind != "mla" or l.v_bytes_per_token == 0
            want += (l.k_bytes_per_token + l.v_bytes_per_token) * 2 * n_seq_ctx
    assert cpu["context_bytes"] == want


def test_pinned_args_pass_through(gp, tiny_models):
    path = tiny_models["tiny-llama-q8_0"]
    user = ["-c", "2048", "-ctk", "q8_0", "-ctv", "q8_0", "--temp", "0.5"]
    d = plan_json(gp, path, "--", *user)
    assert d["argv"][-len(user):] == user
    pl = d["plan"]["placement"]
    assert (pl["ctx"], pl["type_k"], pl["type_v"], pl["flash_attn"]) == (2048, "q8_0", "q8_0", "on")
    assert d["argv"].count("-c") == 1 and d["argv"].count("-ctk") == 1
    assert d["argv"][d["argv"].index("-fa") + 1] == "on"


def test_kv_type_option(gp, tiny_models):
    d = plan_json(gp, tiny_models["tiny-llama-q8_0"], "--kv-type", "q8_0", "--ctx", "4096")
    pl = d["plan"]["placement"]
    assert (pl["ctx"], pl["type_k"], pl["type_v"]) == (4096, "q8_0", "q8_0")


# ---------------------------------------------------------------------------------- hypothetical GPUs

def test_gpu_spec_sheet(gp, tiny_models):
    path = tiny_models["tiny-qwen3moe-q8_0"]
    p = gp(path, "--gpu", "RTX 4090")
    assert p.returncode == 0, p.stderr
    assert any(l.split()[:1] == ["CUDA0"] for l in p.stdout.splitlines())
    d = plan_json(gp, path, "--gpu", "RTX 4090")
    cpu, cuda = d["target"]["devices"]
    assert cuda["name"] == "CUDA0" and cuda["kind"] == "gpu" and cuda["bandwidth_bytes_per_s"] == 1008e9
    assert cuda["capacity_bytes"] == 24 * 1024 * MIB - 400 * MIB
    assert d["verdict"] == "ship"
    pl = d["plan"]["placement"]
    cpu_m, cuda_m = d["plan"]["memory"]
    assert cuda_m["device"] == "CUDA0" and cuda_m["fits"] is True
    assert (cuda_m["model_bytes"] > 0) == (pl["ngl"] > 0)  # which -ngl wins is the forecast's call
    assert cuda_m["other_bytes"] == 720 * MIB  # CUDA context
    assert d["argv"][d["argv"].index("-ngl") + 1] == str(pl["ngl"])


def test_vram_only(gp, tiny_models):
    d = plan_json(gp, tiny_models["tiny-llama-q8_0"], "--vram", "2048")
    cuda = d["target"]["devices"][1]
    assert cuda["capacity_bytes"] == 2048 * MIB and cuda["bandwidth_bytes_per_s"] is None
    assert d["verdict"] == "ship" and [m["device"] for m in d["plan"]["memory"]] == ["CPU", "CUDA0"]


def test_vram_and_gpu(gp, tiny_models):
    d = plan_json(gp, tiny_models["tiny-llama-q8_0"], "--vram", "3000", "--gpu", "rtx4090")
    cuda = d["target"]["devices"][1]
    assert cuda["capacity_bytes"] == 3000 * MIB and cuda["bandwidth_bytes_per_s"] == 1008e9


# ---------------------------------------------------------------------------------------- refusals

def test_huge_context_refuses(gp, tiny_models):
    path = tiny_models["tiny-llama-q8_0"]
    p = gp(path, "--ctx", "100000000")
    assert p.returncode == 10, p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout.splitlines()
    assert "verdict: REFUSE" in out
    reasons = reason_lines(p.stdout)
    assert len(reasons) == 2
    assert reasons[0].startswith("nothing fits: closest plan (--ctx 100000000") and "more host RAM on CPU" in reasons[0]
    assert reasons[1].startswith("with --ctx ") and reasons[1].endswith(" it fits")
    assert out[-1].startswith("llama-server -m ")  # the nearest plan's command line
    d = plan_json(gp, path, "--ctx", "100000000", rc=10)
    assert d["verdict"] == "refuse" and d["plan"] is None and d["nearest"]["fits"] is True
    # one line per reason: the text shows each JSON reason whole (free host memory moves between the two runs)
    assert [re.sub(r"[\d.]+", "#", r) for r in d["reasons"]] == [re.sub(r"[\d.]+", "#", r) for r in reasons]
    assert all("\n" not in r for r in d["reasons"])


def test_floor_refuses(gp, tiny_models):
    p = gp(tiny_models["tiny-llama-q8_0"], "--floor", "1e9")
    assert p.returncode == 10
    reasons = reason_lines(p.stdout)
    assert "tok/s floor" in reasons[0] and reasons[0].startswith("fits, but the best forecast ")
    assert reasons[1] == "no placement, context or KV type reaches the floor on this hardware"


# --------------------------------------------------------------------------------------- bad input

def test_unknown_gpu(gp, tiny_models):
    p = gp(tiny_models["tiny-llama-q8_0"], "--gpu", "nosuch")
    assert p.returncode == 2
    line = one_error_line(p)
    assert line.startswith("gpcrun: error: unknown GPU 'nosuch'; known: ") and "RTX 4090" in line


@pytest.mark.parametrize("args, needle", [
    (["-ngl", "x"], "-ngl expects an integer, got 'x'"),
    (["-ctk", "q9_9"], "unknown KV cache type 'q9_9'"),
    (["-c"], "-c needs a value"),
    (["-ot", "(=CPU"], "-ot pattern '(' is not a valid regex"),
])
def test_bad_server_args(gp, tiny_models, args, needle):
    p = gp(tiny_models["tiny-llama-q8_0"], "--", *args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert f"after --: {needle}" in p.stderr


def test_missing_model(gp, tmp_path):
    p = gp(tmp_path / "nope.gguf")
    assert p.returncode == 3
    line = one_error_line(p)
    assert line.startswith("gpcrun: error: ") and "nope.gguf" in line


def test_not_a_gguf(gp, tmp_path):
    f = tmp_path / "junk.gguf"
    f.write_bytes(b"not a gguf file at all" * 10)
    p = gp(f)
    assert p.returncode == 4
    one_error_line(p)
