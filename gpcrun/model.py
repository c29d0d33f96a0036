"""GGUF header -> frozen ModelInfo. The only module that reads GGUF files.

Reads only the header (metadata and tensor infos), never tensor data. Large string arrays (vocabularies,
merges) are skipped without building per-element Python objects: gguf.GGUFReader took 27 s on
llama.cpp's ggml-vocab-gemma-4.gguf here (issue 2); see scripts/bench/inspect_speed.py.
"""
from __future__ import annotations

import importlib.util
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import GGUFError, MissingShardError, ModelFileError


def _gguf_constants():
    # `import gguf` pulls numpy and the writer (~150 ms); constants.py alone is stdlib-only (~8 ms).
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'gguf' package is required")
    path = os.path.join(list(spec.submodule_search_locations)[0], "constants.py")
    cspec = importlib.util.spec_from_file_location("gguf.constants", path)
    mod = importlib.util.module_from_spec(cspec)
    sys.modules["gguf.constants"] = mod  # a later `import gguf` reuses it: one set of enums
    cspec.loader.exec_module(mod)
    return mod


_C = _gguf_constants()
GGML_QUANT_SIZES: Mapping[int, tuple[int, int]] = {int(k): v for k, v in _C.GGML_QUANT_SIZES.items()}
GGML_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.GGMLQuantizationType}
VALUE_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.GGUFValueType}
FILE_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.LlamaFileType}
GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1

# value type -> (struct code, byte size) for fixed-size GGUF values
_SCALAR = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
           7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised (type + count), not decoded: vocabularies, scores, merges.
MAX_KEPT_ARRAY = 1024
_FAST_SKIP_MIN = 2048  # below this, a plain loop beats numpy's fixed costs
# The plain loop walks ~13 M strings/s here and importing numpy costs 60-100 ms: only a very long array pays
# for the import (gemma-4's 777k strings: loop 61 ms, numpy 13 ms + import); inspect_speed.py measures both.
_IMPORT_NUMPY_MIN = 1_000_000

KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")

# llama.cpp hard-codes these SWA patterns where the GGUF carries none (llama-model.cpp, set_swa_pattern).
_DEFAULT_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "exaone4": 4}
# Architectures whose every layer is recurrent (fixed state per sequence, no KV cache).
_RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}


@dataclass(frozen=True)
class KVField:
    """One metadata entry. `value` is None for arrays longer than MAX_KEPT_ARRAY (count still exact)."""

    type: str  # "UINT32", "STRING", "ARRAY" ...
    value: Any
    elem_type: str | None = None  # for arrays
    count: int | None = None  # for arrays

    def to_json(self) -> dict:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "ARRAY":
            d["elem_type"] = self.elem_type
            d["count"] = self.count
            d["value"] = list(self.value) if self.value is not None else None
        else:
            d["value"] = self.value
        return d


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first (numpy shapes are the reverse)
    n_elements: int
    n_bytes: int
    offset: int  # relative to the shard's data section
    file_offset: int  # absolute, in its shard
    shard: int  # 0-based shard index
    layer: int | None
    role: str

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type_name, "shape": list(self.shape), "n_elements": self.n_elements,
                "bytes": self.n_bytes, "offset": self.offset, "file_offset": self.file_offset, "shard": self.shard,
                "layer": self.layer, "role": self.role}


@dataclass(frozen=True)
class ShardInfo:
    path: str
    file_size_bytes: int
    version: int
    byte_order: str  # "little" | "big"
    alignment: int
    header_bytes: int  # up to the start of the aligned data section
    tensor_bytes: int
    padding_bytes: int
    tensor_count: int
    kv_count: int
    reconciled: bool  # header + tensors + padding == file size, each gap < alignment

    def to_json(self) -> dict:
        return dict(self.__dict__)


ROLES = ("token_embedding", "output_head", "attention", "dense_ffn", "routed_experts", "shared_experts",
         "recurrent", "norms_other")

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def tensor_role(name: str) -> str:
    """Classify a tensor by its llama.cpp name (see gguf.constants.TENSOR_NAMES)."""
    if name.startswith("token_embd.") and "norm" not in name:
        return "token_embedding"
    if name.startswith("output.") or name == "output":
        return "output_head"
    m = _LAYER_RE.match(name)
    if not m:
        return "norms_other"
    rest = name[m.end():]
    base = rest.split(".", 1)[0]
    if "norm" in base:
        return "norms_other"
    if base.endswith("_shexp") or base.endswith("_chexp"):
        return "shared_experts"
    if base.endswith("_exps") or base in ("ffn_gate_inp", "exp_probs_b") or base.startswith("ffn_gate_inp"):
        return "routed_experts"
    if base.startswith("ffn_"):
        return "dense_ffn"
    if base.startswith("attn_") or base.startswith("indexer"):
        return "attention"
    if base.startswith(("ssm_", "time_mix_", "channel_mix_", "shortconv", "conv")):
        return "recurrent"
    return "norms_other"


@dataclass(frozen=True)
class LayerKV:
    """KV cache cost of one layer, per token (attention) or per sequence (recurrent state)."""

    layer: int
    kind: str  # "full" | "swa" | "mla" | "recurrent" | "none"
    k_bytes_per_token: int
    v_bytes_per_token: int
    window: int | None  # tokens held by an SWA layer
    state_bytes_per_seq: int  # recurrent layers: conv + ssm state (f32)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelInfo:
    path: str
    shards: tuple[ShardInfo, ...]
    metadata: Mapping[str, KVField]
    tensors: tuple[TensorInfo, ...]
    facts: Mapping[str, Any]

    @property
    def architecture(self) -> str | None:
        return self.facts.get("architecture")

    @property
    def file_size_bytes(self) -> int:
        return sum(s.file_size_bytes for s in self.shards)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def value(self, key: str, default: Any = None) -> Any:
        f = self.metadata.get(key)
        return default if f is None else f.value

    def bytes_by_role(self) -> dict[str, int]:
        out = {r: 0 for r in ROLES}
        for t in self.tensors:
            out[t.role] += t.n_bytes
        return out

    def bytes_by_layer(self) -> dict[str, int]:
        """Keys: layer index as str, plus 'non_layer' for tensors outside blk.N."""
        out: dict[str, int] = {}
        for t in self.tensors:
            key = str(t.layer) if t.layer is not None else "non_layer"
            out[key] = out.get(key, 0) + t.n_bytes
        return dict(sorted(out.items(), key=lambda kv: (kv[0] == "non_layer", int(kv[0]) if kv[0].isdigit() else 0)))

    def quant_mix(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type_name] = out.get(t.type_name, 0) + t.n_bytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def kv_layers(self, cache_type_k: str = "f16", cache_type_v: str | None = None) -> tuple[LayerKV, ...]:
        return kv_cache_layers(self.facts, cache_type_k, cache_type_v or cache_type_k)

    def to_json(self, cache_type: str = "f16") -> dict:
        kv = self.kv_layers(cache_type)
        return {
            "schema": "gpcrun.inspect/1",
            "path": self.path,
            "file_size_bytes": self.file_size_bytes,
            "tensor_bytes": self.tensor_bytes,
            "shards": [s.to_json() for s in self.shards],
            "facts": dict(self.facts),
            "bytes_by_role": self.bytes_by_role(),
            "bytes_by_layer": self.bytes_by_layer(),
            "quant_mix_bytes": self.quant_mix(),
            "kv_cache": {
                "cache_type": cache_type,
                "bytes_per_token_all_layers": sum(l.k_bytes_per_token + l.v_bytes_per_token for l in kv),
                "layers": [l.to_json() for l in kv],
            },
            "metadata": {k: v.to_json() for k, v in self.metadata.items()},
            "tensors": [t.to_json() for t in self.tensors],
        }


# ----------------------------------------------------------------------------------------------- parsing

class _Header:
    __slots__ = ("version", "byte_order", "metadata", "raw_tensors", "alignment", "data_start", "kv_count",
                 "tensor_count")


def _skip_strings_py(buf, pos: int, count: int, end: int, path: str, unpack_u64) -> int:
    for _ in range(count):
        if pos + 8 > end:
            raise GGUFError(path, "truncated inside a string array", pos)
        n = unpack_u64(buf, pos)[0]
        pos += 8 + n
        if pos > end:
            raise GGUFError(path, f"string length {n} runs past end of file", pos - n - 8)
    return pos


def _skip_strings_fast(buf, pos: int, count: int, end: int, path: str, unpack_u64) -> int:
    """Offset after `count` GGUF strings starting at `pos`, little-endian only; exact, like _skip_strings_py.

    Candidates are offsets whose u64 length is < 256 (seven zero bytes follow the low one): in vocabularies
    nearly every candidate is a true boundary and nearly every boundary a candidate. From `pos` the chain is
    followed exactly: a run of candidates each ending where the next begins (cand + 8 + len == next cand)
    is taken in bulk, a boundary that is no candidate (a string of 256+ bytes) is stepped over with struct,
    and the window's end rescans from the last boundary. Data that defeats this falls back to the plain loop.
    """
    import numpy as np

    if count < 512:
        return _skip_strings_py(buf, pos, count, end, path, unpack_u64)
    probe = 256  # the first strings give the mean length that sizes the scan window
    p0 = pos
    pos = _skip_strings_py(buf, pos, probe, end, path, unpack_u64)
    count -= probe
    per = (pos - p0) / probe
    arr = np.frombuffer(buf, dtype=np.uint8)
    windows = 0
    while count > 0:
        hi = min(end, pos + int(count * per * 1.05) + 4096)
        n = hi - pos
        if count < 256 or n < 64 or windows > 32:
            return _skip_strings_py(buf, pos, count, end, path, unpack_u64)
        windows += 1
        z = np.equal(arr[pos:hi], 0)
        np.logical_and(z[:-1], z[1:], out=z[:-1])  # z[i]: bytes i, i+1 zero
        np.logical_and(z[:-3], z[2:-1], out=z[:-3])  # bytes i..i+3
        np.logical_and(z[:-6], z[3:-3], out=z[:-6])  # bytes i..i+6
        cand = np.flatnonzero(z[1:n - 6])  # p <= n - 8 whose bytes p+1..p+7 are zero
        del z
        nxt = cand + 8 + arr[pos:hi][cand]
        breaks = np.flatnonzero(cand[1:] != nxt[:-1])  # run ends
        last = cand.size - 1
        b = 0  # the current true boundary, relative to pos
        covered = stepped = lookups = 0
        while True:
            k = int(np.searchsorted(cand, b))
            lookups += 1
            if k <= last and int(cand[k]) == b:
                t = int(np.searchsorted(breaks, k))
                j = int(breaks[t]) if t < breaks.size else last
                run = j - k + 1
                if run >= count:
                    new_pos = pos + int(nxt[k + count - 1])
                    if new_pos > end:
                        raise GGUFError(path, "string array runs past end of file", pos + int(cand[k + count - 1]))
                    return new_pos
                count -= run
                covered += run
                b = int(nxt[j])
            elif b + 8 <= n:  # a string of 256+ bytes: read its length
                ln = unpack_u64(buf, pos + b)[0]
                b += 8 + ln
                count -= 1
                stepped += 1
                if pos + b > end:
                    raise GGUFError(path, f"string length {ln} runs past end of file", pos + b - ln - 8)
                if count == 0:
                    return pos + b
            else:
                break  # past the window: scan the next one from here
            if lookups > 256 and covered < 16 * lookups:  # long strings or zero-filled data: the loop is cheaper
                return _skip_strings_py(buf, pos + b, count, end, path, unpack_u64)
        if pos + b > end:
            raise GGUFError(path, "string array runs past end of file", pos + b)
        if covered + stepped:
            per = b / (covered + stepped)
        pos += b
    return pos


def _parse(buf, size: int, path: str) -> _Header:
    if size < 4 or buf[0:4] != GGUF_MAGIC:
        raise GGUFError(path, "not a GGUF file (bad magic)")
    if size < 24:
        raise GGUFError(path, "truncated GGUF header", 0)
    version = struct.unpack_from("<I", buf, 4)[0]
    bo = "<"
    if version & 0xFFFF == 0 and version != 0:  # written on a big-endian host
        bo = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(path, f"unsupported GGUF version {version} (supported: 2, 3)")
    u32 = struct.Struct(bo + "I").unpack_from
    u64 = struct.Struct(bo + "Q").unpack_from
    tensor_count, kv_count = struct.unpack_from(bo + "QQ", buf, 8)
    pos = 24
    # Each KV needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 24 bytes.
    if kv_count > (size - pos) // 13:
        raise GGUFError(path, f"KV count {kv_count} cannot fit in a {size}-byte file", 16)
    if tensor_count > (size - pos) // 24:
        raise GGUFError(path, f"tensor count {tensor_count} cannot fit in a {size}-byte file", 8)

    def read_str(p: int) -> tuple[str, int]:
        if p + 8 > size:
            raise GGUFError(path, "truncated (string length)", p)
        n = u64(buf, p)[0]
        p += 8
        if n > size - p:
            raise GGUFError(path, f"string length {n} runs past end of file", p - 8)
        return bytes(buf[p:p + n]).decode("utf-8", errors="replace"), p + n

    metadata: dict[str, KVField] = {}
    for _ in range(kv_count):
        kpos = pos
        key, pos = read_str(pos)
        if pos + 4 > size:
            raise GGUFError(path, f"truncated at key {key!r}", pos)
        vtype = u32(buf, pos)[0]
        pos += 4
        if key in metadata:
            raise GGUFError(path, f"duplicate key {key!r}", kpos)
        if vtype in _SCALAR:
            code, sz = _SCALAR[vtype]
            if pos + sz > size:
                raise GGUFError(path, f"truncated at key {key!r}", pos)
            val = struct.unpack_from(bo + code, buf, pos)[0]
            pos += sz
            metadata[key] = KVField(VALUE_TYPE_NAMES[vtype], val)
        elif vtype == _STRING:
            val, pos = read_str(pos)
            metadata[key] = KVField("STRING", val)
        elif vtype == _ARRAY:
            if pos + 12 > size:
                raise GGUFError(path, f"truncated at key {key!r}", pos)
            etype = u32(buf, pos)[0]
            count = u64(buf, pos + 4)[0]
            pos += 12
            if etype in _SCALAR:
                code, sz = _SCALAR[etype]
                if count > (size - pos) // sz:
                    raise GGUFError(path, f"array {key!r} of {count} elements runs past end of file", pos)
                vals = struct.unpack_from(f"{bo}{count}{code}", buf, pos) if count <= MAX_KEPT_ARRAY else None
                pos += count * sz
            elif etype == _STRING:
                if count > (size - pos) // 8:
                    raise GGUFError(path, f"array {key!r} of {count} strings runs past end of file", pos)
                if count <= MAX_KEPT_ARRAY:
                    out = []
                    for _ in range(count):
                        s, pos = read_str(pos)
                        out.append(s)
                    vals = tuple(out)
                else:
                    vals = None
                    fast = count >= _FAST_SKIP_MIN and bo == "<" and (
                        "numpy" in sys.modules or count >= _IMPORT_NUMPY_MIN)
                    skip = _skip_strings_fast if fast else _skip_strings_py
                    pos = skip(buf, pos, count, size, path, u64)
            else:
                raise GGUFError(path, f"array {key!r} has unsupported element type {etype}", pos - 12)
            metadata[key] = KVField("ARRAY", vals, VALUE_TYPE_NAMES[etype], count)
        else:
            raise GGUFError(path, f"key {key!r} has unknown value type {vtype}", pos - 4)

    alignment = 32
    al = metadata.get("general.alignment")
    if al is not None:
        if al.type != "UINT32" or al.value == 0 or al.value & (al.value - 1):
            raise GGUFError(path, f"general.alignment must be a power-of-two UINT32, got {al.value!r}")
        alignment = al.value

    raw_tensors = []
    names = set()
    for _ in range(tensor_count):
        tpos = pos
        name, pos = read_str(pos)
        if pos + 4 > size:
            raise GGUFError(path, f"truncated at tensor {name!r}", pos)
        n_dims = u32(buf, pos)[0]
        pos += 4
        if n_dims > GGML_MAX_DIMS:
            raise GGUFError(path, f"tensor {name!r} has {n_dims} dims (max {GGML_MAX_DIMS})", pos - 4)
        if pos + 8 * n_dims + 12 > size:
            raise GGUFError(path, f"truncated at tensor {name!r}", pos)
        dims = struct.unpack_from(f"{bo}{n_dims}Q", buf, pos)
        pos += 8 * n_dims
        ttype = u32(buf, pos)[0]
        offset = u64(buf, pos + 4)[0]
        pos += 12
        if name in names:
            raise GGUFError(path, f"duplicate tensor {name!r}", tpos)
        names.add(name)
        raw_tensors.append((name, dims, ttype, offset, tpos))

    h = _Header()
    h.version = version
    h.byte_order = "big" if bo == ">" else "little"
    h.metadata = metadata
    h.raw_tensors = raw_tensors
    h.alignment = alignment
    h.data_start = pos + (-pos % alignment)
    h.kv_count = kv_count
    h.tensor_count = tensor_count
    return h


def _tensor_infos(h: _Header, size: int, path: str, shard: int) -> tuple[list[TensorInfo], ShardInfo]:
    infos = []
    for name, dims, ttype, offset, tpos in h.raw_tensors:
        if ttype not in GGML_QUANT_SIZES:
            raise GGUFError(path, f"tensor {name!r} has unknown ggml type {ttype}", tpos)
        block, tsize = GGML_QUANT_SIZES[ttype]
        n = 1
        for d in dims:
            n *= d
            if n > INT64_MAX or d > INT64_MAX:  # ggml stores ne as int64: a huge dim is invalid even beside a 0
                raise GGUFError(path, f"tensor {name!r} dims {list(dims)} overflow int64", tpos)
        ne0 = dims[0] if dims else 1  # ggml: missing dims are 1
        if ne0 % block:
            raise GGUFError(path, f"tensor {name!r}: first dim {ne0} is not a multiple of block size {block}"
                            f" of {GGML_TYPE_NAMES[ttype]}", tpos)
        nbytes = n // block * tsize
        if offset % h.alignment:
            raise GGUFError(path, f"tensor {name!r} offset {offset} is not aligned to {h.alignment}", tpos)
        if h.data_start + offset + nbytes > size:
            raise GGUFError(path, f"tensor {name!r} data runs past end of file (truncated?)", h.data_start + offset)
        m = _LAYER_RE.match(name)
        infos.append(TensorInfo(name, ttype, GGML_TYPE_NAMES[ttype], tuple(dims), n, nbytes, offset,
                                h.data_start + offset, shard, int(m.group(1)) if m else None, tensor_role(name)))
    tensor_bytes = sum(t.n_bytes for t in infos)
    # Reconcile: every gap between consecutive tensors, and the tail, is alignment padding.
    reconciled = True
    end = 0
    for t in sorted(infos, key=lambda t: t.offset):
        gap = t.offset - end
        if gap < 0 or gap >= h.alignment:
            reconciled = False
        end = max(end, t.offset + t.n_bytes)
    data_end = h.data_start + end if infos else min(h.data_start, size)
    if not (0 <= size - data_end < h.alignment):
        reconciled = False
    padding = size - (h.data_start if infos else data_end) - tensor_bytes
    header_bytes = h.data_start if infos else data_end
    shard_info = ShardInfo(path, size, h.version, h.byte_order, h.alignment, header_bytes, tensor_bytes, padding,
                           h.tensor_count, h.kv_count, reconciled and header_bytes + tensor_bytes + padding == size)
    return infos, shard_info


def _read_file(path: str, shard: int) -> tuple[_Header, list[TensorInfo], ShardInfo]:
    p = Path(path)
    try:
        if p.is_dir():
            raise ModelFileError(path, "is a directory, not a GGUF file")
        f = open(p, "rb")
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except PermissionError:
        raise ModelFileError(path, "permission denied") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot open ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise GGUFError(path, "empty file, not a GGUF file")
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not mmap-able (pipe, special file): read it
            mm = f.read()
        try:
            h = _parse(mm, len(mm), path)
            infos, shard_info = _tensor_infos(h, len(mm), path, shard)
        finally:
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:  # a numpy view is still alive in a traceback; GC closes it
                    pass
    return h, infos, shard_info


_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_paths(path: str) -> list[str]:
    """All shard paths of a split model (`*-00001-of-0000N.gguf`), or [path]."""
    m = _SPLIT_RE.match(str(path))
    if not m:
        return [str(path)]
    count = int(m.group("count"))
    if count < 1:
        raise GGUFError(str(path), "split count is 0")
    return [f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def load_model(path: str | os.PathLike) -> ModelInfo:
    """Read the header of a GGUF model (all shards of a split model) into a ModelInfo."""
    path = str(path)
    paths = shard_paths(path)
    if len(paths) > 1:
        for i, p in enumerate(paths):
            if not os.path.exists(p):
                raise MissingShardError(p, f"missing shard {i + 1} of {len(paths)} of split model {path}")
    parts = []
    for i, p in enumerate(paths):
        h, infos, shard_info = _read_file(p, i)
        parts.append((h.metadata, infos, shard_info))
    return assemble_model(paths, parts)


def assemble_model(paths: list[str], parts: list[tuple[dict, list, "ShardInfo"]]) -> ModelInfo:
    """One ModelInfo from the parsed shards (metadata, tensors, shard info) of a model, checked together."""
    shards = [p[2] for p in parts]
    tensors: list[TensorInfo] = [t for p in parts for t in p[1]]
    metadata: dict[str, KVField] = parts[0][0]
    if len(paths) > 1:
        declared = metadata.get("split.count")
        if declared is not None and declared.value != len(paths):
            raise GGUFError(paths[0], f"split.count is {declared.value} but the file name says {len(paths)}")
        total = metadata.get("split.tensors.count")
        if total is not None and total.value != len(tensors):
            raise GGUFError(paths[0], f"split.tensors.count is {total.value} but shards hold {len(tensors)}")
    facts = derive_facts(metadata, tensors, paths[0])
    return ModelInfo(paths[0], tuple(shards), MappingProxyType(metadata), tuple(tensors), MappingProxyType(facts))


# ----------------------------------------------------------------------------------------------- facts

def _per_layer(v: Any, n_layer: int) -> list | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return list(v)[:n_layer] + [v[-1]] * max(0, n_layer - len(v)) if v else None
    return [v] * n_layer


_INT_TYPES = frozenset(("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64"))
# llama.cpp's LLAMA_MAX_LAYERS is 512; this looser bound only keeps per-layer work finite.
MAX_BLOCK_COUNT = 1 << 16


def _int_value(md: Mapping[str, KVField], key: str, path: str, bools: bool = False) -> Any:
    """An integer hparam (scalar or kept array), or None if absent; wrong types raise like llama.cpp does."""
    f = md.get(key)
    if f is None:
        return None
    t = f.elem_type if f.type == "ARRAY" else f.type
    if t not in _INT_TYPES and not (bools and t == "BOOL"):
        desc = f"ARRAY of {f.elem_type}" if f.type == "ARRAY" else f.type
        raise GGUFError(path, f"key {key!r} has type {desc}, expected an integer or an array of integers")
    if f.type == "ARRAY" and f.value is None:
        raise GGUFError(path, f"key {key!r} is an array of {f.count} elements, too long for a per-layer value")
    if any(v < 0 for v in (f.value if f.type == "ARRAY" else (f.value,))):
        raise GGUFError(path, f"key {key!r} has a negative value")
    return f.value


def derive_facts(md: Mapping[str, KVField], tensors: Iterable[TensorInfo], path: str = "<metadata>") -> dict[str, Any]:
    """Facts from the metadata; raises GGUFError (naming `path`) for hparams of the wrong type or out of range."""
    def g(key: str) -> Any:
        f = md.get(key)
        return None if f is None else f.value

    arch_f = md.get("general.architecture")
    if arch_f is not None and arch_f.type != "STRING":
        raise GGUFError(path, f"key 'general.architecture' has type {arch_f.type}, expected STRING")
    arch = g("general.architecture")
    a = (lambda k, bools=False: _int_value(md, f"{arch}.{k}", path, bools)) if arch else (lambda k, bools=False: None)
    tensors = list(tensors)
    ftype = g("general.file_type")
    n_layer = a("block_count")
    if isinstance(n_layer, tuple) or (n_layer is not None and n_layer > MAX_BLOCK_COUNT):
        raise GGUFError(path, f"{arch}.block_count is {n_layer!r}, expected an integer <= {MAX_BLOCK_COUNT}")
    n_embd = a("embedding_length")
    n_head = a("attention.head_count")
    n_head_kv = a("attention.head_count_kv")
    n_head_scalar = max(n_head) if isinstance(n_head, tuple) and n_head else n_head
    key_length = a("attention.key_length")
    if key_length is None and n_embd and n_head_scalar:
        key_length = n_embd // n_head_scalar
    value_length = a("attention.value_length")
    if value_length is None:
        value_length = key_length
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (tokens.count if tokens is not None else None)
    if vocab is None:
        emb = next((t for t in tensors if t.name == "token_embd.weight"), None)
        vocab = emb.shape[1] if emb is not None and len(emb.shape) > 1 else None
    swa_pattern = a("attention.sliding_window_pattern", bools=True)
    n_layer_dense = a("leading_dense_block_count")
    facts: dict[str, Any] = {
        "architecture": arch,
        "name": g("general.name"),
        "file_type": ftype,
        "file_type_name": FILE_TYPE_NAMES.get(ftype) if isinstance(ftype, int) else None,
        "quantization_version": g("general.quantization_version"),
        "context_length": a("context_length"),
        "embedding_length": n_embd,
        "block_count": n_layer,
        "feed_forward_length": a("feed_forward_length"),
        "head_count": n_head,
        "head_count_kv": n_head_kv if n_head_kv is not None else n_head,
        "key_length": key_length,
        "value_length": value_length,
        "key_length_swa": a("attention.key_length_swa"),
        "value_length_swa": a("attention.value_length_swa"),
        "rope_dimension_count": a("rope.dimension_count"),
        "vocab_size": vocab,
        "expert_count": a("expert_count"),
        "expert_used_count": a("expert_used_count"),
        "expert_shared_count": a("expert_shared_count"),
        "expert_feed_forward_length": a("expert_feed_forward_length"),
        "expert_shared_feed_forward_length": a("expert_shared_feed_forward_length"),
        "leading_dense_block_count": n_layer_dense,
        "sliding_window": a("attention.sliding_window"),
        "sliding_window_pattern": swa_pattern if swa_pattern is not None else _DEFAULT_SWA_PATTERN.get(arch),
        "q_lora_rank": a("attention.q_lora_rank"),
        "kv_lora_rank": a("attention.kv_lora_rank"),
        "key_length_mla": a("attention.key_length_mla"),
        "value_length_mla": a("attention.value_length_mla"),
        "ssm_conv_kernel": a("ssm.conv_kernel"),
        "ssm_inner_size": a("ssm.inner_size"),
        "ssm_state_size": a("ssm.state_size"),
        "ssm_time_step_rank": a("ssm.time_step_rank"),
        "ssm_group_count": a("ssm.group_count"),
        "wkv_head_size": a("wkv.head_size"),
        "token_shift_count": a("token_shift_count"),
        "recurrent": arch in _RECURRENT_ARCHS if arch else None,
        "tensor_count": len(tensors),
    }
    return facts


def _type_row_bytes(cache_type: str, n: int) -> int:
    t = getattr(_C.GGMLQuantizationType, cache_type.upper(), None)
    if t is None or cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r} (one of {', '.join(KV_CACHE_TYPES)})")
    block, size = GGML_QUANT_SIZES[int(t)]
    return -(-n // block) * size


def kv_cache_layers(facts: Mapping[str, Any], type_k: str = "f16", type_v: str = "f16") -> tuple[LayerKV, ...]:
    """Per-layer KV cost following llama.cpp's llama_hparams (n_embd_k_gqa, is_swa, is_mla, n_embd_r/s)."""
    n_layer = facts.get("block_count")
    if not n_layer:
        return ()
    heads_kv = _per_layer(facts.get("head_count_kv"), n_layer) or [0] * n_layer
    hk, hv = facts.get("key_length") or 0, facts.get("value_length") or 0
    hk_swa = facts.get("key_length_swa") or hk
    hv_swa = facts.get("value_length_swa") or hv
    window = facts.get("sliding_window")
    pat = facts.get("sliding_window_pattern")
    if window and isinstance(pat, tuple) and pat:  # an empty array: no pattern
        is_swa = [bool(x) for x in _per_layer(pat, n_layer)]
    elif window and isinstance(pat, int):
        is_swa = [pat == 0 or (il % pat < pat - 1) for il in range(n_layer)]
    else:
        is_swa = [False] * n_layer
    mla = bool(facts.get("key_length_mla") and facts.get("value_length_mla"))
    state = _recurrent_state_bytes(facts)
    out = []
    for il in range(n_layer):
        recurrent = facts.get("recurrent") or (state and heads_kv[il] == 0)
        if recurrent:
            out.append(LayerKV(il, "recurrent", 0, 0, None, state))
        elif heads_kv[il] == 0:
            out.append(LayerKV(il, "none", 0, 0, None, 0))
        elif is_swa[il]:
            out.append(LayerKV(il, "swa", _type_row_bytes(type_k, heads_kv[il] * hk_swa),
                               _type_row_bytes(type_v, heads_kv[il] * hv_swa), window, 0))
        elif mla:  # the V cache is a view of K: no V bytes
            out.append(LayerKV(il, "mla", _type_row_bytes(type_k, heads_kv[il] * hk), 0, None, 0))
        else:
            out.append(LayerKV(il, "full", _type_row_bytes(type_k, heads_kv[il] * hk),
                               _type_row_bytes(type_v, heads_kv[il] * hv), None, 0))
    return tuple(out)


def _recurrent_state_bytes(facts: Mapping[str, Any]) -> int:
    # f32 states: llama_hparams::n_embd_r() (conv) + n_embd_s() (ssm / wkv)
    n_embd = facts.get("embedding_length") or 0
    if facts.get("wkv_head_size"):
        r = (facts.get("token_shift_count") or 2) * n_embd
        s = n_embd * facts["wkv_head_size"]
        return 4 * (r + s)
    d_conv, d_inner = facts.get("ssm_conv_kernel") or 0, facts.get("ssm_inner_size") or 0
    d_state, n_group = facts.get("ssm_state_size") or 0, facts.get("ssm_group_count") or 0
    if not d_inner:
        return 0
    r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    s = d_state * d_inner
    return 4 * (r + s)


def header_sha256(info: ModelInfo) -> str:
    """sha256 over every shard's header bytes (metadata + tensor infos): identifies the model without reading
    the weights (a receipt's model fingerprint)."""
    import hashlib

    h = hashlib.sha256()
    for s in info.shards:
        with open(s.path, "rb") as f:
            remaining = s.header_bytes
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
    return h.hexdigest()


class HeaderIncomplete(GGUFError):
    """The bytes given end inside the GGUF header: fetch more (hub range reads)."""


def parse_header_bytes(buf: bytes, file_size: int, path: str, shard: int = 0) -> tuple[dict, list, ShardInfo]:
    """Parse a header from the first len(buf) bytes of a file of file_size bytes (a ranged download).

    Tensor extents and the reconciliation are checked against file_size. HeaderIncomplete when buf is shorter
    than the file and ends inside the header."""
    try:
        h = _parse(buf, len(buf), path)
    except GGUFError as e:
        if len(buf) < file_size and not isinstance(e, HeaderIncomplete):
            raise HeaderIncomplete(path, f"the header extends past the first {len(buf)} bytes", e.offset) from None
        raise
    infos, shard_info = _tensor_infos(h, file_size, path, shard)
    return h.metadata, infos, shard_info
