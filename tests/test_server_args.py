"""The model of llama-server's arguments: grammar from common/arg.cpp and from --help, one parse with env, write-back."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gpcrun.server_args import ServerArgs, ServerArgsError, grammar_for, settings, table_grammar
from gpcrun.server_args.grammar import TABLE_PATH, shipped_table
from gpcrun.server_args.help import parse_head, parse_help

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_server_args  # noqa: E402


def P(argv, env=None):
    return ServerArgs.parse(argv, env or {})


# ------------------------------------------------------------------------------------------------ the table

def test_shipped_table_is_what_the_generator_makes_from_arg_cpp(llama_source_dir):
    """Not typed by hand: regenerating from the pinned source gives the shipped structure (defaults come from
    --help and are compared in the binary test)."""
    opts = gen_server_args.for_server(gen_server_args.parse_arg_cpp(
        (llama_source_dir / "common" / "arg.cpp").read_text()))
    doc, _ = shipped_table()
    strip = lambda o: {k: v for k, v in o.items() if k != "default"}  # noqa: E731
    assert [strip(o) for o in doc["options"]] == [strip(o) for o in opts]
    assert doc["generated_by"] == "scripts/gen_server_args.py"


def test_table_knows_the_options_planning_reads():
    g = table_grammar()
    for name, arity, vtype, env in [("-c", 1, "int", "LLAMA_ARG_CTX_SIZE"), ("-np", 1, "int", "LLAMA_ARG_N_PARALLEL"),
                                    ("-ngl", 1, "string", "LLAMA_ARG_N_GPU_LAYERS"), ("-fa", 1, "string", None),
                                    ("-ot", 1, "string", "LLAMA_ARG_OVERRIDE_TENSOR"),
                                    ("--host", 1, "string", "LLAMA_ARG_HOST"), ("--api-key", 1, "string", "LLAMA_API_KEY"),
                                    ("-cmoe", 0, "flag", "LLAMA_ARG_CPU_MOE"), ("--metrics", 0, "flag", None),
                                    ("-kvu", 0, "bool", "LLAMA_ARG_KV_UNIFIED"), ("-nkvo", 0, "bool", None),
                                    ("-md", 1, "string", None), ("--control-vector-layer-range", 2, "string", None)]:
        o, _ = g.lookup(name)
        assert (o.arity, o.value_type) == (arity, vtype), name
        if env:
            assert o.env == env, name
    assert g.lookup("--lora")[0].repeat == "append" and g.lookup("-ot")[0].repeat == "append"
    assert g.lookup("--host")[0].repeat == "last"  # its handler clears the list first
    assert g.lookup("-np")[0].default.startswith("-1")  # the server's -np (auto), not the other tools' 1
    assert g.lookup("--mlock") is None  # removed in this llama.cpp (-> --load-mode)


# ------------------------------------------------------------------------------------------------ parsing

def test_env_first_then_argv_last_wins():
    sa = P(["-c", "2048", "--ctx-size", "4096"], {"LLAMA_ARG_CTX_SIZE": "1024"})
    assert sa.int_value("ctx-size") == 4096 and sa.source("ctx-size") == "argv"
    sa = P([], {"LLAMA_ARG_CTX_SIZE": "1024", "LLAMA_ARG_HOST": "0.0.0.0"})
    assert sa.int_value("ctx-size") == 1024 and sa.source("ctx-size") == "env"
    assert sa.where("ctx-size") == "LLAMA_ARG_CTX_SIZE=1024" and sa.argv() == []
    assert settings.listen(sa).hosts == ("0.0.0.0",)


def test_underscores_negative_values_and_no_equals_form():
    sa = P(["--ctx_size", "512", "-np", "-1", "--port=9000", "--n-gpu-layers", "all"])
    assert sa.int_value("ctx-size") == 512 and sa.int_value("parallel") == -1
    assert not sa.is_set("port") and sa.unknown() == ["--port=9000"]  # llama-server rejects '--port=9000' too
    assert settings.ngl(sa) == 10 ** 6
    assert sa.argv() == ["--ctx_size", "512", "-np", "-1", "--port=9000", "--n-gpu-layers", "all"]


def test_appending_options_accumulate_env_first():
    sa = P(["-ot", "a=CPU", "--override-tensor", "b=CPU,c=CUDA0"], {"LLAMA_ARG_OVERRIDE_TENSOR": "z=CPU"})
    assert settings.overrides(sa) == (("z", "CPU"), ("a", "CPU"), ("b", "CPU"), ("c", "CUDA0"))
    assert P(["--lora", "a.gguf", "--lora", "b.gguf"]).values("lora") == ["a.gguf", "b.gguf"]


def test_booleans_flags_and_their_env_forms():
    assert P(["-kvu"]).flag("kv-unified") is True and P(["-no-kvu"]).flag("kv-unified") is False
    assert P([], {"LLAMA_ARG_NO_KV_UNIFIED": "1"}).flag("kv-unified") is False
    assert P([], {"LLAMA_ARG_KV_UNIFIED": "false"}).flag("kv-unified") is False
    assert P([], {"LLAMA_ARG_CPU_MOE": "0"}).flag("cpu-moe") is None  # a falsey flag env is ignored
    assert P([], {"LLAMA_ARG_CPU_MOE": "on"}).flag("cpu-moe") is True
    assert P(["-nkvo"]).flag("kv-offload") is False


def test_unknown_flags_and_positionals_pass_through_in_place():
    argv = ["--frobnicate", "7", "-m", "m.gguf", "stray", "--jinja"]
    sa = P(argv)
    assert sa.argv() == argv and sa.unknown() == ["--frobnicate", "7", "stray"]
    assert sa.value("model") == "m.gguf" and sa.flag("jinja") is True


def test_missing_value_and_bad_ints_are_usage_errors():
    with pytest.raises(ServerArgsError, match="needs a value"):
        P(["-m", "x", "-c"])
    with pytest.raises(ServerArgsError, match="integer"):
        P(["-c", "big"]).int_value("ctx-size")
    with pytest.raises(ServerArgsError, match="KV cache type"):
        settings.cache_type(P(["-ctk", "q9"]), "cache-type-k")


def test_typed_readings():
    sa = P(["--host", "127.0.0.1,::1", "--port", "9", "--api-prefix", "/v/", "--api-key", "k1,k2", "-hf", "o/r:Q8_0",
            "-md", "d.gguf", "--mmproj", "p.gguf", "-t", "3"])
    lst = settings.listen(sa)
    assert lst.hosts == ("127.0.0.1", "::1") and lst.port == 9 and lst.api_prefix == "/v"
    assert settings.api_key(sa) == "k1" and settings.secret_values(sa) >= {"k1", "k2"}
    assert settings.model_source(sa).kind == "hf" and settings.threads(sa) == 3
    f = settings.files(sa)
    assert f["draft"] == ["d.gguf"] and f["mmproj"] == ["p.gguf"]
    assert settings.model_source(P(["--models-dir", "/m"])).kind == "router"


def test_write_back_adds_and_removes_only_what_is_asked():
    sa = P(["-m", "x", "--jinja"]).with_arg("-c", "8192").with_arg("--fit", "off")
    assert sa.argv() == ["-m", "x", "--jinja", "-c", "8192", "--fit", "off"] and sa.int_value("ctx-size") == 8192
    assert sa.without("ctx-size").argv() == ["-m", "x", "--jinja", "--fit", "off"]


_TOKENS = st.sampled_from(["-m", "-c", "-np", "-ngl", "--lora", "-ot", "-kvu", "--no-kv-unified", "--port=1", "--x",
                           "-1", "a=CPU", "4096", "auto", "--", "", "-", "--ctx_size", "--metrics", "\u00e9"])


@hsettings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=12))
def test_fuzz_parse_never_loses_a_token(argv):
    try:
        sa = P(argv)
    except ServerArgsError:
        return
    assert sa.argv() == argv


# ------------------------------------------------------------------------------------------------ --help

def test_parse_head():
    assert parse_head("-ngl, --gpu-layers, --n-gpu-layers N") == (["-ngl", "--gpu-layers", "--n-gpu-layers"], "N")
    assert parse_head("-kvu,   --kv-unified, -no-kvu, --no-kv-unified") == (
        ["-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"], None)
    assert parse_head("--control-vector-layer-range START END") == (["--control-vector-layer-range"], "START END")


def test_grammar_from_the_real_binary_matches_the_table(llama_server_bin, tmp_path, monkeypatch):
    monkeypatch.setenv("GPCRUN_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    g = grammar_for(llama_server_bin)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    g2 = grammar_for(llama_server_bin)
    warm = time.perf_counter() - t0
    print(f"grammar from --help: cold {cold * 1e3:.0f} ms, cached {warm * 1e3:.1f} ms")
    assert g.source.startswith("llama-server --help") and g2.options == g.options
    table = table_grammar()
    names = lambda gr: {n for o in gr.options for n in (*o.names, *o.neg_names)}  # noqa: E731
    assert names(g) == names(table)  # the binary is the pinned version: the same options, every name
    for o in g.options:
        t, _ = table.lookup(o.names[0])
        assert (o.arity, o.env, o.default) == (t.arity, t.env, t.default), o.names
    assert g.lookup("--cache-ram")[0].default.startswith("8192") and g.lookup("--port")[0].default == "8080"
    assert len(list(tmp_path.glob("server-args/*.json"))) == 1


def test_grammar_falls_back_to_the_table(tmp_path):
    assert grammar_for(None).source.startswith("table")
    assert grammar_for(tmp_path / "missing").source.startswith("table")
    fake = tmp_path / "not-a-server"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    assert grammar_for(fake).source.startswith("table")


def test_table_json_is_valid():
    doc = json.loads(TABLE_PATH.read_text())
    assert doc["schema"] == "gpcrun.server-args/1" and len(doc["options"]) > 200
