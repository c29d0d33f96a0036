#!/usr/bin/env python3
"""Drop-in proof: real llama-server command lines, each run bare and through `gpcrun serve`, compared.

For every case: start `llama-server ARGS` and `gpcrun serve ARGS` (same arguments, same environment), wait until
each answers, read /props (total_slots, n_ctx, model alias, modalities) and /slots (count, n_ctx each), and print
"same" or the difference, plus the changes gpcrun said it made (with their reasons). A case where both refuse to
start (a removed flag) compares the exit: llama-server's code vs gpcrun's documented 11.

    .venv/bin/python scripts/bench/dropin.py [--only NAME] [--json]

Uses the build cache's llama-server, the generated tiny models and SmolLM2 (like the tests). Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.launch.endpoint import session_for, url_of  # noqa: E402
from gpcrun.launch.run import free_port  # noqa: E402

T = ["-t", "1", "-tb", "1"]


def models() -> dict[str, str]:
    quant = find_tool("llama-quantize")
    out = subprocess.run([sys.executable, "scripts/gen_models.py", "--quantize", str(quant)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    m = {k: str(v) for k, v in json.loads(out)["models"].items()}
    m["smollm2"] = subprocess.run([sys.executable, "scripts/fetch_demo_model.py"], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1]
    return m


def cases(m: dict[str, str], tmp: Path) -> list[tuple[str, list[str], dict]]:
    tiny, moe, smol = m["tiny-llama-q8_0"], m["tiny-qwen3moe-q8_0"], m["smollm2"]
    keyfile = tmp / "keys.txt"
    keyfile.write_text("key-from-file\n")
    from gpcrun.model import load_model
    from tests.gguf_factory import write_lora  # a LoRA adapter for the tiny llama, as convert_lora_to_gguf writes
    lora = write_lora(tmp / "tiny-lora.gguf", load_model(tiny))
    return [
        ("-m (README: the basic form)", ["-m", smol], {}),
        ("-m -c 2048 -ngl 99 --port (issue form)", ["-m", smol, "-c", "2048", "-ngl", "99"], {}),
        ("-m -c 2048", ["-m", smol, "-c", "2048"], {}),
        ("-np 4", ["-m", tiny, "-np", "4"], {}),
        ("-c 8192 -np 2", ["-m", tiny, "-c", "8192", "-np", "2"], {}),
        ("-c 4096 -np 2 -kvu", ["-m", tiny, "-c", "4096", "-np", "2", "-kvu"], {}),
        ("-fa on", ["-m", tiny, "-fa", "on"], {}),
        ("-fa on -ctk/-ctv q8_0", ["-m", tiny, "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"], {}),
        ("--jinja", ["-m", smol, "--jinja"], {}),
        ("--alias", ["-m", tiny, "--alias", "my-model"], {}),
        ("-md (draft model)", ["-m", tiny, "-md", m["tiny-llama-f16"]], {}),
        ("--lora (generated adapter)", ["-m", tiny, "--lora", str(lora)], {}),
        ("--cache-ram 0", ["-m", tiny, "--cache-ram", "0"], {}),
        ("--cache-ram 256", ["-m", tiny, "-cram", "256"], {}),
        ("MoE -m", ["-m", moe], {}),
        ("MoE --n-cpu-moe 1", ["-m", moe, "--n-cpu-moe", "1"], {}),
        ("LLAMA_ARG_CTX_SIZE", ["-m", tiny], {"LLAMA_ARG_CTX_SIZE": "1024"}),
        ("LLAMA_ARG_N_PARALLEL", ["-m", tiny], {"LLAMA_ARG_N_PARALLEL": "2"}),
        ("LLAMA_ARG_MODEL", [], {"LLAMA_ARG_MODEL": tiny}),
        ("LLAMA_ARG_HOST ::1", ["-m", tiny], {"LLAMA_ARG_HOST": "::1"}),
        ("--host list", ["-m", tiny, "--host", "127.0.0.1,::1"], {}),
        ("unix socket", ["-m", tiny, "--host", str(tmp / "srv.sock")], {}),
        ("--api-key", ["-m", tiny, "--api-key", "k-123456"], {}),
        ("--api-key-file", ["-m", tiny, "--api-key-file", str(keyfile)], {}),
        ("--api-prefix", ["-m", tiny, "--api-prefix", "/llm"], {}),
        ("--metrics --slots", ["-m", tiny, "--metrics", "--slots"], {}),
        ("--no-slots", ["-m", tiny, "--no-slots"], {}),
        ("--sleep-idle-seconds 60", ["-m", tiny, "--sleep-idle-seconds", "60"], {}),
        ("-ngl 99 (no GPU here)", ["-m", tiny, "-ngl", "99"], {}),
        ("--mlock (removed flag)", ["-m", tiny, "--mlock"], {}),
    ]


def _start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _observe(proc: subprocess.Popen, server_argv: list[str], env: dict, key: str | None, timeout_s: float = 60):
    url = url_of(server_argv, env)
    end = time.monotonic() + timeout_s
    with session_for(url, key) as s:
        while time.monotonic() < end:
            if proc.poll() is not None:
                return {"exit": proc.returncode}
            try:
                r = s.get(url + "/props", timeout=1)
                if r.status_code == 200:
                    p = r.json()
                    slots = s.get(url + "/slots", timeout=2)
                    sl = slots.json() if slots.status_code == 200 else None
                    return {"total_slots": p.get("total_slots"),
                            "n_ctx": (p.get("default_generation_settings") or {}).get("n_ctx"),
                            "alias": p.get("model_alias"), "modalities": p.get("modalities"),
                            "slots": None if sl is None else [x.get("n_ctx") for x in sl],
                            "slots_status": slots.status_code}
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
    return {"exit": "timeout"}


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


def run_case(server: str, name: str, args: list[str], env_extra: dict, home: Path) -> dict:
    env = dict(os.environ, GPCRUN_HOME=str(home), GPCRUN_LLAMA_SERVER=server, **env_extra)
    key = next((args[i + 1] for i, a in enumerate(args) if a == "--api-key"), None)
    if "--api-key-file" in args:
        key = "key-from-file"
    out = {}
    for who in ("bare", "gpcrun"):
        a = [x.replace("srv.sock", f"srv-{who}.sock") for x in args] + T  # a socket file outlives its server
        if not any(x.endswith(".sock") for x in a):
            a += ["--port", str(free_port())]
        if who == "bare":
            argv = [server, *a]
            proc = _start(argv, env)
            seen = _observe(proc, argv, env, key)
            _stop(proc)
        else:
            argv = [sys.executable, "-m", "gpcrun", "serve", "--quiet", *a]
            proc = _start(argv, env)
            seen = _observe(proc, [server, *a], env, key)
            log = _stop(proc)
            out["changes"] = [ln.strip()[2:] for ln in log.splitlines() if ln.startswith("  + ")]
            if "exit" in seen:
                out["gpcrun_said"] = next((ln for ln in log.splitlines() if ln.startswith("gpcrun:")), "")
        out[who] = seen
    if "exit" in out["bare"] and "exit" in out["gpcrun"]:
        out["verdict"] = "same (both refuse to start)" if out["bare"]["exit"] not in (0, "timeout") else "differ"
    else:
        out["verdict"] = "same" if out["bare"] == out["gpcrun"] else "differ"
    return out


def prompt_cache_growth(server: str, model: str, home: Path, cram: str | None, n: int, tokens: int) -> dict:
    """n distinct prompts of `tokens` tokens through gpcrun serve (cache_prompt on, 1 token out each): the peak RSS of
    llama-server's tree (the watchdog's samples) against the plan's host total plus its prompt-cache line."""
    import random

    import requests
    port = free_port()
    args = ["-m", model, "-c", str(2 * tokens), "-np", "1", *T, "--port", str(port)] + (["-cram", cram] if cram else [])
    env = dict(os.environ, GPCRUN_HOME=str(home), GPCRUN_LLAMA_SERVER=server)
    proc = _start([sys.executable, "-m", "gpcrun", "serve", "--quiet", *args], env)
    url = f"http://127.0.0.1:{port}"
    try:
        _observe(proc, [server, *args], env, None)
        end = time.monotonic() + 30
        runs = home / "runs"
        while time.monotonic() < end and not list(runs.glob("*/events.jsonl")):
            time.sleep(0.1)
        run = max(runs.iterdir(), key=lambda d: d.stat().st_mtime)
        while time.monotonic() < end and '"ready"' not in (run / "events.jsonl").read_text():
            time.sleep(0.1)
        rng = random.Random(1)
        t0 = time.monotonic()
        for i in range(n):
            prompt = [rng.randrange(100, 40000) for _ in range(tokens)]
            requests.post(url + "/completion", json={"prompt": prompt, "n_predict": 1, "cache_prompt": True},
                          timeout=600).raise_for_status()
        took = time.monotonic() - t0
        time.sleep(1.5)  # two more watchdog samples
    finally:
        _stop(proc)
    plan = json.loads((run / "plan.json").read_text())
    host = next(m for m in plan["plan"]["memory"] if m["kind"] == "host")
    rss = [json.loads(x).get("child_rss_bytes") or 0 for x in (run / "samples.jsonl").read_text().splitlines()]
    limit = plan["prompt_cache"]["limit_mib"]
    planned = host["total_bytes"] + (limit or 0) * 2**20
    return {"cram": cram or "default", "prompts": n, "tokens": tokens, "seconds": round(took, 1),
            "rss_first_mib": round(rss[0] / 2**20, 1), "rss_peak_mib": round(max(rss) / 2**20, 1),
            "plan_host_mib": round(host["total_bytes"] / 2**20, 1), "prompt_cache_limit_mib": limit,
            "planned_mib": round(planned / 2**20, 1), "inside_plan": max(rss) <= planned}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--prompt-cache", type=int, default=0, metavar="N",
                    help="instead: N distinct prompts through gpcrun serve, default and -cram 128, RSS vs plan")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    a = ap.parse_args()
    server = str(find_tool("llama-server"))
    if a.prompt_cache:
        smol = models()["smollm2"]
        with tempfile.TemporaryDirectory(prefix="gpcrun-dropin-") as d:
            for cram in (None, "128"):
                r = prompt_cache_growth(server, smol, Path(d) / f"home-{cram}", cram, a.prompt_cache, a.prompt_tokens)
                print(json.dumps(r))
                sys.stdout.flush()
        return 0
    with tempfile.TemporaryDirectory(prefix="gpcrun-dropin-") as d:
        tmp = Path(d)
        rows = []
        for name, args, env in cases(models(), tmp):
            if a.only and a.only not in name:
                continue
            r = run_case(server, name, args, env, tmp / "home")
            rows.append({"case": name, **r})
            if not a.json:
                diff = "" if r["verdict"].startswith("same") else f"  bare {r['bare']} vs gpcrun {r['gpcrun']}"
                print(f"{name:28s} {r['verdict']}{diff}")
                for c in r.get("changes", []):
                    print(f"{'':28s}   + {c}")
                if r.get("gpcrun_said"):
                    print(f"{'':28s}   {r['gpcrun_said']}")
                sys.stdout.flush()
    if a.json:
        print(json.dumps(rows, indent=1))
    same = sum(r["verdict"].startswith("same") for r in rows)
    print(f"{same} of {len(rows)} command lines: same", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
