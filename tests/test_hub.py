"""Hub refs (gpcrun/hub/) end to end against a local fake hub (tests/hub_server.py) on 127.0.0.1.

Nothing here reaches the network: HF_ENDPOINT points at the fake, HF_HOME and GPCRUN_CACHE at tmp dirs. The CLI
runs as a subprocess (huggingface_hub reads HF_ENDPOINT/HF_HOME/HF_HUB_OFFLINE once, at import).
"""
from __future__ import annotations

import filecmp
import json
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFValueType as V

from gpcrun import hub as H
from gpcrun.errors import HubError
from gpcrun.model import load_model
from tests.gguf_factory import KV, llama_kvs, llama_tensors, write_gguf, write_tiny_llama
from tests.hub_server import FakeHub, env_for

_EXE = Path(sys.executable).with_name("gpcrun")
GPCRUN = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "gpcrun"]
MB = 1_000_000

LLAMA = "gpcrun-test/tiny-llama-GGUF"
MOE = "gpcrun-test/tiny-qwen3moe-GGUF"
SPLIT = "gpcrun-test/tiny-split-GGUF"
BIG = "gpcrun-test/big-vocab-GGUF"
GEMMA = "ggml-org/gemma-4-vocab-GGUF"
BAD = "gpcrun-test/broken-GGUF"


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_models, llama_source_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hub_models")
    out = {k: tiny_models[k] for k in ("tiny-llama-f16", "tiny-llama-q8_0", "tiny-llama-q4_k_m",
                                        "tiny-qwen3moe-q8_0", "tiny-qwen3moe-q4_k_m")}
    out["gemma4"] = llama_source_dir / "models" / "ggml-vocab-gemma-4.gguf"
    # a split model (split.no / split.count / split.tensors.count, as llama-gguf-split writes), and a single file
    shards = write_tiny_llama(d / "tiny-Q8_0.gguf", split_max_tensors=10)
    assert [p.name for p in shards] == ["tiny-Q8_0-00001-of-00002.gguf", "tiny-Q8_0-00002-of-00002.gguf"]
    out["split1"], out["split2"] = shards
    out["single"] = write_tiny_llama(d / "tiny-Q4_K_M.gguf")[0]
    # a 200k-token model with tensors: the skipped merges are followed by tensor infos, not by more KVs
    n = 200_000
    kvs = llama_kvs() + [KV("tokenizer.ggml.model", V.STRING, "gpt2"),
                         KV("tokenizer.ggml.tokens", V.ARRAY, [f"\u2581t{i}" for i in range(n)], V.STRING),
                         KV("tokenizer.ggml.token_type", V.ARRAY, [1] * n, V.INT32),
                         KV("tokenizer.ggml.merges", V.ARRAY, [f"\u2581t{i} x{i % 977}" for i in range(n)], V.STRING)]
    out["big"] = write_gguf(d / "big-vocab-Q8_0.gguf", kvs, llama_tensors(2, n_vocab=64))[0]
    out["broken"] = d / "broken-Q8_0.gguf"
    out["broken"].write_bytes(b"GGUF" + struct.pack("<I", 99) + bytes(600_000))  # unsupported version
    return out


@pytest.fixture(scope="module")
def hub(files) -> FakeHub:
    h = FakeHub()
    readme = files["broken"].with_name("README.md")
    readme.write_text("# tiny\n")
    h.add_repo(LLAMA, {"README.md": readme, "tiny-llama-f16.gguf": files["tiny-llama-f16"],
                       "tiny-llama-q8_0.gguf": files["tiny-llama-q8_0"],
                       "tiny-llama-q4_k_m.gguf": files["tiny-llama-q4_k_m"],
                       "mmproj-tiny-llama-f16.gguf": files["tiny-llama-f16"]}, tag="v1")
    h.add_repo(MOE, {"sub/tiny-qwen3moe-q8_0.gguf": files["tiny-qwen3moe-q8_0"],
                     "sub/tiny-qwen3moe-q4_k_m.gguf": files["tiny-qwen3moe-q4_k_m"]})
    h.add_repo(SPLIT, {"tiny-Q8_0-00001-of-00002.gguf": files["split1"],
                       "tiny-Q8_0-00002-of-00002.gguf": files["split2"], "tiny-Q4_K_M.gguf": files["single"]})
    h.add_repo(BIG, {"big-vocab-Q8_0.gguf": files["big"]})
    h.add_repo(GEMMA, {"ggml-vocab-gemma-4.gguf": files["gemma4"]})
    h.add_repo(BAD, {"broken-Q8_0.gguf": files["broken"]})
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def gpcrun_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpcrun_home")  # one hardware profile (CPU bandwidth measured once) for plan


@pytest.fixture
def env(hub, tmp_path, gpcrun_home) -> dict:
    e = env_for(hub, tmp_path)
    e["GPCRUN_HOME"] = str(gpcrun_home)
    hub.reset()
    return e


def gp(env: dict, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([*GPCRUN, *map(str, args)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == rc, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr
    return p


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and p.stdout == "", p.stderr
    assert lines[0].startswith("gpcrun: error: ")
    return lines[0]


def comparable(doc: dict) -> dict:
    """An inspect document without what differs between a local file and a hub ref: paths and the hub field."""
    doc = json.loads(json.dumps(doc))
    doc.pop("path")
    doc.pop("hub", None)
    for s in doc["shards"]:
        s.pop("path")
    return doc


def plan_comparable(doc: dict) -> dict:
    """A plan document without the model path and what the machine measures afresh on each run (free memory)."""
    doc = json.loads(json.dumps(doc))
    doc.pop("hub", None), doc.pop("argv"), doc.pop("target"), doc.pop("reasons")
    doc.get("prompt_cache", {}).pop("room_bytes", None)  # the host's free memory, measured afresh
    for m in doc["plan"]["memory"]:
        for k in ("capacity_bytes", "margin_bytes", "headroom_bytes"):
            m.pop(k)
    return doc


def local_json(path: Path) -> dict:
    return comparable(load_model(path).to_json())


# ---------------------------------------------------------------------------------------------- refs, selection

def test_is_hub_ref_and_parse(tmp_path, monkeypatch):
    assert H.is_hub_ref("hf://a/b/c.gguf") and H.is_hub_ref("owner/Repo-GGUF") and H.is_hub_ref("o/r:Q4_K_M")
    for local in ("./a", "../b", "/x/y", "a/b.gguf", "a/b/c", "model.gguf", "a/b:c:d"):
        assert not H.is_hub_ref(local), local
    existing = tmp_path / "o" / "r"
    existing.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not H.is_hub_ref("o/r")  # an existing local path is never a ref
    r = H.parse_ref("hf://o/r@refs/pr/3/sub/m-Q8_0-00002-of-00003.gguf")
    assert (r.repo, r.revision, r.file, r.quant) == ("o/r", "refs/pr/3", "sub/m-Q8_0-00002-of-00003.gguf", None)
    r = H.parse_ref("hf://o/r@v1.0:q8_0")
    assert (r.repo, r.revision, r.file, r.quant) == ("o/r", "v1.0", None, "q8_0")
    r = H.parse_ref("o/r:IQ4_XS")
    assert (r.repo, r.revision, r.file, r.quant) == ("o/r", None, None, "IQ4_XS")
    for bad in ("hf://datasets/o/r/x.gguf", "hf://o/r/README.md", "hf://o"):
        with pytest.raises(HubError):
            H.parse_ref(bad)


LISTING = ["README.md", "mmproj-M-F16.gguf", "M-F16.gguf", "M-Q8_0.gguf", "M-Q4_K_M.gguf", "M-Q4_K_S.gguf",
           "big/M-Q4_K_M-00001-of-00002.gguf", "big/M-Q4_K_M-00002-of-00002.gguf",
           "big/M-Q2_K-00001-of-00002.gguf", "big/M-Q2_K-00002-of-00002.gguf", "M-IQ4_XS.gguf"]


@pytest.mark.parametrize("ref, want", [
    ("o/r", ["M-Q4_K_M.gguf"]),  # llama.cpp's default: Q4_K_M, preferring a single file over a split
    ("o/r:q4_k_m", ["M-Q4_K_M.gguf"]),  # case-insensitive
    ("o/r:Q4_K", ["M-Q4_K_M.gguf"]),  # no Q4_K[.-] file: the first whose name contains the tag
    ("o/r:Q2_K", ["big/M-Q2_K-00001-of-00002.gguf", "big/M-Q2_K-00002-of-00002.gguf"]),  # a split: all shards
    ("o/r:IQ4_XS", ["M-IQ4_XS.gguf"]),
    ("o/r:F16", ["M-F16.gguf"]),  # never the mmproj file
    ("hf://o/r/big/M-Q4_K_M-00002-of-00002.gguf", ["big/M-Q4_K_M-00001-of-00002.gguf",
                                                   "big/M-Q4_K_M-00002-of-00002.gguf"]),
])
def test_select_files(ref, want):
    assert H.select_files(H.parse_ref(ref), LISTING) == want


def test_select_files_fallbacks_and_errors():
    assert H.select_files(H.parse_ref("o/r"), ["a-Q8_0.gguf", "a-F16.gguf"]) == ["a-Q8_0.gguf"]
    assert H.select_files(H.parse_ref("o/r"), ["x.txt", "mmproj.gguf", "z-BF16.gguf", "a-F16.gguf"]) == ["z-BF16.gguf"]
    with pytest.raises(HubError, match=r"no \.gguf file matches quant 'Q5_K_M'; available: F16, Q8_0, Q4_K_M, "
                                       r"Q4_K_S, Q2_K, IQ4_XS$"):
        H.select_files(H.parse_ref("o/r:Q5_K_M"), LISTING)
    with pytest.raises(HubError, match="missing shard 2 of 2"):
        H.select_files(H.parse_ref("o/r:Q2_K"), ["M-Q2_K-00001-of-00002.gguf"])
    with pytest.raises(HubError, match="no file 'nope.gguf'"):
        H.select_files(H.parse_ref("hf://o/r/nope.gguf"), LISTING)
    with pytest.raises(HubError, match="refusing the file name"):
        H.select_files(H.parse_ref("hf://o/r/../../x.gguf"), ["../../x.gguf"])
    with pytest.raises(HubError, match="no .gguf model files"):
        H.select_files(H.parse_ref("o/r"), ["README.md", "mmproj-x.gguf"])
    assert H.quant_tag("dir/Model.v2-UD-Q4_K_XL-00003-of-00009.gguf") == "Q4_K_XL"


# ---------------------------------------------------------------------------------------------- inspect, plan

@pytest.mark.parametrize("ref, key", [
    (f"hf://{LLAMA}/tiny-llama-q8_0.gguf", "tiny-llama-q8_0"),
    (f"{MOE}:Q4_K_M", "tiny-qwen3moe-q4_k_m"),
    (f"hf://{GEMMA}/ggml-vocab-gemma-4.gguf", "gemma4"),
    (f"hf://{BIG}/big-vocab-Q8_0.gguf", "big"),
])
def test_inspect_ref_matches_local(hub, env, files, ref, key):
    doc = json.loads(gp(env, "inspect", ref, "--json").stdout)
    assert comparable(doc) == local_json(files[key])
    h = doc["hub"]
    size = files[key].stat().st_size
    assert h["cached"] is False and h["commit"] == hub.repos[h["repo"]].refs["main"]
    assert h["bytes_read"] == hub.bytes_served()  # what the server sent is what we count
    assert h["bytes_read"] < size and doc["shards"][0]["path"].startswith(env["GPCRUN_CACHE"])
    if key == "gemma4":  # 262k tokens + 515k merges: a 15.8 MB header, all of it vocabulary
        assert doc["shards"][0]["header_bytes"] == size > 15 * MB
        assert h["bytes_read"] < 8 * MB and h["synthetic"] is True
        print(f"\ngemma-4 vocab: {h['bytes_read']:,} of {size:,} bytes in {h['requests']} requests")
    elif key == "big":
        assert h["bytes_read"] < 3 * MB and doc["shards"][0]["header_bytes"] > 8 * MB
    else:  # the header fits in the first range
        assert h["bytes_read"] <= H.INITIAL_READ and h["requests"] == 1 and h["synthetic"] is False
    # the weights were never requested past the header
    assert all(r.range for r in hub.file_requests() if r.method == "GET")


def test_inspect_text_and_split_model(hub, env, files):
    out = gp(env, "inspect", f"{SPLIT}:Q8_0", "--no-tensors").stdout.splitlines()
    assert out[0].startswith("tiny-Q8_0-00001-of-00002.gguf: ") and "in 2 shard(s)" in out[0]
    assert out[1].startswith(f"hub: {SPLIT}@") and "tiny-Q8_0-00001-of-00002.gguf (+1 more shard(s))" in out[1]
    assert "range request(s)" in out[1]
    served = {p for (r, p), n in hub.served.items() if n}
    assert served == {"tiny-Q8_0-00001-of-00002.gguf", "tiny-Q8_0-00002-of-00002.gguf"}  # both shards' headers
    doc = json.loads(gp(env, "inspect", f"{SPLIT}:Q8_0", "--json").stdout)
    assert doc["hub"]["files"] == ["tiny-Q8_0-00001-of-00002.gguf", "tiny-Q8_0-00002-of-00002.gguf"]
    assert doc["hub"]["cached"] is True and doc["hub"]["bytes_read"] == 0
    assert comparable(doc) == local_json(files["split1"])
    # OWNER/REPO alone: Q4_K_M, the single file
    doc = json.loads(gp(env, "inspect", SPLIT, "--json").stdout)
    assert doc["hub"]["files"] == ["tiny-Q4_K_M.gguf"] and comparable(doc) == local_json(files["single"])


def test_plan_ref_matches_local(hub, env, files):
    ref = f"{LLAMA}:Q8_0"
    local = json.loads(gp(env, "plan", files["tiny-llama-q8_0"], "--json", "--ctx", "2048").stdout)
    doc = json.loads(gp(env, "plan", ref, "--json", "--ctx", "2048").stdout)
    h = doc.pop("hub")
    assert h["files"] == ["tiny-llama-q8_0.gguf"] and h["revision"] is None
    assert doc["argv"][:4] == ["--hf-repo", LLAMA, "--hf-file", "tiny-llama-q8_0.gguf"]
    assert local["argv"][:2] == ["-m", str(files["tiny-llama-q8_0"])]
    assert doc["argv"][4:] == local["argv"][2:]
    assert plan_comparable(doc) == plan_comparable(local) and doc["verdict"] == "ship"
    text = gp(env, "plan", ref, "--ctx", "2048").stdout.splitlines()
    assert text[-1].startswith(f"hub: {LLAMA}@") and "header from the local cache, nothing downloaded" in text[-1]
    assert shlex.split(text[-2])[:5] == ["llama-server", "--hf-repo", LLAMA, "--hf-file", "tiny-llama-q8_0.gguf"]


def test_header_cache_revision_check_and_new_commit(hub, env, files, tmp_path):
    ref = f"hf://{GEMMA}/ggml-vocab-gemma-4.gguf"
    first = json.loads(gp(env, "inspect", ref, "--json").stdout)["hub"]
    hub.reset()
    second = json.loads(gp(env, "inspect", ref, "--json").stdout)["hub"]
    assert second["cached"] is True and second["bytes_read"] == 0 and second["commit"] == first["commit"]
    assert hub.file_requests() == [] and [r.path for r in hub.requests] == [f"/api/models/{GEMMA}"]
    cached = Path(env["GPCRUN_CACHE"]) / "hub-headers" / GEMMA / first["commit"] / "ggml-vocab-gemma-4.gguf"
    assert cached.stat().st_size == files["gemma4"].stat().st_size  # the header, exactly header_bytes long
    assert json.loads(cached.with_name(cached.name + ".json").read_text())["bytes_read"] == first["bytes_read"]
    # a commit hash as the revision: no request at all
    hub.reset()
    gp(env, "inspect", f"hf://{GEMMA}@{first['commit']}/ggml-vocab-gemma-4.gguf", "--json")
    assert hub.requests == []
    # a new commit on main: fetched again, under the new commit
    commit2 = hub.add_repo(GEMMA, {"ggml-vocab-gemma-4.gguf": files["gemma4"], "README.md": files["broken"]})
    hub.reset()
    third = json.loads(gp(env, "inspect", ref, "--json").stdout)["hub"]
    assert third["commit"] == commit2 != first["commit"] and third["cached"] is False and third["bytes_read"] > 0
    # the old revision is still served (pinned commits never change)
    hub.reset()
    gp(env, "inspect", f"hf://{GEMMA}@{first['commit']}/ggml-vocab-gemma-4.gguf", "--json")
    assert hub.requests == []


def test_offline(hub, env, files, tmp_path):
    ref = f"{LLAMA}:Q4_K_M"
    warm = json.loads(gp(env, "inspect", ref, "--json").stdout)
    hub.reset()
    off = dict(env, HF_HUB_OFFLINE="1")
    doc = json.loads(gp(off, "inspect", ref, "--json").stdout)
    assert comparable(doc) == comparable(warm) and doc["hub"]["cached"] is True
    gp(off, "plan", ref, "--ctx", "1024")
    assert hub.requests == []  # not even a revision check
    cold = dict(off, GPCRUN_CACHE=str(tmp_path / "cold"))
    line = one_error_line(gp(cold, "inspect", ref, rc=9))
    assert "HF_HUB_OFFLINE=1" in line and ref in line
    assert hub.requests == []


def test_errors_are_one_line_exit_9(hub, env):
    line = one_error_line(gp(env, "inspect", "nobody/nothing-GGUF", rc=9))
    assert "repository not found" in line and hub.endpoint in line
    one_error_line(gp(env, "plan", "hf://nobody/nothing-GGUF/x.gguf", rc=9))
    line = one_error_line(gp(env, "inspect", f"{LLAMA}:Q5_K_M", rc=9))
    assert line.endswith("no .gguf file matches quant 'Q5_K_M'; available: F16, Q4_K_M, Q8_0")
    line = one_error_line(gp(env, "inspect", f"hf://{LLAMA}/nope.gguf", rc=9))
    assert "no file 'nope.gguf'" in line and "tiny-llama-q8_0.gguf" in line
    line = one_error_line(gp(env, "inspect", f"hf://{LLAMA}@no-such-branch/tiny-llama-q8_0.gguf", rc=9))
    assert "revision not found" in line
    # an unreachable endpoint: nothing cached, an error; a warm cache, a warning
    dead = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
    cold = dict(dead, GPCRUN_CACHE=env["GPCRUN_CACHE"] + "-cold")
    assert "cannot reach http://127.0.0.1:9" in one_error_line(gp(cold, "inspect", f"{LLAMA}:Q8_0", rc=9))
    assert "is not cached" in one_error_line(gp(dead, "inspect", f"{LLAMA}:Q8_0", rc=9))  # listing yes, header no
    gp(env, "inspect", f"{LLAMA}:Q8_0")
    p = gp(dead, "inspect", f"{LLAMA}:Q8_0", "--json")
    assert json.loads(p.stdout)["hub"]["cached"] is True
    assert p.stderr.startswith("gpcrun: warning: cannot reach http://127.0.0.1:9")
    # a broken file on the hub is a GGUF error, like a local one (exit 4), after reading only its first range
    hub.reset()
    line = one_error_line(gp(env, "inspect", f"{BAD}:Q8_0", rc=4))
    assert "unsupported GGUF version 99" in line and "broken-Q8_0.gguf" in line
    assert hub.bytes_served() <= H.INITIAL_READ


def test_download_model(hub, env, files, tmp_path):
    code = "import sys; from gpcrun.hub import download_model; print(download_model(sys.argv[1]))"
    env = dict(env, HF_TOKEN="hf_faketoken")  # sent to the hub API, never to the CDN
    p = subprocess.run([sys.executable, "-c", code, f"{SPLIT}:Q8_0"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    first = Path(p.stdout.strip().splitlines()[-1])
    assert first.name == "tiny-Q8_0-00001-of-00002.gguf" and str(first).startswith(env["HF_HOME"])
    assert filecmp.cmp(first, files["split1"], shallow=False)
    assert filecmp.cmp(first.with_name("tiny-Q8_0-00002-of-00002.gguf"), files["split2"], shallow=False)
    assert len(load_model(first).shards) == 2
    assert any(r.auth for r in hub.requests if r.path.startswith("/api/"))
    assert not any(r.auth for r in hub.requests if r.path.startswith("/cdn/"))
    # downloaded: a cold header cache reads the header from the HF cache, nothing more from the hub
    hub.reset()
    doc = json.loads(gp(dict(env, GPCRUN_CACHE=str(tmp_path / "cold")), "inspect", f"{SPLIT}:Q8_0", "--json").stdout)
    assert doc["hub"]["sources"] == ["hf-cache", "hf-cache"] and doc["hub"]["bytes_read"] == 0
    assert doc["path"] == str(first) and hub.file_requests() == []
    # offline: from the HF cache
    p = subprocess.run([sys.executable, "-c", code, f"{SPLIT}:Q8_0"], env=dict(env, HF_HUB_OFFLINE="1"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == str(first), p.stderr


def test_server_without_range_support(hub, files):
    """A server that answers 200 with the whole file: read a prefix off the stream, close, never the whole file."""
    import requests

    hub.ignore_ranges = True
    try:
        for key, repo, name in (("tiny-llama-q8_0", LLAMA, "tiny-llama-q8_0.gguf"), ("big", BIG, "big-vocab-Q8_0.gguf")):
            rf = H._RemoteFile(f"{hub.endpoint}/{repo}/resolve/main/{name}", name, requests.Session(), {})
            header, part, synthetic = H._fetch_header(rf, name, 0)
            local = load_model(files[key])
            assert part[2].__dict__ == dict(local.shards[0].__dict__, path=name) and not synthetic
            assert header == files[key].read_bytes()[:local.shards[0].header_bytes]
            assert rf.bytes_read < 4 * local.shards[0].header_bytes  # geometric: each GET stops at its prefix
    finally:
        hub.ignore_ranges = False


def test_ranged_reads_of_every_llama_cpp_vocab(hub, llama_source_dir):
    """The sparse walk, over HTTP, on every ggml-vocab-*.gguf: the same header as a local read, and few bytes."""
    import requests

    vocabs = sorted((llama_source_dir / "models").glob("ggml-vocab-*.gguf"))
    assert len(vocabs) >= 10
    session = requests.Session()
    worst = 0.0
    for i, v in enumerate(vocabs):
        repo = f"vocab/{v.stem}"
        if repo not in hub.repos:
            hub.add_repo(repo, {v.name: v})
        rf = H._RemoteFile(f"{hub.endpoint}/{repo}/resolve/main/{v.name}", v.name, session, {})
        header, part, _ = H._fetch_header(rf, v.name, 0)
        local = load_model(v)
        assert part[2].__dict__ == dict(local.shards[0].__dict__, path=v.name), v
        assert part[0] == dict(local.metadata), v
        assert len(header) == local.shards[0].header_bytes
        worst = max(worst, rf.bytes_read / max(v.stat().st_size, 1) if v.stat().st_size > 4 * MB else 0)
        assert rf.bytes_read <= max(3 * MB, 0.5 * v.stat().st_size), (v.name, rf.bytes_read)
    assert worst < 0.35


def test_batch_plans_refs_from_headers_and_downloads_only_what_ships(hub, env, files, tmp_path, llama_server_bin):
    """A batch job on a hub ref is planned from ranged header reads; only a job that ships downloads weights."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'''
[batch]
repetitions = 1
prompt_tokens = 16
gen_tokens = 4
[[models]]
ref = "{LLAMA}:Q8_0"
server_args = ["-t", "1", "-tb", "1"]
[[models]]
ref = "{MOE}:Q8_0"
server_args = ["-t", "1", "-tb", "1"]
[matrix]
ctx = [512, 100000000]
''')
    e = dict(env, GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    out = tmp_path / "out"
    gp(e, "batch", jobs, "--dry-run")
    assert hub.bytes_served(path="tiny-llama-q8_0.gguf") < files["tiny-llama-q8_0"].stat().st_size
    hub.reset()
    rows = json.loads(gp(e, "batch", jobs, "--out", out, "--json", rc=16).stdout)  # 2 refused: exit 16
    assert [(r["verdict"], r["outcome"]) for r in rows] == [("ship", "clean_stop"), ("refuse", "refused")] * 2
    # the shipped 512-token jobs downloaded their file once; nothing beyond headers was fetched for refusals
    assert hub.bytes_served(LLAMA, "tiny-llama-q8_0.gguf") >= files["tiny-llama-q8_0"].stat().st_size
    receipts = [json.loads(p.read_text()) for p in sorted((out / "receipts").glob("r*.json"))]
    assert {r["model"]["file_name"] for r in receipts} == {"tiny-llama-q8_0.gguf", "tiny-qwen3moe-q8_0.gguf"}
    assert all(r["model"]["hub"]["repo"] in (LLAMA, MOE) for r in receipts)
