"""llama-server's host prompt cache (--cache-ram) in the plan: default kept where it fits, -cram written with a
reason where it does not, the user's value never changed (a refusal names what fits), the watchdog's advice."""
from __future__ import annotations

from gpcrun.launch.outcome import advice_for
from gpcrun.launch.watchdog import Action
from gpcrun.model import load_model
from gpcrun.plan import (DEFAULT_CACHE_RAM_MIB, MIB, DeviceTarget, Target, apply_prompt_cache, make_plan,
                         plan_prompt_cache)
from gpcrun.planning import ResolvedModel, build_request, plan_document, server_args

GIB = 1 << 30


def target(capacity_bytes: int) -> Target:
    return Target(DeviceTarget("CPU", "host", capacity_bytes, 25e9, source="test", limit_bytes=capacity_bytes), (),
                  "test", 2, ())


def planned(model_path, capacity_bytes, args=()):
    info = load_model(str(model_path))
    sa = server_args(["-c", "1024", "-np", "1", *args], {})
    req = build_request(None, None, None, 1.0, None, sa)
    plan = make_plan(info, target(capacity_bytes), req)
    pc = plan_prompt_cache(plan, req.pinned.cache_ram_mib)
    return apply_prompt_cache(plan, pc), pc, plan_document(apply_prompt_cache(plan, pc), sa,
                                                           ResolvedModel(str(model_path), info, None))


def test_default_kept_where_it_fits(tiny_models):
    plan, pc, doc = planned(tiny_models["tiny-llama-q8_0"], 24 * GIB)
    assert plan.verdict == "ship" and pc.limit_mib == DEFAULT_CACHE_RAM_MIB and pc.set_mib is None
    assert "-cram" not in plan.argv and not [c for c in doc["changes"] if c["flag"] == "-cram"]
    assert doc["prompt_cache"]["source"] == "default"


def test_default_too_big_writes_what_fits_with_its_reason(tiny_models):
    plan, pc, doc = planned(tiny_models["tiny-llama-q8_0"], 3 * GIB)  # 384 MiB margin: ~2.5 GiB of room
    assert plan.verdict == "ship" and 0 < pc.set_mib < DEFAULT_CACHE_RAM_MIB
    assert plan.argv[-2:] == ("-cram", str(pc.set_mib))
    assert pc.set_mib * MIB <= pc.room_bytes < (pc.set_mib + 1) * MIB
    (change,) = [c for c in doc["changes"] if c["flag"] == "-cram"]
    assert "prompt cache" in change["reason"] and f"{pc.set_mib} MiB is what fits" in change["reason"]


def test_no_room_disables_it(tiny_models):
    # 140 MiB: margin 17.5 MiB (12.5 %), ~60 MiB planned: room < 64 MiB after the model
    plan, pc, _ = planned(tiny_models["tiny-llama-q8_0"], 140 * MIB)
    assert plan.verdict == "ship" and pc.set_mib == 0 and plan.argv[-2:] == ("-cram", "0")


def test_users_value_is_kept_or_refused_with_what_fits(tiny_models):
    plan, pc, _ = planned(tiny_models["tiny-llama-q8_0"], 24 * GIB, ["-cram", "4096"])
    assert plan.verdict == "ship" and pc.source == "user" and "-cram" in plan.argv  # the user's own, once
    assert plan.argv.count("-cram") == 1
    plan, pc, _ = planned(tiny_models["tiny-llama-q8_0"], 3 * GIB, ["-cram", "8192"])
    assert plan.verdict == "refuse" and not pc.fits and plan.nearest is not None
    assert plan.reasons[-1].startswith("--cache-ram 8192 MiB does not fit") and "with --cache-ram" in plan.reasons[-1]
    for v in ("0", "-1"):
        plan, pc, _ = planned(tiny_models["tiny-llama-q8_0"], 3 * GIB, ["-cram", v])
        assert plan.verdict == "ship", v


def test_env_value_counts_as_the_users():
    sa = server_args([], {"LLAMA_ARG_CACHE_RAM": "512"})
    assert build_request(None, None, None, 1.0, None, sa).pinned.cache_ram_mib == 512


def test_watchdog_advice_names_the_prompt_cache():
    act = Action("term", "host_term", "host available 900 MiB < 1024 MiB")
    advice = advice_for(act, {"plan": {"placement": {"ctx": 8192}}, "prompt_cache": {"limit_mib": 8192}})
    assert "--cache-ram" in advice and "-cram 4096" in advice
    assert "--cache-ram" not in advice_for(act, {"plan": {"placement": {"ctx": 8192}}})
    assert "--cache-ram" not in advice_for(act, {"prompt_cache": {"limit_mib": 0}})
