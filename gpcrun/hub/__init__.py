"""Hugging Face Hub refs: inspect and plan a model from its GGUF header before downloading it.

Refs (accepted wherever a MODEL is):
  hf://OWNER/REPO/path/FILE.gguf          one file (a split model's shard name means all N shards)
  hf://OWNER/REPO@REVISION/path/FILE.gguf   at a branch, tag, commit or refs/pr/N
  OWNER/REPO:QUANT  (or hf://OWNER/REPO[@REV]:QUANT)   like llama.cpp's -hf: the .gguf whose name carries QUANT
  OWNER/REPO        (or hf://OWNER/REPO[@REV])         Q4_K_M, else Q8_0, else the first model .gguf

Header reads (load_ref_header) use HTTP range requests, never the whole file: the sparse header walk of
gpcrun/model/sparse.py over a ranged-HTTP byte source, capped at MAX_HEADER_READ bytes per file.
  refs.py     parsing refs and choosing a repo's files
  resolve.py  ref -> commit and files, the listing and header caches, load_ref_header, download_model
  http.py     ranged HTTP (_RemoteFile), session and headers, one-line hub errors
"""
from __future__ import annotations

from ..model.source import KIB, MAX_READAHEAD, MIB, PROBE_READ
from ..model.sparse import INITIAL_READ, SKIP_MIN_BYTES
from .http import MAX_HEADER_READ, _fetch_header, _RemoteFile
from .refs import DEFAULT_QUANTS, HubRef, is_hub_ref, parse_ref, quant_tag, select_files, select_sibling
from .resolve import describe, download_model, hub_argv, load_ref_header, resolve

__all__ = [
    "DEFAULT_QUANTS", "INITIAL_READ", "KIB", "MAX_HEADER_READ", "MAX_READAHEAD", "MIB", "PROBE_READ",
    "SKIP_MIN_BYTES", "HubRef", "describe", "download_model", "hub_argv", "is_hub_ref", "load_ref_header",
    "parse_ref", "quant_tag", "resolve", "select_files", "select_sibling", "_RemoteFile", "_fetch_header",
]
