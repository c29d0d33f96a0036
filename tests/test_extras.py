"""Memory beside the model: a draft model planned like a model and checked against llama-server's own buffers;
LoRA adapters, control vectors and a projector as their own lines; extras that do not fit refuse the plan."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from gpcrun.launch.run import free_port
from gpcrun.model import load_model
from gpcrun.plan import DeviceTarget, Target, make_plan
from gpcrun.planning import ResolvedModel, build_request, plan_document, server_args
from tests.proc_util import serve_until_ready, stop_serve

MIB = 1 << 20
GIB = 1 << 30


def _buffers(log: str) -> list[tuple[str, float]]:
    pat = r"(CPU_Mapped model buffer size|CPU KV buffer size|CPU compute buffer size) =\s+([\d.]+) MiB"
    return [(m.group(1), float(m.group(2))) for m in re.finditer(pat, log)]


def test_draft_model_lines_match_llama_servers_buffers(llama_server_bin, tiny_models, tmp_path):
    main, draft = tiny_models["tiny-llama-q8_0"], tiny_models["tiny-llama-f16"]
    port = free_port()
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path), GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    proc, _ = serve_until_ready(["-m", str(main), "-md", str(draft), "-c", "4096", "-t", "1", "-tb", "1", "-lv", "4",
                                 "--port", str(port)], env, 90)
    stop_serve(proc)
    run = next(Path(tmp_path, "runs").iterdir())
    log = (run / "server.log").read_text(errors="replace")
    bufs = _buffers(log[log.index("loading draft model"):])  # the draft context's own buffers
    got = dict(bufs[:3])
    (line,) = json.loads((run / "plan.json").read_text())["extras"]
    assert line["kind"] == "draft" and line["device"] == "CPU"
    assert abs(line["model_bytes"] / MIB - got["CPU_Mapped model buffer size"]) <= 0.01, (line, got)
    assert abs(line["context_bytes"] / MIB - got["CPU KV buffer size"]) <= 0.01, (line, got)
    assert abs(line["compute_bytes"] / MIB - got["CPU compute buffer size"]) <= 3.0, (line, got)


def _plan(model_path, capacity, args):
    info = load_model(str(model_path))
    sa = server_args(["-c", "1024", *args], {})
    req = build_request(None, None, None, 1.0, None, sa)
    t = Target(DeviceTarget("CPU", "host", capacity, 25e9, source="test", limit_bytes=capacity), (), "t", 2, ())
    rm = ResolvedModel(str(model_path), info, None)
    from gpcrun.planning import _extras_and_cache  # noqa: PLC0415 - the same computation plan_model uses
    plan = make_plan(info, t, req)
    from gpcrun.plan import apply_extras, apply_prompt_cache
    lines, pc = _extras_and_cache(plan, req, sa)
    plan = apply_prompt_cache(apply_extras(plan, lines), pc)
    return plan, plan_document(plan, sa, rm, None, req)


def test_adapter_vector_and_projector_lines_from_their_headers(tiny_models):
    f16 = tiny_models["tiny-llama-f16"]
    size = load_model(str(f16)).tensor_bytes
    plan, doc = _plan(tiny_models["tiny-llama-q8_0"], 24 * GIB,
                      ["--lora", str(f16), "--control-vector", str(f16), "--mmproj", str(f16)])
    kinds = {x["kind"]: x for x in doc["extras"]}
    assert set(kinds) == {"lora", "control_vector", "mmproj"} and plan.verdict == "ship"
    assert all(x["model_bytes"] == size and x["device"] == "CPU" for x in kinds.values())
    assert kinds["mmproj"]["compute_bytes"] is None and "not estimated" in kinds["mmproj"]["note"]


def test_extras_that_do_not_fit_refuse_and_shrink_the_prompt_cache(tiny_models):
    f16 = tiny_models["tiny-llama-f16"]
    plan, doc = _plan(tiny_models["tiny-llama-q8_0"], 3 * GIB, ["-md", str(f16)])
    assert plan.verdict == "ship" and doc["prompt_cache"]["set_mib"] is not None
    room_with = doc["prompt_cache"]["room_bytes"]
    _, bare = _plan(tiny_models["tiny-llama-q8_0"], 3 * GIB, [])
    draft_total = sum(x["total_bytes"] for x in doc["extras"])
    assert bare["prompt_cache"]["room_bytes"] - room_with == draft_total  # the draft's bytes came off the room
    # 85 MiB: the main model ships alone (margin 10.6 MiB, 12.5 %), its 21 MiB draft does not fit beside it
    plan, doc = _plan(tiny_models["tiny-llama-q8_0"], 85 * MIB, ["-md", str(f16)])
    assert plan.verdict == "refuse" and "extra files do not fit" in plan.reasons[-1]
    assert _plan(tiny_models["tiny-llama-q8_0"], 85 * MIB, [])[0].verdict == "ship"


def test_lora_adapter_line_matches_llama_servers_buffer(llama_server_bin, tiny_models, tmp_path):
    """A generated LoRA adapter (tests/gguf_factory.write_lora): llama-server loads and serves with it, and the
    plan's lora line equals llama-server's own 'LoRA buffer size'."""
    from tests.gguf_factory import write_lora
    main = tiny_models["tiny-llama-q8_0"]
    lora = write_lora(tmp_path / "tiny-lora.gguf", load_model(str(main)))
    port = free_port()
    env = dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"), GPCRUN_LLAMA_SERVER=str(llama_server_bin))
    proc, _ = serve_until_ready(["-m", str(main), "--lora", str(lora), "-c", "1024", "-t", "1", "-tb", "1", "-lv", "4",
                                 "--port", str(port)], env, 90)
    stop_serve(proc)
    run = next(Path(tmp_path, "home", "runs").iterdir())
    log = (run / "server.log").read_text(errors="replace")
    got = [float(m.group(1)) for m in re.finditer(r"CPU\w* LoRA buffer size =\s+([\d.]+) MiB", log)]
    (line,) = json.loads((run / "plan.json").read_text())["extras"]
    assert line["kind"] == "lora" and got and abs(line["model_bytes"] / MIB - sum(got)) <= 0.01, (line, got)
