"""What a GGUF header says about a model, as frozen values: KVField, TensorInfo, ShardInfo, ModelInfo, and the
tensor roles (llama.cpp tensor names -> token_embedding, attention, routed_experts ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from .layouts import layout_notes
from .kvcache import LayerKV, kv_cache_layers


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
            "layout_notes": list(layout_notes(self.facts, self.tensors)),
            "metadata": {k: v.to_json() for k, v in self.metadata.items()},
            "tensors": [t.to_json() for t in self.tensors],
        }
