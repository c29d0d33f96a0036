"""Per-layer tensors and metadata for gen_models.py's hybrid-memory models (attention KV cache + recurrent state).

Layouts follow the llama.cpp loaders (src/models/<arch>.cpp load_arch_hparams / load_arch_tensors) and what
convert_hf_to_gguf (conversion/<family>.py) writes. Tensor tuples are (name, numpy shape, kind) as in gen_models:
numpy shapes are ggml ne reversed; kinds are gen_models.tensor_data's ("f16", "f32", "norm", "ssm_a", "ssm_dt_b").
Which tensors stay f32 mirrors convert_hf_to_gguf's rule (conversion/base.py): 1-D, *_norm.weight, names not ending
in .weight (ssm_a, ssm_d, biases), ffn_gate_inp, ssm_conv1d and shortconv.conv.

A spec's "layout" string names each layer's mixer: "M" recurrent (Mamba-1/2, Gated DeltaNet or short conv, per
arch), "*" attention, "-" MLP only (nemotron_h), "H" attention and Mamba-2 side by side (falcon-h1).
"""
from __future__ import annotations

ARCHS = ("qwen35", "granitehybrid", "falcon-h1", "lfm2", "nemotron_h", "jamba")
# Archs whose output projection is tied to token_embd (no output.weight), as their real checkpoints are
TIED_OUTPUT = ("lfm2",)


def layout(spec: dict) -> str:
    if spec["arch"] == "qwen35":
        # qwen35.cpp load_arch_hparams: recurrent unless (i + 1) % full_attention_interval == 0
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
    # qwen35.cpp load_block_trunk: key heads = ssm.group_count, value heads = ssm.time_step_rank, both of size
    # ssm.state_size; the fused qkv + gate projections (attn_qkv, attn_gate) are what the graph uses
    ds, dc = spec["d_state"], spec["d_conv"]
    kd, vd, nv = ds * spec["n_group"], ds * spec["dt_rank"], spec["dt_rank"]
    return [(f"{b}.attn_qkv.weight", (2 * kd + vd, e), "f16"),
            (f"{b}.attn_gate.weight", (vd, e), "f16"),
            (f"{b}.ssm_conv1d.weight", (2 * kd + vd, dc), "f32"),
            (f"{b}.ssm_dt.bias", (nv,), "ssm_dt_b"),
            (f"{b}.ssm_a", (nv,), "ssm_a"),  # LLM_TENSOR_SSM_A_NOSCAN, no suffix
            (f"{b}.ssm_beta.weight", (nv, e), "f16"),
            (f"{b}.ssm_alpha.weight", (nv, e), "f16"),
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
            ne, ff = spec["n_expert"], spec["n_ff"]
            return ts + [(f"{b}.ffn_gate_inp.weight", (ne, e), "f32"),
                         (f"{b}.ffn_gate_exps.weight", (ne, ff, e), "f16"),
                         (f"{b}.ffn_down_exps.weight", (ne, e, ff), "f16"),
                         (f"{b}.ffn_up_exps.weight", (ne, ff, e), "f16")]
        return ts + _mlp(b, e, spec["n_ff"])
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
    else:
        raise ValueError(f"no hybrid metadata for arch {arch}")
