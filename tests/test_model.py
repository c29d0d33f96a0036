"""gpcrun.model: agreement with gguf.GGUFReader and a plain struct walker, facts, KV cost, bad input, CLI."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFReader, GGUFValueType as V

from tests.gguf_factory import (KV, NASTY_DIR, Raw, all_value_kvs, f32_tensor_bytes, llama_kvs, llama_tensors,
                                nasty_cases, small_valid_bytes, write_gguf, write_tiny_llama)
from gpcrun import model as M
from gpcrun.cli.main import main as cli_main
from gpcrun.errors import GGUFError, MissingShardError, ModelFileError

_EXE = Path(sys.executable).with_name("gpcrun")
GPCRUN = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "gpcrun"]


def _vocab_dir() -> Path | None:
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "build_llama.py"),
                              "--source-only"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    d = Path(out.stdout.strip().splitlines()[-1]) / "models" if out.returncode == 0 and out.stdout.strip() else None
    return d if d is not None and d.is_dir() else None


VOCAB_DIR = _vocab_dir()
VOCAB_FILES = sorted(VOCAB_DIR.glob("ggml-vocab-*.gguf")) if VOCAB_DIR else []
# GGUFReader costs ~1.3 s/MB here (27 s on gemma-4): only files under 2 MB go through it (~14 s in all); every
# file, the two huge ones included, is checked against the stdlib walker below.
READER_MAX_BYTES = 2_000_000
needs_vocab = pytest.mark.skipif(not VOCAB_FILES, reason="llama.cpp source tree (scripts/build_llama.py) not found")


# ------------------------------------------------------------------------------------------- references

def reader_summary(path) -> tuple[dict, list, int]:
    """GGUFReader's view: key -> (type, value | None, elem_type, count, kept values); tensors; data offset."""
    r = GGUFReader(path)
    kvs = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        vt = V(int(f.parts[2][0]))
        if vt == V.ARRAY:
            et, count = V(int(f.parts[3][0])), int(f.parts[4][0])
            if count > M.MAX_KEPT_ARRAY:
                vals = None
            elif et == V.STRING:
                vals = tuple(bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data)
            else:
                vals = tuple(f.parts[i].tolist()[0] for i in f.data)
            kvs[name] = (vt.name, None, et.name, count, vals)
        elif vt == V.STRING:
            kvs[name] = (vt.name, bytes(f.parts[-1]).decode("utf-8", "replace"), None, None, None)
        else:
            kvs[name] = (vt.name, f.parts[-1].tolist()[0], None, None, None)
    tensors = [(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), tuple(t.data.shape), int(t.n_elements),
                int(t.n_bytes), int(t.data_offset)) for t in r.tensors]
    return kvs, tensors, int(r.data_offset)


def assert_matches_reader(path, info: M.ModelInfo, shard: int = 0) -> None:
    kvs, tensors, data_offset = reader_summary(path)
    assert info.shards[shard].kv_count == len(kvs)
    for key, (vt, val, et, count, vals) in (kvs if shard == 0 else {}).items():  # ModelInfo keeps shard 0's KVs
        f = info.metadata[key]
        assert f.type == vt, key
        if vt == "ARRAY":
            assert (f.elem_type, f.count) == (et, count), key
            assert f.value == vals, key
        else:
            assert f.value == val, key
            assert f.elem_type is None and f.count is None
    assert shard > 0 or list(info.metadata) == list(kvs)
    mine = [t for t in info.tensors if t.shard == shard]
    assert len(mine) == len(tensors)
    for t, (name, ttype, shape, np_shape, n_el, n_bytes, abs_off) in zip(mine, tensors):
        assert (t.name, t.ggml_type, t.shape, t.n_elements, t.n_bytes) == (name, ttype, shape, n_el, n_bytes)
        assert t.type_name == M.GGML_TYPE_NAMES[ttype]
        if ttype in (0, 1, 24, 25, 26, 27, 28):  # GGUFReader keeps element shapes only for these types
            assert t.shape == tuple(reversed(np_shape)) or (t.shape == () and np_shape == ())
        assert (t.file_offset, t.offset) == (abs_off, abs_off - data_offset)
    s = info.shards[shard]
    assert s.header_bytes == min(data_offset, s.file_size_bytes)  # no tensors: the file may end before padding


def walk(path) -> dict:
    """Independent reference: a plain struct walk over every value and string (no numpy)."""
    buf = Path(path).read_bytes()
    bo = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"
    pos = 24
    n_t, n_kv = struct.unpack_from(bo + "QQ", buf, 8)
    fmt = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def string(p):
        n = struct.unpack_from(bo + "Q", buf, p)[0]
        return buf[p + 8:p + 8 + n], p + 8 + n

    kvs = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        vt = struct.unpack_from(bo + "I", buf, pos)[0]
        pos += 4
        if vt == 9:
            et, count = struct.unpack_from(bo + "IQ", buf, pos)
            pos += 12
            if et == 8:
                for _ in range(count):
                    _, pos = string(pos)
            else:
                pos += count * struct.calcsize(fmt[et])
            kvs[key.decode("utf-8", "replace")] = ("ARRAY", V(et).name, count, pos)
        elif vt == 8:
            _, pos = string(pos)
            kvs[key.decode("utf-8", "replace")] = ("STRING", None, None, pos)
        else:
            pos += struct.calcsize(fmt[vt])
            kvs[key.decode("utf-8", "replace")] = (V(vt).name, None, None, pos)
    tensors = []
    for _ in range(n_t):
        name, pos = string(pos)
        nd = struct.unpack_from(bo + "I", buf, pos)[0]
        dims = struct.unpack_from(f"{bo}{nd}Q", buf, pos + 4)
        tt, off = struct.unpack_from(bo + "IQ", buf, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        tensors.append((name.decode(), tuple(dims), tt, off))
    return {"kvs": kvs, "tensors": tensors, "header_end": pos}


def assert_matches_walk(path, info: M.ModelInfo) -> None:
    w = walk(path)
    assert list(info.metadata) == list(w["kvs"])
    for key, (vt, et, count, _end) in w["kvs"].items():
        f = info.metadata[key]
        assert (f.type, f.elem_type, f.count) == (vt, et, count), key
    assert [(t.name, t.shape, t.ggml_type, t.offset) for t in info.tensors] == w["tensors"]
    s = info.shards[0]
    assert s.header_bytes == (w["header_end"] + (-w["header_end"] % s.alignment) if w["tensors"]
                              else min(w["header_end"] + (-w["header_end"] % s.alignment), s.file_size_bytes))


# ------------------------------------------------------------------------------------------- generated files

@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    return {
        "all_values": write_gguf(d / "all_values.gguf", all_value_kvs(), llama_tensors())[0],
        "big_endian": write_gguf(d / "big_endian.gguf", all_value_kvs(n_strings=2500), llama_tensors(),
                                 big_endian=True)[0],
        "align_64": write_gguf(d / "align_64.gguf", llama_kvs(), llama_tensors(), alignment=64)[0],
        "no_tensors": write_gguf(d / "no_tensors.gguf", all_value_kvs(n_strings=4000, seed=3))[0],
        "tiny_llama": write_tiny_llama(d / "tiny_llama.gguf")[0],
    }


@pytest.mark.parametrize("name", ["all_values", "big_endian", "align_64", "no_tensors", "tiny_llama"])
def test_generated_matches_reader_and_walker(gen, name):
    info = M.load_model(gen[name])
    assert_matches_reader(gen[name], info)
    assert_matches_walk(gen[name], info)
    s = info.shards[0]
    assert s.reconciled and s.header_bytes + s.tensor_bytes + s.padding_bytes == s.file_size_bytes
    assert s.byte_order == ("big" if name == "big_endian" else "little")
    assert s.alignment == (64 if name == "align_64" else 32)
    json.dumps(info.to_json())


def test_all_value_types_exact(gen):
    md = M.load_model(gen["all_values"]).metadata
    assert md["t.u64"].value == 2**64 - 1 and md["t.i64"].value == -(2**63) and md["t.f64"].value == 1e300
    assert md["t.f32"].value == float(np.float32(0.1)) and md["t.bool"].value is True
    assert md["t.str"].value == "héllo\x00world" and md["t.empty_str"].value == ""
    assert md["t.arr_str"].value == ("a", "", "b\x00c") and md["t.arr_bool"].value == (True, False)
    assert md["t.arr_1024"].value == tuple(range(1024)) and md["t.arr_1025"].value is None
    assert md["t.arr_1025"].count == 1025 and md["t.str_2047"].value is None
    assert md["tokenizer.ggml.tokens"].count == 3000 and md["tokenizer.ggml.tokens"].elem_type == "STRING"
    assert md["t.after"].value == 7  # offsets after the skipped arrays are exact


def test_tensor_table(gen):
    info = M.load_model(gen["tiny_llama"])
    by = {t.name: t for t in info.tensors}
    q = by["blk.1.attn_q.weight"]
    assert (q.type_name, q.shape, q.n_bytes, q.layer, q.role) == ("Q4_K", (256, 256), 256 * 144, 1, "attention")
    assert by["token_embd.weight"].n_bytes == 32 * 256 // 32 * 34 and by["token_embd.weight"].layer is None
    assert by["blk.0.ffn_gate.weight"].shape == (5, 3, 2) and by["blk.0.ffn_gate.weight"].type_name == "F64"
    assert by["blk.0.attn_v.weight"].type_name == "BF16" and by["rope_freqs.weight"].type_name == "I32"
    assert info.facts["vocab_size"] == 3000 and info.facts["block_count"] == 2
    assert all(t.offset % 32 == 0 for t in info.tensors)
    assert info.bytes_by_role()["token_embedding"] == by["token_embd.weight"].n_bytes
    assert sum(info.bytes_by_layer().values()) == info.tensor_bytes == sum(info.quant_mix().values())


# ------------------------------------------------------------------------------------------- llama.cpp vocab files

@needs_vocab
@pytest.mark.parametrize("path", VOCAB_FILES, ids=lambda p: p.stem.removeprefix("ggml-vocab-"))
def test_vocab_matches_walker(path):
    info = M.load_model(path)
    assert_matches_walk(path, info)
    assert info.shards[0].reconciled
    assert info.facts["vocab_size"] == info.metadata["tokenizer.ggml.tokens"].count


@pytest.mark.slow
@needs_vocab
@pytest.mark.parametrize("path", [p for p in VOCAB_FILES if p.stat().st_size < READER_MAX_BYTES],
                         ids=lambda p: p.stem.removeprefix("ggml-vocab-"))
def test_vocab_matches_reader(path):
    assert_matches_reader(path, M.load_model(path))


@needs_vocab
def test_vocab_fast_skip_equals_plain_loop():
    # every long string array in every vocab file: numpy skipper == plain loop, from the array's first string
    u64 = struct.Struct("<Q").unpack_from
    n = 0
    for path in VOCAB_FILES:
        buf = path.read_bytes()
        for key, (vt, et, count, end) in walk(path)["kvs"].items():
            if et == "STRING" and count >= M._FAST_SKIP_MIN:
                start = _array_start(buf, key)
                assert M._skip_strings_fast(buf, start, count, len(buf), "x", u64) == end
                assert M._skip_strings_py(buf, start, count, len(buf), "x", u64) == end
                n += 1
    assert n >= 19


def _array_start(buf: bytes, key: str) -> int:
    k = key.encode()
    i = buf.index(struct.pack("<Q", len(k)) + k)
    return i + 8 + len(k) + 4 + 12


# ------------------------------------------------------------------------------------------- split models

def test_split_model_summed(tmp_path):
    whole = M.load_model(write_tiny_llama(tmp_path / "whole.gguf")[0])
    paths = write_tiny_llama(tmp_path / "m.gguf", split_max_tensors=5)
    assert len(paths) == 4 and paths[0].name == "m-00001-of-00004.gguf"
    for p in (paths[0], paths[2]):  # any shard names the whole model
        info = M.load_model(p)
        assert info.path == str(paths[0]) and len(info.shards) == 4
        assert [t.name for t in info.tensors] == [t.name for t in whole.tensors]
        assert info.tensor_bytes == whole.tensor_bytes
        assert [t.shard for t in info.tensors] == [i // 5 for i in range(len(whole.tensors))]
        assert all(s.reconciled for s in info.shards)
        assert info.file_size_bytes == sum(p.stat().st_size for p in paths)
        assert info.facts["block_count"] == 2 and info.metadata["split.count"].value == 4
    for i, p in enumerate(paths):
        assert_matches_reader(p, M.load_model(paths[0]), shard=i)


def test_split_missing_shard(tmp_path):
    paths = write_tiny_llama(tmp_path / "m.gguf", split_max_tensors=8, vocab=0)
    paths[1].unlink()
    with pytest.raises(MissingShardError) as e:
        M.load_model(paths[0])
    assert e.value.path == str(paths[1]) and "missing shard 2 of" in str(e.value)
    r = CliRunner().invoke(cli_main, ["inspect", str(paths[0])])
    assert r.exit_code == 4 and r.stderr.count("\n") == 1 and str(paths[1]) in r.stderr


def test_split_count_mismatch(tmp_path):
    paths = write_tiny_llama(tmp_path / "m.gguf", split_max_tensors=8, vocab=0)
    assert len(paths) == 3
    fake = [p.with_name(p.name.replace("-of-00003", "-of-00002")) for p in paths[:2]]
    for p, q in zip(paths, fake):
        q.write_bytes(p.read_bytes())
    with pytest.raises(GGUFError, match="split.count is 3"):
        M.load_model(fake[0])


# ------------------------------------------------------------------------------------------- roles and KV cost

@pytest.mark.parametrize("name,role", [
    ("token_embd.weight", "token_embedding"), ("token_embd_norm.weight", "norms_other"),
    ("output.weight", "output_head"), ("output_norm.weight", "norms_other"), ("rope_freqs.weight", "norms_other"),
    ("blk.0.attn_q.weight", "attention"), ("blk.3.attn_kv_a_mqa.weight", "attention"),
    ("blk.12.attn_output.weight", "attention"), ("blk.0.attn_norm.weight", "norms_other"),
    ("blk.0.attn_q_norm.weight", "norms_other"), ("blk.0.ffn_norm.weight", "norms_other"),
    ("blk.0.ffn_up.weight", "dense_ffn"), ("blk.0.ffn_down.weight", "dense_ffn"),
    ("blk.0.ffn_gate.weight", "dense_ffn"),
    ("blk.5.ffn_gate_exps.weight", "routed_experts"), ("blk.5.ffn_down_exps.weight", "routed_experts"),
    ("blk.5.ffn_gate_inp.weight", "routed_experts"), ("blk.5.exp_probs_b.bias", "routed_experts"),
    ("blk.5.ffn_up_shexp.weight", "shared_experts"), ("blk.5.ffn_gate_inp_shexp.weight", "shared_experts"),
    ("blk.0.ssm_in.weight", "recurrent"), ("blk.0.ssm_conv1d.weight", "recurrent"),
    ("blk.0.time_mix_key.weight", "recurrent"), ("blk.0.channel_mix_value.weight", "recurrent"),
    ("blk.0.shortconv.conv.weight", "recurrent"), ("blk.0.indexer.k_norm.weight", "attention"),
    ("blk.0.layer_output_scale.weight", "norms_other"), ("blk.x.attn_q.weight", "norms_other"),
])
def test_tensor_role(name, role):
    assert M.tensor_role(name) == role


def _kinds(layers):
    return [(l.kind, l.k_bytes_per_token, l.v_bytes_per_token, l.window, l.state_bytes_per_seq) for l in layers]


BASE = {"block_count": 4, "embedding_length": 4096, "head_count": 32, "head_count_kv": 8, "key_length": 128,
        "value_length": 128, "recurrent": False}


@pytest.mark.parametrize("facts,tk,tv,expect", [
    # GQA: 8 KV heads x 128 x f16
    (BASE, "f16", "f16", [("full", 2048, 2048, None, 0)] * 4),
    # q8_0: 1024 elements = 32 blocks x 34 bytes; K and V types may differ
    (BASE, "q8_0", "f32", [("full", 1088, 4096, None, 0)] * 4),
    # per-layer head_count_kv; 0 heads and no recurrent state: no cache
    ({**BASE, "head_count_kv": (8, 0, 4, 4)}, "f16", "f16",
     [("full", 2048, 2048, None, 0), ("none", 0, 0, None, 0), ("full", 1024, 1024, None, 0),
      ("full", 1024, 1024, None, 0)]),
    # SWA, integer pattern 3: layers 0,1 swa, 2 full, 3 swa (llama.cpp: il % n < n - 1); swa head dims differ
    ({**BASE, "sliding_window": 512, "sliding_window_pattern": 3, "key_length_swa": 64, "value_length_swa": 32},
     "f16", "f16", [("swa", 1024, 512, 512, 0), ("swa", 1024, 512, 512, 0), ("full", 2048, 2048, None, 0),
                    ("swa", 1024, 512, 512, 0)]),
    # SWA, pattern 0: every layer
    ({**BASE, "sliding_window": 128, "sliding_window_pattern": 0}, "f16", "f16", [("swa", 2048, 2048, 128, 0)] * 4),
    # SWA, bool array pattern (gemma-4 style), shorter than block_count: the last value repeats
    ({**BASE, "sliding_window": 1024, "sliding_window_pattern": (True, False)}, "f16", "f16",
     [("swa", 2048, 2048, 1024, 0), ("full", 2048, 2048, None, 0), ("full", 2048, 2048, None, 0),
      ("full", 2048, 2048, None, 0)]),
    # a pattern without a window: no SWA
    ({**BASE, "sliding_window_pattern": 2}, "f16", "f16", [("full", 2048, 2048, None, 0)] * 4),
    # MLA (deepseek2): one 576-wide K row, V is a view of K
    ({**BASE, "head_count_kv": 1, "key_length": 576, "value_length": 512, "key_length_mla": 192,
      "value_length_mla": 128, "kv_lora_rank": 512}, "f16", "f16", [("mla", 1152, 0, None, 0)] * 4),
    # mamba: conv (d_conv-1) x d_inner + ssm d_state x d_inner, f32
    ({"block_count": 2, "embedding_length": 768, "head_count_kv": 0, "recurrent": True, "ssm_conv_kernel": 4,
      "ssm_inner_size": 1536, "ssm_state_size": 16}, "f16", "f16",
     [("recurrent", 0, 0, None, 4 * (3 * 1536 + 16 * 1536))] * 2),
    # mamba2 with groups
    ({"block_count": 1, "embedding_length": 768, "recurrent": True, "ssm_conv_kernel": 4, "ssm_inner_size": 1536,
      "ssm_state_size": 128, "ssm_group_count": 1}, "f16", "f16",
     [("recurrent", 0, 0, None, 4 * (3 * (1536 + 2 * 128) + 128 * 1536))]),
    # rwkv: token shift x n_embd + n_embd x head size
    ({"block_count": 2, "embedding_length": 2048, "recurrent": True, "wkv_head_size": 64, "token_shift_count": 2},
     "f16", "f16", [("recurrent", 0, 0, None, 4 * (2 * 2048 + 2048 * 64))] * 2),
    # hybrid (jamba-like): layers with 0 KV heads are recurrent when there is a state
    ({**BASE, "head_count_kv": (0, 8, 0, 8), "ssm_conv_kernel": 4, "ssm_inner_size": 64, "ssm_state_size": 16},
     "f16", "f16", [("recurrent", 0, 0, None, 4 * (3 * 64 + 16 * 64)), ("full", 2048, 2048, None, 0)] * 2),
    # no block_count: nothing
    ({"embedding_length": 10}, "f16", "f16", []),
])
def test_kv_cache_layers(facts, tk, tv, expect):
    assert _kinds(M.kv_cache_layers(facts, tk, tv)) == expect


def test_kv_cache_unknown_type():
    with pytest.raises(ValueError, match="unknown KV cache type"):
        M.kv_cache_layers(BASE, "q4_k", "f16")


def test_facts_from_file(tmp_path):
    kvs = [KV("gemma3.block_count", V.UINT32, 12), KV("gemma3.embedding_length", V.UINT32, 640),
           KV("gemma3.attention.head_count", V.UINT32, 4), KV("gemma3.attention.head_count_kv", V.UINT32, 1),
           KV("gemma3.attention.key_length", V.UINT32, 256), KV("gemma3.attention.sliding_window", V.UINT32, 512)]
    p = write_gguf(tmp_path / "g.gguf", kvs, arch="gemma3")[0]
    info = M.load_model(p)
    assert info.facts["sliding_window_pattern"] == 6 and info.facts["value_length"] == 256  # llama.cpp defaults
    kinds = [l.kind for l in info.kv_layers("f16")]
    assert kinds == ["swa"] * 5 + ["full"] + ["swa"] * 5 + ["full"]
    assert info.to_json()["kv_cache"]["bytes_per_token_all_layers"] == 12 * 2 * 512


# ------------------------------------------------------------------------------------------- bad input

_SMALL: list[bytes] = []


def small_bytes() -> bytes:
    if not _SMALL:
        with tempfile.TemporaryDirectory() as d:
            _SMALL.append(small_valid_bytes(d))
    return _SMALL[0]


CASES = nasty_cases(small_bytes())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(tmp_path, case):
    p = tmp_path / f"{case.name}.gguf"
    p.write_bytes(case.data)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(GGUFError) as e:
            M.load_model(p)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2 and peak < 20 << 20  # bounded, whatever the declared counts
    msg = str(e.value)
    assert case.problem in msg and msg.startswith(str(p) + ": ") and "\n" not in msg
    assert e.value.path == str(p)


def test_bad_input_loop_guard():
    assert len(CASES) >= 45 and len({c.name for c in CASES}) == len(CASES)


def test_every_truncation(tmp_path):
    data = small_bytes()
    assert 1500 <= len(data) <= 2500
    full = tmp_path / "full.gguf"
    full.write_bytes(data)
    info = M.load_model(full)
    data_end = max(t.file_offset + t.n_bytes for t in info.tensors)
    p = tmp_path / "cut.gguf"
    for n in range(len(data)):
        p.write_bytes(data[:n])
        try:
            M.load_model(p)
        except GGUFError as e:
            assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
        else:
            assert n >= data_end, n  # only the last tensor's padding may go


def test_corpus(tmp_path):
    files = sorted(NASTY_DIR.glob("*.gguf"))
    assert len(files) >= 45
    readme = (NASTY_DIR / "README").read_text()
    for f in files:
        assert f"{f.name}:" in readme, f"{f.name} has no README line"
        assert f.stat().st_size < 64 << 10
        with pytest.raises((GGUFError, ModelFileError)):
            M.load_model(f)


def test_directory(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        M.load_model(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        M.load_model(tmp_path / "nope.gguf")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files")
def test_unreadable(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(small_bytes())
    p.chmod(0)
    with pytest.raises(ModelFileError, match="permission denied"):
        M.load_model(p)


def test_zero_element_tensor_ok(tmp_path):
    r = Raw()
    p = tmp_path / "z.gguf"
    p.write_bytes(r.file([r.kv("general.architecture", V.STRING, "llama")],
                         [r.tensor("a", [0, 5], 0, 0), r.tensor("b", [8], 0, 0)], f32_tensor_bytes(8)))
    info = M.load_model(p)
    assert [t.n_bytes for t in info.tensors] == [0, 32] and info.shards[0].reconciled


def test_not_reconciled(tmp_path):
    r = Raw()
    p = tmp_path / "gap.gguf"
    p.write_bytes(r.file([r.kv("general.architecture", V.STRING, "llama")], [r.tensor("a", [8], 0, 64)],
                         b"\0" * 64 + f32_tensor_bytes(8)))
    assert not M.load_model(p).shards[0].reconciled  # a 64-byte hole before the tensor
    p.write_bytes(p.read_bytes() + b"\0" * 100)
    assert not M.load_model(p).shards[0].reconciled


# ------------------------------------------------------------------------------------------- CLI

def test_cli_json(gen):
    r = subprocess.run([*GPCRUN, "inspect", str(gen["tiny_llama"]), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "gpcrun.inspect/1" and doc["facts"]["block_count"] == 2
    assert len(doc["tensors"]) == len(llama_tensors()) and doc["shards"][0]["reconciled"] is True
    assert doc["metadata"]["tokenizer.ggml.tokens"] == {"type": "ARRAY", "elem_type": "STRING", "count": 3000,
                                                        "value": None}


@needs_vocab
def test_cli_json_vocab():
    path = max(VOCAB_FILES, key=lambda p: p.stat().st_size)
    r = subprocess.run([*GPCRUN, "inspect", str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tensors"] == [] and doc["metadata"]["tokenizer.ggml.tokens"]["count"] > 100_000


@pytest.mark.parametrize("kind,code", [("missing", 3), ("directory", 3), ("not_gguf", 4), ("empty", 4),
                                       ("kv_count_2p60", 4), ("block_count_2p40", 4)])
def test_cli_exit_codes_subprocess(tmp_path, kind, code):
    target = {"missing": tmp_path / "nope.gguf", "directory": tmp_path}.get(kind, NASTY_DIR / f"{kind}.gguf")
    r = subprocess.run([*GPCRUN, "inspect", str(target), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == code
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"gpcrun: error: {target}: ")


def test_cli_corpus_in_process():
    runner = CliRunner()
    for f in sorted(NASTY_DIR.glob("*.gguf")):
        for args in (["inspect", str(f)], ["inspect", str(f), "--json"]):
            r = runner.invoke(cli_main, args)
            assert r.exit_code == 4, (f.name, r.output)
            assert r.stderr.startswith(f"gpcrun: error: {f}: ") and r.stderr.count("\n") == 1, f.name
            assert "Traceback" not in r.output


def test_cli_text(gen):
    r = CliRunner().invoke(cli_main, ["inspect", str(gen["tiny_llama"])])
    assert r.exit_code == 0, r.output
    assert "reconcile tiny_llama.gguf" in r.stdout and "OK" in r.stdout and "blk.1.attn_q.weight" in r.stdout


def test_special_files_are_refused_at_once(tmp_path):
    """A FIFO (open would block until a writer comes) and a device (reads never end): exit 3 at once."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        t0 = time.monotonic()
        r = subprocess.run([*GPCRUN, "inspect", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "not a regular file" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert time.monotonic() - t0 < 30
