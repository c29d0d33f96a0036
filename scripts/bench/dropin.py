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
    from gpcrun.model import load_model
    from tests.mmproj_factory import write_mmproj  # a LLaVA-1.5 'mlp' projector for the tiny llama
    d = Path(m["tiny-llama-q8_0"]).parent
    m["mmproj"] = str(write_mmproj(d / "mmproj-tiny-llama-F16.gguf", load_model(m["tiny-llama-q8_0"]).facts[
        "embedding_length"], image_size=336, n_embd=128, n_ff=256))
    m["smollm2"] = subprocess.run([sys.executable, "scripts/fetch_demo_model.py"], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1]
    return m


def fake_hub(m: dict[str, str], tmp: Path):
    """A local fake of the Hugging Face Hub (tests/hub_server.py) holding the tiny llama and its generated projector,
    for -hf: llama-server downloads both from it itself (HF_ENDPOINT) into an HF cache under tmp."""
    from tests.hub_server import FakeHub, env_for
    hub = FakeHub()
    hub.add_repo(HF_REPO, {"tiny-llama-Q8_0.gguf": m["tiny-llama-q8_0"], "mmproj-tiny-llama-F16.gguf": m["mmproj"]})
    hub.start()
    env = env_for(hub, tmp)
    return hub, {k: env[k] for k in ("HF_ENDPOINT", "HF_HOME", "GPCRUN_CACHE", "NO_PROXY", "no_proxy")}


HF_REPO = "gpcrun-dropin/tiny-llama-GGUF"


def cases(m: dict[str, str], tmp: Path, hub_env: dict) -> list[tuple[str, list[str], dict]]:
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
        ("-hf (fake hub, + projector)", ["-hf", f"{HF_REPO}:Q8_0"], hub_env),
        ("-np 4", ["-m", tiny, "-np", "4"], {}),
        ("-c 8192 -np 2", ["-m", tiny, "-c", "8192", "-np", "2"], {}),
        ("-c 4096 -np 2 -kvu", ["-m", tiny, "-c", "4096", "-np", "2", "-kvu"], {}),
        ("-fa on", ["-m", tiny, "-fa", "on"], {}),
        ("-fa on -ctk/-ctv q8_0", ["-m", tiny, "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"], {}),
        ("--jinja", ["-m", smol, "--jinja"], {}),
        ("--alias", ["-m", tiny, "--alias", "my-model"], {}),
        ("-md (draft model)", ["-m", tiny, "-md", m["tiny-llama-f16"]], {}),
        ("--lora (generated adapter)", ["-m", tiny, "--lora", str(lora)], {}),
        ("--mmproj (generated projector)", ["-m", tiny, "--mmproj", m["mmproj"]], {}),
        ("--mmproj --no-mmproj-offload", ["-m", tiny, "--mmproj", m["mmproj"], "--no-mmproj-offload"], {}),
        ("-hf --no-mmproj", ["-hf", f"{HF_REPO}:Q8_0", "--no-mmproj"], hub_env),
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


_LOG_FIGURES = [  # (plan line, field, llama-server's own log line at -lv 4)
    ("model", "model_bytes", r"CPU_Mapped model buffer size =\s+([\d.]+) MiB"),
    ("model", "context_bytes", r"CPU KV buffer size =\s+([\d.]+) MiB"),
    ("model", "compute_bytes", r"CPU compute buffer size =\s+([\d.]+) MiB"),
    ("lora", "model_bytes", r"CPU\w* LoRA buffer size =\s+([\d.]+) MiB"),
    ("mmproj", "model_bytes", r"load_hparams: model size:\s+([\d.]+) MiB"),
    ("mmproj", "compute_bytes", r"reserve_compute_meta:\s+CPU compute buffer size =\s+([\d.]+) MiB"),
]


def memory_table(server: str, m: dict[str, str], tmp: Path, hub_env: dict) -> list[dict]:
    """Each case once through `gpcrun serve ... -lv 4`: every line of plan.json (the model's, each extra file's)
    beside the figure llama-server prints for the same buffer. The draft model's lines are read after
    llama-server's 'loading draft model'."""
    import re

    from gpcrun.model import load_model
    from tests.gguf_factory import write_lora
    lora = write_lora(tmp / "mem-lora.gguf", load_model(m["tiny-llama-q8_0"]))
    tiny = m["tiny-llama-q8_0"]
    rows = []
    for name, args, env_extra in [("-m", ["-m", tiny], {}), ("-md", ["-m", tiny, "-md", m["tiny-llama-f16"]], {}),
                                  ("--lora", ["-m", tiny, "--lora", str(lora)], {}),
                                  ("--mmproj", ["-m", tiny, "--mmproj", m["mmproj"]], {}),
                                  ("-hf (+ projector)", ["-hf", f"{HF_REPO}:Q8_0"], hub_env)]:
        home = tmp / f"mem-{len(rows)}"
        env = dict(os.environ, GPCRUN_HOME=str(home), GPCRUN_LLAMA_SERVER=server, **env_extra)
        a = [*args, "-c", "2048", *T, "-lv", "4", "--port", str(free_port())]
        proc = _start([sys.executable, "-m", "gpcrun", "serve", "--quiet", *a], env)
        _observe(proc, [server, *a], env, None)
        _stop(proc)
        run = next((home / "runs").iterdir())
        plan = json.loads((run / "plan.json").read_text())
        log = (run / "server.log").read_text(errors="replace")
        main_log, _, draft_log = log.partition("loading draft model")
        host = next(x for x in plan["plan"]["memory"] if x["kind"] == "host")
        lines = [("model", host, main_log)] + [(x["kind"], x, draft_log if x["kind"] == "draft" else log)
                                                for x in plan["extras"]]
        for kind, line, text in lines:
            for want_kind, field, pat in _LOG_FIGURES:
                if want_kind != ("model" if kind == "draft" else kind):
                    continue
                got = [float(x) for x in re.findall(pat, text)]
                if kind in ("model", "draft") and got:
                    got = got[:1]  # the first context's (main, or the draft's after its marker)
                rows.append({"case": name, "line": kind, "field": field,
                             "plan_mib": None if line.get(field) is None else round(line[field] / 2**20, 2),
                             "llama_server_mib": round(sum(got), 2) if got else None})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--prompt-cache", type=int, default=0, metavar="N",
                    help="instead: N distinct prompts through gpcrun serve, default and -cram 128, RSS vs plan")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--memory", action="store_true",
                    help="instead: the plan's lines (model, draft, LoRA, projector) beside llama-server's own (-lv 4)")
    a = ap.parse_args()
    server = str(find_tool("llama-server"))
    if a.memory:
        with tempfile.TemporaryDirectory(prefix="gpcrun-dropin-") as d:
            m = models()
            hub, hub_env = fake_hub(m, Path(d))
            rows = memory_table(server, m, Path(d), hub_env)
            hub.stop()
        print(f"{'case':18s} {'line':7s} {'field':14s} {'plan MiB':>9s} {'llama-server MiB':>17s}  diff")
        for r in rows:
            p, g = r["plan_mib"], r["llama_server_mib"]
            diff = "" if p is None or g is None else f"{p - g:+.2f}"
            print(f"{r['case']:18s} {r['line']:7s} {r['field']:14s} {p!s:>9s} {g!s:>17s}  {diff}")
        return 0
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
        m = models()
        hub, hub_env = fake_hub(m, tmp)
        for name, args, env in cases(m, tmp, hub_env):
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
        hub.stop()
    if a.json:
        print(json.dumps(rows, indent=1))
    same = sum(r["verdict"].startswith("same") for r in rows)
    print(f"{same} of {len(rows)} command lines: same", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
