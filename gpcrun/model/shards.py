"""Models as files: split-shard names, loading every shard of a model and checking them together, and the
header fingerprint of a receipt."""
from __future__ import annotations

import os
import re
from types import MappingProxyType

from ..errors import GGUFError, MissingShardError
from .facts import derive_facts
from .info import KVField, ModelInfo, ShardInfo, TensorInfo
from .reader import _read_file

# The one split-name pattern (hub file selection uses it too). llama.cpp reads split names two ways: its hub
# download matches "^(.+)-([0-9]{5})-of-([0-9]{5})$" case-insensitively on the name less ".gguf"
# (common/download.cpp, get_gguf_split_info), and its model loader takes the exact suffix "-%05d-of-%05d.gguf"
# after a non-empty prefix (src/llama.cpp, llama_split_prefix): shard_paths adds that case check.
SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def shard_paths(path: str) -> list[str]:
    """All shard paths of a split model (`*-00001-of-0000N.gguf`), or [path]."""
    m = SPLIT_RE.match(str(path))
    if not m or not m.group(0).endswith(f"-{m.group('no')}-of-{m.group('count')}.gguf"):
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

