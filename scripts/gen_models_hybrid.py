"""Per-layer tensors and metadata for gen_models.py's hybrid-memory models (attention KV cache + recurrent state).

Layouts follow the llama.cpp loaders (src/models/<arch>.cpp load_arch_hparams / load_arch_tensors) and what
convert_hf_to_gguf (conversion/<family>.py) writes. Tensor tuples are (name, numpy shape, kind) as in gen_models:
numpy shapes are ggml ne reversed; kinds are gen_models.tensor_data's ("f16", "f32", "norm", "ssm_a", "ssm_dt_b").
Which tensors stay f32 mirrors convert_hf_to_gguf's rule (conversion/base.py): 1-D, *_norm.weight, names not ending
in .weight (ssm_a, ssm_d, biases), ffn_gate_inp, ssm_conv1d (and Kimi's ssm_conv1d_q/k/v) and shortconv.conv.

A spec's "layout" string names each layer's mixer: "M" recurrent (Mamba-1/2, Gated DeltaNet, short conv, Kimi
Delta Attention or lightning attention, per arch), "*" attention, "-" MLP only (nemotron_h), "H" attention and Mamba-2
side by side (falcon-h1).
"""
from __future__ import annotations

import gguf

ARCHS = ("qwen35", "granitehybrid", "falcon-h1", "lfm2", "nemotron_h", "jamba", "qwen3next", "kimi-linear",
         "minimax-01")
# Archs whose output projection is tied to token_embd (no output.weight), as their real checkpoints are
TIED_OUTPUT = ("lfm2",)


def layout(spec: dict) -> str:
    if spec["arch"] in ("qwen35", "qwen3next", "minimax-01"):
        # qwen35.cpp / qwen3next.cpp / minimax-01.cpp load_arch_hparams (no attention.recurrent_layers key): recurrent
        # unless (i + 1) % full_attention_interval == 0; the interval defaults to 4, or 8 for minimax-01
        k = spec["full_attention_interval"]
        return "".join("*" if (i + 1) % k == 0 else "M" for i in range(spec["n_layer"]))
    if spec["arch"] == "falcon-h1":
        return "H" * spec["n_layer"]  # falcon-h1.cpp: every layer is recurrent and has attention
    assert len(spec["layout"]) == spec["n_layer"], spec
    return spec["layout"]


def output_norm_name(arch: str) -> str:
    # LLM_TENSOR_OUTPUT_NORM_LFM2 is "token_embd_norm" (llama-arch.cpp), though it is the final norm
    return "token_embd_norm.weight" if arch == "lfm2" else "output_norm.weight"


def _qkvo(b: str, e: int, nq: int, nk: int, nv: int, no: int) -> list:
    # create_tensor_qkv (llama-model.cpp): separate attn_q/k/v, ggml {n_embd, n}; attn_output {no, n_embd}
    return [(f"{b}.attn_q.weight", (nq, e), "f16"),
            (f"{b}.attn_k.weight", (nk, e), "f16"),
            (f"{b}.attn_v.weight", (nv, e), "f16"),
            (f"{b}.attn_output.weight", (e, no), "f16")]


def _mlp(b: str, e: int, ff: int, gate: bool = True) -> list:
    ts = [(f"{b}.ffn_gate.weight", (ff, e), "f16")] if gate else []
    return ts + [(f"{b}.ffn_down.weight", (e, ff), "f16"),
                 (f"{b}.ffn_up.weight", (ff, e), "f16")]


def mamba2_mixer(b: str, e: int, spec: dict, nh: int) -> list:
    """Mamba-2 mixer as mamba2.cpp, granite-hybrid.cpp, falcon-h1.cpp and nemotron-h.cpp load it (same shapes).

    nh: SSM heads (ssm.time_step_rank), d_inner / SSM head size."""
    di, ds, ng, dc = spec["d_inner"], spec["d_state"], spec["n_group"], spec["d_conv"]
    conv = di + 2 * ng * ds
    return [(f"{b}.ssm_in.weight", (di + conv + nh, e), "f16"),  # z, xBC, dt
            (f"{b}.ssm_conv1d.weight", (conv, dc), "f32"),
            (f"{b}.ssm_conv1d.bias", (conv,), "f32"),
            (f"{b}.ssm_dt.bias", (nh,), "ssm_dt_b"),
            (f"{b}.ssm_a", (nh, 1), "ssm_a"),  # no .weight suffix (tn(LLM_TENSOR_SSM_A, i))
            (f"{b}.ssm_d", (nh, 1), "norm"),
            (f"{b}.ssm_norm.weight", (ng, di // ng), "norm"),
            (f"{b}.ssm_out.weight", (e, di), "f16")]


def ssm_heads(spec: dict) -> int:
    return spec["d_inner"] // spec["ssm_head_dim"]


def _gated_deltanet(b: str, e: int, spec: dict) -> list:
    # qwen35.cpp / qwen3next.cpp load_block_trunk: key heads = ssm.group_count, value heads = ssm.time_step_rank, both
    # of size ssm.state_size; the fused qkv + gate projections (attn_qkv, attn_gate) are what the graph uses (the
    # legacy ssm_in is optional). Qwen3.5 has separate ssm_beta / ssm_alpha; Qwen3-Next one ssm_ba {n_embd, 2 * nv}.
    ds, dc = spec["d_state"], spec["d_conv"]
    kd, vd, nv = ds * spec["n_group"], ds * spec["dt_rank"], spec["dt_rank"]
    if spec["arch"] == "qwen3next":
        ba = [(f"{b}.ssm_ba.weight", (2 * nv, e), "f16")]
    else:
        ba = [(f"{b}.ssm_beta.weight", (nv, e), "f16"), (f"{b}.ssm_alpha.weight", (nv, e), "f16")]
    return [(f"{b}.attn_qkv.weight", (2 * kd + vd, e), "f16"),
            (f"{b}.attn_gate.weight", (vd, e), "f16"),
            (f"{b}.ssm_conv1d.weight", (2 * kd + vd, dc), "f32"),
            (f"{b}.ssm_dt.bias", (nv,), "ssm_dt_b"),
            (f"{b}.ssm_a", (nv,), "ssm_a"),  # LLM_TENSOR_SSM_A_NOSCAN, no suffix
            *ba,
            (f"{b}.ssm_norm.weight", (ds,), "norm"),
            (f"{b}.ssm_out.weight", (e, vd), "f16")]


def _mamba1_mixer(b: str, e: int, spec: dict) -> list:
    # jamba.cpp: Mamba-1 with dt/B/C RMS norms; A is {d_state, d_inner}, D and the dt bias are per channel
    di, ds, dc, dtr = spec["d_inner"], spec["d_state"], spec["d_conv"], spec["dt_rank"]
    return [(f"{b}.ssm_in.weight", (2 * di, e), "f16"),
            (f"{b}.ssm_conv1d.weight", (di, dc), "f32"),
            (f"{b}.ssm_conv1d.bias", (di,), "f32"),
            (f"{b}.ssm_x.weight", (dtr + 2 * ds, di), "f16"),
            (f"{b}.ssm_dt_norm.weight", (dtr,), "norm"),
            (f"{b}.ssm_dt.weight", (di, dtr), "f16"),
            (f"{b}.ssm_dt.bias", (di,), "ssm_dt_b"),
            (f"{b}.ssm_b_norm.weight", (ds,), "norm"),
            (f"{b}.ssm_c_norm.weight", (ds,), "norm"),
            (f"{b}.ssm_a", (di, ds), "ssm_a"),
            (f"{b}.ssm_d", (di,), "norm"),
            (f"{b}.ssm_out.weight", (e, di), "f16")]


def _shortconv(b: str, e: int, spec: dict) -> list:
    # lfm2.cpp: gated short convolution, conv ggml {l_cache, n_embd}
    return [(f"{b}.shortconv.conv.weight", (e, spec["l_cache"]), "f32"),
            (f"{b}.shortconv.in_proj.weight", (3 * e, e), "f16"),
            (f"{b}.shortconv.out_proj.weight", (e, e), "f16")]


def _attn_moe_keys(w, spec: dict, hd: int, eps: float) -> None:
    """The attention and MoE keys qwen3next and minimax-01 write alike (their converters' TextModel base)."""
    w.add_feed_forward_length(spec["n_ff"])
    w.add_head_count_kv(spec["n_head_kv"])
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(eps)
    w.add_expert_count(spec["n_expert"])
    w.add_expert_used_count(spec["n_expert_used"])
    w.add_key_length(hd)
    w.add_value_length(hd)


def _experts(b: str, e: int, ne: int, ff: int) -> list:
    # router f32 (convert_hf_to_gguf keeps ffn_gate_inp f32); experts ggml {n_embd, ff, ne} / {ff, n_embd, ne}
    return [(f"{b}.ffn_gate_inp.weight", (ne, e), "f32"),
            (f"{b}.ffn_gate_exps.weight", (ne, ff, e), "f16"),
            (f"{b}.ffn_down_exps.weight", (ne, e, ff), "f16"),
            (f"{b}.ffn_up_exps.weight", (ne, ff, e), "f16")]


def _shexp(b: str, e: int, ff: int) -> list:
    return [(f"{b}.ffn_gate_shexp.weight", (ff, e), "f16"),
            (f"{b}.ffn_down_shexp.weight", (e, ff), "f16"),
            (f"{b}.ffn_up_shexp.weight", (ff, e), "f16")]


def _kda(b: str, e: int, spec: dict) -> list:
    # kimi-linear.cpp load_arch_tensors, KDA layer: n_head heads of kda.head_dim; q/k/v each get their own short conv,
    # ggml {d_conv, 1, d_inner, 1} as conversion/kimi_linear.py writes it (kept f32); A is {1, n_head, 1, 1}
    hd, nh, dc = spec["kda_head_dim"], spec["n_head"], spec["d_conv"]
    di = hd * nh
    return [(f"{b}.ssm_conv1d_q.weight", (1, di, 1, dc), "f32"),
            (f"{b}.ssm_conv1d_k.weight", (1, di, 1, dc), "f32"),
            (f"{b}.ssm_conv1d_v.weight", (1, di, 1, dc), "f32"),
            (f"{b}.attn_q.weight", (di, e), "f16"),
            (f"{b}.attn_k.weight", (di, e), "f16"),
            (f"{b}.attn_v.weight", (di, e), "f16"),
            (f"{b}.ssm_f_a.weight", (hd, e), "f16"),  # f_a_proj, f_b_proj: the low-rank forget gate
            (f"{b}.ssm_f_b.weight", (di, hd), "f16"),
            (f"{b}.ssm_beta.weight", (nh, e), "f16"),
            (f"{b}.ssm_a", (1, 1, nh, 1), "ssm_a"),  # LLM_TENSOR_SSM_A_NOSCAN, no suffix; ggml {1, n_head, 1, 1}
            (f"{b}.ssm_dt.bias", (di,), "ssm_dt_b"),  # per channel, not per head
            (f"{b}.ssm_g_a.weight", (hd, e), "f16"),  # g_a_proj, g_b_proj: the output gate
            (f"{b}.ssm_g_b.weight", (di, hd), "f16"),
            (f"{b}.ssm_norm.weight", (hd,), "norm"),
            (f"{b}.attn_output.weight", (e, di), "f16")]


def _mla_kimi(b: str, e: int, spec: dict) -> list:
    # kimi-linear.cpp load_arch_tensors, MLA layer: no q_lora (q_lora_rank is not read, so attn_q is the full Q
    # projection); kv_b split for the absorbed path as conversion/kimi_linear.py does: attn_k_b ggml
    # {qk_nope, kv_lora, n_head} (transposed), attn_v_b {kv_lora, v_head_dim, n_head}
    nh, kvr, rope = spec["n_head"], spec["kv_lora_rank"], spec["qk_rope_head_dim"]
    nope, vd = spec["qk_nope_head_dim"], spec["v_head_dim"]
    return [(f"{b}.attn_kv_a_norm.weight", (kvr,), "norm"),
            (f"{b}.attn_q.weight", (nh * (nope + rope), e), "f16"),
            (f"{b}.attn_kv_a_mqa.weight", (kvr + rope, e), "f16"),
            (f"{b}.attn_k_b.weight", (nh, kvr, nope), "f16"),
            (f"{b}.attn_v_b.weight", (nh, vd, kvr), "f16"),
            (f"{b}.attn_output.weight", (e, nh * vd), "f16")]


def layer_tensors(spec: dict, i: int) -> list[tuple[str, tuple[int, ...], str]]:
    arch, e, b = spec["arch"], spec["n_embd"], f"blk.{i}"
    kind = layout(spec)[i]
    nh, nkv = spec["n_head"], spec["n_head_kv"]
    hd = spec.get("head_dim", e // nh)
    norm = [(f"{b}.attn_norm.weight", (e,), "norm")]
    if arch == "qwen35":
        ts = norm + [(f"{b}.post_attention_norm.weight", (e,), "norm")]
        if kind == "*":
            # attn_q carries query and output gate interleaved per head: 2 * head_dim * n_head rows
            ts += _qkvo(b, e, 2 * hd * nh, hd * nkv, hd * nkv, hd * nh)
            ts += [(f"{b}.attn_q_norm.weight", (hd,), "norm"), (f"{b}.attn_k_norm.weight", (hd,), "norm")]
        else:
            ts += _gated_deltanet(b, e, spec)
        return ts + _mlp(b, e, spec["n_ff"])
    if arch == "granitehybrid":
        if kind == "M":
            ts = norm + mamba2_mixer(b, e, spec, ssm_heads(spec))
        else:
            ts = norm + _qkvo(b, e, hd * nh, hd * nkv, hd * nkv, hd * nh)
        return ts + [(f"{b}.ffn_norm.weight", (e,), "norm")] + _mlp(b, e, spec["n_ff"])
    if arch == "falcon-h1":
        ts = mamba2_mixer(b, e, spec, ssm_heads(spec)) + _qkvo(b, e, hd * nh, hd * nkv, hd * nkv, hd * nh) + norm
        # falcon-h1.cpp: tn(LLM_TENSOR_FFN_NORM, i) has no suffix; the converter maps the full HF name
        # "pre_ff_layernorm.weight" (FFN_PRE_NORM, tensor_mapping.py) and so writes "blk.N.ffn_norm"
        return ts + [(f"{b}.ffn_norm", (e,), "norm")] + _mlp(b, e, spec["n_ff"])
    if arch == "lfm2":
        ts = [(f"{b}.ffn_norm.weight", (e,), "norm")] + _mlp(b, e, spec["n_ff"]) + norm
        if kind == "*":
            ts += [(f"{b}.attn_q_norm.weight", (hd,), "norm"), (f"{b}.attn_k_norm.weight", (hd,), "norm")]
            return ts + _qkvo(b, e, e, hd * nkv, hd * nkv, e)
        return ts + _shortconv(b, e, spec)
    if arch == "nemotron_h":
        if kind == "M":
            return norm + mamba2_mixer(b, e, spec, ssm_heads(spec))
        if kind == "*":
            return norm + _qkvo(b, e, hd * nh, hd * nkv, hd * nkv, hd * nh)
        return norm + _mlp(b, e, spec["n_ff"], gate=False)  # squared-ReLU MLP: up and down only
    if arch == "jamba":
        ts = norm + (_mamba1_mixer(b, e, spec) if kind == "M" else _qkvo(b, e, e, hd * nkv, hd * nkv, e))
        ts += [(f"{b}.ffn_norm.weight", (e,), "norm")]
        if i in spec["moe_layers"]:
            # a layer is MoE iff ffn_gate_inp exists; experts use feed_forward_length (n_ff(0)) too
            return ts + _experts(b, e, spec["n_expert"], spec["n_ff"])
        return ts + _mlp(b, e, spec["n_ff"])
    if arch == "qwen3next":
        # qwen3next.cpp load_block_trunk: qwen35's layer (gated attention with q + gate in attn_q, or Gated
        # DeltaNet) with an MoE FFN and a sigmoid-gated shared expert; ffn_gate_inp_shexp is {n_embd}
        ts = norm + [(f"{b}.post_attention_norm.weight", (e,), "norm")]
        if kind == "*":
            ts += _qkvo(b, e, 2 * hd * nh, hd * nkv, hd * nkv, hd * nh)
            ts += [(f"{b}.attn_q_norm.weight", (hd,), "norm"), (f"{b}.attn_k_norm.weight", (hd,), "norm")]
        else:
            ts += _gated_deltanet(b, e, spec)
        ts += _experts(b, e, spec["n_expert"], spec["n_ff_exp"])
        return ts + [(f"{b}.ffn_gate_inp_shexp.weight", (e,), "f32")] + _shexp(b, e, spec["n_ff_shexp"])
    if arch == "kimi-linear":
        ts = norm + (_kda(b, e, spec) if kind == "M" else _mla_kimi(b, e, spec))
        ts += [(f"{b}.ffn_norm.weight", (e,), "norm")]
        if i < spec["n_dense_lead"]:
            return ts + _mlp(b, e, spec["n_ff"])
        # MoE with exp_probs_b (required) and shared experts of n_ff_exp * expert_shared_count
        ts += _experts(b, e, spec["n_expert"], spec["n_ff_exp"])
        ts += [(f"{b}.exp_probs_b.bias", (spec["n_expert"],), "f32")]
        return ts + _shexp(b, e, spec["n_ff_exp"] * spec["n_expert_shared"])
    if arch == "minimax-01":
        # minimax-01.cpp load_arch_tensors: softmax attention is plain q/k/v; lightning attention has a fused
        # attn_qkv, a sigmoid output gate attn_gate and attn_norm_2 over the n_head * head_dim output. Experts
        # are n_ff wide (there is no expert_feed_forward_length), softmax-routed, no shared expert.
        ts = norm
        if kind == "*":
            ts += _qkvo(b, e, hd * nh, hd * nkv, hd * nkv, hd * nh)
        else:
            ts += [(f"{b}.attn_norm_2.weight", (hd * nh,), "norm"),
                   (f"{b}.attn_qkv.weight", (3 * hd * nh, e), "f16"),
                   (f"{b}.attn_gate.weight", (hd * nh, e), "f16"),
                   (f"{b}.attn_output.weight", (e, hd * nh), "f16")]
        ts += [(f"{b}.ffn_norm.weight", (e,), "norm")]
        return ts + _experts(b, e, spec["n_expert"], spec["n_ff"])
    raise ValueError(f"no hybrid layout for arch {arch}")


def _ssm_keys(w, spec: dict, dt_rank: int, group: bool = True) -> None:
    w.add_ssm_conv_kernel(spec["d_conv"])
    w.add_ssm_inner_size(spec["d_inner"])
    w.add_ssm_state_size(spec["d_state"])
    w.add_ssm_time_step_rank(dt_rank)
    if group:
        w.add_ssm_group_count(spec["n_group"])


def _kv_per_layer(spec: dict) -> list[int]:
    # head_count_kv as a per-layer array, 0 on every layer without attention (the loaders' is_recr test)
    return [spec["n_head_kv"] if c in "*H" else 0 for c in layout(spec)]


def write_metadata(w, spec: dict) -> None:
    """Arch keys after gen_models' vocab_size / context_length / embedding_length / block_count.

    Scalars use the types the loader checks (llama-model-loader.cpp get_key: UINT32 counts, FLOAT32 eps/scales,
    BOOL flags); the per-layer arrays are INT32 as gguf-py writes Python ints, which get_key_or_arr accepts.
    """
    arch, e, nh = spec["arch"], spec["n_embd"], spec["n_head"]
    hd = spec.get("head_dim", e // nh)
    w.add_head_count(nh)
    if arch == "qwen35":
        # conversion/qwen.py Qwen3_5TextModel (via Qwen3NextModel, Qwen2MoeModel)
        w.add_feed_forward_length(spec["n_ff"])
        w.add_head_count_kv(spec["n_head_kv"])
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(spec["rope_base"])
        w.add_layer_norm_rms_eps(1e-6)
        # linear attention: state_size = key/value head dim, group_count = key heads, time_step_rank = value
        # heads, inner_size = value head dim * value heads (the recurrent state is d_state * d_inner; the graph
        # reshapes it as value head dim squared per value head, so key and value heads must be the same size)
        assert spec["d_inner"] == spec["d_state"] * spec["dt_rank"], spec
        assert 2 * sum(spec["rope_sections"]) == spec["n_rot"], spec
        _ssm_keys(w, spec, spec["dt_rank"])
        w.add_full_attention_interval(spec["full_attention_interval"])
        w.add_rope_dimension_count(spec["n_rot"])  # partial rotary: 1/4 of head_dim
        w.add_rope_dimension_sections(spec["rope_sections"])  # interleaved MRoPE, 4 INT32, sum n_rot / 2
    elif arch in ("granitehybrid", "nemotron_h"):
        # conversion/granite.py GraniteHybridModel (nemotron.py NemotronHModel derives from it): NoPE models
        # write rope.scaling.finetuned = false (granite-hybrid.cpp turns rope off) and a 2**20 context
        w.add_head_count_kv(_kv_per_layer(spec))
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(spec["rope_base"])
        w.add_rope_scaling_finetuned(False)
        _ssm_keys(w, spec, ssm_heads(spec))
        if arch == "granitehybrid":
            w.add_feed_forward_length(spec["n_ff"])
            w.add_expert_shared_feed_forward_length(spec["n_ff"])  # dense Granite 4.0-H: the shared MLP
            w.add_expert_count(0)
            w.add_expert_used_count(0)
            w.add_layer_norm_rms_eps(1e-5)
        else:
            # nemotron-h.cpp: a layer is Mamba iff head_count_kv and feed_forward_length are both 0
            w.add_feed_forward_length([spec["n_ff"] if c == "-" else 0 for c in layout(spec)])
            w.add_key_length(hd)
            w.add_value_length(hd)
            w.add_layer_norm_eps(1e-5)  # required; layer_norm_rms_epsilon defaults to it
    elif arch == "falcon-h1":
        # conversion/falcon_h1.py (over Mamba2Model); rope.dimension_count is not written, n_rot = key_length
        w.add_feed_forward_length(spec["n_ff"])
        w.add_head_count_kv(spec["n_head_kv"])
        w.add_key_length(hd)
        w.add_value_length(hd)
        _ssm_keys(w, spec, ssm_heads(spec))
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(spec["rope_base"])
    elif arch == "lfm2":
        # conversion/lfm2.py LFM2Model: head_count_kv per layer, 0 on conv layers; no sliding_window key
        w.add_feed_forward_length(spec["n_ff"])
        w.add_head_count_kv(_kv_per_layer(spec))
        w.add_rope_freq_base(spec["rope_base"])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_shortconv_l_cache(spec["l_cache"])
    elif arch == "jamba":
        # conversion/jamba.py: no rope, no group_count (Mamba-1); head size n_embd / head_count
        w.add_feed_forward_length(spec["n_ff"])
        w.add_head_count_kv(_kv_per_layer(spec))
        _ssm_keys(w, spec, spec["dt_rank"], group=False)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
    elif arch == "qwen3next":
        # conversion/qwen.py Qwen3NextModel (over Qwen2MoeModel, TextModel): the same SSM keys as qwen35 (which
        # derives from it), MoE and shared-expert widths, partial rotary (1/4 of head_dim); no MRoPE sections.
        # attention.recurrent_layers is written only from an HF layer_types list; left out, the interval decides.
        _attn_moe_keys(w, spec, hd, 1e-6)
        w.add_expert_feed_forward_length(spec["n_ff_exp"])
        w.add_expert_shared_feed_forward_length(spec["n_ff_shexp"])
        assert spec["d_inner"] == spec["d_state"] * spec["dt_rank"], spec
        _ssm_keys(w, spec, spec["dt_rank"])
        w.add_full_attention_interval(spec["full_attention_interval"])
        w.add_rope_dimension_count(spec["n_rot"])
    elif arch == "kimi-linear":
        # conversion/kimi_linear.py KimiLinearModel: MLA stored as MQA (head_count_kv 1 on MLA layers, 0 on KDA
        # layers: kimi-linear.cpp's is_recr test), key_length = kv_lora_rank + rope (the cached latent; no V cache as
        # key/value_length_mla make is_mla() true), no q_lora_rank key; the rope dims are kept though kimi-linear
        # runs no RoPE (rope type NONE). expert_gating_func is required; Kimi routes with a sigmoid.
        kvr, rope = spec["kv_lora_rank"], spec["qk_rope_head_dim"]
        w.add_feed_forward_length(spec["n_ff"])
        w.add_head_count_kv(_kv_per_layer(spec))
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_count(spec["n_expert"])
        w.add_expert_used_count(spec["n_expert_used"])
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_ssm_conv_kernel(spec["d_conv"])
        w.add_kda_head_dim(spec["kda_head_dim"])
        w.add_kv_lora_rank(kvr)
        w.add_rope_dimension_count(rope)
        w.add_key_length(kvr + rope)
        w.add_key_length_mla(spec["qk_nope_head_dim"] + rope)
        w.add_value_length_mla(spec["v_head_dim"])
        w.add_expert_feed_forward_length(spec["n_ff_exp"])
        w.add_expert_shared_count(spec["n_expert_shared"])
        w.add_leading_dense_block_count(spec["n_dense_lead"])
        w.add_expert_weights_scale(spec["expert_weights_scale"])
    elif arch == "minimax-01":
        # conversion/minimax.py MiniMaxText01Model: TextModel keys plus residual_scale (the DeepNorm alpha shared
        # by every layernorm) and rope.dimension_count (rotary_dim, half of head_dim). It writes no
        # full_attention_interval or recurrent_layers: minimax-01.cpp's default interval of 8 applies.
        assert spec["full_attention_interval"] == 8, spec
        _attn_moe_keys(w, spec, hd, 1e-5)
        w.add_residual_scale(spec["residual_scale"])
        w.add_rope_dimension_count(spec["n_rot"])
    else:
        raise ValueError(f"no hybrid metadata for arch {arch}")
