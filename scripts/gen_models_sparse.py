"""Per-layer tensors and metadata for gen_models.py's sparse-attention hybrids: glm5-next (GLM-5.3-Flash) and
qwen4exp.

Layouts follow src/models/glm5-next.cpp load_arch_hparams / load_arch_tensors of the pinned llama.cpp. Tensor tuples
are (name, numpy shape, kind) as in gen_models (numpy shapes are ggml ne reversed). The spec's "layout" string
names each layer: "M" Kimi Delta Attention (recurrent, head_count_kv 0), "*" nope-only MLA with a k-pool DSA
indexer. Its memory (llama_memory_hybrid_idx, llama-model.cpp:2457-2500): a K-only MLA cache on the "*" layers,
an indexer key cache (one head of indexer.key_length x 3: key | gate | pooled) on the "*" layers whose
attention.indexer.types entry is 1, and the KDA conv/delta state on the "M" layers.

qwen4exp (src/models/qwen4exp.cpp): qwen35's layers (Gated DeltaNet, and gated attention every
full_attention_interval-th layer) under low-rank hyper-connections (no attn_norm: each layer's two HC mixers carry
the norms), an MoE FFN with a sigmoid-gated shared expert, and QSA on the attention layers: an indexer (q/k
projections and norms) whose key cache (llama_memory_hybrid_idx, llama-model.cpp:2694-2770) holds the raw key and,
with a compress ratio, the pooled key (2 x key_length).

deepseek4 (src/models/deepseek4.cpp): q_lora attention with one shared KV head, attention sinks and a grouped
low-rank output, mHC, MoE with sqrt-softplus routing; per layer a compress ratio (0: the sliding window only, 4: CSA
with a lightning indexer, 128: HCA) deciding which of llama_kv_cache_dsv4's caches and compressor states it has.
"""
from __future__ import annotations

import gguf

import gen_models_hybrid as hybrid

ARCHS = ("glm5-next", "qwen4exp", "deepseek4")
HC = 4  # glm5-next.cpp asserts hyper_connection.count == 4
HC_MIX = (2 + HC) * HC


def layout(spec: dict) -> str:
    if spec["arch"] == "qwen4exp":  # recurrent unless (i + 1) % full_attention_interval == 0 (qwen4exp.cpp:148-155)
        return hybrid.layout({**spec, "arch": "qwen35"})
    assert len(spec["layout"]) == spec["n_layer"], spec
    return spec["layout"]


def output_tensors(spec: dict) -> list:
    e, hc, lr = spec["n_embd"], spec.get("hc", HC), spec.get("hc_low_rank", 0)
    if spec["arch"] == "deepseek4":  # deepseek4.cpp: output_norm plus the final hyper-connection head
        return [("output_norm.weight", (e,), "norm"), ("output_hc_fn.weight", (hc, hc * e), "f32"),
                ("output_hc_base.weight", (hc,), "f32"), ("output_hc_scale.weight", (1,), "f32")]
    if spec["arch"] == "qwen4exp":  # no output_norm: the final hyper-connection mixer carries it
        return [("output_hc_norm.weight", (hc, e), "norm"), ("output_hc_down.weight", (lr, hc * e), "f32"),
                ("output_hc_up.weight", (hc * e, lr), "f32")]
    return [("output_norm.weight", (e,), "norm")]


def _qwen4exp_layer(spec: dict, i: int) -> list:
    # qwen4exp.cpp load_block: two low-rank HC modules (norm gammas {n_embd, hc}, down/up, inject), then the mixer and
    # the MoE FFN with a shared expert gated by ffn_gate_inp_shexp {n_embd}
    b, e, hc, lr = f"blk.{i}", spec["n_embd"], spec["hc"], spec["hc_low_rank"]
    nh, nkv, hd = spec["n_head"], spec["n_head_kv"], spec["head_dim"]
    ts = []
    for part in ("attn", "ffn"):
        ts += [(f"{b}.hc_{part}_norm.weight", (hc, e), "norm"),
               (f"{b}.hc_{part}_down.weight", (lr, hc * e), "f32"),
               (f"{b}.hc_{part}_up.weight", (hc * e, lr), "f32"),
               (f"{b}.hc_{part}_inject.weight", (hc, hc * e), "f32")]
    if layout(spec)[i] == "*":
        ihs = spec["indexer_head_size"]
        ts += [(f"{b}.attn_q.weight", (2 * hd * nh, e), "f16"),  # query and output gate interleaved per head
               (f"{b}.attn_k.weight", (hd * nkv, e), "f16"),
               (f"{b}.attn_v.weight", (hd * nkv, e), "f16"),
               (f"{b}.attn_output.weight", (e, hd * nh), "f16"),
               (f"{b}.attn_q_norm.weight", (hd,), "norm"),
               (f"{b}.attn_k_norm.weight", (hd,), "norm"),
               (f"{b}.indexer.q_proj.weight", (spec["indexer_n_head"] * ihs, e), "f16"),
               (f"{b}.indexer.k_proj.weight", (ihs, e), "f16"),
               (f"{b}.indexer.q_norm.weight", (ihs,), "norm"),
               (f"{b}.indexer.k_norm.weight", (ihs,), "norm")]
    else:
        ts += hybrid._gated_deltanet(b, e, {**spec, "arch": "qwen35"})
    ts += hybrid._experts(b, e, spec["n_expert"], spec["n_ff_exp"])
    return ts + [(f"{b}.ffn_gate_inp_shexp.weight", (e,), "f32")] + hybrid._shexp(b, e, spec["n_ff_shexp"])


def _kda(b: str, e: int, spec: dict) -> list:
    # glm5-next.cpp load_arch_tensors, KDA layer: kimi-linear's shapes, but ssm_a is 1-D {n_head}
    return [(n, (spec["n_head"],) if n.endswith(".ssm_a") else shape, kind)
            for n, shape, kind in hybrid._kda(b, e, spec)]


def _dsa(b: str, e: int, spec: dict, full: bool) -> list:
    # glm5-next.cpp load_arch_tensors, DSA layer: q_lora MLA without rope (n_rot 0), absorbed k_b / v_b; the
    # k-pool indexer's tensors only on "full" layers
    nh, qr, kvr = spec["n_head"], spec["q_lora_rank"], spec["kv_lora_rank"]
    kmla, vd = spec["key_length_mla"], spec["v_head_dim"]
    ts = [(f"{b}.attn_q_a_norm.weight", (qr,), "norm"),
          (f"{b}.attn_kv_a_norm.weight", (kvr,), "norm"),
          (f"{b}.attn_q_a.weight", (qr, e), "f16"),
          (f"{b}.attn_q_b.weight", (nh * kmla, qr), "f16"),
          (f"{b}.attn_kv_a_mqa.weight", (kvr, e), "f16"),
          (f"{b}.attn_k_b.weight", (nh, kvr, kmla), "f16"),
          (f"{b}.attn_v_b.weight", (nh, vd, kvr), "f16"),
          (f"{b}.attn_output.weight", (e, nh * vd), "f16")]
    if full:
        inh, ihs, kp = spec["indexer_n_head"], spec["indexer_head_size"], spec["indexer_kpool"]
        ts += [(f"{b}.indexer.k_norm.weight", (ihs,), "norm"),
               (f"{b}.indexer.k_norm.bias", (ihs,), "f32"),
               (f"{b}.indexer.proj.weight", (inh, e), "f16"),
               (f"{b}.indexer.attn_k.weight", (ihs, e), "f16"),
               (f"{b}.indexer.attn_q_b.weight", (inh * ihs, qr), "f16"),
               (f"{b}.indexer_compressor_gate.weight", (ihs, e), "f16"),
               (f"{b}.indexer_compressor_ape.weight", (kp, ihs), "f32")]
    return ts


def _hc_mix(b: str, e: int) -> list:
    return [(f"{b}.hc_{part}_{name}.weight", shape, "f32") for part in ("attn", "ffn")
            for name, shape in (("fn", (HC_MIX, HC * e)), ("base", (HC_MIX,)), ("scale", (3,)))]


def _deepseek4_layer(spec: dict, i: int) -> list:
    # deepseek4.cpp load_arch_tensors: attn_output_a is {n_head * head_dim / groups, o_lora_rank, groups}; the
    # compressor of a ratio-4 (CSA) layer projects 2 x head_dim (overlapping windows), of a ratio-128 (HCA) layer 1 x
    b, e, nh, hd, qr = f"blk.{i}", spec["n_embd"], spec["n_head"], spec["head_dim"], spec["q_lora_rank"]
    og, olr, ratio = spec["o_groups"], spec["o_lora_rank"], spec["compress_ratios"][i]
    ts = [(f"{b}.attn_norm.weight", (e,), "norm"),
          (f"{b}.attn_sinks.weight", (nh,), "f32"),
          (f"{b}.attn_q_a.weight", (qr, e), "f16"),
          (f"{b}.attn_q_a_norm.weight", (qr,), "norm"),
          (f"{b}.attn_q_b.weight", (nh * hd, qr), "f16"),
          (f"{b}.attn_kv.weight", (hd, e), "f16"),
          (f"{b}.attn_kv_a_norm.weight", (hd,), "norm"),
          (f"{b}.attn_output_a.weight", (og, olr, nh * hd // og), "f16"),
          (f"{b}.attn_output_b.weight", (e, og * olr), "f16")] + _hc_mix(b, e)
    if ratio:
        coff = 2 if ratio == 4 else 1
        ts += [(f"{b}.attn_compressor_kv.weight", (coff * hd, e), "f16"),
               (f"{b}.attn_compressor_gate.weight", (coff * hd, e), "f16"),
               (f"{b}.attn_compressor_ape.weight", (ratio, coff * hd), "f32"),
               (f"{b}.attn_compressor_norm.weight", (hd,), "norm")]
    if ratio == 4:
        inh, ihs = spec["indexer_n_head"], spec["indexer_head_size"]
        ts += [(f"{b}.indexer.proj.weight", (inh, e), "f16"),
               (f"{b}.indexer.attn_q_b.weight", (inh * ihs, qr), "f16"),
               (f"{b}.indexer_compressor_kv.weight", (2 * ihs, e), "f16"),
               (f"{b}.indexer_compressor_gate.weight", (2 * ihs, e), "f16"),
               (f"{b}.indexer_compressor_ape.weight", (ratio, 2 * ihs), "f32"),
               (f"{b}.indexer_compressor_norm.weight", (ihs,), "norm")]
    ts += hybrid._experts(b, e, spec["n_expert"], spec["n_ff_exp"])
    ts += [(f"{b}.exp_probs_b.bias", (spec["n_expert"],), "f32"), (f"{b}.ffn_norm.weight", (e,), "norm")]
    return ts + hybrid._shexp(b, e, spec["n_ff_exp"] * spec["n_expert_shared"])


def layer_tensors(spec: dict, i: int) -> list[tuple[str, tuple[int, ...], str]]:
    if spec["arch"] == "qwen4exp":
        return _qwen4exp_layer(spec, i)
    if spec["arch"] == "deepseek4":
        return _deepseek4_layer(spec, i)
    b, e = f"blk.{i}", spec["n_embd"]
    ts = [(f"{b}.attn_norm.weight", (e,), "norm"), (f"{b}.ffn_norm.weight", (e,), "norm"),
          # mHC: the stream-mixing projections, f32 as the fused HC ops read them
          (f"{b}.hc_attn_fn.weight", (HC_MIX, HC * e), "f32"),
          (f"{b}.hc_attn_base.weight", (HC_MIX,), "f32"),
          (f"{b}.hc_attn_scale.weight", (3,), "f32"),
          (f"{b}.hc_ffn_fn.weight", (HC_MIX, HC * e), "f32"),
          (f"{b}.hc_ffn_base.weight", (HC_MIX,), "f32"),
          (f"{b}.hc_ffn_scale.weight", (3,), "f32")]
    if layout(spec)[i] == "M":
        ts += _kda(b, e, spec)
    else:
        ts += _dsa(b, e, spec, bool(spec["indexer_types"][i]))
    if i < spec["n_dense_lead"]:
        ts += [(f"{b}.ffn_gate.weight", (spec["n_ff"], e), "f16"),
               (f"{b}.ffn_down.weight", (e, spec["n_ff"]), "f16"),
               (f"{b}.ffn_up.weight", (spec["n_ff"], e), "f16")]
    else:
        ts += hybrid._experts(b, e, spec["n_expert"], spec["n_ff_exp"])
        ts += [(f"{b}.exp_probs_b.bias", (spec["n_expert"],), "f32")]
        ts += hybrid._shexp(b, e, spec["n_ff_exp"] * spec["n_expert_shared"])
    return ts


def _qwen4exp_metadata(w, spec: dict) -> None:
    # qwen4exp.cpp load_arch_hparams: qwen35's attention and SSM keys, low-rank HC, QSA indexer (compress ratio
    # per layer, 0 = none), MoE + shared expert; no PLE keys (none of its layers is PLE)
    arch, hd = spec["arch"], spec["head_dim"]
    w.add_head_count(spec["n_head"])
    w.add_head_count_kv(spec["n_head_kv"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_feed_forward_length(spec["n_ff"])
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(spec["n_rot"])
    w.add_rope_dimension_sections(spec["rope_sections"])
    hybrid._ssm_keys(w, spec, spec["dt_rank"])
    w.add_full_attention_interval(spec["full_attention_interval"])
    w.add_expert_count(spec["n_expert"])
    w.add_expert_used_count(spec["n_expert_used"])
    w.add_expert_feed_forward_length(spec["n_ff_exp"])
    w.add_expert_shared_feed_forward_length(spec["n_ff_shexp"])
    w.add_uint32(f"{arch}.hyper_connection.count", spec["hc"])
    w.add_uint32(f"{arch}.hyper_connection.low_rank", spec["hc_low_rank"])
    w.add_uint32(f"{arch}.attention.indexer.head_count", spec["indexer_n_head"])
    w.add_uint32(f"{arch}.attention.indexer.key_length", spec["indexer_head_size"])
    w.add_uint32(f"{arch}.attention.indexer.top_k", spec["indexer_top_k"])
    ratio = spec["compress_ratio"]
    w.add_array(f"{arch}.attention.compress_ratios", [ratio if c == "*" else 0 for c in layout(spec)])


def _deepseek4_metadata(w, spec: dict) -> None:
    # deepseek4.cpp load_arch_hparams; expert_gating_func 4 = LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS (required),
    # hash_layer_count 0 (no token-id routed layers)
    arch, hd = spec["arch"], spec["head_dim"]
    w.add_head_count(spec["n_head"])
    w.add_head_count_kv(1)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(spec["n_rot"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_q_lora_rank(spec["q_lora_rank"])
    w.add_sliding_window(spec["n_swa"])
    w.add_feed_forward_length(spec["n_ff"])
    w.add_expert_count(spec["n_expert"])
    w.add_expert_used_count(spec["n_expert_used"])
    w.add_expert_feed_forward_length(spec["n_ff_exp"])
    w.add_expert_shared_count(spec["n_expert_shared"])
    w.add_expert_weights_scale(1.5)
    w.add_expert_weights_norm(True)
    w.add_uint32(f"{arch}.expert_gating_func", 4)
    w.add_float32(f"{arch}.swiglu_clamp_exp", 10.0)
    w.add_uint32(f"{arch}.attention.indexer.head_count", spec["indexer_n_head"])
    w.add_uint32(f"{arch}.attention.indexer.key_length", spec["indexer_head_size"])
    w.add_uint32(f"{arch}.attention.indexer.top_k", spec["indexer_top_k"])
    w.add_uint32(f"{arch}.attention.output_group_count", spec["o_groups"])
    w.add_uint32(f"{arch}.attention.output_lora_rank", spec["o_lora_rank"])
    w.add_float32(f"{arch}.attention.compress_rope_freq_base", 160000.0)
    w.add_uint32(f"{arch}.hyper_connection.count", HC)
    w.add_uint32(f"{arch}.hyper_connection.sinkhorn_iterations", 20)
    w.add_float32(f"{arch}.hyper_connection.epsilon", 1e-6)
    w.add_uint32(f"{arch}.hash_layer_count", 0)
    w.add_array(f"{arch}.attention.compress_ratios", list(spec["compress_ratios"]))


def write_metadata(w, spec: dict) -> None:
    """glm5-next keys after gen_models' vocab_size / context_length / embedding_length / block_count: MLA as MQA
    (head_count_kv 1 on "*" layers, 0 on KDA layers), key_length = kv_lora_rank (the cached latent, no rope)."""
    if spec["arch"] == "qwen4exp":
        return _qwen4exp_metadata(w, spec)
    if spec["arch"] == "deepseek4":
        return _deepseek4_metadata(w, spec)
    arch = spec["arch"]
    kvr = spec["kv_lora_rank"]
    w.add_head_count(spec["n_head"])
    w.add_head_count_kv([1 if c == "*" else 0 for c in layout(spec)])
    w.add_feed_forward_length(spec["n_ff"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_key_length(kvr)
    w.add_key_length_mla(spec["key_length_mla"])
    w.add_value_length_mla(spec["v_head_dim"])
    w.add_q_lora_rank(spec["q_lora_rank"])
    w.add_kv_lora_rank(kvr)
    w.add_rope_dimension_count(0)  # "GLM5-Next MLA is nope-only"
    w.add_ssm_conv_kernel(spec["d_conv"])
    w.add_kda_head_dim(spec["kda_head_dim"])
    w.add_expert_count(spec["n_expert"])
    w.add_expert_used_count(spec["n_expert_used"])
    w.add_expert_feed_forward_length(spec["n_ff_exp"])
    w.add_expert_shared_count(spec["n_expert_shared"])
    w.add_leading_dense_block_count(spec["n_dense_lead"])
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_uint32(f"{arch}.attention.indexer.head_count", spec["indexer_n_head"])
    w.add_uint32(f"{arch}.attention.indexer.key_length", spec["indexer_head_size"])
    w.add_uint32(f"{arch}.attention.indexer.top_k", spec["indexer_top_k"])
    w.add_uint32(f"{arch}.attention.indexer.kpool", spec["indexer_kpool"])
    w.add_array(f"{arch}.attention.indexer.types", [int(x) for x in spec["indexer_types"]])
    w.add_uint32(f"{arch}.hyper_connection.count", HC)
    w.add_uint32(f"{arch}.hyper_connection.sinkhorn_iterations", 20)
    w.add_float32(f"{arch}.hyper_connection.epsilon", 1e-6)
