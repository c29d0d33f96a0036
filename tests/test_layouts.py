"""Which layers hold KV and which recurrent state, by architecture (gpcrun/model/layouts.py), against the rules of
the pinned llama.cpp (src/models/*.cpp load_hparams, llama-model.cpp create_memory, llama-hparams.cpp n_embd_r/s)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpcrun.errors import GGUFError
from gpcrun.model.kvcache import kv_cache_layers
from gpcrun.model.layouts import layout, layout_notes, state_elems

SSM = {"ssm_conv_kernel": 4, "ssm_inner_size": 512, "ssm_state_size": 64, "ssm_group_count": 2,
       "ssm_time_step_rank": 8}
ATTN = {"embedding_length": 256, "head_count": 4, "head_count_kv": 2, "key_length": 64, "value_length": 64}
MAMBA2_R = 3 * (512 + 2 * 2 * 64)  # (d_conv - 1) * (d_inner + 2 * n_group * d_state)
MAMBA2_S = 64 * 512  # d_state * d_inner


def _kinds(facts) -> list[str]:
    lay = layout(facts)
    return ["kv+state" if k and r else "kv" if k else "state" if r else "-" for k, r in zip(lay.kv, lay.recurrent)]


def test_qwen35_every_fourth_layer_attends_and_nextn_blocks_hold_nothing():
    """qwen35.cpp:17-23: recurrent unless (i + 1) % full_attention_interval == 0, default 4; NextN blocks are in
    neither cache (llama-model.cpp:2705 filters il < n_layer())."""
    f = {"architecture": "qwen35", "block_count": 9, "nextn_predict_layers": 1, **ATTN, **SSM}
    assert _kinds(f) == ["state", "state", "state", "kv", "state", "state", "state", "kv", "-"]
    assert layout(f).n_trunk == 8
    assert (layout(f).r_elems, layout(f).s_elems) == (MAMBA2_R, MAMBA2_S)
    assert _kinds({**f, "full_attention_interval": 2})[:4] == ["state", "kv", "state", "kv"]
    given = (1, 1, 0, 0, 1, 1, 0, 0, 0)
    assert _kinds({**f, "recurrent_layers": given})[:8] == ["state", "state", "kv", "kv", "state", "state", "kv", "kv"]


def test_minimax01_lightning_state_and_interval_8():
    f = {"architecture": "minimax-01", "block_count": 8, **ATTN}
    assert _kinds(f) == ["state"] * 7 + ["kv"]
    assert state_elems(f) == (0, 64 * 64 * 4)  # n_embd_head_la^2 * n_head; no conv state


def test_kda_family_marks_recurrent_by_zero_kv_heads_and_keeps_kv_for_nextn():
    """kimi-linear.cpp:17-19 (n_head_kv(i) == 0 for i < n_layer()); no filters, so a NextN block with heads has a
    K-only cache (is_mla); state 3 (d_conv-1) n_head kda_head_dim and kda_head_dim^2 n_head."""
    f = {"architecture": "bailingmoe3", "block_count": 5, "nextn_predict_layers": 1, "embedding_length": 256,
         "head_count": 4, "head_count_kv": (0, 0, 1, 0, 1), "key_length": 96, "value_length": 64,
         "key_length_mla": 96, "value_length_mla": 64, "kda_head_dim": 32, "ssm_conv_kernel": 4}
    assert _kinds(f) == ["state", "state", "kv", "state", "kv"]
    assert state_elems(f) == (3 * 3 * 4 * 32, 32 * 32 * 4)
    kv = kv_cache_layers(f)
    assert [l.kind for l in kv] == ["recurrent", "recurrent", "mla", "recurrent", "mla"]
    assert kv[2].v_bytes_per_token == 0 and kv[2].k_bytes_per_token == 96 * 2


def test_nemotron_h_mlp_layers_hold_nothing():
    """nemotron-h: recurrent when n_head_kv == 0 and n_ff == 0; attention when not recurrent and n_ff == 0."""
    f = {"architecture": "nemotron_h", "block_count": 4, **ATTN, **SSM, "head_count_kv": (0, 0, 2, 0),
         "feed_forward_length": (0, 512, 0, 0)}
    assert _kinds(f) == ["state", "-", "kv", "state"]


def test_falcon_h1_every_layer_holds_both():
    f = {"architecture": "falcon-h1", "block_count": 3, **ATTN, **SSM}
    assert _kinds(f) == ["kv+state"] * 3
    kv = kv_cache_layers(f)
    assert all(l.kind == "full" and l.state_bytes_per_seq == 4 * (MAMBA2_R + MAMBA2_S) for l in kv)


def test_lfm2_short_conv_state_and_sliding_window_on_every_attention_layer():
    f = {"architecture": "lfm2", "block_count": 4, **ATTN, "head_count_kv": (0, 2, 0, 2), "shortconv_l_cache": 3}
    assert _kinds(f) == ["state", "kv", "state", "kv"]
    assert state_elems(f) == (256 * 2, 0)  # n_embd * (l_cache - 1); no s state
    swa = kv_cache_layers({**f, "sliding_window": 512})  # lfm2.cpp:26-31
    assert [l.kind for l in swa] == ["recurrent", "swa", "recurrent", "swa"]


def test_plain_models_keep_nextn_blocks_out_of_the_kv_cache():
    """llama-model.cpp:2814-2819: with NextN layers the main context's cache filters il < n_layer()."""
    f = {"architecture": "glm4moe", "block_count": 4, "nextn_predict_layers": 1, **ATTN}
    assert _kinds(f) == ["kv", "kv", "kv", "-"]
    assert layout(f).approximate is None


def _t(name: str, layer: int | None, n: int = 1 << 20):
    return SimpleNamespace(name=name, layer=layer, n_bytes=n)


def test_notes_name_what_is_not_modelled_and_what_is_not_loaded():
    assert "approximate: minimax-m3" in layout_notes({"architecture": "minimax-m3", "block_count": 4, **ATTN})[0]
    f = {"architecture": "qwen35", "block_count": 3, "nextn_predict_layers": 1, **ATTN, **SSM}
    tensors = [_t("blk.0.attn_q.weight", 0), _t("blk.2.attn_q.weight", 2), _t("blk.2.nextn.eh_proj.weight", 2)]
    (note,) = layout_notes(f, tensors)
    assert note.startswith("1 NextN/MTP block(s) (2.0 MiB) are not loaded") and "--spec-type draft-mtp" in note
    assert layout_notes(f, tensors, load_mtp=True) == ()
    assert layout_notes({"architecture": "llama", "block_count": 2, **ATTN}) == ()


def _write(path, n_layer: int, nextn: int, tensors) -> None:
    import numpy as np
    from gguf import GGUFValueType as V
    from tests.gguf_factory import KV, T, llama_kvs, write_gguf
    kvs = llama_kvs(n_layer, arch="qwen35") + [KV("qwen35.nextn_predict_layers", V.UINT32, nextn)]
    write_gguf(path, kvs, [T(n, np.zeros(shape, np.float32)) for n, shape in tensors], arch="qwen35")


def test_mtp_blocks_are_not_counted_as_weights_unless_loaded(tmp_path):
    """A qwen35 file with one NextN block: the plan's tables leave its tensors out unless --spec-type draft-mtp."""
    from gpcrun.model import load_model
    from gpcrun.plan.layout import LayoutTable
    from gpcrun.plan.request import parse_server_args
    path = tmp_path / "m.gguf"
    _write(path, 2, 1, [("token_embd.weight", (32, 64)), ("blk.0.attn_q.weight", (64, 64)),
                        ("blk.1.attn_q.weight", (64, 64)), ("blk.1.nextn.eh_proj.weight", (64, 128))])
    info = load_model(str(path))
    assert {t.name for t in LayoutTable(info).tensors} == {"token_embd.weight", "blk.0.attn_q.weight"}
    assert len(LayoutTable(info, load_mtp=True).tensors) == 4
    assert parse_server_args(["--spec-type", "ngram-simple,draft-mtp"]).load_mtp
    assert not parse_server_args([]).load_mtp


def test_more_nextn_blocks_than_blocks_is_refused(tmp_path):
    from gpcrun.model import load_model
    path = tmp_path / "m.gguf"
    _write(path, 2, 3, [("token_embd.weight", (32, 64))])
    with pytest.raises(GGUFError, match="nextn_predict_layers is 3"):
        load_model(str(path))


def test_deepseek32_counts_the_indexer_key_cache_on_trunk_layers():
    """llama_kv_cache_dsa: an indexer key cache beside the MLA cache, one head of indexer key_length per trunk
    layer, same cells, type_k, no V; NextN blocks hold neither (llama-model.cpp:2431-2440)."""
    f = {"architecture": "deepseek32", "block_count": 3, "nextn_predict_layers": 1, "embedding_length": 256,
         "head_count": 4, "head_count_kv": 1, "key_length": 576, "value_length": 512, "key_length_mla": 192,
         "value_length_mla": 128, "indexer_key_length": 128}
    kv = kv_cache_layers(f, "f16", "f16")
    assert [(l.kind, l.k_bytes_per_token, l.v_bytes_per_token) for l in kv] == [
        ("mla", 2 * (576 + 128), 0), ("mla", 2 * (576 + 128), 0), ("none", 0, 0)]
    assert not any("approximate" in n for n in layout_notes(f))  # modelled


@pytest.mark.parametrize("extra,want", [
    ({"indexer_types": (1, 0, 1, 1)}, [True, False, True, False]),  # the key; the NextN block never
    ({"context_length": 202752}, [True, True, True, False]),  # GLM 5 / 5.1: every indexer full
    ({"context_length": 1048576}, [True, True, True, False]),  # GLM 5.2's default table starts 1, 1, 1, 0, 0, 0
])
def test_glm_dsa_indexer_cache_only_on_full_indexer_layers(extra, want):
    from gpcrun.model.layouts import indexer_layers
    f = {"architecture": "glm-dsa", "block_count": 4, "nextn_predict_layers": 1, "head_count": 4, "head_count_kv": 1,
         "key_length": 576, "value_length": 512, "key_length_mla": 192, "value_length_mla": 128,
         "indexer_key_length": 128, "embedding_length": 256, **extra}
    assert indexer_layers(f) == want
    kv = kv_cache_layers(f, "f16", "f16")
    assert [l.k_bytes_per_token for l in kv[:3]] == [2 * (576 + 128 * w) for w in want[:3]]


def test_glm5_next_kda_state_mla_and_the_k_pool_indexer_on_full_attention_layers():
    """llama_memory_hybrid_idx (llama-model.cpp:2457-2500): KDA layers (head_count_kv 0) hold the conv/delta state,
    the others a K-only MLA cache, and the indexer cache (3 x key_length: key | gate | pooled,
    llama-memory-hybrid-idx.cpp:56-58) sits on the non-recurrent trunk layers whose indexer is full; the NextN block
    holds nothing. Checked on tiny-glm5-next against the real llama-server (tests/test_real_server.py)."""
    from gpcrun.model.layouts import indexer_layers, indexer_row_elems
    f = {"architecture": "glm5-next", "block_count": 5, "nextn_predict_layers": 1, "embedding_length": 256,
         "head_count": 4, "head_count_kv": [0, 1, 0, 1, 1], "key_length": 128, "key_length_mla": 64,
         "value_length_mla": 64, "kda_head_dim": 64, "ssm_conv_kernel": 4, "indexer_key_length": 64,
         "indexer_types": (1, 1, 1, 0)}
    assert _kinds(f) == ["state", "kv", "state", "kv", "-"]
    assert indexer_layers(f) == [False, True, False, False, False]
    assert indexer_row_elems(f) == 192
    kv = kv_cache_layers(f, "f16", "f16")
    assert [(l.kind, l.k_bytes_per_token, l.v_bytes_per_token) for l in kv] == [
        ("recurrent", 0, 0), ("mla", 2 * (128 + 192), 0), ("recurrent", 0, 0), ("mla", 2 * 128, 0), ("none", 0, 0)]
    assert layout(f).state_bytes_per_seq == 4 * (3 * 3 * 4 * 64 + 64 * 64 * 4)
    assert not any("approximate" in n for n in layout_notes(f))
    assert indexer_layers({**f, "indexer_types": None}) == [False, True, False, True, False]  # absent: all full


def test_qwen4exp_interval_layout_and_the_qsa_indexer_cache():
    """qwen4exp (llama-model.cpp:2694-2770): qwen35's interval layout, and the QSA indexer cache on every attention
    trunk layer: the raw key, plus the pooled key when a layer has a compress ratio (qwen4exp.cpp:63-83)."""
    from gpcrun.model.layouts import indexer_layers, indexer_row_elems
    f = {"architecture": "qwen4exp", "block_count": 9, "nextn_predict_layers": 1, **ATTN, **SSM,
         "indexer_key_length": 64, "compress_ratios": (0, 0, 0, 4, 0, 0, 0, 4, 4)}
    assert _kinds(f) == ["state", "state", "state", "kv", "state", "state", "state", "kv", "-"]
    assert indexer_layers(f) == [False, False, False, True, False, False, False, True, False]
    assert indexer_row_elems(f) == 128 and indexer_row_elems({**f, "compress_ratios": None}) == 64
    kv = kv_cache_layers(f, "f16", "f16")
    assert [l.k_bytes_per_token for l in kv[3:4]] == [2 * (2 * 64 + 128)]  # K of 2 heads x 64, plus the indexer
    assert not any("approximate" in n for n in layout_notes(f))


def test_deepseek4_window_compressed_caches_and_compressor_states():
    """llama_kv_cache_dsv4 on tiny-deepseek4's shape (compress ratios 4, 128, 4, 0; key 128 over one KV head, indexer
    key 64, window 128): -c 2048 with llama-server's default -np 4 -kvu, as the real server printed it:
    window 3.00 + CSA 1.00 + HCA 0.25 + indexer 0.50 MiB of K, states CSA 0.125 + HCA 0.50 + indexer 0.0625 MiB."""
    from types import SimpleNamespace

    from gpcrun.plan import Placement
    from gpcrun.plan.kv import context_bytes_by_device
    f = {"architecture": "deepseek4", "block_count": 4, "embedding_length": 256, "head_count": 4,
         "head_count_kv": 1, "key_length": 128, "value_length": 128, "sliding_window": 128,
         "indexer_key_length": 64, "compress_ratios": (4, 128, 4, 0)}
    kv = kv_cache_layers(f, "f16", "f16")
    assert [(l.kind, l.compress_ratio, l.compressed_k_bytes) for l in kv] == [
        ("dsv4", 4, 2 * (128 + 64)), ("dsv4", 128, 2 * 128), ("dsv4", 4, 2 * (128 + 64)), ("dsv4", 0, 0)]
    assert [l.state_bytes_per_seq for l in kv] == [8 * (8 * 256 + 8 * 128), 8 * 128 * 128, 8 * (8 * 256 + 8 * 128), 0]
    assert "compress_ratio" not in kv_cache_layers({**f, "architecture": "llama"})[0].to_json()
    table = SimpleNamespace(kv_layers=lambda tk, tv: kv_cache_layers(f, tk, tv), n_layer=4)
    pl = Placement(ngl=0, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16", parallel=4, kv_unified=True)
    assert context_bytes_by_device(table, pl, 0)[0] == int((3 + 1 + 0.25 + 0.5 + 0.125 + 0.5 + 0.0625) * (1 << 20))
    assert not any("approximate" in n for n in layout_notes(f))
