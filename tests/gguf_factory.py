"""Small GGUF files for tests: valid ones through gguf.GGUFWriter, corrupt ones through a raw byte writer."""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFEndian, GGUFValueType as V, GGUFWriter

SCALAR_FMT = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
              V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}


@dataclass
class KV:
    key: str
    vtype: V
    value: Any
    elem: V | None = None  # element type of an ARRAY


@dataclass
class T:
    """A tensor: `data` is a numpy array (F32/F16/...) or, with `qtype`, raw uint8 bytes of shape (rows, row_bytes)."""

    name: str
    data: np.ndarray
    qtype: Q | None = None


def quant_bytes(qtype: Q, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Random raw bytes for a tensor of `qtype` with numpy `shape` (last dim = ggml ne[0])."""
    block, size = GGML_QUANT_SIZES[qtype]
    assert shape[-1] % block == 0, (qtype, shape)
    byte_shape = (*shape[:-1], shape[-1] // block * size)
    return np.random.default_rng(seed).integers(0, 256, size=byte_shape, dtype=np.uint8)


def nasty_strings(n: int, seed: int = 0) -> list[bytes]:
    """`n` strings covering what the numpy skipper must get right: empty, 1 byte, NULs, runs of >= 6 zero bytes
    (a length's high bytes look like zeros), bytes that read as small u64 lengths, and one of >= 64 KiB."""
    rng = random.Random(seed)
    out: list[bytes] = []
    specials = [b"", b"a", b"\x00", b"\x00" * 6, b"\x00" * 7, b"\x00" * 8, b"\x00" * 17, b"x\x00\x00\x00\x00\x00\x00y",
                struct.pack("<Q", 3), struct.pack("<Q", 8) + b"ab", b"\xff" * 9, "é漢字🙂".encode(),
                b"\x00" * 70_000, b"q" * 65_536, b"z" * 65_535, b"\x00" * 256, b"m" * 255, b"\x01" * 257]
    for i in range(n):
        if i % 97 == 0:
            out.append(specials[(i // 97) % len(specials)])
        else:
            k = rng.choice((0, 1, 1, 2, 3, 5, 8, 13, 40))
            out.append(bytes(rng.choice((0, 0, 1, 7, 65, 97, 255)) for _ in range(k)))
    return out


def write_gguf(path: str | Path, kvs: Iterable[KV] = (), tensors: Iterable[T] = (), *, arch: str = "llama",
               big_endian: bool = False, alignment: int | None = None, split_max_tensors: int = 0) -> list[Path]:
    """Write a GGUF with GGUFWriter; returns the written paths (several with split_max_tensors)."""
    w = GGUFWriter(str(path), arch, endianess=GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE,
                   split_max_tensors=split_max_tensors)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for kv in kvs:
        w.add_key_value(kv.key, kv.value, kv.vtype, sub_type=kv.elem)
    for t in tensors:
        if t.qtype is None:
            w.add_tensor(t.name, t.data)
        else:
            w.add_tensor(t.name, t.data, raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [Path(p) for p in w.format_shard_names(Path(path))]


def all_value_kvs(n_strings: int = 3000, seed: int = 0) -> list[KV]:
    """One key of every value type, short kept arrays and long skipped ones (string arrays > 2048: numpy path)."""
    return [
        KV("t.u8", V.UINT8, 255), KV("t.i8", V.INT8, -128), KV("t.u16", V.UINT16, 65535), KV("t.i16", V.INT16, -32768),
        KV("t.u32", V.UINT32, 2**32 - 1), KV("t.i32", V.INT32, -(2**31)), KV("t.f32", V.FLOAT32, 0.1),
        KV("t.bool", V.BOOL, True), KV("t.u64", V.UINT64, 2**64 - 1), KV("t.i64", V.INT64, -(2**63)),
        KV("t.f64", V.FLOAT64, 1e300), KV("t.str", V.STRING, "héllo\x00world"), KV("t.empty_str", V.STRING, ""),
        KV("t.arr_u8", V.ARRAY, [0, 1, 255], V.UINT8), KV("t.arr_i64", V.ARRAY, [-1, 2**62], V.INT64),
        KV("t.arr_f32", V.ARRAY, [0.5, -2.0], V.FLOAT32), KV("t.arr_bool", V.ARRAY, [True, False], V.BOOL),
        KV("t.arr_f64", V.ARRAY, [1.5], V.FLOAT64), KV("t.arr_str", V.ARRAY, ["a", "", "b\x00c"], V.STRING),
        KV("t.arr_1024", V.ARRAY, list(range(1024)), V.INT32),  # longest kept array
        KV("t.arr_1025", V.ARRAY, list(range(1025)), V.INT32),  # first summarised one
        KV("t.str_1024", V.ARRAY, [str(i) for i in range(1024)], V.STRING),
        KV("t.str_2047", V.ARRAY, [b"\x00" * (i % 9) for i in range(2047)], V.STRING),  # plain loop
        KV("tokenizer.ggml.tokens", V.ARRAY, nasty_strings(n_strings, seed), V.STRING),  # numpy fast path
        KV("tokenizer.ggml.scores", V.ARRAY, [float(i) for i in range(n_strings)], V.FLOAT32),
        KV("t.after", V.UINT32, 7),  # read after the skipped arrays: offsets must be exact
    ]


def llama_kvs(n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, arch: str = "llama") -> list[KV]:
    return [KV(f"{arch}.block_count", V.UINT32, n_layer), KV(f"{arch}.embedding_length", V.UINT32, n_embd),
            KV(f"{arch}.attention.head_count", V.UINT32, n_head),
            KV(f"{arch}.attention.head_count_kv", V.UINT32, n_head_kv),
            KV(f"{arch}.context_length", V.UINT32, 4096), KV(f"{arch}.feed_forward_length", V.UINT32, 4 * n_embd),
            KV("general.name", V.STRING, "tiny"), KV("general.file_type", V.UINT32, 7)]


def llama_tensors(n_layer: int = 2, n_embd: int = 256, n_vocab: int = 32, seed: int = 0) -> list[T]:
    """A llama-shaped set with F32, F16, BF16, Q8_0, Q4_K, Q6_K, IQ4_NL, I32 and F64 tensors."""
    rng = np.random.default_rng(seed)
    ts = [T("token_embd.weight", quant_bytes(Q.Q8_0, (n_vocab, n_embd), seed), Q.Q8_0),
          T("output_norm.weight", rng.standard_normal(n_embd).astype(np.float32)),
          T("output.weight", quant_bytes(Q.Q6_K, (n_vocab, n_embd), seed + 1), Q.Q6_K)]
    for i in range(n_layer):
        ts += [T(f"blk.{i}.attn_norm.weight", rng.standard_normal(n_embd).astype(np.float32)),
               T(f"blk.{i}.attn_q.weight", quant_bytes(Q.Q4_K, (n_embd, n_embd), seed + 10 * i), Q.Q4_K),
               T(f"blk.{i}.attn_k.weight", rng.standard_normal((n_embd // 2, n_embd)).astype(np.float16)),
               T(f"blk.{i}.attn_v.weight", quant_bytes(Q.BF16, (n_embd // 2, n_embd), seed + 10 * i + 1), Q.BF16),
               T(f"blk.{i}.attn_output.weight", quant_bytes(Q.IQ4_NL, (n_embd, n_embd), seed + 10 * i + 2), Q.IQ4_NL),
               T(f"blk.{i}.ffn_up.weight", quant_bytes(Q.Q8_0, (3, n_embd), seed + 10 * i + 3), Q.Q8_0),
               T(f"blk.{i}.ffn_down.weight", rng.standard_normal((n_embd, 3)).astype(np.float32)),
               T(f"blk.{i}.ffn_gate.weight", rng.standard_normal((2, 3, 5)).astype(np.float64))]
    ts.append(T("rope_freqs.weight", np.arange(7, dtype=np.int32)))
    return ts


def write_tiny_llama(path: str | Path, *, n_layer: int = 2, big_endian: bool = False, split_max_tensors: int = 0,
                     vocab: int = 3000, alignment: int | None = None) -> list[Path]:
    kvs = llama_kvs(n_layer) + ([KV("tokenizer.ggml.tokens", V.ARRAY, nasty_strings(vocab), V.STRING)] if vocab else [])
    return write_gguf(path, kvs, llama_tensors(n_layer), big_endian=big_endian, split_max_tensors=split_max_tensors,
                      alignment=alignment)


def small_valid_bytes(tmp_dir: str | Path) -> bytes:
    """A ~2 KB valid GGUF: a few keys of each kind, one short string array, three small tensors."""
    p = Path(tmp_dir) / "small_valid.gguf"
    kvs = [KV("llama.block_count", V.UINT32, 1), KV("llama.embedding_length", V.UINT32, 32),
           KV("llama.attention.head_count", V.UINT32, 2), KV("general.name", V.STRING, "s"),
           KV("t.f64", V.FLOAT64, 2.5), KV("t.arr", V.ARRAY, [1, 2, 3], V.INT16),
           KV("tokenizer.ggml.tokens", V.ARRAY, [b"", b"a", b"\x00\x00", b"bc"] * 8, V.STRING),
           KV("tokenizer.ggml.scores", V.ARRAY, [0.5] * 32, V.FLOAT32),
           KV("tokenizer.chat_template", V.STRING, "{% for m in messages %}{{ m.content }}{% endfor %}" * 6)]
    ts = [T("token_embd.weight", quant_bytes(Q.Q8_0, (4, 32)), Q.Q8_0),
          T("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32)),
          T("output.weight", np.ones((4, 32), dtype=np.float16))]
    write_gguf(p, kvs, ts)
    return p.read_bytes()


# ------------------------------------------------------------------------------------------- raw writer

class Raw:
    """Hand-made GGUF bytes, for headers GGUFWriter refuses to write. `bo` is "<" or ">"."""

    def __init__(self, bo: str = "<") -> None:
        self.bo = bo

    def u32(self, v: int) -> bytes:
        return struct.pack(self.bo + "I", v)

    def u64(self, v: int) -> bytes:
        return struct.pack(self.bo + "Q", v)

    def string(self, s: str | bytes, length: int | None = None) -> bytes:
        b = s.encode() if isinstance(s, str) else s
        return self.u64(len(b) if length is None else length) + b

    def value(self, vtype: int, value: Any, elem: int | None = None, count: int | None = None) -> bytes:
        if vtype == V.STRING:
            return self.string(value)
        if vtype == V.ARRAY:
            body = b"".join(self.value(elem, v) for v in value)
            return self.u32(elem) + self.u64(len(value) if count is None else count) + body
        return struct.pack(self.bo + SCALAR_FMT[V(vtype)], value)

    def kv(self, key: str | bytes, vtype: int, value: Any = None, elem: int | None = None,
           count: int | None = None) -> bytes:
        return self.string(key) + self.u32(vtype) + self.value(vtype, value, elem, count)

    def tensor(self, name: str | bytes, dims: Sequence[int], ttype: int, offset: int,
               n_dims: int | None = None) -> bytes:
        return (self.string(name) + self.u32(len(dims) if n_dims is None else n_dims)
                + b"".join(self.u64(d) for d in dims) + self.u32(ttype) + self.u64(offset))

    def file(self, kvs: Sequence[bytes] = (), tensors: Sequence[bytes] = (), data: bytes = b"", *,
             version: int = 3, magic: bytes = b"GGUF", n_kv: int | None = None, n_tensors: int | None = None,
             alignment: int = 32, pad: bool = True) -> bytes:
        head = (magic + self.u32(version) + self.u64(len(tensors) if n_tensors is None else n_tensors)
                + self.u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors))
        if pad and data:
            head += b"\x00" * (-len(head) % alignment)
        return head + data


def f32_tensor_bytes(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


# ------------------------------------------------------------------------------------------- nasty corpus

@dataclass
class Nasty:
    name: str  # file stem in tests/data/nasty/
    data: bytes
    problem: str  # a substring of the expected GGUFError message
    desc: str  # one README line


NASTY_DIR = Path(__file__).parent / "data" / "nasty"


def nasty_cases(small: bytes) -> list[Nasty]:
    """Corrupt headers, each with the error it must produce. `small` is small_valid_bytes()."""
    r, be = Raw("<"), Raw(">")
    arch = r.kv("general.architecture", V.STRING, "llama")
    f32 = f32_tensor_bytes(8)
    ok_t = r.tensor("w", [8], Q.F32, 0)
    big_arr = [b"ab"] * 3000  # >= 2048 strings: the numpy skipper runs
    cases = [
        Nasty("empty", b"", "empty file", "0 bytes"),
        Nasty("not_gguf", b"this is a text file, not a model\n" * 3, "bad magic", "a text file"),
        Nasty("wrong_magic", b"GGUG" + small[4:], "bad magic", "valid file with magic GGUG"),
        Nasty("short_magic", b"GG", "bad magic", "2 bytes"),
        Nasty("header_8_bytes", small[:8], "truncated GGUF header", "magic + version only"),
        Nasty("version_0", r.file([arch], version=0), "unsupported GGUF version 0", "version 0"),
        Nasty("version_1", r.file([arch], version=1), "unsupported GGUF version 1", "version 1 (32-bit lengths)"),
        Nasty("version_4", r.file([arch], version=4), "unsupported GGUF version 4", "version 4"),
        Nasty("version_4_be", be.file([be.kv("general.architecture", V.STRING, "llama")], version=4),
              "unsupported GGUF version 4", "big-endian version 4"),
        Nasty("kv_count_2p60", r.file([arch], n_kv=2**60), "KV count", "2^60 KV pairs declared"),
        Nasty("kv_count_max", r.file([arch], n_kv=2**64 - 1), "KV count", "2^64-1 KV pairs declared"),
        Nasty("tensor_count_2p60", r.file([arch], [ok_t], f32, n_tensors=2**60), "tensor count",
              "2^60 tensors declared"),
        Nasty("be_kv_count_2p60", be.file([be.kv("general.architecture", V.STRING, "llama")], n_kv=2**60), "KV count",
              "big-endian, 2^60 KV pairs"),
        Nasty("dims_overflow", r.file([arch], [r.tensor("w", [2**32, 2**32], Q.F32, 0)], f32), "overflow int64",
              "dims 2^32 x 2^32"),
        Nasty("dim_huge_beside_zero", r.file([arch], [r.tensor("w", [0, 2**64 - 1], Q.F32, 0)], f32),
              "overflow int64", "dims 0 x 2^64-1 (0 elements, but ne does not fit int64)"),
        Nasty("n_dims_5", r.file([arch], [r.tensor("w", [1, 1, 1, 1, 8], Q.F32, 0)], f32), "5 dims",
              "tensor with 5 dims"),
        Nasty("n_dims_max", r.file([arch], [r.tensor("w", [8], Q.F32, 0, n_dims=2**32 - 1)], f32), "dims (max 4)",
              "n_dims 2^32-1"),
        Nasty("ggml_type_removed", r.file([arch], [r.tensor("w", [32], 4, 0)], f32 * 4), "unknown ggml type 4",
              "tensor of removed type 4 (Q4_2)"),
        Nasty("ggml_type_999", r.file([arch], [r.tensor("w", [8], 999, 0)], f32), "unknown ggml type 999",
              "tensor of type 999"),
        Nasty("value_type_13", r.file([arch, r.string("k") + r.u32(13) + r.u64(0)]), "unknown value type 13",
              "KV of value type 13"),
        Nasty("array_of_arrays", r.file([arch, r.string("k") + r.u32(V.ARRAY) + r.u32(V.ARRAY) + r.u64(1)
                                         + r.u32(V.UINT8) + r.u64(1) + b"\x01"]), "unsupported element type 9",
              "nested array (llama.cpp rejects them)"),
        Nasty("array_elem_type_13", r.file([arch, r.string("k") + r.u32(V.ARRAY) + r.u32(13) + r.u64(1) + b"\0" * 8]),
              "unsupported element type 13", "array of value type 13"),
        Nasty("key_len_past_eof", r.file([arch, r.string("k", length=1000) + r.u32(V.UINT8) + b"\x01"]),
              "runs past end of file", "key length 1000 in a ~70-byte file"),
        Nasty("key_len_max", r.file([arch, r.string("k", length=2**64 - 1) + r.u32(V.UINT8) + b"\x01"]),
              "runs past end of file", "key length 2^64-1"),
        Nasty("string_value_past_eof", r.file([arch, r.string("k") + r.u32(V.STRING) + r.string("v", length=2**40)]),
              "runs past end of file", "string value of length 2^40"),
        Nasty("be_string_value_past_eof",
              be.file([be.kv("general.architecture", V.STRING, "llama"),
                       be.string("k") + be.u32(V.STRING) + be.string("v", length=500)]),
              "runs past end of file", "big-endian string value past EOF"),
        Nasty("u32_array_count_2p60", r.file([arch, r.kv("k", V.ARRAY, [1, 2], V.UINT32, count=2**60)]),
              "runs past end of file", "UINT32 array declaring 2^60 elements"),
        Nasty("str_array_count_2p60", r.file([arch, r.kv("k", V.ARRAY, ["a"], V.STRING, count=2**60)]),
              "runs past end of file", "string array declaring 2^60 strings"),
        Nasty("str_array_short", r.file([arch, r.kv("k", V.ARRAY, big_arr, V.STRING, count=3001)]),
              "truncated", "3001 strings declared, 3000 present (numpy path runs out)"),
        Nasty("str_array_last_len_past_eof",
              r.file([arch, r.kv("k", V.ARRAY, big_arr[:-1], V.STRING, count=3000) + r.string("x", length=999)]),
              "past end of file", "3000 strings, the last one's length runs past EOF"),
        Nasty("str_array_py_path_past_eof", r.file([arch, r.kv("k", V.ARRAY, [b"ab"] * 100, V.STRING, count=101)]),
              "truncated", "101 strings declared, 100 present (plain loop)"),
        Nasty("duplicate_key", r.file([arch, r.kv("k", V.UINT8, 1), r.kv("k", V.UINT8, 2)]), "duplicate key 'k'",
              "key k twice"),
        Nasty("duplicate_tensor", r.file([arch], [ok_t, r.tensor("w", [8], Q.F32, 32)], f32 * 2),
              "duplicate tensor 'w'", "tensor w twice"),
        Nasty("alignment_0", r.file([arch, r.kv("general.alignment", V.UINT32, 0)], [ok_t], f32),
              "general.alignment", "general.alignment = 0"),
        Nasty("alignment_3", r.file([arch, r.kv("general.alignment", V.UINT32, 3)], [ok_t], f32, alignment=3),
              "general.alignment", "general.alignment = 3 (not a power of two)"),
        Nasty("alignment_u64", r.file([arch, r.kv("general.alignment", V.UINT64, 32)], [ok_t], f32),
              "general.alignment", "general.alignment stored as UINT64"),
        Nasty("alignment_string", r.file([arch, r.kv("general.alignment", V.STRING, "32")], [ok_t], f32),
              "general.alignment", "general.alignment stored as a string"),
        Nasty("misaligned_offset", r.file([arch], [r.tensor("w", [8], Q.F32, 4)], f32 + b"\0" * 4),
              "not aligned", "tensor offset 4 with alignment 32"),
        Nasty("tensor_data_past_eof", r.file([arch], [r.tensor("w", [8], Q.F32, 64)], f32), "runs past end of file",
              "tensor data at offset 64, file ends before"),
        Nasty("tensor_data_truncated", r.file([arch], [r.tensor("w", [1024], Q.F32, 0)], f32),
              "runs past end of file", "4 KiB tensor, 32 bytes of data"),
        Nasty("block_size_mismatch", r.file([arch], [r.tensor("w", [31], Q.Q8_0, 0)], b"\0" * 64),
              "not a multiple of block size", "Q8_0 tensor with ne0 = 31"),
        Nasty("quant_zero_dims", r.file([arch], [r.tensor("w", [], Q.Q4_K, 0)], b"\0" * 160),
              "not a multiple of block size", "Q4_K tensor with 0 dims (ne0 = 1)"),
        Nasty("tensor_name_past_eof", r.file([arch], [r.string("w", length=10**6)], n_tensors=1),
              "runs past end of file", "tensor name length 10^6"),
        Nasty("tensor_info_truncated", r.file([arch], [r.string("w") + r.u32(2) + r.u64(8)], n_tensors=1),
              "truncated at tensor", "tensor info cut after its first dim"),
        Nasty("block_count_2p40", r.file([arch, r.kv("llama.block_count", V.UINT64, 2**40)]), "block_count",
              "llama.block_count = 2^40 (would loop per layer)"),
        Nasty("block_count_string", r.file([arch, r.kv("llama.block_count", V.STRING, "32")]), "block_count",
              "llama.block_count stored as a string"),
        Nasty("head_count_float", r.file([arch, r.kv("llama.block_count", V.UINT32, 2),
                                          r.kv("llama.attention.head_count", V.FLOAT32, 8.0)]), "head_count",
              "llama.attention.head_count stored as FLOAT32"),
        Nasty("head_count_kv_strings", r.file([arch, r.kv("llama.block_count", V.UINT32, 2),
                                               r.kv("llama.attention.head_count_kv", V.ARRAY, ["8", "8"], V.STRING)]),
              "head_count_kv", "per-layer head_count_kv as an array of strings"),
        Nasty("architecture_u32", r.file([r.kv("general.architecture", V.UINT32, 7)]), "general.architecture",
              "general.architecture stored as UINT32"),
        # headers that parse but make no sense (llama-model.cpp load_hparams' checks, and divisions by zero)
        Nasty("block_count_0", r.file([arch, r.kv("llama.block_count", V.UINT32, 0)]), "block_count is 0",
              "llama.block_count = 0"),
        Nasty("block_count_513", r.file([arch, r.kv("llama.block_count", V.UINT32, 513)]), "block_count is 513",
              "llama.block_count = 513 (LLAMA_MAX_LAYERS is 512)"),
        Nasty("experts_without_count", r.file([arch, r.kv("llama.block_count", V.UINT32, 1)],
                                              [r.tensor("blk.0.ffn_up_exps.weight", [8], Q.F32, 0)], f32),
              "expert tensors", "an *_exps tensor, no expert_count"),
        Nasty("tensors_overlap", r.file([arch], [r.tensor("a", [16], Q.F32, 0), r.tensor("b", [8], Q.F32, 32)],
                                        f32 * 2 + b"\0" * 32), "overlaps", "tensor b's bytes inside tensor a's"),
    ]
    two_layers = r.kv("llama.block_count", V.UINT32, 2)
    for name, kvs, problem, desc in (
            ("head_count_0", [("attention.head_count", V.UINT32, 0)], "head_count is 0",
             "llama.attention.head_count = 0"),
            ("expert_used_0", [("expert_count", V.UINT32, 8), ("expert_used_count", V.UINT32, 0)],
             "expert_used_count is 0", "8 experts, expert_used_count = 0"),
            ("expert_used_9_of_8", [("expert_count", V.UINT32, 8), ("expert_used_count", V.UINT32, 9)], "more than",
             "expert_used_count 9 > expert_count 8"),
            ("expert_count_2000", [("expert_count", V.UINT32, 2000), ("expert_used_count", V.UINT32, 8)],
             "at most 1024", "expert_count 2000 (LLAMA_MAX_EXPERTS is 1024)"),
            ("rope_freq_nan", [("rope.freq_base", V.FLOAT32, float("nan"))], "not a finite",
             "llama.rope.freq_base = NaN"),
            ("norm_eps_inf", [("attention.layer_norm_rms_epsilon", V.FLOAT64, float("inf"))], "not a finite",
             "llama.attention.layer_norm_rms_epsilon = inf (FLOAT64)"),
            ("context_2p40", [("context_length", V.UINT64, 2**40)], "context_length is", "llama.context_length = 2^40")):
        cases.append(Nasty(name, r.file([arch, two_layers, *(r.kv(f"llama.{k}", t, v) for k, t, v in kvs)]),
                           problem, desc))
    for n in (23, 24, 100, len(small) // 2, len(small) - 200):
        cases.append(Nasty(f"truncated_at_{n}", small[:n], "", f"small valid file cut to {n} bytes"))
    return cases


def write_corpus(directory: Path = NASTY_DIR) -> None:
    """Regenerate tests/data/nasty/*.gguf and its README (fuzz-found files, fuzz_*.gguf, are kept)."""
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = nasty_cases(small_valid_bytes(tmp))
    lines = ["# Corrupt GGUF files: every one must give GGUFError / ModelFileError (tests/test_model.py)."]
    for c in cases:
        (directory / f"{c.name}.gguf").write_bytes(c.data)
        lines.append(f"{c.name}.gguf: {c.desc}")
    readme = directory / "README"
    old = readme.read_text().splitlines() if readme.exists() else []
    lines += [l for l in old if l.startswith("fuzz_")]  # keep fuzz-found entries
    readme.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_corpus()


def write_lora(path: str | Path, base_info, rank: int = 8, targets: tuple[str, ...] = ("attn_q", "attn_v"),
               seed: int = 0) -> Path:
    """A LoRA adapter GGUF for a base model, as llama.cpp's convert_lora_to_gguf.py writes one (general.type
    'adapter', adapter.type 'lora', adapter.lora.alpha; F32 lora_a (ne = [n_in, r]) and lora_b (ne = [r, n_out])
    for each targeted weight of every layer). Values are small random numbers: llama-server loads and applies it."""
    rng = np.random.default_rng(seed)
    by_name = {t.name: t for t in base_info.tensors}
    ts = []
    for il in range(int(base_info.facts["block_count"])):
        for tgt in targets:
            base = by_name[f"blk.{il}.{tgt}.weight"]
            n_in, n_out = base.shape[0], base.shape[1]
            ts.append(T(f"blk.{il}.{tgt}.weight.lora_a", (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32)))
            ts.append(T(f"blk.{il}.{tgt}.weight.lora_b", (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)))
    kvs = [KV("general.type", V.STRING, "adapter"), KV("adapter.type", V.STRING, "lora"),
           KV("adapter.lora.alpha", V.FLOAT32, float(rank)), KV("general.name", V.STRING, "tiny-lora")]
    return write_gguf(path, kvs, ts, arch=base_info.architecture)[0]
