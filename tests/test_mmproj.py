"""A multimodal projector planned to the byte: a generated LLaVA-1.5 'mlp' projector (tests/mmproj_factory.py)
that the real llama-server loads and serves images with; the plan's mmproj line (weights + the encoder's compute
buffer, replayed by gpcrun/plan/encoder.py) against llama-server's own figures."""
from __future__ import annotations

import base64
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest

from gpcrun.launch.run import free_port
from gpcrun.model import load_model
from gpcrun.plan.encoder import projector_compute_bytes
from tests.mmproj_factory import write_mmproj
from tests.proc_util import serve_until_ready, stop_serve

MIB = 1 << 20

# llama-server 11434's own encoder compute buffer for these projectors (text n_embd 256), in bytes: the size of its
# posix_memalign call for "reserve_compute_meta: CPU compute buffer size" (its log prints 2-decimal MiB), measured
# once with an LD_PRELOAD shim on this CPU build; the log's MiB figure is checked live in the test below.
MEASURED = [  # (image_size, patch_size, n_embd, n_ff, n_head, n_layer, flash) -> bytes
    ((224, 14, 64, 128, 4, 2, True), 905_248),
    ((336, 14, 128, 256, 4, 2, True), 2_036_768),
    ((448, 14, 256, 512, 8, 4, True), 5_565_472),
    ((224, 16, 256, 1024, 2, 4, True), 1_612_352),
    ((448, 16, 64, 128, 8, 1, True), 3_618_976),
    ((336, 16, 128, 512, 2, 4, True), 2_263_552),
    ((224, 14, 256, 128, 4, 2, True), 1_393_696),
    ((448, 14, 256, 512, 8, 4, False), 38_135_872),
]


@pytest.mark.parametrize("cfg, want", MEASURED)
def test_encoder_compute_replay_equals_llama_servers_allocation(tmp_path, cfg, want):
    image, patch, n_embd, n_ff, n_head, n_layer, flash = cfg
    path = write_mmproj(tmp_path / "mmproj.gguf", 256, image_size=image, patch_size=patch, n_embd=n_embd, n_ff=n_ff,
                        n_head=n_head, n_layer=n_layer)
    got, note = projector_compute_bytes(load_model(str(path)), flash=flash)
    assert got == want and f"{image}x{image}" in note


def test_other_projector_types_are_none_with_the_reason(tiny_models, tmp_path):
    got, note = projector_compute_bytes(load_model(str(tiny_models["tiny-llama-f16"])))
    assert got is None and "no vision encoder" in note


def _png(w: int = 8, h: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + b"".join(bytes((x * 30 % 256, y * 30 % 256, 128)) for x in range(w)) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_projector_line_matches_llama_servers_figures_and_images_are_served(llama_server_bin, tiny_models, tmp_path):
    import requests
    main = tiny_models["tiny-llama-q8_0"]
    n_embd = load_model(str(main)).facts["embedding_length"]
    mm = write_mmproj(tmp_path / "mmproj-tiny-F16.gguf", n_embd, image_size=336, n_embd=128, n_ff=256)
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"), GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    proc, url = serve_until_ready(["-m", str(main), "--mmproj", str(mm), "-c", "1024", "-t", "1", "-tb", "1",
                                   "-lv", "4", "--port", str(free_port())], env, 90)
    try:
        props = requests.get(url + "/props", timeout=10).json()
        uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
        chat = requests.post(url + "/v1/chat/completions", timeout=120, json={"max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": uri}}]}]})
    finally:
        stop_serve(proc)
    assert props["modalities"]["vision"] is True and chat.status_code == 200, chat.text[:300]
    run = next(Path(tmp_path, "home", "runs").iterdir())
    log = (run / "server.log").read_text(errors="replace")
    (line,) = json.loads((run / "plan.json").read_text())["extras"]
    assert line["kind"] == "mmproj" and line["device"] == "CPU"
    weights = float(re.search(r"load_hparams: model size:\s+([\d.]+) MiB", log).group(1))
    compute = float(re.search(r"reserve_compute_meta:\s+CPU compute buffer size =\s+([\d.]+) MiB", log).group(1))
    assert abs(line["model_bytes"] / MIB - weights) <= 0.005, (line, weights)
    assert abs(line["compute_bytes"] / MIB - compute) <= 0.005, (line, compute)
