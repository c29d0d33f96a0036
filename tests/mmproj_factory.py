"""A tiny multimodal projector (mmproj) GGUF that llama-server loads with `--mmproj`: a CLIP ViT vision tower
plus a LLaVA-1.5 style two-layer MLP projector (clip.projector_type "mlp").

What llama.cpp requires, cited from tools/mtmd of the source build 11434 (~/.cache/gpcrun/src/llama.cpp-11434.0.0):
- clip.cpp clip_model_loader ctor (l.1221): clip.has_vision_encoder (bool) selects the vision ctx.
- clip.cpp load_hparams: l.1270-1289 clip.projector_type "mlp" (clip-impl.h l.514; unknown -> throw); l.1306-1312
  required u32 clip.vision.{embedding_length, attention.head_count, feed_forward_length, block_count,
  projection_dim} and f32 clip.vision.attention.layer_norm_epsilon; l.1319-1320 clip.vision.image_size / patch_size;
  l.1376-1392 clip.use_gelu false -> FFN_GELU_QUICK (CLIP's quick_gelu); l.1403-1414 image_mean/image_std
  (>= 3 floats, else throw); l.1429-1435 "mlp" sets has_llava_projector.
- clip.cpp load_tensors: l.2253-2268 v.class_embd, v.pre_ln.*, v.patch_embd.weight, v.position_embd.weight (optional
  to the loader, but models/llava.cpp uses patch_embd and position_embd unconditionally); per layer l.2283
  v.blk.N.attn_out.weight and l.2312/2316 ffn_up/ffn_down.weight are required, attn_q/k/v, ln1, ln2 and biases
  optional. ffn_up ne=[n_embd, n_ff] (fixed naming): l.2335-2362 swap up/down only when ffn_down.ne[0] == n_embd.
- clip.cpp l.2367-2388: mm.0.{weight,bias}, mm.2.{weight,bias} (a mm.3 would turn the type into mlp_norm).
- clip.cpp clip_n_mmproj_embd (l.5978-5991): output dim = mm.2.weight ne[1] (mm.2 is dereferenced, so required);
  mtmd.cpp l.603-608 rejects the mmproj unless it equals the text model's n_embd, hence `text_n_embd`.
- models/llava.cpp clip_graph_llava::build: conv2d patch embedding (clip.cpp build_inp l.572-582, kernel
  ne=[p, p, 3, n_embd]), concat class_embd, add get_rows(position_embd, 0..n_pos-1) with n_pos = n_patches + 1,
  pre_ln, layers 0 .. n_layer-2 (LLaVA's default feature layer is the second to last, llava.cpp l.12-29; so
  n_layer=1 runs no encoder layer), then get_rows(patches) -> mm.0 -> gelu -> mm.2.

Weights: 2-D+ tensors F16 (like convert_hf_to_gguf.py), biases/norms/class_embd F32; small seeded random values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType as V

from tests.gguf_factory import KV, T, write_gguf

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP preprocessing constants
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def mmproj_shapes(text_n_embd: int, *, image_size: int = 224, patch_size: int = 14, n_embd: int = 64,
                  n_ff: int = 128, n_layer: int = 2) -> dict[str, tuple[int, ...]]:
    """Tensor name -> numpy shape (reverse of ggml ne) of the mmproj `write_mmproj` writes."""
    n_pos = (image_size // patch_size) ** 2 + 1  # + class token
    s: dict[str, tuple[int, ...]] = {
        "v.class_embd": (n_embd,),
        "v.patch_embd.weight": (n_embd, 3, patch_size, patch_size),  # ne = [p, p, 3, n_embd]
        "v.position_embd.weight": (n_pos, n_embd),
        "v.pre_ln.weight": (n_embd,), "v.pre_ln.bias": (n_embd,),
    }
    for il in range(n_layer):
        b = f"v.blk.{il}"
        for m in ("attn_q", "attn_k", "attn_v", "attn_out"):
            s[f"{b}.{m}.weight"], s[f"{b}.{m}.bias"] = (n_embd, n_embd), (n_embd,)
        for m in ("ln1", "ln2"):
            s[f"{b}.{m}.weight"], s[f"{b}.{m}.bias"] = (n_embd,), (n_embd,)
        s[f"{b}.ffn_up.weight"], s[f"{b}.ffn_up.bias"] = (n_ff, n_embd), (n_ff,)
        s[f"{b}.ffn_down.weight"], s[f"{b}.ffn_down.bias"] = (n_embd, n_ff), (n_embd,)
    # LLaVA-1.5: mm.0 vision n_embd -> text n_embd, GELU, mm.2 text n_embd -> text n_embd
    s["mm.0.weight"], s["mm.0.bias"] = (text_n_embd, n_embd), (text_n_embd,)
    s["mm.2.weight"], s["mm.2.bias"] = (text_n_embd, text_n_embd), (text_n_embd,)
    return s


def write_mmproj(path: str | Path, text_n_embd: int, *, image_size: int = 224, patch_size: int = 14,
                 n_embd: int = 64, n_ff: int = 128, n_layer: int = 2, n_head: int = 4, projector: str = "mlp",
                 seed: int = 0) -> Path:
    """Write a CLIP-ViT + LLaVA "mlp" projector GGUF whose image embeddings have `text_n_embd` columns.

    The encoder sees (image_size // patch_size)**2 patches (+1 class token); llama-server's warm-up reserves the
    compute buffer for one image of image_size x image_size. Returns the written path.
    """
    if projector != "mlp":
        raise ValueError(f"only the LLaVA 'mlp' projector is generated, not {projector!r}")
    if image_size % patch_size or n_embd % n_head:
        raise ValueError("image_size must be a multiple of patch_size and n_embd of n_head")
    if n_ff == n_embd:
        raise ValueError("n_ff == n_embd is ambiguous to clip.cpp's ffn up/down swap check")
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shape in mmproj_shapes(text_n_embd, image_size=image_size, patch_size=patch_size, n_embd=n_embd,
                                     n_ff=n_ff, n_layer=n_layer).items():
        if name.endswith(".weight") and ("ln" in name.rsplit(".", 2)[-2]):
            data = 1.0 + 0.02 * rng.standard_normal(shape)  # layer-norm gains around 1
        else:
            data = 0.02 * rng.standard_normal(shape)
        tensors.append(T(name, data.astype(np.float16 if len(shape) >= 2 else np.float32)))
    kvs = [
        KV("general.name", V.STRING, "tiny-clip-mlp"),
        KV("general.description", V.STRING, "gpcrun test mmproj (random weights)"),
        KV("general.file_type", V.UINT32, 1),  # mostly F16
        KV("clip.has_vision_encoder", V.BOOL, True),
        KV("clip.has_text_encoder", V.BOOL, False),
        KV("clip.has_llava_projector", V.BOOL, True),  # legacy key, read by old builds
        KV("clip.projector_type", V.STRING, projector),
        KV("clip.use_gelu", V.BOOL, False),
        KV("clip.vision.image_size", V.UINT32, image_size),
        KV("clip.vision.patch_size", V.UINT32, patch_size),
        KV("clip.vision.embedding_length", V.UINT32, n_embd),
        KV("clip.vision.feed_forward_length", V.UINT32, n_ff),
        KV("clip.vision.block_count", V.UINT32, n_layer),
        KV("clip.vision.projection_dim", V.UINT32, text_n_embd),
        KV("clip.vision.attention.head_count", V.UINT32, n_head),
        KV("clip.vision.attention.layer_norm_epsilon", V.FLOAT32, 1e-5),
        KV("clip.vision.image_mean", V.ARRAY, CLIP_MEAN, V.FLOAT32),
        KV("clip.vision.image_std", V.ARRAY, CLIP_STD, V.FLOAT32),
    ]
    return write_gguf(path, kvs, tensors, arch="clip")[0]
