"""The real llama-server on the demo model and the generated tiny models: it answers, and its own
accounting of weights, tensor types and KV cache matches what gpcrun reads from the header."""
from __future__ import annotations

import re

import pytest

from gpcrun.model import load_model
from gpcrun.plan import LayoutTable, Placement, context_bytes_by_device
from tests.llama_server import RealServer

pytestmark = pytest.mark.server

MIB = 1 << 20


def _server_figures(log: str) -> dict:
    # --no-repack: otherwise q4_K/q4_0 weights move from CPU_Mapped into a CPU_REPACK buffer of another size
    model = sum(float(m) for m in re.findall(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB", log))
    kv_bufs = re.findall(r"(?:KV|RS|DSV4 \w+ state) buffer size =\s+([\d.]+) MiB", log)
    kv = sum(float(m) for m in kv_bufs)
    types = {t.upper(): int(n) for t, n in re.findall(r"- type\s+(\w+):\s+(\d+) tensors", log)}
    return {"model_mib": model, "kv_mib": kv, "types": types, "kv_buffers": len(kv_bufs)}


def _check_against_header(model_path, log: str, n_ctx: int, parallel: int = 1) -> None:
    info = load_model(model_path)
    fig = _server_figures(log)
    # llama.cpp prints MiB with 2 decimals: agree to the rounding
    assert abs(fig["model_mib"] - info.tensor_bytes / MIB) <= 0.006, (fig, info.tensor_bytes)
    counts: dict[str, int] = {}
    for t in info.tensors:
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    assert fig["types"] == counts
    pl = Placement(ngl=0, n_cpu_moe=0, ctx=n_ctx, type_k="f16", type_v="f16", parallel=parallel)
    kv_bytes = context_bytes_by_device(LayoutTable(info), pl, 0)[0]
    # each printed buffer is rounded to 0.01 MiB: the sum of n of them to n half-units
    assert abs(fig["kv_mib"] - kv_bytes / MIB) <= 0.0051 * max(1, fig["kv_buffers"]), (fig, kv_bytes)


def test_smollm2_answers_and_matches_header(llama_server_bin, smollm2, tmp_path):
    with RealServer(llama_server_bin, smollm2, "-c", "2048", "-np", "1", "-lv", "4", "--no-repack", log_path=tmp_path / "server.log") as srv:
        out = srv.complete("The capital of France is", n_predict=12, temperature=0)
        assert out["timings"]["predicted_n"] == 12
        assert out["timings"]["cache_n"] == 0
        assert "Paris" in out["content"]
        log = srv.log()
    _check_against_header(smollm2, log, 2048)


@pytest.mark.parametrize("name,ctx,parallel", [
    ("tiny-llama-f16", 512, 1), ("tiny-llama-q8_0", 1000, 2), ("tiny-llama-q4_k_m", 512, 1),
    ("tiny-qwen3moe-f16", 512, 1), ("tiny-qwen3moe-q8_0", 512, 1), ("tiny-qwen3moe-q4_k_m", 1024, 3),
    ("tiny-gemma3-f16", 1024, 1), ("tiny-gemma3-q8_0", 1024, 3),  # sliding window: 768 cells, not 1024
    ("tiny-qwen2moe-q8_0", 512, 1), ("tiny-deepseek2-q8_0", 1024, 1), ("tiny-mamba-q8_0", 1024, 2),
    # hybrid memory layouts (KV on some layers, recurrent state on others, one state row per sequence)
    ("tiny-qwen35-q8_0", 1024, 2), ("tiny-granitehybrid-q8_0", 1024, 1), ("tiny-falcon-h1-f16", 512, 3),
    ("tiny-lfm2-q8_0", 1024, 2), ("tiny-nemotron-h-f16", 512, 1), ("tiny-jamba-q8_0", 1024, 2),
    ("tiny-qwen3next-q8_0", 1024, 2), ("tiny-kimi-linear-f16", 1024, 2), ("tiny-minimax-01-q8_0", 512, 3),
    ("tiny-deepseek32-q8_0", 1024, 2),  # MLA cache + the DSA indexer's key cache
    ("tiny-glm-dsa-f16", 1024, 1),  # ... on the "full" indexer layers only (indexer.types 1, 0, 1, 1)
    ("tiny-glm5-next-f16", 1024, 2),
    ("tiny-qwen4exp-f16", 1024, 2),
    ("tiny-deepseek4-f16", 1024, 2)])  # window, CSA/HCA compressed and indexer caches, compressor states  # Gated DeltaNet state + gated attention + the QSA indexer cache (2 x key_length)  # KDA state + K-only MLA + the k-pool indexer cache (3 x key_length)
def test_tiny_models_answer_and_match_header(llama_server_bin, tiny_models, tmp_path, name, ctx, parallel):
    path = tiny_models[name]
    with RealServer(llama_server_bin, path, "-c", str(ctx), "-np", str(parallel), "-lv", "4", "--no-repack",
                    log_path=tmp_path / "server.log") as srv:
        out = srv.complete("Hello", n_predict=8)
        assert out["timings"]["predicted_n"] == 8
        log = srv.log()
    _check_against_header(path, log, ctx, parallel)


def test_binary_resolution_order(tmp_path, llama_server_bin, monkeypatch):
    from gpcrun.errors import ServerBinaryNotFound
    from gpcrun.launch.binary import find_tool

    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_tool(explicit=str(fake)) == fake  # --server-bin wins
    assert find_tool(env={"GPCRUN_LLAMA_SERVER": str(fake), "PATH": ""}) == fake
    with pytest.raises(ServerBinaryNotFound):
        find_tool(explicit=str(tmp_path / "nope"))
    # nothing anywhere: the error lists every place tried
    with pytest.raises(ServerBinaryNotFound) as ei:
        find_tool(env={"GPCRUN_CACHE": str(tmp_path / "empty"), "PATH": str(tmp_path / "nowhere")})
    msg = str(ei.value)
    assert "GPCRUN_LLAMA_SERVER" in msg and "build cache" in msg and "PATH" in msg
    # the cache pointer written by scripts/build_llama.py is found
    assert find_tool(env={"PATH": ""}) == llama_server_bin
