"""The calibration with llama.cpp's own kernels (gpcrun/calibrate): llama-bench on synthetic models of one weight
type each, cached per machine and build, extended with the types of the model at hand; used by the forecast."""
from __future__ import annotations

import time

from gpcrun.calibrate import load_cached, load_or_calibrate, thread_points
from gpcrun.calibrate.run import REPS
from gpcrun.calibrate.synth import Shape, write_synth
from gpcrun.model import load_model
from gpcrun.plan.rates import HostRates


def test_thread_points():
    assert thread_points(1) == [1] and thread_points(2) == [1, 2]
    assert thread_points(14) == [1, 2, 4, 8, 14] and thread_points(16) == [1, 2, 4, 8, 16]


def test_synthetic_models_are_what_they_say(llama_bin_dir, tmp_path):
    moe = Shape(n_embd=512, n_ff=0, n_head=8, n_head_kv=2, n_expert=8, n_expert_used=2, n_ff_exp=256)
    m = write_synth(tmp_path, "Q4_K", 8 << 20, llama_bin_dir / "llama-quantize", moe)
    info = load_model(str(m.path))
    assert info.architecture == "qwen3moe" and info.facts["expert_count"] == 8
    assert info.facts["block_count"] == m.n_layer and info.tensor_bytes == m.tensor_bytes
    assert {t.type_name for t in info.tensors if t.name.endswith("_exps.weight")} == {"Q4_K"}


def test_calibrate_cache_and_added_types(llama_bin_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("gpcrun.calibrate.run.TYPES", ("Q8_0",))  # one type keeps CI short; the rest is the same
    t0 = time.monotonic()
    doc = load_or_calibrate("fp-test", 2, None, home=tmp_path, quiet=True)
    took = time.monotonic() - t0
    assert [d["threads"] for d in doc["decode"]] == [1, 2] and all(d["bytes_per_s"] > 1e8 for d in doc["decode"])
    assert {p["type"] for p in doc["prefill"]} == {"Q8_0"} and len(doc["layer_fixed"]) == 2
    rates = HostRates.from_doc(doc)
    assert all(len(d["samples_tok_s"]) == REPS for d in doc["decode"])  # raw samples are kept
    assert {(a["type"], a["depth"]) for a in doc["attention"]} == {("f16", 0), ("f16", 2048), ("q8_0", 0),
                                                                   ("q8_0", 2048)}
    assert rates.attention_s_per_unit("f16", 2) is not None
    assert rates.layer_fixed_s(1) is not None and rates.decode_bytes_per_s("Q8_0", 2) > 0
    t0 = time.monotonic()
    assert load_or_calibrate("fp-test", 2, None, home=tmp_path, quiet=True) == doc  # cached: nothing runs
    assert time.monotonic() - t0 < min(1.0, took / 4)
    assert load_cached("another-machine", tmp_path) is None  # keyed by machine (and llama-bench build)
    more = load_or_calibrate("fp-test", 2, None, home=tmp_path, quiet=True, types=("F16",))
    assert {d["type"] for d in more["decode"]} == {"Q8_0", "F16"} and more["layer_fixed"] == doc["layer_fixed"]
