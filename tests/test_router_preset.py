"""The router's sources as llama.cpp reads them (gpcrun/router/preset.py, after common/preset.cpp) and the admission
count (gpcrun/router/admission.py): table tests, no server."""
from __future__ import annotations

import pytest

from gpcrun.router.admission import Admission, Footprint, admit, budgets, footprint_of, models_max_change, to_unload
from gpcrun.router.preset import (PresetError, option_tokens, parse_ini, render_ini, router_models,
                                  scan_models_dir)
from gpcrun.server_args.grammar import table_grammar

MIB = 1 << 20

INI = """version = 1
; comment
# comment too
[*]
c = 8192
n-gpu-layers = 8

[ggml-org/MY-MODEL]
chat-template = chatml ; trailing comment
jinja = true
LLAMA_ARG_CACHE_RAM = 0
model-draft = /abs/draft.gguf
c = 4096
c = 2048

[custom_model]
model = /m/a b.gguf
"""


def test_parse_ini_like_llama_cpp():
    got = parse_ini(INI)
    assert got["default"] == {"version": "1"}
    assert got["*"] == {"c": "8192", "n-gpu-layers": "8"}
    assert got["ggml-org/MY-MODEL"] == {"chat-template": "chatml", "jinja": "true", "LLAMA_ARG_CACHE_RAM": "0",
                                        "model-draft": "/abs/draft.gguf", "c": "2048"}  # a later key wins
    assert got["custom_model"] == {"model": "/m/a b.gguf"}  # inner spaces stay


@pytest.mark.parametrize("bad", ["  c = 1\n", "[unclosed\n", "= 3\n", "9key = 1\n", "just words\n"])
def test_lines_llama_cpp_rejects_fail_the_file(bad):
    with pytest.raises(PresetError, match="cannot parse"):
        parse_ini("[m]\n" + bad)


def test_header_with_comment_and_crlf():
    assert parse_ini("[m] ; note\r\nc = 1\r\n") == {"m": {"c": "1"}}


def test_render_reads_back_and_refuses_what_it_cannot_carry():
    sections = {"*": {"c": "4096"}, "m": {"model": "/x/y.gguf", "fit": "off"}}
    assert parse_ini(render_ini(sections, "a header\nof two lines")) == {"default": {"version": "1"}, **sections}
    with pytest.raises(PresetError):
        render_ini({"m": {"chat-template-kwargs": "a;b"}})


def test_scan_models_dir_follows_load_from_models_dir(tmp_path):
    for f in ("a.gguf", "mmproj-x.gguf", "mtp-a.gguf", "notes.txt"):
        (tmp_path / f).write_bytes(b"")
    v = tmp_path / "vision"
    v.mkdir()
    for f in ("gemma.gguf", "mmproj-F16.gguf", "mtp-gemma.gguf"):
        (v / f).write_bytes(b"")
    s = tmp_path / "kimi"
    s.mkdir()
    for f in ("k-00001-of-00002.gguf", "k-00002-of-00002.gguf"):
        (s / f).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    got = {m.name: m for m in scan_models_dir(str(tmp_path))}
    assert set(got) == {"a", "vision", "kimi"}
    assert got["vision"].path.endswith("gemma.gguf") and got["vision"].mmproj.endswith("mmproj-F16.gguf")
    assert got["vision"].draft.endswith("mtp-gemma.gguf")
    assert got["kimi"].path.endswith("k-00001-of-00002.gguf")
    with pytest.raises(PresetError, match="not a directory"):
        scan_models_dir(str(tmp_path / "a.gguf"))


def test_router_models_merges_dir_and_preset(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    ini = tmp_path / "p.ini"
    ini.write_text("[*]\nc = 1024\n[a]\nngl = 3\n[other]\nmodel = /o.gguf\n")
    glob, models = router_models(str(tmp_path), str(ini))
    assert glob == {"c": "1024"}
    assert models["a"].source == "models_dir" and models["a"].own == {"ngl": "3"}
    assert models["other"].source == "preset" and models["other"].own == {"model": "/o.gguf"}


def test_option_tokens_read_keys_as_llama_cpp_does():
    g = table_grammar()
    argv, unknown = option_tokens({"c": "4096", "LLAMA_ARG_N_GPU_LAYERS": "5", "ctx-size": "2048", "no-warmup": "true",
                                   "jinja": "false", "load-on-startup": "true", "stop-timeout": "3",
                                   "not-an-option": "1"}, g)
    from gpcrun.server_args import ServerArgs
    sa = ServerArgs.parse(argv, {}, g)
    assert sa.value("gpu-layers") == "5" and sa.value("ctx-size") == "2048"  # the later key wins, as in the INI
    assert sa.flag("warmup") is False and sa.flag("jinja") is False
    assert unknown == ["not-an-option"]
    assert not any("load-on-startup" in a or "stop-timeout" in a for a in argv)


def _f(name, cpu_mib, gpu_mib=0):
    return Footprint(name, {"CPU": cpu_mib * MIB, **({"CUDA0": gpu_mib * MIB} if gpu_mib else {})})


@pytest.mark.parametrize("sizes,budget,n,all_fit", [
    ((100, 100, 100), 400, 3, True),
    ((100, 100, 100), 250, 2, False),
    ((150, 60, 60), 200, 1, False),  # the two largest (150 + 60) do not fit: a count must hold for any pair
    ((300,), 250, 0, False),
    ((), 100, 0, True),
])
def test_admit_counts_the_largest(sizes, budget, n, all_fit):
    adm = admit([_f(str(i), s) for i, s in enumerate(sizes)], {"CPU": budget * MIB})
    assert (adm.models_max, adm.all_fit) == (n, all_fit)


def test_admit_checks_every_device():
    fps = [_f("a", 10, 700), _f("b", 10, 700)]
    adm = admit(fps, {"CPU": 1000 * MIB, "CUDA0": 1000 * MIB})
    assert adm.models_max == 1 and "CUDA0" in adm.reason


def test_budgets_and_footprints_from_plan_rows():
    rows = [[{"device": "CPU", "total_bytes": 5, "capacity_bytes": 100, "margin_bytes": 10}],
            [{"device": "CPU", "total_bytes": 7, "capacity_bytes": 90, "margin_bytes": 10}]]
    assert budgets(rows) == {"CPU": 80}
    assert footprint_of("m", rows[1]).on("CPU") == 7


@pytest.mark.parametrize("models_max,all_fit,user,n,expect_write,warns", [
    (2, False, None, 3, 2, False),  # below llama-server's default 4: written
    ((1, 3), False, None, 5, 3, False),  # sizes differ: three small ones fit, admission handles the big one
    ((1, 5), False, None, 5, None, False),  # the smaller ones fit beyond the default: it is kept
    (4, False, None, 6, None, False),  # the default is safe: kept
    (3, True, None, 3, None, False),  # all fit: nothing to change
    (2, False, 3, 3, None, True),  # the user's value is kept, and said to be unsafe
    (2, False, 0, 3, None, True),  # 0 = unlimited
    (2, False, 2, 3, None, False),
])
def test_models_max_change(models_max, all_fit, user, n, expect_write, warns):
    safe, most = models_max if isinstance(models_max, tuple) else (models_max, models_max)
    write, warning = models_max_change(Admission(safe, {}, all_fit, "why", most), user, n)
    assert write == expect_write and bool(warning) == warns


def test_admit_counts_the_smallest_too():
    adm = admit([_f("big", 150), _f("a", 60), _f("b", 60)], {"CPU": 200 * MIB})
    assert (adm.models_max, adm.most) == (1, 2)


@pytest.mark.parametrize("loading,resident,expect", [
    ("a", ["b"], []),  # 60 + 60 fit
    ("big", ["a", "b"], ["a", "b"]),  # the oldest first until the big one fits
    ("b", ["big", "a"], ["big"]),
    ("unknown", ["a", "b"], []),  # no footprint: counts as nothing
])
def test_to_unload_oldest_first_until_the_load_fits(loading, resident, expect):
    fps = {f.name: f for f in (_f("big", 150), _f("a", 60), _f("b", 60))}
    assert to_unload(loading, resident, fps, {"CPU": 200 * MIB}) == expect


def test_admission_steps_act_once_per_load(tmp_path):
    from gpcrun.launch.router_admit import Admission as Loop
    fps = {f.name: f for f in (_f("big", 150), _f("a", 60), _f("b", 60))}
    loop = Loop("http://x", None, fps, {"CPU": 200 * MIB}, tmp_path, lambda m: None)
    assert loop.step({"a": "loading", "b": "unloaded", "big": "unloaded"}) == []
    assert loop.step({"a": "loaded", "b": "loading", "big": "unloaded"}) == []
    assert loop.step({"a": "loaded", "b": "loaded", "big": "unloaded"}) == []
    assert loop.order == ["a", "b"]
    assert loop.step({"a": "loaded", "b": "loaded", "big": "loading"}) == [("big", "a"), ("big", "b")]
    assert loop.step({"a": "loaded", "b": "loaded", "big": "loading"}) == []  # once per load
    assert loop.step({"a": "unloaded", "b": "unloaded", "big": "loaded"}) == [] and loop.order == ["big"]
    assert loop.step({"a": "loaded", "b": "unloaded", "big": "loaded"}) == [("a", "big")]  # loaded between looks
    fresh = Loop("http://x", None, fps, {"CPU": 200 * MIB}, tmp_path, lambda m: None)
    assert fresh.step({"a": "loaded", "b": "unloaded", "big": "loaded"}) == [("big", "a")]  # two at once
