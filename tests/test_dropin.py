"""`gpcrun serve` in front of an existing llama-server command line: the same meaning, changes listed with reasons.

Each real case runs bare llama-server and `gpcrun serve` with the same arguments and environment and compares
`/props` (slots, per-slot context, alias). The rest is the command line's own rules: the model from -m/-hf/env,
gpcrun options never shadowing llama-server's, contradictions as usage errors, router sources that llama.cpp would reject said clearly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gpcrun.cli.main import main as cli_main
from gpcrun.launch.run import free_port
from gpcrun.server_args import table_grammar

ROOT = Path(__file__).resolve().parents[1]
THREADS = ["-t", "1", "-tb", "1"]


def _props(url: str, deadline_s: float = 60) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            r = requests.get(url + "/props", timeout=1)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _run(argv: list[str], env: dict, port: int) -> tuple[dict, str]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        props = _props(f"http://127.0.0.1:{port}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    return props, out


def _seen(props: dict) -> dict:
    return {"total_slots": props["total_slots"], "n_ctx": props["default_generation_settings"]["n_ctx"],
            "model_alias": props.get("model_alias")}


CASES = [
    ("-m only", [], {}),
    ("-c with -np 2", ["-c", "4096", "-np", "2"], {}),
    ("-np 2 without -c", ["-np", "2"], {}),  # llama.cpp: n_ctx_train for each slot (common/fit.cpp)
    ("-np 1 and --alias", ["-np", "1", "--alias", "tiny"], {}),
    ("LLAMA_ARG_CTX_SIZE", [], {"LLAMA_ARG_CTX_SIZE": "1024"}),
    ("LLAMA_ARG_N_PARALLEL", ["-c", "2048"], {"LLAMA_ARG_N_PARALLEL": "3"}),
]


@pytest.mark.parametrize("name, extra, env_extra", CASES, ids=[c[0] for c in CASES])
def test_same_props_bare_and_under_gpcrun(name, extra, env_extra, llama_server_bin, tiny_models, tmp_path):
    model = str(tiny_models["tiny-llama-q8_0"])
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path), GPCRUN_LLAMA_SERVER=str(llama_server_bin), **env_extra)
    port = free_port()
    args = ["-m", model, "--port", str(port), *THREADS, *extra]
    bare, _ = _run([str(llama_server_bin), *args], env, port)
    port2 = free_port()
    args[args.index("--port") + 1] = str(port2)
    ours, out = _run([sys.executable, "-m", "gpcrun", "serve", "--quiet", *args], env, port2)
    assert _seen(ours) == _seen(bare), out
    assert "changes to your llama-server command line" in out or "changes: none" in out
    for key, flag in (("LLAMA_ARG_CTX_SIZE", "-c"), ("LLAMA_ARG_N_PARALLEL", "-np")):
        if key in env_extra:
            assert f"+ {flag} " not in out, out  # never overrides what the environment set


def gp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--ctx", "4096", "--", "-c", "2048"], "--ctx 4096 contradicts -c 2048"),
    (["--kv-type", "q8_0", "--", "-ctk", "f16"], "--kv-type q8_0 contradicts -ctk f16"),
])
def test_contradictions_are_usage_errors(args, needle, tiny_models, llama_server_bin, tmp_path):
    p = gp("serve", str(tiny_models["tiny-llama-q8_0"]), *args,
           env={"GPCRUN_HOME": str(tmp_path), "GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_env_contradiction_names_the_variable(tiny_models, llama_server_bin, tmp_path):
    p = gp("serve", str(tiny_models["tiny-llama-q8_0"]), "--ctx", "4096",
           env={"GPCRUN_HOME": str(tmp_path), "GPCRUN_LLAMA_SERVER": str(llama_server_bin),
                "LLAMA_ARG_CTX_SIZE": "2048"})
    assert p.returncode == 2 and "LLAMA_ARG_CTX_SIZE=2048" in p.stderr, p.stderr


def test_router_and_no_model_are_said_clearly(llama_server_bin, tmp_path):
    env = {"GPCRUN_HOME": str(tmp_path), "GPCRUN_LLAMA_SERVER": str(llama_server_bin)}
    p = gp("serve", "--models-dir", str(tmp_path / "nowhere"), env=env)  # router mode is planned (test_router.py)
    assert p.returncode == 2 and "not a directory" in p.stderr and "Traceback" not in p.stderr, p.stderr
    bad = tmp_path / "p.ini"
    bad.write_text("[m]\n  c = 1\n")  # an indented key: llama.cpp rejects the whole file
    p = gp("serve", "--models-preset", str(bad), env=env)
    assert p.returncode == 2 and "p.ini:2" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = gp("serve", "--port", "8080", env=env)
    assert p.returncode == 2 and "no model" in p.stderr and "-m/--model" in p.stderr, p.stderr


def test_llama_server_help_and_gpcrun_help(llama_server_bin, tmp_path):
    env = {"GPCRUN_HOME": str(tmp_path), "GPCRUN_LLAMA_SERVER": str(llama_server_bin)}
    p = gp("serve", "--", "--help", env=env)
    assert p.returncode == 0 and "--ctx-size" in p.stdout and "LLAMA_ARG_CTX_SIZE" in p.stdout
    p = gp("serve", "--help", env=env)
    assert p.returncode == 0 and "gpcrun serve -- --help" in " ".join(p.stdout.split())


def test_hf_flag_plans_from_the_header_not_gpcrun_help(tmp_path, llama_server_bin):
    """`gpcrun serve -hf OWNER/REPO:Q` used to print gpcrun's help (click read -h): it is llama-server's -hf."""
    env = {"GPCRUN_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "GPCRUN_CACHE": str(tmp_path / "c"),
           "HF_HOME": str(tmp_path / "hf"), "GPCRUN_LLAMA_SERVER": str(llama_server_bin)}
    p = gp("serve", "-hf", "nobody/nothing-GGUF:Q4_K_M", env=env)
    assert p.returncode == 9 and "nobody/nothing-GGUF" in p.stderr and "Usage" not in p.stdout, (p.stdout, p.stderr)


def test_no_gpcrun_serve_option_shadows_a_llama_server_flag():
    grammar = table_grammar()
    cmd = cli_main.commands["serve"]
    names = [n for prm in cmd.params for n in (*getattr(prm, "opts", ()), *getattr(prm, "secondary_opts", ()))
             if n.startswith("-")]
    assert names and not [n for n in names if n in grammar], [n for n in names if n in grammar]
    assert cmd.context_settings["help_option_names"] == ["--help"]  # -h is llama-server's


def test_plan_json_lists_changes_with_reasons(tiny_models, tmp_path):
    p = gp("plan", str(tiny_models["tiny-llama-q8_0"]), "--json", "--", "-c", "1024", "-t", "1",
           env={"GPCRUN_HOME": str(tmp_path)})
    doc = json.loads(p.stdout)
    flags = {c["flag"]: c for c in doc["changes"]}
    assert "-c" not in flags and "-t" not in flags  # the user's own
    assert flags["--fit"]["value"] == "off" and "the plan is the fit" in flags["--fit"]["reason"]
    assert all(c["reason"] for c in doc["changes"])


def test_readiness_leaves_the_users_metrics_alone(llama_server_bin, tiny_models, tmp_path):
    """gpcrun's readiness probe is not counted: right after ready, /metrics reads as for a bare llama-server."""
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path), GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    seen = {}
    for who in ("bare", "gpcrun"):
        port = free_port()
        args = ["-m", str(tiny_models["tiny-llama-q8_0"]), "--port", str(port), "--metrics", *THREADS]
        argv = [str(llama_server_bin), *args] if who == "bare" else [sys.executable, "-m", "gpcrun", "serve",
                                                                      "--quiet", *args]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            _props(f"http://127.0.0.1:{port}")
            if who == "gpcrun":  # /props answers as soon as llama-server is up: wait for gpcrun's own ready
                end = time.monotonic() + 30
                while time.monotonic() < end and not list(Path(tmp_path).glob("runs/*/events.jsonl")):
                    time.sleep(0.1)
                ev = next(Path(tmp_path).glob("runs/*/events.jsonl"))
                while time.monotonic() < end and '"ready"' not in ev.read_text():
                    time.sleep(0.1)
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            seen[who] = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                         if ln.startswith("llamacpp:") and ln.split()[0].endswith("_total")}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=30)
    assert seen["gpcrun"] == seen["bare"] and seen["bare"]["llamacpp:prompt_tokens_total"] == 0, seen
