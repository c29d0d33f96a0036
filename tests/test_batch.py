"""`gpcrun batch`: job files, dry runs, an unattended batch on the real llama-server (tiny dense and MoE models),
kill -9 in the middle and resume, the output-directory lock, shards and merged reports.

Real processes only (gpcrun as a subprocess, the real llama-server, tests/fake_server.py for a server that never
becomes ready). No sleeps as synchronisation: every wait polls a condition against a deadline. Every process a
test starts is gone (or a zombie: pid 1 here does not reap) when the test ends.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpcrun.batch import (JOB_DEFAULTS, BatchError, parse_jobs, parse_shard, select_shard, shard_from_env)
from tests.proc_util import assert_none_survive, gone, wait_until

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_server.py")
FAST = ["-t", "1", "-tb", "1"]
KEYS = ("model", "config", "verdict", "outcome")  # what an interrupted-and-resumed batch must reproduce


# ------------------------------------------------------------------------------------------------ helpers





def toml_str(v) -> str:
    return json.dumps(v)  # a JSON string/list of strings/number is valid TOML for what these files hold


def jobs_toml(models: list[dict], matrix: dict | None = None, batch: dict | None = None) -> str:
    b = {"prompt_tokens": 32, "gen_tokens": 16, "repetitions": 2, "timeout_s": 60, "server_args": FAST}
    b.update(batch or {})
    lines = ["[batch]"] + [f"{k} = {toml_str(v)}" for k, v in b.items()]
    for m in models:
        lines += ["", "[[models]]"] + [f"{k} = {toml_str(v)}" for k, v in m.items()]
    if matrix:
        lines += ["", "[matrix]"] + [f"{k} = {toml_str(v)}" for k, v in matrix.items()]
    return "\n".join(lines) + "\n"


def llama_children(pid: int) -> list[int]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if k.name() == "llama-server" and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def reasons(out: Path) -> list[str]:
    """job -> outcome and reason from its receipt (for assertion messages)."""
    res = []
    for r in db_rows(out):
        doc = json.loads(Path(r["receipt"]).read_text()) if r.get("receipt") else {}
        res.append(f"{r['idx']} {r['label']} {r['state']}: {(doc.get('outcome') or {}).get('reason') or r['summary']}")
    return res


def db_rows(out: Path) -> list[dict]:
    """The batch state as another process sees it (a fresh connection per look; WAL readers never block)."""
    p = out / "state.sqlite"
    if not p.exists():
        return []
    db = sqlite3.connect(p, timeout=5)
    try:
        cur = db.execute("SELECT * FROM jobs ORDER BY idx")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    except sqlite3.OperationalError:  # the table is not created yet
        return []
    finally:
        db.close()


class Batch:
    """One `gpcrun batch` subprocess; remembers every descendant it saw."""

    def __init__(self, home: Path, args: list[str], env: dict | None = None, tag: str = "") -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        stamp = f"{tag}{time.monotonic_ns()}"
        self.out_path, self.err_path = home / f"batch-{stamp}.stdout", home / f"batch-{stamp}.stderr"
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION_INDEX",
                                                                        "GPCRUN_SHARD_COUNT"))}
        e.update(GPCRUN_HOME=str(home), PYTHONUNBUFFERED="1")
        e.update(env or {})
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "batch", *args], cwd=ROOT, env=e,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)
        self.seen: set[int] = set()
        self.elapsed: float | None = None

    def children(self) -> list[int]:
        try:
            kids = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            kids = []
        self.seen.update(kids)
        return kids

    def wait(self, timeout_s: float = 120) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.children()
            time.sleep(0.02)
        try:
            rc = self.proc.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self.elapsed = time.monotonic() - self.t0
            self._out.close()
            self._err.close()
        return rc

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def cleanup(self) -> None:
        self.children()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        for pid in self.seen:  # the PDEATHSIG normally did this already
            if not gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def profile_cache(tmp_path_factory) -> Path:
    """The host profile measured once (bandwidth: ~3 s); each test's fresh GPCRUN_HOME starts with a copy."""
    home = tmp_path_factory.mktemp("profile-home")
    subprocess.run([sys.executable, "-m", "gpcrun", "profile", "--json"], cwd=ROOT, capture_output=True,
                   check=True, timeout=120, env=dict(os.environ, GPCRUN_HOME=str(home)))
    return home / "profile.json"


def seed_home(home: Path, profile: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "profile.json").exists():
        shutil.copy(profile, home / "profile.json")
    return home


@pytest.fixture
def batch(tmp_path, llama_server_bin, profile_cache):
    made: list[Batch] = []

    def start(args: list[str], home: Path | None = None, env: dict | None = None) -> Batch:
        e = {"GPCRUN_LLAMA_SERVER": str(llama_server_bin)}
        e.update(env or {})
        b = Batch(seed_home(home or tmp_path / "home", profile_cache), [str(a) for a in args], e)
        made.append(b)
        return b

    yield start
    for b in made:
        b.cleanup()
    assert_none_survive([pid for b in made for pid in b.seen | {b.proc.pid}])


def run_batch(start, args, timeout_s: float = 120, **kw) -> tuple[int, Batch]:
    b = start(args, **kw)
    return b.wait(timeout_s), b


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------------ job files

MATRIX_FILE = """
[batch]
repetitions = 2
server_args = ["-t", "1"]

[[models]]
path = "models/a.gguf"
name = "a"
server_args = ["-tb", "1"]

[[models]]
path = "/abs/b.gguf"

[matrix]
kv_type = ["f16", "q8_0"]   # written first, still the inner axis: axes follow the documented key order
ctx = [256, 512, 1024]
"""


def test_parse_expands_models_x_matrix_in_a_stable_order(tmp_path):
    batch, jobs = parse_jobs(MATRIX_FILE, tmp_path)
    assert batch["repetitions"] == 2
    assert len(jobs) == 2 * 3 * 2
    assert [j.index for j in jobs] == list(range(12))
    # model-major, then ctx, then kv_type (MATRIX_KEYS order, not the order in the file)
    got = [(j.label, j.settings["ctx"], j.settings["kv_type"]) for j in jobs]
    assert got == [(m, c, k) for m in ("a", "b.gguf") for c in (256, 512, 1024) for k in ("f16", "q8_0")]
    # relative paths are relative to the job file's directory; absolute ones kept; label defaults to the file name
    assert jobs[0].model == str((tmp_path / "models/a.gguf").resolve())
    assert jobs[6].model == "/abs/b.gguf" and jobs[6].label == "b.gguf"
    # defaults, [batch] over defaults, model server_args before the batch's
    s = jobs[0].settings
    assert s["repetitions"] == 2 and s["prompt_tokens"] == JOB_DEFAULTS["prompt_tokens"]
    assert s["gen_tokens"] == JOB_DEFAULTS["gen_tokens"] and s["timeout_s"] == JOB_DEFAULTS["timeout_s"]
    assert s["parallel"] == 1 and s["concurrency"] == []
    assert s["server_args"] == ["-tb", "1", "-t", "1"] and jobs[6].settings["server_args"] == ["-t", "1"]
    assert jobs[0].describe() == "ctx 256, KV f16, -tb 1 -t 1"
    # ids: unique, stable across parses, independent of position (a new matrix value leaves the others alone)
    ids = [j.id for j in jobs]
    assert len(set(ids)) == 12 and all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
    assert [j.id for j in parse_jobs(MATRIX_FILE, tmp_path)[1]] == ids
    _, more = parse_jobs(MATRIX_FILE.replace("ctx = [256, 512, 1024]", "ctx = [128, 256, 512, 1024]"), tmp_path)
    assert len(more) == 16 and set(ids) <= {j.id for j in more}
    # the same file seen from another directory names other files: other ids
    assert not set(ids[:6]) & {j.id for j in parse_jobs(MATRIX_FILE, tmp_path / "x")[1]}


def test_parse_without_matrix_and_env_paths(tmp_path):
    _, jobs = parse_jobs('[[models]]\nref = "org/repo:Q4_K_M"\n', tmp_path)
    assert len(jobs) == 1 and jobs[0].model == "org/repo:Q4_K_M" and jobs[0].describe() == "defaults"
    _, jobs = parse_jobs('[[models]]\npath = "${MODELS}/m.gguf"\n[[models]]\npath = "$MODELS/n.gguf"\n', tmp_path,
                         env={"MODELS": "/data/models"})
    assert [j.model for j in jobs] == ["/data/models/m.gguf", "/data/models/n.gguf"]
    with pytest.raises(BatchError, match=r"\$MODELS is not set"):
        parse_jobs('[[models]]\npath = "${MODELS}/m.gguf"\n', tmp_path, env={})


def test_url_jobs_measure_a_running_server_or_one_model_behind_a_router(tmp_path):
    _, jobs = parse_jobs('[[models]]\nurl = "http://127.0.0.1:8080"\nmodel = "qwen"\n'
                         '[[models]]\nurl = "http://127.0.0.1:8081"\n', tmp_path)
    assert [(j.model, j.label, j.settings["url"], j.settings["router_model"]) for j in jobs] == [
        ("http://127.0.0.1:8080", "qwen", "http://127.0.0.1:8080", "qwen"),
        ("http://127.0.0.1:8081", "127.0.0.1:8081", "http://127.0.0.1:8081", None)]
    for bad, why in (('url = "http://h:1"\npath = "m.gguf"', "one of"),
                     ('url = "http://h:1"\nserver_args = ["-c", "1"]', "starts no server"),
                     ('path = "m.gguf"\nmodel = "x"', "behind a router")):
        with pytest.raises(BatchError, match=why):
            parse_jobs("[[models]]\n" + bad + "\n", tmp_path)


BAD_FILES = {
    "toml": ("[[models]\npath = 'x'", "not valid TOML"),
    "no-models": ("[batch]\nrepetitions = 1\n", "at least one [[models]]"),
    "model-no-path": ("[[models]]\nname = 'x'\n", "needs 'path', 'ref' or 'url'"),
    "model-key": ("[[models]]\npath = 'x'\nctx = 5\n", "unknown keys ['ctx']"),
    "model-args-str": ("[[models]]\npath = 'x'\nserver_args = '-t 1'\n", "server_args must be a list of strings"),
    "top-key": ("[[models]]\npath = 'x'\n[matrx]\nctx = [1]\n", "unknown top-level keys ['matrx']"),
    "batch-key": ("[batch]\nrepetition = 2\n[[models]]\npath = 'x'\n", "unknown [batch] keys ['repetition']"),
    "matrix-key": ("[[models]]\npath = 'x'\n[matrix]\nctxs = [1]\n", "unknown [matrix] keys ['ctxs']"),
    "matrix-empty": ("[[models]]\npath = 'x'\n[matrix]\nctx = []\n", "ctx must be a non-empty list"),
    "matrix-scalar": ("[[models]]\npath = 'x'\n[matrix]\nctx = 512\n", "ctx must be a non-empty list"),
    "ctx-neg": ("[[models]]\npath = 'x'\n[matrix]\nctx = [-1]\n", "ctx must be a non-negative integer"),
    "ctx-str": ("[[models]]\npath = 'x'\n[matrix]\nctx = ['4k']\n", "ctx must be a non-negative integer"),
    "ctx-bool": ("[batch]\nctx = true\n[[models]]\npath = 'x'\n", "ctx must be a non-negative integer"),
    "kv": ("[[models]]\npath = 'x'\n[matrix]\nkv_type = ['q3_k']\n", "kv_type must be one of"),
    "reps": ("[batch]\nrepetitions = 0\n[[models]]\npath = 'x'\n", "repetitions must be an integer >= 1"),
    "timeout": ("[batch]\ntimeout_s = 0\n[[models]]\npath = 'x'\n", "timeout_s must be a positive finite number"),
    "timeout-nan": ("[batch]\ntimeout_s = nan\n[[models]]\npath = 'x'\n", "timeout_s must be a positive finite"),
    "timeout-inf": ("[matrix]\ntimeout_s = [inf]\n[[models]]\npath = 'x'\n", "timeout_s must be a positive finite"),
    "conc": ("[batch]\nconcurrency = [0]\n[[models]]\npath = 'x'\n", "concurrency must be a list of integers"),
    "args-str": ("[batch]\nserver_args = '-t 1'\n[[models]]\npath = 'x'\n", "server_args must be a list"),
    "args-plan": ("[[models]]\npath = 'x'\nserver_args = ['-c', 'big']\n", "-c expects an integer"),
    "dup": ("[[models]]\npath = 'x'\n[[models]]\npath = 'x'\nname = 'y'\n", "two jobs are identical"),
    "env": ("[[models]]\npath = '$GPCRUN_TEST_UNSET_VAR/m.gguf'\n", "$GPCRUN_TEST_UNSET_VAR is not set"),
    # 201 x 60 = 12060 jobs: refused before anything is expanded (a 10^6-job dry run planned for ~2 h silently)
    "huge": ("[[models]]\npath = 'x'\n[matrix]\nctx = " + str(list(range(201))) + "\nparallel = "
             + str(list(range(1, 61))) + "\n", "the matrix expands to 12060 jobs, more than 10000"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_job_file_is_a_batch_error(tmp_path, name):
    text, msg = BAD_FILES[name]
    with pytest.raises(BatchError) as ei:
        parse_jobs(text, tmp_path, "jobs.toml", env={})
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_bad_job_files_exit_7_with_one_line(tmp_path):
    """The CLI: every bad file is exit 7 and one line on stderr, nothing written, nothing started."""
    env = {k: v for k, v in os.environ.items() if k != "GPCRUN_TEST_UNSET_VAR"}
    env["GPCRUN_HOME"] = str(tmp_path / "home")
    procs = {}
    for name, (text, _msg) in BAD_FILES.items():
        f = tmp_path / f"{name}.toml"
        f.write_text(text)
        procs[name] = subprocess.Popen([sys.executable, "-m", "gpcrun", "batch", str(f), "--out",
                                        str(tmp_path / f"out-{name}")], cwd=ROOT, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    missing = subprocess.run([sys.executable, "-m", "gpcrun", "batch", str(tmp_path / "nope.toml")], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    for name, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 7, (name, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("gpcrun: error: ") and BAD_FILES[name][1] in lines[0], \
            (name, err)
        assert out == "" and not (tmp_path / f"out-{name}").exists()
    assert missing.returncode == 7 and "nope.toml: cannot read" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    binary = tmp_path / "model.gguf.toml"  # a binary file given by mistake
    binary.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)))
    b = subprocess.run([sys.executable, "-m", "gpcrun", "batch", str(binary)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert b.returncode == 7 and "not a text file" in b.stderr and len(b.stderr.strip().splitlines()) == 1, b.stderr
    bad_shard = subprocess.run([sys.executable, "-m", "gpcrun", "batch", str(tmp_path / "matrix-key.toml"),
                                "--shard", "2/2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad_shard.returncode == 7  # the job file is checked first
    (tmp_path / "ok.toml").write_text("[[models]]\npath = 'x'\n")
    bad_shard = subprocess.run([sys.executable, "-m", "gpcrun", "batch", str(tmp_path / "ok.toml"), "--shard",
                                "2/2", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad_shard.returncode == 7 and "need 0 <= I < N" in bad_shard.stderr


# ------------------------------------------------------------------------------------------------ dry run

def test_dry_run_plans_every_job_shows_refusals_and_starts_nothing(batch, tmp_path, tiny_models):
    marker = tmp_path / "server-started"
    shim = tmp_path / "llama-server"  # would leave a marker if anything started a server (listing devices is not)
    shim.write_text(f"#!/bin/sh\ncase \"$*\" in *--list-devices*) echo 'Available devices:'; exit 0;; esac\n"
                    f"touch {marker}\nexit 1\n")
    shim.chmod(0o755)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(jobs_toml([{"path": str(tiny_models["tiny-llama-q8_0"]), "name": "dense"},
                               {"path": str(tiny_models["tiny-qwen3moe-q8_0"]), "name": "moe"},
                               {"path": str(tmp_path / "missing.gguf"), "name": "missing"}],
                              {"ctx": [256, 100_000_000]}))
    out = tmp_path / "out"
    b = batch([jobs, "--dry-run", "--json", "--out", out], env={"GPCRUN_LLAMA_SERVER": str(shim)})
    kids: set[str] = set()

    def watch():
        for k in b.children():
            try:
                p = psutil.Process(k)
                if "--list-devices" not in p.cmdline():  # asking llama.cpp for its devices starts no server
                    kids.add(p.name())
            except psutil.NoSuchProcess:
                pass
        return b.proc.poll() is not None
    assert wait_until(watch, 60, step_s=0.002)
    assert b.wait(10) == 0, b.stderr()
    rows = json.loads(b.stdout())
    assert [(r["job"], r["model"], r["verdict"]) for r in rows] == [
        (0, "dense", "ship"), (1, "dense", "refuse"), (2, "moe", "ship"), (3, "moe", "refuse"),
        (4, "missing", "error"), (5, "missing", "error")]
    assert rows[0]["forecast_tok_s"] > 0 and "fits" in rows[0]["reasons"][0]
    assert "more host" in rows[1]["reasons"][0], rows[1]  # the reason says what does not fit
    assert "missing.gguf" in rows[4]["reasons"][0]
    assert not marker.exists() and "llama-server" not in kids, kids
    assert not out.exists()  # a dry run writes no state
    # the text table shows the refusal too
    b2 = batch([jobs, "--dry-run"], env={"GPCRUN_LLAMA_SERVER": str(shim)})
    assert b2.wait(60) == 0, b2.stderr()
    table = b2.stdout().splitlines()
    assert table[0].split()[:4] == ["job", "model", "config", "verdict"]
    assert "refuse" in table[3] and "nothing fits" in table[3]
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ done-when

@pytest.fixture(scope="module")
def done_when(tmp_path_factory, tiny_models, llama_server_bin, profile_cache):
    """The tiny dense and MoE models x 2 contexts x 2 KV types, plus a model whose server_args hold a flag
    llama-server rejects (its jobs fail: load_failed), run unattended to the end once."""
    d = tmp_path_factory.mktemp("done_when")
    jobs = d / "jobs.toml"
    jobs.write_text(jobs_toml([{"path": str(tiny_models["tiny-llama-q8_0"]), "name": "dense"},
                               {"path": str(tiny_models["tiny-qwen3moe-q8_0"]), "name": "moe"},
                               {"path": str(tiny_models["tiny-llama-q8_0"]), "name": "bad-flag",
                                "server_args": ["--no-such-flag"]}],
                              {"ctx": [256, 512], "kv_type": ["f16", "q8_0"]}))
    b = Batch(seed_home(d / "home", profile_cache), [str(jobs), "--out", str(d / "out"), "--json"],
              {"GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
    try:
        rc = b.wait(120)
    finally:
        b.cleanup()
    assert rc == 16, b.stderr()  # the bad-flag jobs failed: not every job succeeded
    return {"jobs": jobs, "out": d / "out", "rows": json.loads(b.stdout()), "stderr": b.stderr(),
            "elapsed": b.elapsed, "dir": d}


def test_batch_runs_unattended_and_goes_on_past_a_failed_job(done_when):
    rows = done_when["rows"]
    assert len(rows) == 12
    assert "gpcrun batch: 4 of 12 job(s) did not succeed (load_failed)" in done_when["stderr"]  # and exit 16
    print(f"\nuninterrupted batch: {len(rows)} jobs in {done_when['elapsed']:.1f} s")
    from gpcrun.batch import render_table
    print(render_table(rows))
    good, bad = rows[:8], rows[8:]
    assert [(r["model"], r["config"]) for r in good] == [
        (m, f"ctx {c}, KV {k}, -t 1 -tb 1") for m in ("dense", "moe") for c in (256, 512) for k in ("f16", "q8_0")]
    for r in good:
        assert r["verdict"] == "ship" and r["outcome"] == "clean_stop", (r, reasons(done_when["out"]))
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["forecast_tok_s"] > 0
        assert r["error_pct"] is not None and r["peak_ram_mib"] > 0
    for r in bad:  # the bad flag failed its jobs, and the batch went on to the end
        assert r["outcome"] == "load_failed" and r["decode_tok_s"] is None, r
    st = db_rows(done_when["out"])
    assert [r["state"] for r in st] == ["done"] * 8 + ["failed"] * 4
    assert all(r["attempts"] == 1 for r in st)
    # every job has a receipt with its classification
    for r in st:
        doc = json.loads(Path(r["receipt"]).read_text())
        assert doc["outcome"]["kind"] == r["outcome"] and doc["kind"] == "bench"
        assert Path(r["receipt"]).parent == done_when["out"] / "receipts"
    bad_doc = json.loads(Path(st[8]["receipt"]).read_text())
    assert bad_doc["outcome"]["cause"] == "bad_flag" and "--no-such-flag" in bad_doc["outcome"]["reason"]
    assert "[12/12]" in done_when["stderr"] and "summary written to" in done_when["stderr"]


def test_summary_files_exist_and_parse(done_when):
    out, rows = done_when["out"], done_when["rows"]
    assert json.loads((out / "summary.json").read_text()) == rows
    with open(out / "summary.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    assert [(int(r["job"]), r["model"], r["config"], r["outcome"]) for r in recs] == \
        [(r["job"], r["model"], r["config"], r["outcome"]) for r in rows]
    assert float(recs[0]["decode_tok_s"]) == pytest.approx(rows[0]["decode_tok_s"])
    md = (out / "summary.md").read_text().strip().splitlines()
    assert md[0].startswith("| job | model | config | verdict |") and set(md[1]) <= set("|-")
    assert len(md) == 2 + len(rows)
    cells = [c.strip() for c in md[-1].strip("|").split("|")]
    assert cells[0] == "11" and cells[1] == "bad-flag" and cells[-1] == "load_failed"
    # the report command reads the same state back, in each output format
    env = dict(os.environ, GPCRUN_HOME=str(done_when["dir"] / "home"))
    rep = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out), "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0 and json.loads(rep.stdout) == rows
    rep = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out), "--markdown"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert rep.stdout.strip().splitlines() == md
    rep = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(done_when["dir"])], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert rep.returncode == 7 and "no state.sqlite" in rep.stderr


def test_kill_9_in_the_middle_then_resume(batch, done_when, tmp_path, llama_server_bin):
    """The same batch in a fresh OUT: kill -9 of gpcrun while a job runs (some done), no llama-server survives
    it (2 s), run again: finished jobs are not redone, the interrupted one is retried once (attempts == 2), and
    the final table matches the uninterrupted run."""
    out, home = tmp_path / "out", tmp_path / "home"
    b = batch([done_when["jobs"], "--out", out, "--json"], home=home)
    seen_servers: set[int] = set()
    snap: dict = {}

    def mid_job():
        servers = llama_children(b.proc.pid)
        seen_servers.update(servers)
        if not servers:
            return False
        rows = db_rows(out)
        running = [r for r in rows if r["state"] == "running"]
        done = [r for r in rows if r["state"] == "done"]
        if running and len(done) >= 2 and llama_children(b.proc.pid) == servers:
            snap.update(rows=rows, running=running[0], servers=servers)
            return True
        return b.proc.poll() is not None
    assert wait_until(mid_job, 90, step_s=0.003), b.stderr()
    assert snap, f"the batch ended before it could be interrupted:\n{b.stderr()}"
    t_kill = time.monotonic()
    b.proc.kill()
    assert b.wait(10) == -signal.SIGKILL
    survivors = [p for p in snap["servers"] if not wait_until(lambda p=p: gone(p), 2.0, step_s=0.005)]
    kill_to_gone = time.monotonic() - t_kill
    assert not survivors, f"llama-server {survivors} outlived gpcrun by 2 s"
    assert not [p for p in seen_servers if not gone(p)]
    before = {r["id"]: r for r in db_rows(out)}
    interrupted = snap["running"]["id"]
    assert before[interrupted]["state"] == "running" and before[interrupted]["attempts"] == 1
    finished = {i: r for i, r in before.items() if r["state"] in ("done", "failed")}
    assert len(finished) >= 2
    mtimes = {i: os.stat(r["receipt"]).st_mtime_ns for i, r in finished.items()}

    # run again: resume
    b2 = batch([done_when["jobs"], "--out", out, "--json"], home=home)
    assert b2.wait(120) == 16, b2.stderr()
    err = b2.stderr()
    label = before[interrupted]["label"]
    assert f"job {before[interrupted]['idx']} ({label}) was running when gpcrun died: retrying once" in err, err
    assert f"resuming: {len(finished)} of 12 job(s) already finished" in err, err
    assert f"[{len(finished) + 1}/12]" in err and "[1/12]" not in err
    after = {r["id"]: r for r in db_rows(out)}
    for i, r in finished.items():  # not redone: same row, same receipt file, untouched
        a = after[i]
        assert (a["receipt"], a["finished_at"], a["started_at"], a["attempts"]) == \
            (r["receipt"], r["finished_at"], r["started_at"], 1)
        assert os.stat(a["receipt"]).st_mtime_ns == mtimes[i]
    a = after[interrupted]
    assert a["attempts"] == 2 and a["state"] in ("done", "failed") and a["receipt"]
    assert a["started_at"] > before[interrupted]["started_at"]
    assert all(r["attempts"] == 1 for i, r in after.items() if i != interrupted)
    assert all(r["state"] in ("done", "failed") for r in after.values())
    assert len({r["receipt"] for r in after.values()}) == 12
    rows = json.loads(b2.stdout())
    assert [tuple(r[k] for k in KEYS) for r in rows] == [tuple(r[k] for k in KEYS) for r in done_when["rows"]], \
        (reasons(out), reasons(done_when["out"]))
    assert json.loads((out / "summary.json").read_text()) == rows
    print(f"\nkill -9 at job {before[interrupted]['idx']} ({label}; {len(finished)} finished before): "
          f"llama-server gone {kill_to_gone * 1000:.0f} ms after the kill; resumed run {b2.elapsed:.1f} s "
          f"(uninterrupted {done_when['elapsed']:.1f} s); interrupted job attempts {a['attempts']}")

    # a third run has nothing left to do
    b3 = batch([done_when["jobs"], "--out", out, "--json"], home=home)
    assert b3.wait(60) == 16, b3.stderr()
    assert "resuming: 12 of 12 job(s) already finished" in b3.stderr()
    assert json.loads(b3.stdout()) == rows
    assert {r["id"]: (r["attempts"], r["finished_at"]) for r in db_rows(out)} == \
        {i: (r["attempts"], r["finished_at"]) for i, r in after.items()}


# ------------------------------------------------------------------------------------------------ lock

def test_second_batch_on_the_same_out_is_refused_exit_8(batch, tmp_path, tiny_models):
    """While one gpcrun batch holds OUT (its server never becomes ready: the job times out), a second is refused
    with exit 8 and one line; the first then ends with a timeout row and its receipt."""
    shim = tmp_path / "never-ready-server"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode never-ready --max-lifetime-s 60 \"$@\"\n")
    shim.chmod(0o755)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(jobs_toml([{"path": str(tiny_models["tiny-llama-q8_0"]), "name": "slow"}],
                              batch={"timeout_s": 4}))
    out = tmp_path / "out"
    env = {"GPCRUN_LLAMA_SERVER": str(shim)}
    first = batch([jobs, "--out", out], env=env)
    assert wait_until(lambda: any(r["state"] == "running" for r in db_rows(out)) or first.proc.poll() is not None,
                      60), first.stderr()
    assert first.proc.poll() is None, first.stderr()
    second = batch([jobs, "--out", out], env=env)
    assert second.wait(30) == 8, second.stderr()
    lines = [ln for ln in second.stderr().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpcrun: error: ") and "another gpcrun batch" in lines[0], lines
    assert f"(pid {first.proc.pid})" in lines[0]
    assert second.stdout() == ""
    assert first.proc.poll() is None  # the refused one changed nothing
    assert first.wait(60) == 16, first.stderr()  # its one job timed out
    (row,) = db_rows(out)
    assert row["state"] == "failed" and row["outcome"] == "timeout" and row["attempts"] == 1
    doc = json.loads(Path(row["receipt"]).read_text())
    assert doc["outcome"]["kind"] == "timeout"
    # the lock went with the first process: the next run may use OUT (and finds nothing to do)
    third = batch([jobs, "--out", out], env=env)
    assert third.wait(60) == 16, third.stderr()
    assert "resuming: 1 of 1 job(s) already finished" in third.stderr()


# ------------------------------------------------------------------------------------------------ shards

def test_shards_partition_the_jobs(tmp_path):
    _, jobs = parse_jobs(MATRIX_FILE, tmp_path)
    ids = [j.id for j in jobs]
    for n in (1, 2, 3, 5, 12, 13):
        parts = [[j.id for j in select_shard(jobs, (i, n))] for i in range(n)]
        flat = [x for p in parts for x in p]
        assert sorted(flat) == sorted(ids) and len(set(flat)) == len(ids)  # disjoint, union = all
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "-1/2", "0/0", "a/b", "1", "1/2/3"):
        with pytest.raises(BatchError):
            parse_shard(bad)


@pytest.mark.parametrize("env,want", [
    ({}, None),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}, (0, 2)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 2)),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1"}, (1, 2)),  # 1-2
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, (2, 3)),  # --array=0-4:2
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}, (1, 2)),
    ({"JOB_COMPLETION_INDEX": "1", "GPCRUN_SHARD_COUNT": "2"}, (1, 2)),
    ({"JOB_COMPLETION_INDEX": "0", "GPCRUN_SHARD_COUNT": "3"}, (0, 3)),
    ({"SLURM_JOB_ID": "7"}, None),  # a plain Slurm job (no array) runs every job
])
def test_shard_from_env(env, want):
    assert shard_from_env(env) == want


@pytest.mark.parametrize("env,msg", [
    ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not an integer"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}, "--array=0-2"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "2"}, "evenly spaced"),
    ({"JOB_COMPLETION_INDEX": "1"}, "GPCRUN_SHARD_COUNT"),
    ({"JOB_COMPLETION_INDEX": "2", "GPCRUN_SHARD_COUNT": "2"}, "outside"),
])
def test_shard_from_env_errors(env, msg):
    with pytest.raises(BatchError, match=msg):
        shard_from_env(env)


def test_shard_runs_and_report_merges(batch, tmp_path, tiny_models):
    """--shard, Slurm array variables and Indexed-Job variables pick the same shards; each shard writes
    OUT/shard-I-of-N; `gpcrun batch report` merges them into one table of every job, in the batch's order."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(jobs_toml([{"path": str(tiny_models["tiny-llama-q8_0"]), "name": "dense"},
                               {"path": str(tiny_models["tiny-qwen3moe-q8_0"]), "name": "moe"}],
                              {"ctx": [256], "kv_type": ["f16", "q8_0"]}, {"repetitions": 1}))
    _, parsed = parse_jobs(jobs.read_text(), tmp_path)
    selectors = {
        "flag": lambda i: ([f"--shard={i}/2"], {}),
        "slurm": lambda i: ([], {"SLURM_ARRAY_TASK_ID": str(i + 3), "SLURM_ARRAY_TASK_MIN": "3",
                                 "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_JOB_ID": "99"}),
        "k8s": lambda i: ([], {"JOB_COMPLETION_INDEX": str(i), "GPCRUN_SHARD_COUNT": "2"}),
    }
    procs = []
    for how, sel in selectors.items():
        for i in (0, 1):
            args, env = sel(i)
            procs.append((how, i, batch([jobs, "--dry-run", "--json", *args], env=env)))
    for how, i, p in procs:
        assert p.wait(60) == 0, (how, p.stderr())
        assert [r["job"] for r in json.loads(p.stdout())] == [j.index for j in select_shard(parsed, (i, 2))], how
    # real runs: shard 0 by flag, shard 1 from the Indexed-Job variables
    out = tmp_path / "out"
    rc0, s0 = run_batch(batch, [jobs, "--out", out, "--shard", "0/2", "--json"])
    rc1, s1 = run_batch(batch, [jobs, "--out", out, "--json"],
                        env={"JOB_COMPLETION_INDEX": "1", "GPCRUN_SHARD_COUNT": "2"})
    assert rc0 == 0 and rc1 == 0, (s0.stderr(), s1.stderr())
    assert "(shard 0/2 of 4)" in s0.stderr() and "(shard 1/2 of 4)" in s1.stderr()
    assert sorted(p.name for p in out.iterdir()) == ["shard-0-of-2", "shard-1-of-2"]
    r0, r1 = json.loads(s0.stdout()), json.loads(s1.stdout())
    assert [r["job"] for r in r0] == [0, 2] and [r["job"] for r in r1] == [1, 3]
    rep = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out / "shard-1-of-2"),
                          str(out / "shard-0-of-2"), "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, GPCRUN_HOME=str(tmp_path / "home")))
    assert rep.returncode == 0, rep.stderr
    merged = json.loads(rep.stdout)
    assert [r["job"] for r in merged] == ["shard-0-of-2:0", "shard-1-of-2:1", "shard-0-of-2:2", "shard-1-of-2:3"]
    assert [(r["model"], r["config"]) for r in merged] == [(j.label, j.describe()) for j in parsed]
    assert all(r["outcome"] == "clean_stop" and r["decode_tok_s"] > 0 for r in merged)
    text = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out / "shard-0-of-2"),
                           str(out / "shard-1-of-2")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, GPCRUN_HOME=str(tmp_path / "home")))
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 2 + 4


def test_report_of_a_batch_in_progress_shows_pending(tmp_path):
    """State written by hand: a report lists pending/running jobs by state (a merged report mid-array)."""
    from gpcrun.batch import BatchState, collect, render_csv
    _, jobs = parse_jobs(MATRIX_FILE, tmp_path)
    st = BatchState(tmp_path / "o")
    st.sync(jobs[:3])
    st.mark_running(jobs[0].id)
    st.close()
    rows = collect([tmp_path / "o"])
    assert [r["outcome"] for r in rows] == ["running", "pending", "pending"]
    assert list(csv.reader(io.StringIO(render_csv(rows))))[1][-1] == "running"


# ------------------------------------------------------------------------------------------------ pipeline

def test_port_taken_before_llama_server_binds_it_is_retried(tmp_path, monkeypatch, tiny_models, llama_server_bin,
                                                            profile_cache):
    """free_port() lets the port go before llama-server binds it; another process (another batch, a test run in
    parallel) may take it in between. The job then gets a second port instead of a load_failed row."""
    import socket

    from gpcrun.bench import BenchConfig
    from gpcrun.launch import run as run_mod
    from gpcrun.pipeline import RunConfig, run
    from gpcrun.receipt import ReceiptStore

    monkeypatch.setenv("GPCRUN_HOME", str(seed_home(tmp_path / "home", profile_cache)))
    monkeypatch.setenv("GPCRUN_LLAMA_SERVER", str(llama_server_bin))
    real_free_port = run_mod.free_port
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        ports = [held.getsockname()[1]]
        monkeypatch.setattr(run_mod, "free_port", lambda: ports.pop(0) if ports else real_free_port())
        said: list[str] = []
        res = run(RunConfig(model=str(tiny_models["tiny-llama-q8_0"]), ctx=256, server_args=FAST,
                            bench=BenchConfig(16, 8, 1), timeout_s=60, store=ReceiptStore(tmp_path / "receipts"),
                            write_receipt=True, runs_root=tmp_path / "runs", echo=said.append, quiet=True,
                            auto_port=True, handle_signals=False))
        doc, path = res.receipt, res.receipt_path
    assert doc["outcome"]["kind"] == "clean_stop", doc["outcome"]
    assert any("was taken before llama-server bound it; retrying" in m for m in said), said
    log = next((tmp_path / "runs").iterdir()) / "server.log"
    assert "gpcrun attempt 1" in log.read_text(errors="replace")
    assert doc["measured"]["decode_tok_s"]["mean"] > 0 and path.exists()


def test_sigterm_stops_the_batch_and_the_job_runs_again(batch, tmp_path, tiny_models):
    """SIGTERM (scancel, a time limit) while a job runs: exit 130, its server reaped, the job pending again with
    its retry unspent; the next run finishes it."""
    shim = tmp_path / "never-ready-server"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} --mode never-ready --max-lifetime-s 60 \"$@\"\n")
    shim.chmod(0o755)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(jobs_toml([{"path": str(tiny_models["tiny-llama-q8_0"]), "name": "slow",
                                "server_args": FAST}], batch={"timeout_s": 30, "repetitions": 1,
                                                               "prompt_tokens": 16, "gen_tokens": 4}))
    out = tmp_path / "out"
    first = batch([jobs, "--out", out], env={"GPCRUN_LLAMA_SERVER": str(shim)})
    assert wait_until(lambda: any(r["state"] == "running" for r in db_rows(out)) or first.proc.poll() is not None,
                      60), first.stderr()
    assert wait_until(lambda: first.children(), 10)  # its server is up
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(20) == 130, first.stderr()
    assert "runs again on resume" in first.stderr()
    (row,) = db_rows(out)
    assert row["state"] == "pending" and row["attempts"] == 0
    second = batch([jobs, "--out", out])  # the real llama-server this time
    assert second.wait(60) == 0, second.stderr()
    (row,) = db_rows(out)
    assert row["state"] == "done" and row["outcome"] == "clean_stop" and row["attempts"] == 1


def test_max_jobs_is_the_limit(tmp_path):
    text = "[[models]]\npath = 'x'\n[matrix]\nctx = [256, 512, 1024]\nparallel = [1, 2]\n"
    with pytest.raises(BatchError, match="expands to 6 jobs, more than 5: split it, or pass --max-jobs 6"):
        parse_jobs(text, tmp_path, "jobs.toml", env={}, max_jobs=5)
    assert len(parse_jobs(text, tmp_path, "jobs.toml", env={}, max_jobs=6)[1]) == 6
