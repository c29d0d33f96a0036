"""Where llama.cpp puts each weight: the per-layer byte table (LayoutTable), the layer -> device rule, `-ot` buffer
names, and the CPU weight-repacking rules.

Placement follows llama.cpp's own rules (src/llama-model.cpp load_tensors, common/arg.cpp):
- `-ngl N` offloads the output layer and the last N-1 repeating layers: i_gpu_start = max(n_layer + 1 - N, 0);
- the input layer (token_embd) always stays on the CPU; a tied output head is duplicated onto the output
  layer's device (TENSOR_DUPLICATED) when that device is not the CPU;
- `--n-cpu-moe K` adds overrides `blk\\.i\\.ffn_(up|down|gate|gate_up)_(ch|)exps` -> CPU for i < K; user `-ot`
  overrides come first and the first match wins;
- KV cache of a layer lives on that layer's device unless `-nkvo` (kv.py).
"""
from __future__ import annotations

import bisect
import re
from typing import Sequence

from ..model import ModelInfo
from ..model.layouts import MTP_SKIPPED, layout
from .constants import EXPS_REGEX
from .types import Placement


# architectures whose output norm is stored as token_embd_norm (LLM_TENSOR_OUTPUT_NORM_LFM2, llama-arch.cpp): an
# output-layer tensor there, an input-layer one elsewhere
_OUTPUT_EMBD_NORM = frozenset(("lfm2", "lfm2moe"))


def loaded_tensors(model: ModelInfo, load_mtp: bool = False) -> tuple:
    """The model's tensors less those llama.cpp skips: the NextN/MTP blocks (index >= block_count -
    nextn_predict_layers) of the architectures that load them only for MTP speculation (layouts.MTP_SKIPPED)."""
    f = model.facts
    n_trunk = int(f.get("block_count") or 0) - int(f.get("nextn_predict_layers") or 0)
    if load_mtp or not f.get("nextn_predict_layers") or f.get("architecture") not in MTP_SKIPPED:
        return tuple(model.tensors)
    return tuple(t for t in model.tensors if t.layer is None or t.layer < n_trunk)


class LayoutTable:
    """Per-layer byte sums the search needs, computed once per model (and per user -ot list)."""

    def __init__(self, model: ModelInfo, overrides: Sequence[tuple[str, str]] = (), n_gpus: int = 0,
                 repack_types: frozenset = frozenset(), load_mtp: bool = False):
        f = model.facts
        self.model = model
        self.n_layer = int(f.get("block_count") or 0)
        self.memory_layout = layout(f)  # which blocks hold KV / recurrent state (model/layouts.py)
        # the tensors llama.cpp loads: NextN/MTP blocks are skipped unless llama-server runs MTP (layouts.py)
        self.tensors = loaded_tensors(model, load_mtp)
        self.n_expert = f.get("expert_count") or 0
        self.n_expert_used = f.get("expert_used_count") or 0
        self.n_vocab = f.get("vocab_size") or 0
        names = {t.name for t in self.tensors}
        self.tied_output = "output.weight" not in names and "token_embd.weight" in names
        frac = (self.n_expert_used / self.n_expert) if self.n_expert else 1.0
        user = [(re.compile(p), _buft_device(b, n_gpus)) for p, b in overrides]
        L = self.n_layer
        # per layer: [dense bytes, expert bytes, dense read/token, expert read/token]; index L = output layer
        self.layer = [[0, 0, 0, 0] for _ in range(L + 1)]
        self.fixed: list[tuple[int, int, int]] = []  # (device, bytes, read bytes) pinned by -ot or the input layer
        # file extents (shard, start, end) per layer group and of the fixed tensors: llama.cpp maps the span
        # from the first to the last CPU tensor of each shard, so that is what the host holds (plan_accuracy.py)
        # [all tensors, without repackable ones] x [dense, experts]; repacked CPU weights leave the mapping for a
        # CPU_REPACK buffer of the same size (ggml-cpu repack.cpp asserts size == ggml_nbytes)
        self.layer_extent: list[list[list[dict]]] = [[[{}, {}], [{}, {}]] for _ in range(self.n_layer + 1)]
        self.layer_repack: list[list[int]] = [[0, 0] for _ in range(self.n_layer + 1)]
        self.fixed_extent: list[tuple[int, int, int, int, int]] = []  # (device, shard, start, end, repack bytes)
        self.embd_bytes = 0
        self.embd_row_bytes = 0
        self.is_moe = False
        arch = f.get("architecture")
        for t in self.tensors:
            is_exps = bool(re.search(EXPS_REGEX, t.name))
            self.is_moe |= is_exps
            read = int(t.n_bytes * frac) if is_exps else t.n_bytes
            dev = next((d for rx, d in user if d is not None and rx.search(t.name)), None)
            if t.name == "token_embd.weight":
                self.embd_bytes = t.n_bytes
                self.embd_row_bytes = t.n_bytes // max(1, self.n_vocab)
                read = self.embd_row_bytes
            ext = (t.shard, t.file_offset, t.file_offset + t.n_bytes)
            rp = t.n_bytes if _repackable(t, repack_types) else 0
            if dev is not None:
                self.fixed.append((dev, t.n_bytes, read))
                self.fixed_extent.append((dev, *ext, rp))
                continue
            if t.layer is not None and t.layer < L:
                row = self.layer[t.layer]
            elif t.name.startswith("output") or (t.name == "token_embd_norm.weight" and arch in _OUTPUT_EMBD_NORM):
                row = self.layer[L]
            else:  # input layer and other globals stay on the CPU
                self.fixed.append((0, t.n_bytes, read))
                self.fixed_extent.append((0, *ext, 0))
                continue
            il = t.layer if (t.layer is not None and t.layer < L) else L
            g = 1 if is_exps else 0
            _widen(self.layer_extent[il][0][g], ext)
            if rp:
                self.layer_repack[il][g] += rp
            else:
                _widen(self.layer_extent[il][1][g], ext)
            if is_exps:
                row[1] += t.n_bytes
                row[3] += read
            else:
                row[0] += t.n_bytes
                row[2] += read
        self._kv_cache: dict[tuple[str, str], tuple] = {}

    def kv_layers(self, type_k: str, type_v: str):
        key = (type_k, type_v)
        if key not in self._kv_cache:
            self._kv_cache[key] = self.model.kv_layers(type_k, type_v)
        return self._kv_cache[key]

    def host_mapped_bytes(self, pl: "Placement", n_gpus: int) -> int:
        """Host bytes llama.cpp holds for CPU weights: per shard, the span from the first to the last mapped CPU
        tensor, plus repacked tensors (their own CPU_REPACK buffer) when repacking is on."""
        span: dict[int, list[int]] = {}
        repacked = 0
        which = 1 if pl.repack else 0
        for dev, shard, lo, hi, rp in self.fixed_extent:
            if dev == 0:
                if pl.repack and rp:
                    repacked += rp
                else:
                    _widen(span, (shard, lo, hi))
        L = self.n_layer
        for il in range(L + 1):
            d = _layer_device(il, L, pl.ngl, n_gpus, pl.splits)
            ext = self.layer_extent[il][which]
            for g, on_cpu in ((0, d == 0), (1, d == 0 or il < pl.n_cpu_moe)):
                if not on_cpu:
                    continue
                for shard, (lo, hi) in ext[g].items():
                    _widen(span, (shard, lo, hi))
                if pl.repack:
                    repacked += self.layer_repack[il][g]
        return sum(hi - lo for lo, hi in span.values()) + repacked

    def weights_by_device(self, pl: "Placement", n_gpus: int) -> tuple[list[int], list[int]]:
        """(bytes held, bytes read per generated token) per device index (0 = CPU)."""
        held = [0] * (n_gpus + 1)
        read = [0] * (n_gpus + 1)
        for dev, b, r in self.fixed:
            held[dev] += b
            read[dev] += r
        L = self.n_layer
        for il in range(L + 1):
            d = _layer_device(il, L, pl.ngl, n_gpus, pl.splits)
            dense_b, exp_b, dense_r, exp_r = self.layer[il]
            held[d] += dense_b
            read[d] += dense_r
            de = 0 if il < pl.n_cpu_moe else d
            held[de] += exp_b
            read[de] += exp_r
        out_dev = _layer_device(L, L, pl.ngl, n_gpus, pl.splits)
        if self.tied_output:
            if out_dev != 0:  # TENSOR_DUPLICATED: a second copy on the output device, read in full
                held[out_dev] += self.embd_bytes
                read[out_dev] += self.embd_bytes
            else:  # the CPU copy also serves as the output matmul
                read[0] += self.embd_bytes - self.embd_row_bytes
        return held, read


# ggml-cpu repack.cpp ggml_repack_get_optimal_repack_type: weight types moved to CPU_REPACK, by CPU features.
_REPACK_X86_AVX2 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_REPACK_ARM_DOTPROD = frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})


def repack_types_for(isa: Sequence[str] | None) -> frozenset:
    """The ggml types this CPU repacks (x86 rules checked against llama.cpp here; ARM rules from the source)."""
    flags = {f.lower() for f in (isa or ())}
    if "avx2" in flags:
        return _REPACK_X86_AVX2 | ({"Q2_K"} if "avx512f" in flags else set())
    if "asimddp" in flags or "dotprod" in flags:
        return _REPACK_ARM_DOTPROD
    return frozenset()


def _repackable(t, types: frozenset) -> bool:
    # MUL_MAT (2-D) and MUL_MAT_ID (3-D experts) weights only; the token embedding is read by GET_ROWS
    if t.type_name not in types or t.name.startswith("token_embd") or len(t.shape) not in (2, 3):
        return False
    return t.shape[1] % 8 == 0


def _widen(span: dict, ext: tuple[int, int, int]) -> None:
    shard, lo, hi = ext
    cur = span.get(shard)
    span[shard] = [lo, hi] if cur is None else [min(cur[0], lo), max(cur[1], hi)]


def _layer_device(il: int, n_layer: int, ngl: int, n_gpus: int, splits: tuple[float, ...] = ()) -> int:
    """Device index for layer il (n_layer = output layer): 0 = CPU, 1.. = GPUs.

    llama-model.cpp: GPU = upper_bound(cumulative splits, (il - i_gpu_start) / ngl), the splits being -ts or
    each device's free memory; equal shares when none are given."""
    if n_gpus == 0:
        return 0
    ngl = max(0, min(ngl, n_layer + 1))
    i_gpu_start = max(n_layer + 1 - ngl, 0)
    if il < i_gpu_start or il - i_gpu_start >= ngl:
        return 0
    x = (il - i_gpu_start) / ngl
    if splits and len(splits) == n_gpus:
        return 1 + min(n_gpus - 1, bisect.bisect_right(splits, x))
    return 1 + min(n_gpus - 1, int(x * n_gpus))


def _buft_device(buft: str, n_gpus: int) -> int | None:
    b = buft.upper()
    if b.startswith("CPU"):
        return 0
    m = re.search(r"(\d+)$", b)
    if m and n_gpus:
        return 1 + min(int(m.group(1)), n_gpus - 1)
    return None
