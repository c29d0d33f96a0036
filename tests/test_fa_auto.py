"""What `-fa auto` resolves to (gpcrun/plan/fa_auto.py): a table measured on the real llama-server with one
ggml-rpc-server as the GPU (scripts/bench/fa_auto.py, 176 of 176 placements), and one real load."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpcrun.plan import Placement
from gpcrun.plan.fa_auto import flash_attn_auto_off, moved_attention

ROOT = Path(__file__).resolve().parents[1]
A, R = 2, 0  # head_count_kv per layer: attention, recurrent (the HKV_ZERO families)
SSM = {"ssm_conv_kernel": 4, "ssm_inner_size": 128, "ssm_state_size": 16, "ssm_group_count": 1,
       "ssm_time_step_rank": 4}


def _table(arch: str, hkv, ff=None, **extra):
    facts = {"architecture": arch, "block_count": len(hkv), "head_count": 4, "head_count_kv": list(hkv),
             "embedding_length": 64, **SSM, **extra}
    if ff is not None:
        facts["feed_forward_length"] = list(ff)
    return SimpleNamespace(model=SimpleNamespace(facts=facts), n_layer=len(hkv))


LFM2 = _table("lfm2", [R, R, A, R, R, A])
JAMBA = _table("jamba", [R, R, A, R])
NEMOTRON = _table("nemotron_h", [R, R, R, A, R, R], ff=[0, 64, 0, 0, 64, 0])  # R - R A - R
FALCON = _table("falcon-h1", [A, A, A, A])
QWEN35 = _table("qwen35", [A] * 8, full_attention_interval=4)  # R R R A R R R A, input norm expanded first
MINIMAX = _table("minimax-01", [A] * 8)  # R x7, A
LLAMA = _table("llama", [A] * 4)

# (table, ngl values where -fa auto goes off, the same with -nkvo): measured, scripts/bench/fa_auto.py
MEASURED = [
    (LFM2, {4}, {5, 6, 7}),
    (JAMBA, {2}, {3, 4, 5}),
    (NEMOTRON, {2, 3}, {4, 5, 6, 7}),
    (FALCON, set(), {2, 3, 4, 5}),
    (QWEN35, set(), set()),
    (MINIMAX, set(), set()),
    (LLAMA, set(), set()),
]


@pytest.mark.parametrize("table,off,off_nkvo", MEASURED, ids=[t.model.facts["architecture"] for t, *_ in MEASURED])
def test_fa_auto_resolution_matches_the_real_server(table, off, off_nkvo):
    for nkvo, expect in ((False, off), (True, off_nkvo)):
        got = set()
        for ngl in range(table.n_layer + 2):
            pl = Placement(ngl=ngl, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16", no_kv_offload=nkvo)
            if flash_attn_auto_off(table, pl, 1):
                got.add(ngl)
        assert got == expect, (table.model.facts["architecture"], nkvo)


def test_pinned_flash_attention_and_cpu_only_are_never_resolved():
    pl = Placement(ngl=4, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16")
    assert flash_attn_auto_off(LFM2, pl, 1)
    assert "layer 2" in flash_attn_auto_off(LFM2, pl, 1)
    assert flash_attn_auto_off(LFM2, replace(pl, flash_attn="on"), 1) is None
    assert flash_attn_auto_off(LFM2, replace(pl, flash_attn="off"), 1) is None
    assert flash_attn_auto_off(LFM2, pl, 0) is None
    # the attention core moves whatever -fa says: the compute estimate counts it on the GPU
    assert moved_attention(LFM2, replace(pl, flash_attn="off"), 1) == {2: (0, 1)}


def test_two_gpus_keep_flash_attention_where_kv_is_offloaded():
    """Layer 2 on GPU 0 and layer 3 on GPU 1: the KV writes sit on GPU 0, so "expand gpu down" keeps it there."""
    pl = Placement(ngl=7, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16", splits=(0.5, 1.0))
    assert flash_attn_auto_off(LFM2, pl, 2) is None
    assert flash_attn_auto_off(LFM2, replace(pl, no_kv_offload=True), 2)


def test_the_plan_notes_it_and_the_real_server_agrees(llama_bin_dir, llama_server_bin, tiny_models, tmp_path):
    """tiny-lfm2 at -ngl 4 on one ggml-rpc-server: the plan says -fa auto goes off, llama-server logs it."""
    from tests.llama_server import RealServer
    from tests.test_llama_devices import _rpc_servers
    model = tiny_models["tiny-lfm2-f16"]
    with _rpc_servers(llama_bin_dir, 1) as endpoints:
        p = subprocess.run([sys.executable, "-m", "gpcrun", "plan", str(model), "--json", "--", "--rpc", endpoints,
                            "-ngl", "4", "-c", "8192"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        notes = json.loads(p.stdout).get("notes", [])
        assert any("-fa auto resolves to off" in n for n in notes), notes
        with RealServer(llama_server_bin, model, "--rpc", endpoints, "-ngl", "4", "-c", "8192", "-lv", "4",
                        "--no-warmup", log_path=tmp_path / "server.log") as server:
            log = server.log()
    assert "Flash Attention not supported, set to disabled" in log
    assert "layer 2 is assigned to device CPU but Flash Attention is assigned to device RPC0" in log


def test_fused_hc_post_goes_off_at_a_cpu_to_gpu_boundary():
    """glm5-next: the last CPU layer's hyper-connection post op runs on the GPU after the split, and llama.cpp turns
    the fused op off (measured: tiny-glm5-next, RPC0, -ngl 3: "layer 1 is assigned to device CPU but fused DeepSeek
    V4 HC post is assigned to device RPC0"); all on one side keeps it."""
    from gpcrun.plan.fa_auto import hc_post_auto_off
    glm5 = _table("glm5-next", [0, 1, 0, 1])
    off = {ngl for ngl in range(6)
           if hc_post_auto_off(glm5, Placement(ngl=ngl, n_cpu_moe=0, ctx=512, type_k="f16", type_v="f16"), 1)}
    assert off == {1, 2, 3, 4}
    assert hc_post_auto_off(LFM2, Placement(ngl=4, n_cpu_moe=0, ctx=512, type_k="f16", type_v="f16"), 1) is None
