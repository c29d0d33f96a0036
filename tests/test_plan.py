"""gpcrun.plan (pure planner), gpcrun.targets and gpcrun.gpu_specs: table-driven, no files, no server.

Placement is checked against an independent reference written here from llama.cpp's own rules
(src/llama-model.cpp load_tensors, src/llama-model-loader.cpp tensor overrides, common/arg.cpp):
- `-ngl N`: i_gpu_start = max(n_layer + 1 - N, 0); layer il (il = n_layer: the output layer) is on a GPU iff
  il >= i_gpu_start; the input layer (token_embd) always stays on the CPU; a tied output duplicates token_embd
  onto the output layer's device when that device is a GPU;
- overrides are tried in order, the first regex_search match wins; `--n-cpu-moe K` appends
  `blk\\.i\\.ffn_(up|down|gate|gate_up)_(ch|)exps` -> CPU for i < K;
- n_ctx = PAD(n_ctx, 256); non-unified: n_ctx_seq = PAD(n_ctx / np, 256), n_ctx = n_ctx_seq * np;
  SWA cells per stream = PAD(min(n_ctx_seq, n_swa * (unified ? np : 1) + n_ubatch), 256).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import replace
from types import MappingProxyType

import pytest

from gpcrun import gpu_specs
from gpcrun.server_args import ServerArgsError
from gpcrun.plan import (DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, GIB, MIB, DeviceTarget, LayoutTable,
                         Placement, Request, Target, context_bytes_by_device, kv_size_tokens,
                         make_plan, parse_server_args)
from gpcrun.targets import SPEC_DRIVER_RESERVE_BYTES, _spec_for_name, target_from_profile
from tests.synthetic import moe_model

EXPS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
N_LAYER = 48  # moe_model() default: shaped like Qwen3-30B-A3B

# ------------------------------------------------------------------------------------------------ helpers

_MODELS: dict = {}


def qwen30b(**kw):
    """The synthetic Qwen3-30B-A3B-shaped model (cached: building it costs ~2 ms, planning much more)."""
    key = tuple(sorted(kw.items()))
    if key not in _MODELS:
        _MODELS[key] = moe_model(**kw)
    return _MODELS[key]


def small(**kw):
    """A 4-layer MoE with a small vocabulary: fast to plan, same tensor layout."""
    base = dict(n_layer=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_expert=8, n_expert_used=2,
                n_ff_exp=256, n_vocab=1024, ctx_train=65536)
    base.update(kw)
    return qwen30b(**base)


def with_facts(model, **facts):
    return replace(model, facts=MappingProxyType({**model.facts, **facts}))


def host(cap_gib=64.0, bw=21e9) -> DeviceTarget:
    # 21 GB/s: the single-thread numpy copy figure of shared/gpu-facts.md's host
    return DeviceTarget("CPU", "host", int(cap_gib * GIB), bw)


def gpu(free_gib: float, i: int = 0, bw=4800e9) -> DeviceTarget:
    # H200 spec-sheet bandwidth and FLOP/s; free VRAM as given
    return DeviceTarget(f"CUDA{i}", "gpu", int(free_gib * GIB), bw, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, 989e12)


def target(vram_gib: float | None = None, host_gib: float = 64.0) -> Target:
    return Target(host(host_gib), (gpu(vram_gib),) if vram_gib is not None else ())


def ref_device(name: str, layer: int | None, n_layer: int, ngl: int, overrides) -> str:
    """llama.cpp's buffer for one tensor, 1 GPU: 'CPU' or 'GPU' (first matching override wins)."""
    for pat, buft in overrides:
        if re.search(pat, name):
            return "CPU" if buft.upper().startswith("CPU") else "GPU"
    if name == "token_embd.weight":
        return "CPU"
    il = layer if layer is not None else n_layer  # only output* tensors here are not in a block
    return "GPU" if ngl > 0 and il >= max(n_layer + 1 - ngl, 0) else "CPU"


def ref_held(model, ngl: int, overrides=()) -> dict[str, int]:
    n_layer = model.facts["block_count"]
    out = {"CPU": 0, "GPU": 0}
    names = {t.name for t in model.tensors}
    for t in model.tensors:
        out[ref_device(t.name, t.layer, n_layer, ngl, overrides)] += t.n_bytes
    if "output.weight" not in names and ngl > 0:  # tied: token_embd duplicated onto the output device
        out["GPU"] += next(t.n_bytes for t in model.tensors if t.name == "token_embd.weight")
    return out


def ncmoe_overrides(k: int) -> list[tuple[str, str]]:
    return [(rf"blk\.{i}{EXPS}", "CPU") for i in range(k)]


def llama_overrides_from_argv(argv) -> list[tuple[str, str]]:
    """The override list llama.cpp builds from a command line: argv order, -ot split at its first '='."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-ot", "--override-tensor"):
            for part in argv[i + 1].split(","):
                pos = part.find("=")
                out.append((part[:pos], part[pos + 1:]))
            i += 2
            continue
        if a in ("-ncmoe", "--n-cpu-moe"):
            out += ncmoe_overrides(int(argv[i + 1]))
            i += 2
            continue
        if a in ("-cmoe", "--cpu-moe"):
            out.append((EXPS, "CPU"))
        i += 1
    return out


def argv_value(argv, *flags):
    """Last value of a flag in a command line (llama.cpp: the last one wins)."""
    v = None
    for i, a in enumerate(argv[:-1]):
        if a in flags:
            v = argv[i + 1]
    return v


def kv_row(model, type_k="f16", type_v=None) -> list[int]:
    return [l.k_bytes_per_token + l.v_bytes_per_token for l in model.kv_layers(type_k, type_v or type_k)]


def pad256(n: int) -> int:
    return -(-n // 256) * 256


# ------------------------------------------------------------------------------------- parse_server_args

@pytest.mark.parametrize("argv, want", [
    (["-ngl", "20"], {"ngl": 20}),
    (["--gpu-layers", "7"], {"ngl": 7}),
    (["--n-gpu-layers", "20"], {"ngl": 20}),
    (["--n-gpu-layers=20"], {"ngl": None}),  # no '=' form in llama-server: passed through, pins nothing
    (["-ngl", "0"], {"ngl": 0}),
    (["-ngl", "all"], {"ngl": 10 ** 6}),
    (["-ngl", "-2"], {"ngl": 10 ** 6}),
    (["-ngl", "auto"], {"ngl": None}),
    (["-ngl", "-1"], {"ngl": None}),
    (["-ncmoe", "10"], {"n_cpu_moe": 10}),
    (["--n-cpu-moe", "3"], {"n_cpu_moe": 3}),
    (["--n-cpu-moe=5"], {"n_cpu_moe": None}),
    (["--cpu-moe"], {"cpu_moe": True}),
    (["-cmoe"], {"cpu_moe": True}),
    (["-ot", "a=CPU,b=CUDA0"], {"overrides": (("a", "CPU"), ("b", "CUDA0"))}),
    (["-ot", r"blk\.1\.=CPU", "--override-tensor", "exps=CUDA1"],
     {"overrides": ((r"blk\.1\.", "CPU"), ("exps", "CUDA1"))}),
    (["--override-tensor=token_embd=CUDA0"], {"overrides": ()}),
    (["-c", "8192"], {"ctx": 8192}),
    (["--ctx-size", "0"], {"ctx": 0}),
    (["--ctx-size=4096"], {"ctx": None}),
    (["-ctk", "q8_0", "-ctv", "q4_0"], {"type_k": "q8_0", "type_v": "q4_0"}),
    (["--cache-type-k", "bf16"], {"type_k": "bf16", "type_v": None}),
    (["--cache-type-v=iq4_nl"], {"type_v": None}),
    (["-np", "3"], {"parallel": 3}),
    (["--parallel", "2"], {"parallel": 2}),
    (["-fa", "on"], {"flash_attn": "on"}),
    (["--flash-attn", "off"], {"flash_attn": "off"}),
    (["-ub", "256"], {"n_ubatch": 256}),
    (["--ubatch-size", "1024"], {"n_ubatch": 1024}),
    (["-b", "128"], {"n_batch": 128}),
    (["-nkvo"], {"no_kv_offload": True}),
    (["--no-kv-offload"], {"no_kv_offload": True}),
    (["-kvu"], {"kv_unified": True}),
    (["--kv-unified"], {"kv_unified": True}),
    (["-no-kvu"], {"kv_unified": False}),
    (["--no-kv-unified"], {"kv_unified": False}),
    ([], {"ngl": None, "n_cpu_moe": None, "cpu_moe": False, "overrides": (), "ctx": None, "type_k": None,
          "type_v": None, "parallel": None, "flash_attn": None, "n_ubatch": None, "no_kv_offload": False,
          "kv_unified": None}),
    # llama.cpp: the last value of a repeated flag wins
    (["-c", "1024", "-c", "2048"], {"ctx": 2048}),
    # unknown flags and their values are skipped, not misread
    (["--temp", "0.7", "-t", "8", "-ngl", "5", "--jinja"], {"ngl": 5, "ctx": None}),
])
def test_parse_server_args(argv, want):
    pin = parse_server_args(argv)
    for k, v in want.items():
        assert getattr(pin, k) == v, (argv, k)
    assert pin.passthrough == tuple(argv)


def test_parse_server_args_keeps_everything_verbatim():
    argv = ["-ngl", "all", "--temp", "0.7", "-ot", r"blk\.(0|1)\.ffn_.*=CPU", "--alias", "my model",
            "--n-gpu-layers=3", "-c", "0", "--jinja", "--", "x y"]
    pin = parse_server_args(argv)
    assert pin.passthrough == tuple(argv)
    assert pin.ngl == 10 ** 6 and pin.ctx == 0  # '--n-gpu-layers=3' is not llama-server syntax: '-ngl all' holds


@pytest.mark.parametrize("argv, needle", [
    (["-ngl"], "needs a value"),
    (["-c"], "needs a value"),
    (["--ctx-size"], "needs a value"),
    (["-ot"], "needs a value"),
    (["-ctk"], "needs a value"),
    (["-np"], "needs a value"),
    (["-fa"], "needs a value"),
    (["-ub"], "needs a value"),
    (["--n-cpu-moe"], "needs a value"),
    (["-ngl", "x"], "integer"),
    (["-ngl", "1.5"], "integer"),
    (["-c", "8k"], "integer"),
    (["--ctx-size", ""], "integer"),
    (["-np", "two"], "integer"),
    (["-ncmoe", "x"], "integer"),
    (["-ub", ""], "integer"),
    (["-ctk", "q9_9"], "KV cache type"),
    (["-ctv", "fp16"], "KV cache type"),
    (["--cache-type-k", "Q8_0"], "KV cache type"),
    (["-ot", "noequals"], "pattern=BUFFER_TYPE"),
    (["-ot", "a=CPU,b"], "pattern=BUFFER_TYPE"),
    (["-ot", r"blk\.(=CPU"], "not a valid regex"),
    (["-ot", "*exps=CPU"], "not a valid regex"),
])
def test_parse_server_args_rejects(argv, needle):
    with pytest.raises(ServerArgsError, match=re.escape(needle)):
        parse_server_args(argv)


def test_equals_forms_are_not_llama_server_syntax():
    """llama-server has no --flag=value form (common_params_parse_ex rejects '--ctx-size=8192' as an invalid
    argument): it is passed through verbatim for llama-server to reject, and pins nothing."""
    pin = parse_server_args(["--ctx-size=8192", "--cache-type-k=Q8_0"])
    assert pin.ctx is None and pin.type_k is None
    assert pin.passthrough == ("--ctx-size=8192", "--cache-type-k=Q8_0")


def test_parse_server_args_underscore_long_options():
    pin = parse_server_args(["--ctx_size", "8192", "--n_gpu_layers", "20", "--cache_type_k", "q8_0",
                             "--n_cpu_moe", "4"])
    assert (pin.ctx, pin.ngl, pin.type_k, pin.n_cpu_moe) == (8192, 20, "q8_0", 4)


# ----------------------------------------------------------------------------------- placement (weights)

NGLS = [0, 1, 2, 24, N_LAYER, N_LAYER + 1, N_LAYER + 2, 10 ** 6]


@pytest.mark.parametrize("ngl", NGLS)
@pytest.mark.parametrize("ncmoe", [0, 1, 17, N_LAYER])
def test_weights_by_device_matches_llama_rules(ngl, ncmoe):
    m = qwen30b()
    held, _ = LayoutTable(m, (), 1).weights_by_device(Placement(ngl, ncmoe, 4096, "f16", "f16"), 1)
    ref = ref_held(m, ngl, ncmoe_overrides(ncmoe))
    assert held == [ref["CPU"], ref["GPU"]]
    assert sum(held) == m.tensor_bytes  # untied: every byte exactly once


@pytest.mark.parametrize("ngl, gpu_blocks, output_on_gpu", [
    (0, 0, False), (1, 0, True), (2, 1, True), (N_LAYER, N_LAYER - 1, True), (N_LAYER + 1, N_LAYER, True),
    (10 ** 6, N_LAYER, True)])
def test_ngl_semantics(ngl, gpu_blocks, output_on_gpu):
    """-ngl 1 offloads only the output layer; token_embd never leaves the CPU."""
    m = qwen30b()
    held, _ = LayoutTable(m, (), 1).weights_by_device(Placement(ngl, 0, 4096, "f16", "f16"), 1)
    by = {t.name: t.n_bytes for t in m.tensors}
    block = sum(t.n_bytes for t in m.tensors if t.layer == 0)
    out = by["output.weight"] + by["output_norm.weight"]
    assert held[1] == gpu_blocks * block + (out if output_on_gpu else 0)
    assert held[0] >= by["token_embd.weight"]


def test_no_gpu_means_everything_on_cpu():
    m = qwen30b()
    held, _ = LayoutTable(m).weights_by_device(Placement(10 ** 6, 0, 4096, "f16", "f16"), 0)
    assert held == [m.tensor_bytes]


@pytest.mark.parametrize("ngl, dup", [(0, False), (1, True), (20, True), (N_LAYER + 1, True)])
def test_tied_output_duplicated_only_when_output_offloaded(ngl, dup):
    m = qwen30b(tied=True)
    embd = next(t.n_bytes for t in m.tensors if t.name == "token_embd.weight")
    table = LayoutTable(m, (), 1)
    assert table.tied_output
    held, _ = table.weights_by_device(Placement(ngl, 0, 4096, "f16", "f16"), 1)
    assert sum(held) == m.tensor_bytes + (embd if dup else 0)
    assert held == [ref_held(m, ngl)["CPU"], ref_held(m, ngl)["GPU"]]
    assert held[0] >= embd  # the input copy stays on the CPU either way


@pytest.mark.parametrize("user, ngl, ncmoe", [
    # experts of layers 0-3 pinned to the GPU: they beat --n-cpu-moe 10 (user -ot first)
    ([(r"blk\.[0-3]\.ffn_(up|down|gate)_exps", "CUDA0")], N_LAYER + 1, 10),
    # attention of the last 8 layers pinned to the CPU, everything else offloaded
    ([(r"blk\.(4[0-7])\.attn_.*", "CPU")], N_LAYER + 1, 0),
    # a layer the -ngl keeps on the CPU, forced to the GPU
    ([(r"blk\.0\.", "CUDA0")], 10, 0),
    # the input embedding moved to the GPU; the output kept on the CPU
    ([("token_embd", "CUDA0"), (r"^output", "CPU")], N_LAYER + 1, 0),
    # first match wins among user overrides
    ([(r"blk\.5\.", "CPU"), (r"blk\.5\.", "CUDA0")], N_LAYER + 1, 0),
    # every expert on the CPU, like --cpu-moe
    ([(EXPS, "CPU")], N_LAYER + 1, 0),
])
def test_user_overrides_win_over_n_cpu_moe(user, ngl, ncmoe):
    m = qwen30b()
    held, _ = LayoutTable(m, user, 1).weights_by_device(Placement(ngl, ncmoe, 4096, "f16", "f16"), 1)
    ref = ref_held(m, ngl, list(user) + ncmoe_overrides(ncmoe))
    assert held == [ref["CPU"], ref["GPU"]]
    assert sum(held) == m.tensor_bytes


def test_n_cpu_moe_moves_only_experts():
    m = qwen30b()
    t = LayoutTable(m, (), 1)
    a, _ = t.weights_by_device(Placement(N_LAYER + 1, 0, 4096, "f16", "f16"), 1)
    b, _ = t.weights_by_device(Placement(N_LAYER + 1, 3, 4096, "f16", "f16"), 1)
    exps = sum(x.n_bytes for x in m.tensors if x.layer in (0, 1, 2) and re.search(EXPS, x.name))
    assert b[0] - a[0] == exps == a[1] - b[1]


def test_bytes_read_per_token_counts_active_experts_only():
    m = qwen30b()
    _, read = LayoutTable(m, (), 1).weights_by_device(Placement(N_LAYER + 1, 0, 4096, "f16", "f16"), 1)
    f = m.facts
    exps = sum(x.n_bytes for x in m.tensors if re.search(EXPS, x.name))
    dense_gpu = sum(x.n_bytes for x in m.tensors if not re.search(EXPS, x.name) and x.name != "token_embd.weight")
    assert read[1] == pytest.approx(dense_gpu + exps * f["expert_used_count"] / f["expert_count"], rel=1e-6)
    assert read[0] < 1 * MIB  # one embedding row


# ------------------------------------------------------------------------------------------- KV / context

def pl(ctx, np_=1, unified=False, ngl=10 ** 6, ub=512, nkvo=False, tk="f16", tv="f16"):
    return Placement(ngl, 0, ctx, tk, tv, parallel=np_, kv_unified=unified, n_ubatch=ub, no_kv_offload=nkvo)


@pytest.mark.parametrize("ctx, np_, unified, want", [
    (1, 1, False, 256), (256, 1, False, 256), (257, 1, False, 512), (1000, 1, False, 1024),
    (4096, 1, False, 4096), (32768, 1, False, 32768), (40960, 1, False, 40960),
    (1024, 2, False, 1024), (1024, 3, False, 1536), (1000, 3, False, 1536), (4096, 3, False, 4608),
    (4096, 4, False, 4096), (100, 2, False, 512), (8192, 5, False, 8960),
    (1024, 3, True, 1024), (1000, 3, True, 1024), (4096, 3, True, 4096),
])
def test_kv_size_tokens(ctx, np_, unified, want):
    assert kv_size_tokens(pl(ctx, np_, unified)) == want


@pytest.mark.parametrize("ctx, np_, unified", [(4096, 1, False), (1000, 1, False), (1024, 3, False),
                                                 (1024, 3, True), (32768, 2, False), (32768, 2, True)])
def test_full_attention_kv_bytes(ctx, np_, unified):
    m = small()
    per_layer = kv_row(m)
    assert set(per_layer) == {2 * 2 * 64 * 2}  # K + V, 2 heads x 64, f16
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(ctx, np_, unified), 1)
    assert got == [0, sum(per_layer) * kv_size_tokens(pl(ctx, np_, unified))]


@pytest.mark.parametrize("tk, tv, per_token", [("f16", "f16", 256 + 256), ("q8_0", "q8_0", 136 + 136),
                                               ("q4_0", "f16", 72 + 256), ("f32", "q4_1", 512 + 80)])
def test_kv_types(tk, tv, per_token):
    m = small()
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(4096, tk=tk, tv=tv), 1)
    assert got == [0, 4 * per_token * 4096]


@pytest.mark.parametrize("ngl, gpu_layers", [(0, 0), (1, 0), (2, 1), (4, 3), (5, 4), (99, 4)])
def test_kv_follows_layers(ngl, gpu_layers):
    m = small()
    per = kv_row(m)[0] * 4096
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(4096, ngl=ngl), 1)
    assert got == [(4 - gpu_layers) * per, gpu_layers * per]


@pytest.mark.parametrize("ngl", [0, 3, 99])
def test_no_kv_offload_keeps_kv_on_cpu(ngl):
    m = small()
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(4096, ngl=ngl, nkvo=True), 1)
    assert got == [4 * kv_row(m)[0] * 4096, 0]


def swa_model(window=512, pattern=4):
    # layers 0-2 sliding-window, layer 3 full (llama.cpp's il % pattern < pattern - 1)
    return with_facts(small(), sliding_window=window, sliding_window_pattern=pattern)


@pytest.mark.parametrize("ctx, np_, unified, ub, swa_cells, full_cells, streams", [
    (32768, 1, False, 512, pad256(512 + 512), 32768, 1),
    (32768, 1, False, 1024, pad256(512 + 1024), 32768, 1),
    (32768, 1, False, 100, pad256(512 + 100), 32768, 1),
    (8192, 2, False, 512, pad256(512 + 512), 4096, 2),
    (8192, 2, True, 512, pad256(2 * 512 + 512), 8192, 1),
    (8192, 3, True, 512, pad256(3 * 512 + 512), 8192, 1),
    (1024, 3, False, 512, 512, 512, 3),  # the window exceeds a slot: capped at n_ctx_seq
    (512, 1, False, 512, 512, 512, 1),
])
def test_swa_kv_bytes(ctx, np_, unified, ub, swa_cells, full_cells, streams):
    m = swa_model()
    kinds = [l.kind for l in m.kv_layers("f16")]
    assert kinds == ["swa", "swa", "swa", "full"]
    per = kv_row(m)[0]
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(ctx, np_, unified, ub=ub), 1)
    assert got == [0, per * streams * (3 * swa_cells + full_cells)]


def mla_model():
    # DeepSeek-V3-style MLA KV: one latent "head" of kv_lora_rank + rope (576), V is a view of K
    return with_facts(small(), head_count_kv=1, key_length=576, value_length=512, key_length_mla=192,
                      value_length_mla=128)


@pytest.mark.parametrize("ctx, np_", [(4096, 1), (1024, 3)])
def test_mla_has_no_v_cache(ctx, np_):
    m = mla_model()
    layers = m.kv_layers("f16")
    assert {l.kind for l in layers} == {"mla"} and {l.v_bytes_per_token for l in layers} == {0}
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(ctx, np_), 1)
    assert got == [0, 4 * 576 * 2 * kv_size_tokens(pl(ctx, np_))]


def mamba_model():
    return with_facts(small(), recurrent=True, head_count_kv=0, ssm_conv_kernel=4, ssm_inner_size=512,
                      ssm_state_size=64, ssm_group_count=2, ssm_time_step_rank=8)


@pytest.mark.parametrize("ctx, np_, ngl, nkvo", [(4096, 1, 99, False), (1 << 20, 1, 99, False),
                                                   (4096, 3, 99, False), (4096, 2, 3, False), (4096, 2, 99, True)])
def test_recurrent_state_per_sequence(ctx, np_, ngl, nkvo):
    m = mamba_model()
    layers = m.kv_layers("f16")
    assert {l.kind for l in layers} == {"recurrent"}
    state = layers[0].state_bytes_per_seq
    assert state > 0
    got = context_bytes_by_device(LayoutTable(m, (), 1), pl(ctx, np_, ngl=ngl, nkvo=nkvo), 1)
    on_gpu = 0 if nkvo else min(4, max(ngl - 1, 0))
    assert got == [(4 - on_gpu) * state * np_, on_gpu * state * np_]  # independent of the context


# ---------------------------------------------------------------------------------------------- make_plan

def plan(model=None, vram=None, host_gib=64.0, args=(), **req):
    return make_plan(model or qwen30b(), target(vram, host_gib), Request(pinned=parse_server_args(args), **req))


@pytest.fixture(scope="module")
def plan12():
    return plan(vram=12, ctx=32768)


@pytest.fixture(scope="module")
def plan24():
    return plan(vram=24, ctx=32768)


def test_12gib_ships_with_attention_on_gpu_and_some_experts_on_cpu(plan12):
    p = plan12
    assert p.verdict == "ship", p.reasons
    c = p.chosen.placement
    assert c.ctx == 32768 and (c.type_k, c.type_v) == ("f16", "f16")
    assert c.ngl >= N_LAYER + 1  # every layer's attention (and KV) on the GPU
    assert 0 < c.n_cpu_moe < N_LAYER
    cpu, cuda = p.chosen.memory
    assert cuda.fits and cpu.fits and cuda.headroom_bytes >= 0
    assert cuda.context_bytes == sum(kv_row(qwen30b())) * 32768  # all KV on the GPU
    assert cpu.context_bytes == 0
    argv = p.argv
    assert argv_value(argv, "--n-cpu-moe") == str(c.n_cpu_moe)
    assert argv_value(argv, "-ngl") == str(c.ngl) and argv_value(argv, "-c") == "32768"
    assert p.reasons[0].startswith("fits: --ctx 32768")


def test_24gib_moves_fewer_experts_and_is_faster(plan12, plan24):
    assert plan24.verdict == "ship"
    assert plan24.chosen.placement.n_cpu_moe < plan12.chosen.placement.n_cpu_moe
    assert plan24.chosen.forecast.decode_tok_s > plan12.chosen.forecast.decode_tok_s
    assert plan24.chosen.placement.ngl == N_LAYER + 1


@pytest.mark.parametrize("ctx, kv_type", [(32768, None), (None, None), (32768, "q8_0")])
def test_more_vram_never_slower(ctx, kv_type):
    """Plenty of host RAM; free VRAM from 4 to 32 GiB."""
    speeds = []
    for v in (4, 8, 12, 16, 20, 32):
        p = plan(vram=v, ctx=ctx, kv_type=kv_type)
        assert p.verdict == "ship", (v, p.reasons)
        speeds.append(p.chosen.forecast.decode_tok_s)
    assert speeds == sorted(speeds), speeds
    assert speeds[-1] > speeds[0]


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_more_vram_never_slower_with_tight_host_fixed_kv(kv_type):
    speeds = []
    for v in (11, 11.5, 12, 12.5, 13, 14, 16):
        p = plan(vram=v, host_gib=11, ctx=32768, kv_type=kv_type)
        speeds.append(p.chosen.forecast.decode_tok_s if p.verdict == "ship" else 0.0)  # a refusal: 0
    assert speeds == sorted(speeds), speeds
    assert speeds[-1] > 0


def test_free_kv_prefers_f16_and_names_the_faster_q8_0():
    # f16 KV is kept whenever it ships (no silent quality loss); when q8_0 would be faster the plan says so.
    # So, with tight host RAM, more VRAM can pick f16 at a lower speed than q8_0 had: 12.0 GiB ships q8_0,
    # 12.25 GiB ships f16 and names the q8_0 placement it passed over.
    small, big = plan(vram=12.0, host_gib=10.5, ctx=32768), plan(vram=12.25, host_gib=10.5, ctx=32768)
    assert small.chosen.placement.type_k == "q8_0" and big.chosen.placement.type_k == "f16"
    assert any(r.startswith("--kv-type q8_0 forecasts faster") for r in big.reasons), big.reasons




def test_cpu_only_host_short_refuses_with_amount_and_nearest():
    p = plan(host_gib=19, ctx=40960)
    assert p.verdict == "refuse" and p.chosen is None
    m = re.search(r"needs ([\d.]+) (GiB|MiB) more host RAM on CPU", p.reasons[0])
    assert m, p.reasons
    assert "VRAM" not in p.reasons[0]
    assert p.nearest is not None and p.nearest.fits and p.nearest.placement.ctx < 40960
    assert p.reasons[-1] == f"with --ctx {p.nearest.placement.ctx}, KV {p.nearest.placement.type_k} at " \
                            f"{p.nearest.forecast.decode_tok_s:.1f} tok/s it fits"
    assert argv_value(p.argv, "-c") == str(p.nearest.placement.ctx)  # the argv shown is the nearest plan's
    short = float(m.group(1)) * (GIB if m.group(2) == "GiB" else MIB)
    again = plan(host_gib=19 + (short + 10 * MIB) / GIB, ctx=40960)
    assert again.verdict == "ship", again.reasons


@pytest.mark.parametrize("host_gib", [8, 9])
def test_gpu_plus_short_host_refuses_with_host_amount_and_nearest(host_gib):
    p = plan(vram=12, host_gib=host_gib, ctx=32768)
    assert p.verdict == "refuse"
    m = re.search(r"needs ([\d.]+) (GiB|MiB) more host RAM on CPU", p.reasons[0])
    assert p.reasons[0].startswith("nothing fits: closest plan (--ctx 32768") and m, p.reasons
    assert p.nearest is not None and p.nearest.fits
    assert p.reasons[1].startswith("with --ctx ") and p.reasons[1].endswith(" it fits")
    # the host shortfall it names is enough: with that much more RAM the same request ships
    short = float(m.group(1)) * (GIB if m.group(2) == "GiB" else MIB)
    again = plan(vram=12, host_gib=host_gib + (short + 10 * MIB) / GIB, ctx=32768)
    assert again.verdict == "ship", again.reasons


def test_nothing_fits_anywhere():
    p = plan(host_gib=4, ctx=4096)  # 16.7 GiB of weights, no GPU
    assert p.verdict == "refuse" and p.chosen is None
    assert "more host RAM on CPU" in p.reasons[0]
    assert p.reasons[-1] == "no context down to 512 tokens and no KV type fits"


def test_floor_refusal_wording_and_nearest_above_floor():
    fits = plan(vram=12, ctx=40960)
    floor = round(fits.chosen.forecast.decode_tok_s * 1.3, 1)
    p = plan(vram=12, ctx=40960, floor_tok_s=floor)
    assert p.verdict == "refuse"
    assert p.chosen is not None and p.chosen.fits  # the best that fits, shown
    best = p.chosen.forecast.decode_tok_s
    assert best < floor
    assert p.reasons[0] == f"fits, but the best forecast {best:.2f} tok/s is below the {floor:g} tok/s floor"
    assert p.reasons[1].startswith("the nearest plan above the floor: --ctx ")
    assert p.nearest is not None and p.nearest.fits and p.nearest.forecast.decode_tok_s >= floor
    assert p.nearest.placement.ctx < 40960


def test_unreachable_floor():
    p = plan(vram=12, ctx=40960, floor_tok_s=1e6)
    assert p.verdict == "refuse"
    assert "is below the 1e+06 tok/s floor" in p.reasons[0]
    assert p.reasons[1] == "no placement, context or KV type reaches the floor on this hardware"
    assert p.nearest is None and p.chosen is not None


@pytest.mark.parametrize("args, want", [
    (["-ngl", "30", "-c", "8192", "-ctk", "q8_0"], dict(ngl=30, ctx=8192, type_k="q8_0", type_v="f16")),
    (["-ngl", "all"], dict(ngl=N_LAYER + 1)),
    (["-ngl", "0"], dict(ngl=0, n_cpu_moe=0)),
    (["--n-cpu-moe", "40"], dict(n_cpu_moe=40)),
    (["--cpu-moe"], dict(n_cpu_moe=N_LAYER)),
    (["-c", "16384", "-ctv", "q8_0", "-ctk", "q8_0"], dict(ctx=16384, type_k="q8_0", type_v="q8_0",
                                                          flash_attn="on")),
    (["-np", "2", "-c", "8192"], dict(parallel=2, ctx=8192)),
    (["-nkvo"], dict(no_kv_offload=True)),
    (["-c", "0"], dict(ctx=40960)),  # llama.cpp: 0 = the training context
    (["-np", "3", "-kvu", "-c", "8192"], dict(parallel=3, kv_unified=True, ctx=8192)),
    (["-fa", "off", "-c", "4096"], dict(flash_attn="off", ctx=4096)),
])
def test_pinned_args_respected(args, want):
    p = plan(vram=12, ctx=32768, args=args)  # --ctx 32768 unless -c is pinned: the pinned value wins
    assert p.verdict == "ship", p.reasons
    c = p.chosen.placement
    for k, v in want.items():
        assert getattr(c, k) == v, k
    argv = p.argv
    head = argv[:-2] if argv[-2] == "--n-cpu-moe" and "--n-cpu-moe" not in args else argv
    # user args verbatim, last but the planner's --n-cpu-moe (after the user's -ot: first override match wins)
    assert head[-len(args):] == tuple(args)
    for flags, attr in ((("-ngl", "--n-gpu-layers"), "ngl"), (("-c", "--ctx-size"), "ctx"),
                        (("-ctk",), "type_k"), (("-ctv",), "type_v"), (("-np",), "parallel")):
        pinned = any(a in flags for a in args)
        n = sum(a in flags for a in argv)
        assert n == 1, (flags, argv)  # the planner never adds a flag the user pinned
        v = argv_value(argv, *flags)
        if attr == "ngl" and v == "all":
            v = str(N_LAYER + 1)
        if attr == "ctx" and v == "0":
            v = str(qwen30b().facts["context_length"])
        assert v == str(getattr(c, attr)), (flags, pinned)
    if c.kv_unified:
        assert p.chosen.memory[1].context_bytes == sum(kv_row(qwen30b())) * 8192
    if "-nkvo" in args:
        assert p.chosen.memory[1].context_bytes == 0 and p.chosen.memory[0].context_bytes > 0
    if c.n_cpu_moe and "--n-cpu-moe" not in args and "--cpu-moe" not in args:
        assert argv_value(argv, "--n-cpu-moe") == str(c.n_cpu_moe)
    else:
        assert argv.count("--n-cpu-moe") == args.count("--n-cpu-moe")


def test_argv_shape(plan12):
    argv = plan12.argv
    assert argv[:2] == ("-m", "synthetic.gguf")
    assert argv[argv.index("--fit") + 1] == "off"


def test_user_passthrough_verbatim_and_last():
    args = ["--temp", "0.7", "-t", "8", "--alias", "a b", "--jinja"]
    p = plan(vram=24, ctx=8192, args=args)
    assert p.argv[-len(args):] == tuple(args)
    assert "--fit" in p.argv[:-len(args)]


def test_user_fit_flag_not_overridden():
    p = plan(vram=24, ctx=8192, args=["--fit", "on"])
    assert p.argv.count("--fit") == 1 and p.argv[-2:] == ("--fit", "on")


def test_q8_0_kv_requested_gives_q8_0_and_flash_attention():
    p = plan(vram=12, ctx=32768, kv_type="q8_0")
    assert p.verdict == "ship"
    c = p.chosen.placement
    assert (c.type_k, c.type_v, c.flash_attn) == ("q8_0", "q8_0", "on")
    a = p.argv
    assert argv_value(a, "-ctk") == "q8_0" and argv_value(a, "-ctv") == "q8_0" and argv_value(a, "-fa") == "on"
    # q8_0 halves the KV: more room for experts than f16 at the same VRAM
    assert c.n_cpu_moe < plan(vram=12, ctx=32768, kv_type="f16").chosen.placement.n_cpu_moe


def test_f16_kv_leaves_flash_attention_to_llama_cpp(plan12):
    assert plan12.chosen.placement.flash_attn == "auto" and "-fa" not in plan12.argv


def test_free_context_takes_the_largest_that_fits():
    p = plan(vram=24)
    assert p.verdict == "ship" and p.chosen.placement.ctx == 40960  # the training context


def test_cpu_only_plan():
    p = plan(ctx=4096)
    assert p.verdict == "ship"
    (cpu,) = p.chosen.memory
    assert cpu.kind == "host" and cpu.weights_bytes == qwen30b().tensor_bytes
    assert p.chosen.forecast.decode_tok_s > 0


def test_plan_json_shape(plan12):
    doc = plan12.to_json()
    assert doc["schema"] == "gpcrun.plan/1" and doc["verdict"] == "ship"
    assert doc["plan"]["placement"]["ngl"] == plan12.chosen.placement.ngl
    assert [d["device"] for d in doc["plan"]["memory"]] == ["CPU", "CUDA0"]
    assert doc["argv"] == list(plan12.argv) and doc["nearest"] is None


# --------------------------------------------------------------------------------- bugs (strict xfail)

def test_argv_override_order_matches_the_memory_map():
    user = ["-ot", r"blk\.0\.ffn_(up|down|gate)_exps=CUDA0"]
    p = plan(vram=12, ctx=32768, args=user)
    assert p.verdict == "ship" and p.chosen.placement.n_cpu_moe > 0
    ngl = int(argv_value(p.argv, "-ngl"))
    ref = ref_held(qwen30b(), ngl, llama_overrides_from_argv(p.argv))
    assert p.chosen.memory[1].model_bytes == ref["GPU"]


@pytest.mark.parametrize("value", ["auto", "-1"])
def test_ngl_auto_does_not_undo_the_plan(value):
    p = plan(vram=4, ctx=32768, args=["-ngl", value])
    assert p.verdict == "ship" and p.chosen.placement.ngl < N_LAYER + 1  # a partial offload was planned
    last = argv_value(p.argv, "-ngl", "--gpu-layers", "--n-gpu-layers")
    effective = N_LAYER + 1 if last in ("auto", "all") or int(last) < 0 else min(int(last), N_LAYER + 1)
    assert effective == p.chosen.placement.ngl


def test_multi_gpu_split_follows_llama_cpp():
    m = qwen30b()
    t = Target(host(), (gpu(8, 0), gpu(40, 1)))
    p = make_plan(m, t, Request(ctx=4096))
    assert p.verdict == "ship"
    argv = p.argv
    ngl = min(int(argv_value(argv, "-ngl")), N_LAYER + 1)
    ts = argv_value(argv, "-ts", "--tensor-split")
    shares = [float(x) for x in ts.split(",")] if ts else [g.capacity_bytes for g in t.gpus]
    splits = [sum(shares[:i + 1]) / sum(shares) for i in range(len(shares))]
    overrides = llama_overrides_from_argv(argv)
    start = N_LAYER + 1 - ngl
    held = [0, 0]
    for x in m.tensors:
        if any(re.search(pat, x.name) for pat, _ in overrides) or x.name == "token_embd.weight":
            continue  # (CPU here)
        il = x.layer if x.layer is not None else N_LAYER
        if il >= start:
            held[bisect.bisect_right(splits, (il - start) / ngl)] += x.n_bytes
    assert [mm.model_bytes for mm in p.chosen.memory[1:]] == held


def test_unknown_gpu_bandwidth_still_offloads():
    t = Target(host(), (DeviceTarget("CUDA0", "gpu", 80 * GIB, None, DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES),))
    p = make_plan(qwen30b(), t, Request(ctx=32768))
    assert p.verdict == "ship"
    assert p.chosen.placement.ngl == N_LAYER + 1 and p.chosen.placement.n_cpu_moe == 0


def test_swa_full_counts_the_full_cache():
    m = swa_model()
    p = make_plan(m, target(None), Request(pinned=parse_server_args(["-c", "32768", "--swa-full"])))
    assert p.chosen.memory[0].context_bytes == sum(kv_row(m)) * 32768


def test_batch_size_caps_ubatch():
    m = swa_model()
    p = make_plan(m, target(None), Request(pinned=parse_server_args(["-c", "32768", "-b", "128"])))
    per = kv_row(m)[0]
    assert p.chosen.memory[0].context_bytes == per * (3 * pad256(512 + 128) + 32768)


def test_host_margin_keeps_clear_of_watchdog_line():
    from gpcrun.launch.watchdog import Limits
    doc = {"host_memory": {"effective_available_bytes": 40 * GIB, "effective_limit_bytes": 64 * GIB},
           "bandwidth": {"cpu_memory": {"bytes_per_s": 20e9, "method": "test"}}}
    p = make_plan(small(), target_from_profile(doc), Request(ctx=4096))
    assert p.verdict == "ship"
    assert p.chosen.memory[0].margin_bytes >= Limits.defaults(64 * GIB).host_term_available_bytes


# ------------------------------------------------------------------------------------ targets, gpu_specs

def test_target_from_minimal_profile():
    t = target_from_profile({})
    assert t.gpus == () and t.host.kind == "host" and t.host.name == "CPU"
    assert t.host.capacity_bytes is None and t.host.bandwidth_bytes_per_s is None


PROFILE = {
    "fingerprint": "sha256:0123456789abcdef",
    "platform": {"cpus_usable": 14, "isa": ["avx2", "fma"]},
    "host_memory": {"effective_available_bytes": 100 * GIB, "effective_limit_bytes": 128 * GIB},
    "bandwidth": {"cpu_memory": {"bytes_per_s": 21e9, "method": "numpy copy"}},
    "gpus": {"devices": [{"name": "NVIDIA H200", "cuda_index": 0, "volatile": {"free_bytes": 139 * GIB}}]},
}


def test_target_from_profile_host_and_gpu():
    t = target_from_profile(PROFILE)
    assert t.host.capacity_bytes == 100 * GIB and t.host.bandwidth_bytes_per_s == 21e9
    assert t.fingerprint == PROFILE["fingerprint"] and t.threads == 14
    (g,) = t.gpus
    assert (g.name, g.kind, g.capacity_bytes) == ("CUDA0", "gpu", 139 * GIB)
    assert g.bandwidth_bytes_per_s == 4800e9 and g.flops == 989e12
    assert g.runtime_overhead_bytes == DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES


def test_target_from_profile_unknown_gpu_name():
    doc = {**PROFILE, "gpus": {"devices": [{"name": "Mystery Accelerator", "cuda_index": 1,
                                            "volatile": {"free_bytes": GIB}}]}}
    (g,) = target_from_profile(doc).gpus
    assert g.name == "CUDA1" and g.capacity_bytes == GIB and g.bandwidth_bytes_per_s is None


@pytest.mark.parametrize("vram, gpus, want", [
    # (name, capacity, bandwidth) per GPU; --vram/--gpu replace the profile's GPUs
    ([2048], [], [("CUDA0", 2048 * MIB, None)]),
    ([], ["RTX 4090"], [("CUDA0", 24 * GIB - SPEC_DRIVER_RESERVE_BYTES, 1008e9)]),
    ([20000], ["RTX 4090"], [("CUDA0", 20000 * MIB, 1008e9)]),
    ([8000, 16000], ["RTX 4090"], [("CUDA0", 8000 * MIB, 1008e9), ("CUDA1", 16000 * MIB, 1008e9)]),
    ([], ["RTX 3090", "L4"], [("CUDA0", 24 * GIB - SPEC_DRIVER_RESERVE_BYTES, 936e9),
                              ("CUDA1", 24 * GIB - SPEC_DRIVER_RESERVE_BYTES, 300e9)]),
    ([1000, 2000], [], [("CUDA0", 1000 * MIB, None), ("CUDA1", 2000 * MIB, None)]),
])
def test_target_overrides(vram, gpus, want):
    specs = [gpu_specs.find_spec(n) for n in gpus]
    t = target_from_profile(PROFILE, vram_mib=vram, specs=specs)
    assert [(g.name, g.capacity_bytes, g.bandwidth_bytes_per_s) for g in t.gpus] == want
    assert t.host.capacity_bytes == 100 * GIB


@pytest.mark.parametrize("name, want", [
    ("RTX 4090", "RTX 4090"), ("rtx 4090", "RTX 4090"), ("RTX4090", "RTX 4090"), ("rtx-4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("GeForce RTX 3090", "RTX 3090"), ("  H200 ", "H200"),
    ("NVIDIA H200", "H200"), ("h100 sxm", "H100 SXM"), ("H100-SXM", "H100 SXM"), ("h100pcie", "H100 PCIe"),
    ("a100 80gb", "A100 80GB"), ("RTX 4060 Ti 16GB", "RTX 4060 Ti 16GB"), ("l40s", "L40S"), ("T4", "T4"),
    ("nosuch", None), ("4090", None), ("H100", None), ("", None),
])
def test_find_spec(name, want):
    s = gpu_specs.find_spec(name)
    assert (s.name if s else None) == want


@pytest.mark.parametrize("nvml_name, want", [
    ("NVIDIA H200", "H200"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("Tesla T4", "T4"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
])
def test_spec_for_nvml_names(nvml_name, want):
    s = _spec_for_name(nvml_name)
    assert (s.name if s else None) == want


@pytest.mark.parametrize("nvml_name, bad", [("NVIDIA L40", "L4"), ("NVIDIA A100-SXM4-80GB", None),
                                            ("NVIDIA A100-PCIE-40GB", None)])
def test_spec_for_nvml_names_misidentified(nvml_name, bad):
    s = _spec_for_name(nvml_name)
    assert (s.name if s else None) != bad
