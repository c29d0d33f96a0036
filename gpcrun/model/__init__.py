"""GGUF header -> frozen ModelInfo. The only package that reads GGUF files.

Reads only the header (metadata and tensor infos), never tensor data.
  ggml.py     the GGUF / ggml type tables (one copy for every reader)
  reader.py   the binary reader: header walk, metadata KVs, tensor infos, header-prefix parsing
  info.py     KVField, TensorInfo, ShardInfo, ModelInfo, tensor roles
  facts.py    architecture facts from the metadata
  kvcache.py  KV-cache bytes per token, layer by layer
  shards.py   split-shard names, load_model, header_sha256
  source.py   a random-access byte source (ranges fetched on demand and kept)
  sparse.py   the sparse header walk over a byte source (hub range reads), with probe.py finding where a
              skipped string array ends; these three are imported by their users, not here
"""
from __future__ import annotations

from .facts import MAX_BLOCK_COUNT, derive_facts
from .ggml import (FILE_TYPE_NAMES, GGML_MAX_DIMS, GGML_QUANT_SIZES, GGML_TYPE_NAMES, GGUF_MAGIC, INT64_MAX,
                   SUPPORTED_VERSIONS, VALUE_TYPE_NAMES)
from .info import ROLES, KVField, ModelInfo, ShardInfo, TensorInfo, tensor_role
from .kvcache import KV_CACHE_TYPES, LayerKV, kv_cache_layers
from .reader import (_FAST_SKIP_MIN, MAX_KEPT_ARRAY, HeaderIncomplete, _skip_strings_fast, _skip_strings_py,
                     parse_header_bytes)
from .shards import SPLIT_RE, assemble_model, header_sha256, load_model, shard_paths

__all__ = [
    "FILE_TYPE_NAMES", "GGML_MAX_DIMS", "GGML_QUANT_SIZES", "GGML_TYPE_NAMES", "GGUF_MAGIC", "INT64_MAX",
    "KV_CACHE_TYPES", "MAX_BLOCK_COUNT", "MAX_KEPT_ARRAY", "ROLES", "SPLIT_RE", "SUPPORTED_VERSIONS",
    "VALUE_TYPE_NAMES", "HeaderIncomplete", "KVField", "LayerKV", "ModelInfo", "ShardInfo", "TensorInfo",
    "assemble_model", "derive_facts", "header_sha256", "kv_cache_layers", "load_model", "parse_header_bytes",
    "shard_paths", "tensor_role", "_FAST_SKIP_MIN", "_skip_strings_fast", "_skip_strings_py",
]
