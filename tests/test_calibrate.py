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
    # a GPU that cannot be calibrated (no CUDA0 in this build): its failure is kept with the reason, the host's
    # figures stand, and it is not retried on the next plan
    withdev = load_or_calibrate("fp-test", 2, None, home=tmp_path, quiet=True, devices=("CUDA0",))
    assert withdev["devices"]["CUDA0"]["error"] and withdev["decode"] == more["decode"]
    t0 = time.monotonic()
    assert load_or_calibrate("fp-test", 2, None, home=tmp_path, quiet=True, devices=("CUDA0",)) == withdev
    assert time.monotonic() - t0 < 1.0


def test_a_device_is_calibrated_with_every_layer_on_it(llama_bin_dir, tmp_path):
    """A ggml-rpc-server stands in for a GPU (llama.cpp device RPC0): the same measurement with -ngl 99 on it
    gives that device's rates, which the target attaches to a GPU of that name."""
    import socket
    import subprocess

    from gpcrun.calibrate import calibrate
    from gpcrun.calibrate.run import device_place
    from gpcrun.launch.run import free_port
    from gpcrun.targets import target_from_profile
    from tests.proc_util import wait_until
    port = free_port()
    rpc = subprocess.Popen([str(llama_bin_dir / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    try:
        wait_until(listening, 10)
        doc = calibrate(("Q8_0",), 2, None, head_dims=(), fixed=True, device="RPC0",
                        place=device_place("RPC0", f"127.0.0.1:{port}"))
    finally:
        rpc.kill()
        rpc.wait()
    assert doc["device"] == "RPC0" and "-rpc" in doc["method"] and doc["threads"] == [2]
    assert doc["decode"][0]["bytes_per_s"] > 1e8 and doc["prefill"] and doc["layer_fixed"]
    # what a token costs beyond its layers, and a crossing to the CPU and back (every other layer's FFN there)
    assert doc["token_fixed"][0]["tok_s"] > 0 and doc["crossing"][0]["crossings"] == doc["layer_fixed"][0]["n_layer"]
    r = HostRates.from_doc(doc)
    assert r.token_fixed_s(2) > 0 and r.crossing_s is not None and r.crossing_s >= 0
    profile = {"platform": {"cores_physical": 2}, "host_memory": {"effective_available_bytes": 8 << 30},
               "gpus": {"devices": [{"name": "NVIDIA H200", "cuda_index": 0, "volatile": {"free_bytes": 1 << 34}}]}}
    cal = {"decode": [{"type": "Q8_0", "threads": 2, "tok_s": 10.0, "bytes_per_s": 1e9}],
           "devices": {"CUDA0": dict(doc, device="CUDA0")}}
    t = target_from_profile(profile, calibration=cal)
    assert t.gpus[0].decode_rates.decode_bytes_per_s("Q8_0", 2) == r.decode_bytes_per_s("Q8_0", 2)
    assert "decode rates: calibrated" in t.gpus[0].source
    failed = dict(cal, devices={"CUDA0": {"device": "CUDA0", "error": "no such device"}})
    assert target_from_profile(profile, calibration=failed).gpus[0].decode_rates is None


def test_profile_text_shows_each_calibrated_device_and_a_failed_one():
    from gpcrun.cli.profile_cmd import render_calibration
    dev = {"decode": [{"type": "Q4_K", "threads": 14, "tok_s": 900.0, "bytes_per_s": 3.1e12}],
           "prefill": [{"type": "Q4_K", "threads": 14, "tok_s": 5000.0, "n_params": 1e9}]}
    cal = {"seconds": 30, "measured_at_unix": int(time.time()), "threads": [1, 2],
           "decode": [{"type": "Q4_K", "threads": 2, "tok_s": 20.0, "bytes_per_s": 2e10}],
           "devices": {"CUDA0": dev, "CUDA1": {"device": "CUDA1", "error": "llama-bench failed (exit 1): no CUDA1"}}}
    text = render_calibration(cal)
    assert "CUDA0 (every layer on it): decode Q4_K 3100.0 GB/s (prefill 5000 tok/s)" in text
    assert "CUDA1: not calibrated (llama-bench failed (exit 1): no CUDA1); its forecast uses the spec sheet" in text
