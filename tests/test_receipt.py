"""Receipts: schema, redaction, the store (files + SQLite index), crash safety under SIGKILL, calibration.

Receipts are built from the real pieces (hardware profile, a generated tiny GGUF, the planner) without starting
a server; `gpcrun bench` runs that start llama-server are in tests/test_bench.py. CLI checks run `gpcrun` as a
subprocess with its own GPCRUN_HOME, like a person would.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpcrun import receipt as R
from gpcrun.plan import Calibration

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """GPCRUN_HOME for this module (the hardware profile is measured once and cached there)."""
    h = tmp_path_factory.mktemp("gpcrun-home")
    old = os.environ.get("GPCRUN_HOME")
    os.environ["GPCRUN_HOME"] = str(h)
    yield h
    if old is None:
        os.environ.pop("GPCRUN_HOME", None)
    else:
        os.environ["GPCRUN_HOME"] = old


def gpcrun(home: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, GPCRUN_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


def receipt_path(stderr: str) -> Path:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("receipt: ")]
    assert lines, stderr
    return Path(lines[-1].split(": ", 1)[1])


@pytest.fixture(scope="module")
def real_parts(home, tiny_models):
    """(profile, model section, plan) of a real tiny model on this machine."""
    import gpcrun.cli.main  # noqa: F401  (gpcrun.cli.plan_cmd cannot be imported first: circular import)
    from gpcrun.planning import build_request, build_target
    from gpcrun.hardware.profile import get_profile
    from gpcrun.model import header_sha256, load_model
    from gpcrun.plan import make_plan

    info = load_model(str(tiny_models["tiny-llama-q8_0"]))
    target = build_target((), (), False)
    plan = make_plan(info, target, build_request(None, None, 1, 1.0, None, ["-t", "1"]))
    model = {"file_name": os.path.basename(info.path), "path": info.path, "size_bytes": info.file_size_bytes,
             "header_sha256": header_sha256(info), "architecture": info.architecture,
             "quant_mix_bytes": info.quant_mix(), "tensor_bytes": info.tensor_bytes}
    return get_profile().to_json(), model, plan.to_json()


def measured(decode: float = 100.0, ceiling: float = 200.0, forecast: float = 90.0) -> dict:
    from gpcrun.bench import Stats
    return {"prefill_tok_s": Stats.of([1000.0, 1100.0]).to_json(), "decode_tok_s": Stats.of([decode, decode]).to_json(),
            "ttft_ms": {"p50": 10.0}, "itl_ms": {"p50": 5.0}, "forecast_decode_tok_s": forecast,
            "ceiling_decode_tok_s": ceiling, "prediction_error_pct": round(100 * (forecast - decode) / decode, 2)}


def make_doc(parts, *, decode=100.0, outcome="clean_stop", argv=("llama-server", "-m", "x.gguf", "-t", "1"),
             env=None, rid=None, created=None, model_name=None, redact=False) -> dict:
    profile, model, plan = parts
    if model_name:
        model = dict(model, file_name=model_name)
    codes = {"clean_stop": 0, "refused": 10, "load_failed": 11, "bench_failed": 15}
    doc = R.build_receipt(kind="bench", hardware=profile, model=model, plan=plan, argv=list(argv), env=env or {},
                          llama_cpp={"build_info": "b1-test"},
                          measured=measured(decode) if outcome == "clean_stop" else None, envelope=None,
                          outcome={"kind": outcome, "exit_code": codes[outcome], "cause": None, "reason": "test"},
                          receipt_id=rid, redact_path_names=redact)
    if created:
        doc["created_utc"] = created
    return doc


# ------------------------------------------------------------------------------------------------ schema

def test_generated_receipts_validate(real_parts, tmp_path, home):
    for outcome in ("clean_stop", "refused", "load_failed"):
        doc = make_doc(real_parts, outcome=outcome)
        assert R.validate(doc) == [], outcome
        p = tmp_path / f"{outcome}.json"
        p.write_text(json.dumps(doc))
        r = gpcrun(home, "receipt", "validate", str(p))
        assert r.returncode == 0, r.stderr
        assert "valid gpcrun.receipt/1" in r.stdout


def _broken(doc: dict, how: str) -> tuple[dict, list[str]]:
    d = json.loads(json.dumps(doc))
    if how == "missing_outcome":
        del d["outcome"]
        return d, ["(root): 'outcome' is a required property"]
    if how == "wrong_type":
        d["model"]["size_bytes"] = "big"
        return d, ["model/size_bytes: 'big' is not of type 'integer'"]
    if how == "bad_enum_and_id":
        d["outcome"]["kind"] = "exploded"
        d["id"] = "not-an-id"
        return d, ["id: ", "outcome/kind: 'exploded' is not one of"]
    if how == "stats_wrong":
        d["measured"]["decode_tok_s"]["samples"] = ["fast"]
        d["measured"]["prefill_tok_s"] = {"mean": 1.0}
        return d, ["measured/decode_tok_s/samples/0: 'fast' is not of type 'number'",
                   "measured/prefill_tok_s: 'sd' is a required property"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_outcome", "wrong_type", "bad_enum_and_id", "stats_wrong"])
def test_broken_receipts_are_rejected(real_parts, tmp_path, home, how):
    doc, expect = _broken(make_doc(real_parts), how)
    errors = R.validate(doc)
    assert len(errors) >= len(expect)
    for e in expect:
        assert any(x.startswith(e) for x in errors), (e, errors)
    p = tmp_path / f"{how}.json"
    p.write_text(json.dumps(doc))
    r = gpcrun(home, "receipt", "validate", str(p))
    assert r.returncode == 6
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # one line per schema error, then the one-line summary
    assert len(lines) == len(errors) + 1, r.stderr
    assert all(ln.startswith(f"{p}: ") for ln in lines[:-1])
    assert lines[-1] == f"gpcrun: error: {p}: {len(errors)} schema error(s)"


def test_validate_unreadable_files(tmp_path, home):
    (tmp_path / "garbage.json").write_bytes(b"\x00\xffnot json{")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = {"garbage.json": "not JSON", "missing.json": "no such file", "list.json": "schema error"}
    for name, msg in cases.items():
        r = gpcrun(home, "receipt", "validate", str(tmp_path / name))
        assert r.returncode == 6, (name, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr
    assert R.validate([1, 2])[0].startswith("(root): [1, 2] is not of type 'object'")
    # a huge offending instance still gives one short line
    big = {"schema": "gpcrun.receipt/1", "hardware": "x" * 100_000}
    assert all(len(e) < 400 and "\n" not in e for e in R.validate(big))


# ------------------------------------------------------------------------------------------------ redaction

SECRETS = ["sk-secret", "sk2Zq", "/x/key", "/x/ssl-key.pem", "hf_AbCdEf123456789", "hf_EnvToken987654321",
           "sk-openai-abcdef", "svc-token-4242", "hf_HubTok123456789"]
PLANTED_ARGS = ["-t", "1", "--api-key", "sk-secret", "--api-key=sk2Zq", "--api-key-file", "/x/key",
                "--ssl-key-file", "/x/ssl-key.pem", "--alias", "model-hf_AbCdEf123456789-v1"]
PLANTED_ENV = {"HF_TOKEN": "hf_EnvToken987654321", "OPENAI_API_KEY": "sk-openai-abcdef",
               "MY_SERVICE_TOKEN": "svc-token-4242", "GPCRUN_NOTE": "uses hf_HubTok123456789"}


def assert_no_secrets(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets in the receipt: {leaked}"


def test_redaction_units():
    assert R.redact_argv(["--api-key", "a", "--api-key=b", "-hft", "hf_x", "--hf-token=y", "x-hf_AbCdEf123456789"]) == [
        "--api-key", "<redacted>", "--api-key=<redacted>", "-hft", "<redacted>", "--hf-token=<redacted>",
        "x-<redacted>"]
    env = R.redact_env({"HF_TOKEN": "hf_abcdefghij", "OPENAI_API_KEY": "k", "MY_SERVICE_TOKEN": "t", "PATH": "/bin",
                        "LLAMA_ARG_API_KEY_FILE": "/k", "DB_PASSWORD": "p", "CUDA_VISIBLE_DEVICES": "0",
                        "HF_HOME": "/hf", "MONKEY": "banana"})
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "DB_PASSWORD": "<redacted>", "HF_HOME": "/hf",
                   "HF_TOKEN": "<redacted>", "LLAMA_ARG_API_KEY_FILE": "<redacted>",
                   "MY_SERVICE_TOKEN": "<redacted>", "OPENAI_API_KEY": "<redacted>"}
    # paths: whole names only
    doc = {"a": "/home/al/m.gguf", "b": "/home/alice/x", "c": "on host vm.", "d": "llvm vmx vm-1", "vm": ["/home/al"]}
    assert R.redact_paths(doc, home="/home/al", hostname="vm") == {
        "a": "~/m.gguf", "b": "/home/alice/x", "c": "on host <host>.", "d": "llvm vmx vm-1", "<host>": ["~"]}


def test_secrets_never_reach_the_receipt_built_in_process(real_parts):
    profile, model, plan = real_parts
    plan = dict(plan, argv=list(plan["argv"]) + PLANTED_ARGS)  # the plan carries the user's pass-through args
    doc = R.build_receipt(kind="bench", hardware=profile, model=model, plan=plan,
                          argv=["llama-server", "-m", "m.gguf", *PLANTED_ARGS], env=PLANTED_ENV,
                          llama_cpp=None, measured=None, envelope=None,
                          outcome={"kind": "load_failed", "exit_code": 11, "cause": "bad_flag",
                                   "reason": "llama-server rejected an argument: sk-secret svc-token-4242"})
    assert R.validate(doc) == []
    assert_no_secrets(json.dumps(doc))
    assert doc["command"]["argv"][-6:] == ["--api-key-file", "<redacted>", "--ssl-key-file", "<redacted>",
                                             "--alias", "model-<redacted>-v1"]


def test_bench_receipt_redacts_secrets_end_to_end(home, tiny_models):
    """A refused plan (no server) and a load failure (the server ran) both write receipts without secrets."""
    model = str(tiny_models["tiny-llama-q8_0"])
    r = gpcrun(home, "bench", model, "--floor", "1e9", "--quiet", "--", *PLANTED_ARGS, env=PLANTED_ENV)
    assert r.returncode == 10, r.stderr
    text = receipt_path(r.stderr).read_text()
    assert_no_secrets(text)
    doc = json.loads(text)
    assert doc["outcome"]["kind"] == "refused" and R.validate(doc) == []
    assert doc["command"]["env"]["HF_TOKEN"] == "<redacted>" and doc["command"]["env"]["MY_SERVICE_TOKEN"] == "<redacted>"
    assert "--api-key" in doc["plan"]["argv"] and "sk-secret" not in doc["plan"]["argv"]
    # llama-server really starts and fails on the missing key file
    r = gpcrun(home, "bench", model, "--quiet", "--", *PLANTED_ARGS, env=PLANTED_ENV)
    assert r.returncode == 11, r.stderr
    text = receipt_path(r.stderr).read_text()
    assert_no_secrets(text)
    assert json.loads(text)["outcome"]["kind"] == "load_failed"


def test_redact_paths_end_to_end(home, tiny_models):
    user_home = os.path.expanduser("~")
    host = socket.gethostname()
    model = str(tiny_models["tiny-llama-q8_0"])
    r = gpcrun(home, "bench", model, "--floor", "1e9", "--quiet", "--redact-paths", "--", "-t", "1", "--alias", host)
    assert r.returncode == 10, r.stderr
    doc = json.loads(receipt_path(r.stderr).read_text())
    assert R.validate(doc) == []
    strings = []

    def walk(x):
        if isinstance(x, str):
            strings.append(x)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
    walk(doc)
    if model.startswith(user_home + "/"):
        assert doc["model"]["path"] == "~" + model[len(user_home):]
        assert not [s for s in strings if user_home + "/" in s]
    assert host not in strings and "<host>" in doc["command"]["argv"]
    # without the flag both stay
    r = gpcrun(home, "bench", model, "--floor", "1e9", "--quiet", "--", "-t", "1", "--alias", host)
    doc = json.loads(receipt_path(r.stderr).read_text())
    assert host in doc["command"]["argv"] and doc["model"]["path"] == model


# ------------------------------------------------------------------------------------------------ store

def test_damaged_receipt_files_are_skipped_and_reported(real_parts, tmp_path):
    """One good receipt beside a deeply nested file, a field that is an object, and a string where a number
    belongs: ls and reindex work (exit 0), name the skipped files, and index only the good one."""
    from click.testing import CliRunner

    from gpcrun.cli.main import main as cli_main
    root = tmp_path / "home" / "receipts"
    store = R.ReceiptStore(root)
    good = make_doc(real_parts, rid="r20250101T000000Z-0000000a", created="2025-01-01T00:00:00Z")
    store.save(good)
    store.close()
    (root / "r20250102T000000Z-0000000b.json").write_text("[" * 200000 + "]" * 200000)
    bad = json.loads(json.dumps(good))
    bad["id"], bad["measured"]["decode_tok_s"] = "r20250103T000000Z-0000000c", {"mean": {"deep": 1}}
    (root / f"{bad['id']}.json").write_text(json.dumps(bad))
    word = json.loads(json.dumps(good))
    word["id"], word["plan"]["plan"]["placement"]["ctx"] = "r20250104T000000Z-0000000d", "lots"
    (root / f"{word['id']}.json").write_text(json.dumps(word))
    env = {"GPCRUN_HOME": str(tmp_path / "home")}
    for argv in (["receipt", "ls"], ["receipt", "reindex"], ["receipt", "ls", "--json"]):
        r = CliRunner().invoke(cli_main, argv, env=env)
        assert r.exit_code == 0, (argv, r.output)
        assert "0000000a" in r.output or "indexed 1 receipt" in r.output, r.output
        for rid in ("0000000b", "0000000c", "0000000d"):
            assert "skipped" in r.output and rid in r.output, (argv, r.output)
    assert [x["id"] for x in R.ReceiptStore(root).query()] == [good["id"]]


def test_store_save_query_get(real_parts, tmp_path):
    store = R.ReceiptStore(tmp_path / "receipts")
    a = make_doc(real_parts, rid="r20250101T000000Z-0000000a", created="2025-01-01T00:00:00Z", model_name="alpha.gguf")
    b = make_doc(real_parts, rid="r20250601T000000Z-0000000b", created="2025-06-01T00:00:00Z", model_name="beta.gguf",
                 decode=50.0)
    c = make_doc(real_parts, rid="r20250701T000000Z-0000000c", created="2025-07-01T00:00:00Z", model_name="beta.gguf",
                 outcome="load_failed")
    for d in (a, b, c):
        assert store.save(d) == store.root / f"{d['id']}.json"
    assert [r["id"] for r in store.query()] == [a["id"], b["id"], c["id"]]
    assert [r["id"] for r in store.query(model="beta")] == [b["id"], c["id"]]
    assert [r["id"] for r in store.query(model=a["model"]["header_sha256"])] == [a["id"], b["id"], c["id"]]
    assert [r["id"] for r in store.query(since="2025-06-01")] == [b["id"], c["id"]]
    assert [r["id"] for r in store.query(since="2025-06-01 00:00:01")] == [c["id"]]
    assert [r["id"] for r in store.query(outcome="load_failed")] == [c["id"]]
    row = store.query(model="alpha")[0]
    assert row["decode_tok_s"] == 100.0 and row["threads"] == 1 and row["ctx"] == a["plan"]["plan"]["placement"]["ctx"]
    assert store.get(b["id"]) == json.loads(json.dumps(b))
    assert store.get("r20250601")["id"] == b["id"]  # unique prefix
    with pytest.raises(R.ReceiptError, match="ambiguous"):
        store.get("r2025")
    with pytest.raises(R.ReceiptError, match="no such file"):
        store.get("r20990101T000000Z-deadbeef")
    with pytest.raises(ValueError):
        store.query(nonsense=1)


def test_cli_ls_show(real_parts, tmp_path):
    h = tmp_path / "home"
    store = R.ReceiptStore(h / "receipts")
    a = make_doc(real_parts, rid="r20250101T000000Z-0000000a", created="2025-01-01T00:00:00Z", model_name="alpha.gguf")
    b = make_doc(real_parts, rid="r20250601T000000Z-0000000b", created="2025-06-01T00:00:00Z", model_name="beta.gguf")
    store.save(a)
    store.save(b)
    r = gpcrun(h, "receipt", "ls")
    assert r.returncode == 0 and a["id"] in r.stdout and b["id"] in r.stdout and "100.0" in r.stdout
    r = gpcrun(h, "receipt", "ls", "--model", "beta", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [b["id"]]
    r = gpcrun(h, "receipt", "ls", "--since", "2025-02-01", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [b["id"]]
    r = gpcrun(h, "receipt", "ls", "--model", "gamma")
    assert r.returncode == 0 and r.stdout.strip() == "no receipts"
    r = gpcrun(h, "receipt", "show", a["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(json.dumps(a))
    r = gpcrun(h, "receipt", "show", a["id"], "--markdown")
    assert r.returncode == 0 and "<details><summary>full receipt (JSON)</summary>" in r.stdout
    assert r.stdout.startswith(f"**gpcrun receipt** `{a['id']}`") and "| decode | 100.00" in r.stdout
    r = gpcrun(h, "receipt", "show", a["id"])
    assert r.returncode == 0 and "<details>" not in r.stdout and "| model | `alpha.gguf`" in r.stdout
    r = gpcrun(h, "receipt", "show", "r20990101T000000Z-deadbeef")
    assert r.returncode == 6 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_index_rebuilt_when_deleted_or_corrupt(real_parts, tmp_path):
    h = tmp_path / "home"
    root = h / "receipts"
    store = R.ReceiptStore(root)
    ids = []
    for i in range(3):
        d = make_doc(real_parts, rid=f"r2025010{i + 1}T000000Z-0000000{i}", created=f"2025-01-0{i + 1}T00:00:00Z")
        store.save(d)
        ids.append(d["id"])
    store.close()
    # deleted index (and its WAL): the next store rebuilds it from the JSON files on its own
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / "index.sqlite") + suffix).unlink(missing_ok=True)
    assert [r["id"] for r in R.ReceiptStore(root).query()] == ids
    r = gpcrun(h, "receipt", "reindex")
    assert r.returncode == 0 and r.stdout.strip() == "indexed 3 receipt(s)"
    # garbage bytes
    (root / "index.sqlite").write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        Path(str(root / "index.sqlite") + suffix).unlink(missing_ok=True)
    r = gpcrun(h, "receipt", "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in json.loads(r.stdout)] == ids
    # a real SQLite header over damaged pages: quick_check reports it, the index is rebuilt
    store = R.ReceiptStore(root)
    store.query()
    store.db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray((root / "index.sqlite").read_bytes())
    assert data.startswith(b"SQLite format 3\x00") and len(data) > 1024
    data[100:] = os.urandom(len(data) - 100)
    (root / "index.sqlite").write_bytes(bytes(data))
    assert [r["id"] for r in R.ReceiptStore(root).query()] == ids
    assert integrity(root / "index.sqlite") == "ok"
    # a file the index never saw (writer killed between the rename and the insert) and one deleted by hand
    extra = make_doc(real_parts, rid="r20250201T000000Z-000000ff", created="2025-02-01T00:00:00Z")
    (root / f"{extra['id']}.json").write_text(json.dumps(extra))
    (root / f"{ids[0]}.json").unlink()
    assert [r["id"] for r in R.ReceiptStore(root).query()] == ids[1:] + [extra["id"]]
    # junk next to the receipts is not a receipt
    (root / "readme.json").write_text("{}")
    (root / "r20250301T000000Z-00000001.json").write_text("[not, a, receipt")
    (root / f".{extra['id']}.json.999999999.tmp").write_text("{partial")
    assert R.ReceiptStore(root).reindex() == 3
    assert not list(root.glob("*.tmp"))  # a dead writer's temp file is cleaned up


# ------------------------------------------------------------------------------------------------ crash safety

def integrity(path: Path) -> str:
    if not path.exists():
        return "ok"  # killed before the first save opened it
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def indexed_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'receipts'").fetchone():
            return set()
        return {r[0] for r in db.execute("SELECT id FROM receipts")}
    finally:
        db.close()


_WRITER = r"""
import json, sys
from pathlib import Path
from gpcrun.receipt import ReceiptStore, new_id
store = ReceiptStore(Path(sys.argv[1]))
base = json.loads(Path(sys.argv[2]).read_text())
pad = "x" * (5 << 20)
from gpcrun.receipt import ReceiptDoc, validate  # the package loads these on first use: before "ready", so that
validate(base), ReceiptDoc  # the kills land on writes, not on the first save's imports (jsonschema: ~0.2 s)
print("ready", flush=True)
while True:
    doc = dict(base, id=new_id(), measured=dict(base["measured"], pad=pad))
    store.save(doc)
"""


def test_sigkill_during_writes_never_corrupts(real_parts, tmp_path):
    root = tmp_path / "receipts"
    base = tmp_path / "base.json"
    base.write_text(json.dumps(make_doc(real_parts)))
    rnd = random.Random(1234)
    mid_write = 0
    saved_total = 0
    for i in range(20):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(base)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        files = sorted(root.glob("r*.json"))
        tmps = list(root.glob(".*.tmp"))
        mid_write += bool(tmps)
        for p in files:  # every receipt file is whole
            doc = json.loads(p.read_text())
            assert R.validate(doc) == [], p
            assert len(doc["measured"]["pad"]) == 5 << 20
        # the index as the killed writer left it: intact, and never ahead of the files
        assert integrity(root / "index.sqlite") == "ok"
        indexed = indexed_ids(root / "index.sqlite")
        on_disk = {p.stem for p in files}
        assert indexed <= on_disk
        assert len(on_disk - indexed) <= 1  # at most the one written but not yet indexed when the kill came
        store = R.ReceiptStore(root)
        assert {r["id"] for r in store.query()} == on_disk  # synced on open
        assert store.reindex() == len(files)
        assert not list(root.glob(".*.tmp"))  # the dead writer's partial file was removed, never indexed
        store.close()
        saved_total += len(files)
        for p in files[:-2]:  # keep the disk small
            p.unlink()
        store = R.ReceiptStore(root)
        assert {r["id"] for r in store.query()} == {p.stem for p in files[-2:]}  # rows of deleted files dropped
        store.close()
    print(f"20 kills: {mid_write} mid-write (a partial temp file left), {saved_total} whole receipts checked")
    assert mid_write >= 1, "no kill landed during a write: the test did not test anything"
    assert saved_total >= 20


# ------------------------------------------------------------------------------------------------ calibration

HW, OTHER_HW = "sha256:hw", "sha256:other"
MODEL, OTHER_MODEL = "a" * 64, "b" * 64


def row(eff, *, model=MODEL, hw=HW, arch="llama", outcome="clean_stop", fired=0, threads=1, ceiling=100.0):
    return {"model_fingerprint": model, "hardware_fingerprint": hw, "architecture": arch, "outcome": outcome,
            "decode_tok_s": eff * (ceiling or 100.0) if eff is not None else None, "ceiling_decode_tok_s": ceiling,
            "watchdog_fired": fired, "threads": threads}


CAL_CASES = [
    # (name, rows, threads, expected efficiency, expected band half-width, method substring)
    ("same model+hw preferred", [row(0.5), row(0.8, model=OTHER_MODEL)], 1, 0.5, 0.15, "same model and hardware"),
    ("fallback same hw+arch, wider", [row(0.8, model=OTHER_MODEL)], 1, 0.8, 0.30, "same hardware and architecture"),
    ("other arch does not count", [row(0.8, model=OTHER_MODEL, arch="qwen3moe")], 1, None, None, ""),
    ("other hardware does not count", [row(0.8, hw=OTHER_HW)], 1, None, None, ""),
    ("failed runs ignored", [row(0.5), row(0.1, outcome="load_failed"), row(0.1, outcome="bench_failed"),
                             row(0.1, outcome="watchdog_abort")], 1, 0.5, 0.15, "1 receipt"),
    ("watchdog-fired runs ignored", [row(0.5), row(0.1, fired=1)], 1, 0.5, 0.15, "1 receipt"),
    ("no measurement ignored", [row(None), row(0.5, ceiling=None)], 1, None, None, ""),
    ("band narrows: 1", [row(0.5)], 1, 0.5, 0.15, "1 receipt"),
    ("band narrows: 4", [row(0.5)] * 4, 1, 0.5, 0.075, "4 receipt"),
    ("band narrows: 16", [row(0.5)] * 16, 1, 0.5, 0.05, "16 receipt"),
    ("spread widens", [row(0.4), row(0.5), row(0.6)], 1, 0.5, 0.15 / 3 ** 0.5 + 2 * 0.2, "3 receipt"),
    ("same threads first", [row(0.3, threads=1), row(0.6, threads=2)], 2, 0.6, 0.15, "same model"),
    ("same threads over same model", [row(0.3, threads=1), row(0.7, model=OTHER_MODEL, threads=2)], 2, 0.7, 0.30,
     "architecture"),
    ("default threads match default only", [row(0.3, threads=1), row(0.6, threads=None)], None, 0.6, 0.15, "1 receipt"),
    ("other threads: fallback, wider", [row(0.3, threads=1)], 4, 0.3, 0.225, "other thread counts"),
    # hand-made or damaged receipts calibrate nothing (they gave forecasts of 13.7 billion and -196 tok/s)
    ("beyond physics ignored", [row(0.5), row(1.37e8)], 1, 0.5, 0.15, "1 receipt"),
    ("negative ignored", [row(0.5), row(-1.96)], 1, 0.5, 0.15, "1 receipt"),
    ("zero ceiling ignored", [row(0.5), row(0.5, ceiling=0.0)], 1, 0.5, 0.15, "1 receipt"),
    ("non-numbers ignored", [row(0.5), dict(row(0.5), decode_tok_s="fast"), dict(row(0.5), decode_tok_s=True),
                             dict(row(0.5), ceiling_decode_tok_s=float("nan"))], 1, 0.5, 0.15, "1 receipt"),
]


@pytest.mark.parametrize("name,rows,threads,eff,half,method", CAL_CASES, ids=[c[0] for c in CAL_CASES])
def test_calibrate(name, rows, threads, eff, half, method):
    c = R.calibrate(rows, MODEL, HW, "llama", threads)
    if eff is None:
        assert c is None
        return
    assert isinstance(c, Calibration)
    assert c.efficiency == pytest.approx(eff)
    assert c.band == pytest.approx((1 - half, 1 + half))
    assert method in c.method


def test_calibration_feeds_the_plan(real_parts, tmp_path, tiny_models):
    """Receipts in a store calibrate make_plan: the forecast becomes ceiling x the measured efficiency."""
    from gpcrun.planning import build_request, build_target
    from gpcrun.model import load_model
    from gpcrun.plan import make_plan

    store = R.ReceiptStore(tmp_path / "receipts")
    info = load_model(str(tiny_models["tiny-llama-q8_0"]))
    target = build_target((), (), False)
    assert R.load_calibration(info, target, 1, store) is None
    profile, model, plan = real_parts
    ceiling = plan["plan"]["forecast"]["decode_ceiling_tok_s"]
    for eff in (0.30, 0.32, 0.34):
        doc = make_doc(real_parts)
        doc["measured"] = measured(decode=eff * ceiling, ceiling=ceiling)
        doc["hardware_fingerprint"] = target.fingerprint
        store.save(doc)
    cal = R.load_calibration(info, target, 1, store)
    assert cal.efficiency == pytest.approx(0.32) and cal.samples == 3
    p = make_plan(info, target, build_request(None, None, 1, 1.0, None, ["-t", "1"]), cal)
    f = p.chosen.forecast
    assert f.calibrated and f.decode_tok_s == pytest.approx(0.32 * f.decode_ceiling_tok_s)
    assert f.decode_band_tok_s[0] < f.decode_tok_s < f.decode_band_tok_s[1]
