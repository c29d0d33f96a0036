"""`gpcrun serve` and `gpcrun bench` accept every model reference `plan` accepts: hub refs are planned from their
headers and downloaded only when the plan ships (the one pipeline, gpcrun/pipeline.py), against the fake hub."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.proc_util import serve_until_ready, stop_serve
from tests.test_hub import LLAMA, MOE, env, files, gp, gpcrun_home, hub, one_error_line  # noqa: F401

FAST = ["--", "-t", "1", "-tb", "1"]


@pytest.fixture
def run_env(env, llama_server_bin) -> dict:  # noqa: F811
    return dict(env, GPCRUN_LLAMA_SERVER=str(llama_server_bin))


def test_bench_on_a_hub_ref_downloads_once_the_plan_ships(hub, run_env, files):  # noqa: F811
    p = gp(run_env, "bench", f"{LLAMA}:Q8_0", "-r", "1", "-p", "16", "-n", "4", "--ctx", "512", "--json", *FAST)
    doc = json.loads(p.stdout)
    assert doc["outcome"]["kind"] == "clean_stop" and doc["measured"]["decode_tok_s"]["mean"] > 0
    assert doc["model"]["file_name"] == "tiny-llama-q8_0.gguf" and doc["model"]["hub"]["repo"] == LLAMA
    assert doc["model"]["path"] == f"{LLAMA}:Q8_0"
    assert hub.bytes_served(LLAMA, "tiny-llama-q8_0.gguf") >= files["tiny-llama-q8_0"].stat().st_size


def test_refused_hub_ref_is_never_downloaded(hub, run_env, files):  # noqa: F811
    hub.reset()
    for cmd in ("serve", "bench"):
        p = gp(run_env, cmd, f"{MOE}:Q8_0", "--ctx", "100000000", "-r", "1", *FAST, rc=10) if cmd == "bench" else \
            gp(run_env, cmd, f"{MOE}:Q8_0", "--ctx", "100000000", *FAST, rc=10)
        assert "refuse" in p.stderr
    assert hub.bytes_served(MOE, "sub/tiny-qwen3moe-q8_0.gguf") < files["tiny-qwen3moe-q8_0"].stat().st_size


def test_serve_a_hub_model_until_sigterm(hub, run_env, tmp_path):  # noqa: F811
    from gpcrun.launch.run import free_port
    proc, _ = serve_until_ready([f"{LLAMA}:Q4_K_M", "--ctx", "512", *FAST, "--port", str(free_port())],
                                dict(run_env, GPCRUN_HOME=str(tmp_path)))
    assert "clean_stop" in stop_serve(proc)


def test_offline_with_nothing_cached_is_exit_9(run_env, tmp_path):
    cold = dict(run_env, HF_HUB_OFFLINE="1", GPCRUN_CACHE=str(tmp_path / "cold"), HF_HOME=str(tmp_path / "hf"))
    for cmd in ("serve", "bench", "plan", "inspect"):
        line = one_error_line(gp(cold, cmd, f"{LLAMA}:Q4_K_M", rc=9))
        assert "HF_HUB_OFFLINE=1" in line, (cmd, line)


def test_serve_with_llama_servers_own_hf_flag_plans_from_the_header(hub, run_env, files):  # noqa: F811
    """`gpcrun serve -hf OWNER/REPO:QUANT ...`: planned from ranged header reads; -hf stays llama-server's (no -m
    added, nothing downloaded by gpcrun). Refused here (a context no host has), so nothing starts."""
    hub.reset()
    p = gp(run_env, "serve", "-hf", f"{MOE}:Q8_0", "-c", "100000000", *FAST[1:], rc=10)
    assert "refuse" in p.stderr
    assert hub.bytes_served(MOE, "sub/tiny-qwen3moe-q8_0.gguf") < files["tiny-qwen3moe-q8_0"].stat().st_size
    plan = _last_plan(run_env)
    assert "-m" not in plan["argv"] and plan["argv"][plan["argv"].index("-hf") + 1] == f"{MOE}:Q8_0"


def _last_plan(run_env) -> dict:
    """The newest plan.json (run ids sort by second only: two runs in one second sort by their random part)."""
    plans = (Path(run_env["GPCRUN_HOME"]) / "runs").glob("*/plan.json")
    return json.loads(max(plans, key=lambda p: p.stat().st_mtime_ns).read_text())


def test_hf_plans_the_projector_llama_server_loads_beside_the_model(hub, run_env, files):  # noqa: F811
    """llama-server's -hf also loads the repo's mmproj* file (common/download.cpp find_best_mmproj) unless
    --no-mmproj/--mmproj: the plan has a line for it, read by range requests like the model's header."""
    size = files["tiny-llama-f16"].stat().st_size
    gp(run_env, "serve", "-hf", f"{LLAMA}:Q8_0", "-c", "100000000", *FAST[1:], rc=10)
    lines = [x for x in _last_plan(run_env)["extras"] if x["kind"] == "mmproj"]
    assert [x["path"] for x in lines] == [f"hf://{LLAMA}@{hub.repos[LLAMA].refs['main']}/mmproj-tiny-llama-f16.gguf"]
    assert 0 < lines[0]["model_bytes"] < size and hub.bytes_served(LLAMA, "mmproj-tiny-llama-f16.gguf") < size
    for off in (["--no-mmproj"], ["--mmproj-auto", "--no-mmproj-auto"]):
        gp(run_env, "serve", "-hf", f"{LLAMA}:Q8_0", *off, "-c", "100000000", *FAST[1:], rc=10)
        assert not [x for x in _last_plan(run_env)["extras"] if x["kind"] == "mmproj"], off
    gp(dict(run_env, LLAMA_ARG_MMPROJ_AUTO="0"), "serve", "-hf", f"{LLAMA}:Q8_0", "-c", "100000000", *FAST[1:], rc=10)
    assert not [x for x in _last_plan(run_env)["extras"] if x["kind"] == "mmproj"]
    gp(run_env, "serve", f"{LLAMA}:Q8_0", "--ctx", "100000000", *FAST, rc=10)  # gpcrun downloads: llama-server gets -m
    assert not [x for x in _last_plan(run_env)["extras"] if x["kind"] == "mmproj"]


def test_llama_server_downloads_its_own_hf_model_under_gpcrun(hub, run_env, files, tmp_path):  # noqa: F811
    """End to end: `gpcrun serve -hf REPO:QUANT` plans from ranged header reads, then llama-server itself downloads
    the model from the (fake) hub (MODEL_ENDPOINT/HF_ENDPOINT, api/models/REPO/refs and /tree, common/hf-cache.cpp)
    into its HF cache and serves it with its own defaults (-np auto: 4 slots)."""
    import requests

    from gpcrun.launch.run import free_port
    env = dict(run_env, GPCRUN_HOME=str(tmp_path / "home"))
    env.pop("LLAMA_CACHE", None)
    hub.reset()
    proc, url = serve_until_ready(["-hf", f"{MOE}:Q8_0", "-c", "512", *FAST[1:], "--port", str(free_port())], env)
    try:
        props = requests.get(url + "/props", timeout=10).json()
    finally:
        stop_serve(proc)
    assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 512
    got = list(Path(env["HF_HOME"]).glob("hub/models--gpcrun-test--tiny-qwen3moe-GGUF/snapshots/*/sub/"
                                          "tiny-qwen3moe-q8_0.gguf"))
    want = files["tiny-qwen3moe-q8_0"]
    assert len(got) == 1 and got[0].read_bytes() == want.read_bytes()
    assert any(r.path.startswith(f"/api/models/{MOE}/refs") for r in hub.requests)  # llama.cpp's own listing call
    plan = _last_plan(env)
    assert plan["argv"][plan["argv"].index("-hf") + 1] == f"{MOE}:Q8_0" and "-m" not in plan["argv"]


def test_hf_draft_model_is_planned_and_served(hub, run_env, files, tmp_path):  # noqa: F811
    """-hfd REPO:QUANT: the draft's header is read by range requests and planned as the draft line; llama-server
    downloads main and draft itself and serves with both."""
    from gpcrun.launch.run import free_port
    env = dict(run_env, GPCRUN_HOME=str(tmp_path / "home"))
    env.pop("LLAMA_CACHE", None)
    hub.reset()
    proc, _ = serve_until_ready(["-hf", f"{LLAMA}:Q8_0", "--no-mmproj", "-hfd", f"{LLAMA}:Q4_K_M", "-c", "1024",
                                 *FAST[1:], "--port", str(free_port())], env)
    stop_serve(proc)
    run = max((Path(env["GPCRUN_HOME"]) / "runs").iterdir())
    assert "loading draft model" in (run / "server.log").read_text(errors="replace")
    draft = [x for x in _last_plan(env)["extras"] if x["kind"] == "draft"]
    assert draft and draft[0]["path"] == f"{LLAMA}:Q4_K_M" and draft[0]["model_bytes"] > 0
    assert hub.bytes_served(LLAMA, "tiny-llama-q4_k_m.gguf") >= files["tiny-llama-q4_k_m"].stat().st_size
    assert hub.bytes_served(LLAMA, "mmproj-tiny-llama-f16.gguf") == 0  # --no-mmproj: neither plans nor loads it
