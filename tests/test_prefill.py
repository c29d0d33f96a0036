"""The prefill model (pure): which weights a prompt batch computes with, and the per-layer cost a calibration's
thin-layer rows reveal (plan/prefill.py, plan/rates.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpcrun.model.info import tensor_role
from gpcrun.plan.prefill import batch_work, one_token
from gpcrun.plan.rates import HostRates


def _t(name: str, n: int = 1000, layer: int | None = None, type_name: str = "Q8_0"):
    return SimpleNamespace(name=name, n_elements=n, n_bytes=n, layer=layer, role=tensor_role(name),
                           type_name=type_name)


@pytest.mark.parametrize("name,layer,tied,once", [
    ("blk.0.attn_q.weight", 0, False, False),
    ("blk.0.ffn_up.weight", 0, False, False),
    ("blk.3.attn_output.weight", 3, False, False),  # the last layer's attention sees every token
    ("blk.3.ffn_up.weight", 3, False, True),  # ... its feed-forward only the output token
    ("blk.3.ffn_gate_inp.weight", 3, False, True),
    ("blk.3.ffn_down_exps.weight", 3, False, True),
    ("blk.3.ffn_up_shexp.weight", 3, False, True),
    ("output.weight", None, False, True),
    ("token_embd.weight", None, False, False),  # a row lookup
    ("token_embd.weight", None, True, True),  # tied: it is the output head
])
def test_one_token(name, layer, tied, once):
    """llama-server outputs a prompt's last token only; the graphs drop the rest after the last attention."""
    assert one_token(_t(name, layer=layer), 4, tied) is once


def test_batch_params_of_a_moe_counts_the_active_experts():
    ts = [_t("blk.0.attn_q.weight", 100, 0), _t("blk.0.ffn_up_exps.weight", 800, 0),
          _t("blk.1.attn_q.weight", 100, 1), _t("blk.1.ffn_up_exps.weight", 800, 1, "F16"),
          _t("output.weight", 640), _t("token_embd.weight", 640)]
    params, once = batch_work(ts, 2, 8, 2, False)
    assert params == [pytest.approx(100 + 200 + 100)]
    assert once == [{"F16": 200, "Q8_0": 640}]


def _doc(r_s: float, layer_s: float, token_s: float) -> dict:
    """A calibration document whose rows follow time per prompt token = params x r_s + layers x layer_s + token_s."""
    def tok_s(params, layers, speedup=1.0, once_bytes=0):  # the output token's bytes at F16's decode rate
        return 1 / (params * r_s / speedup + layers * layer_s + token_s + once_bytes / 1e10 / 64)
    return {"decode": [{"type": "Q8_0", "threads": 2, "tok_s": 10.0, "bytes_per_s": 1e9},
                       {"type": "F16", "threads": 2, "tok_s": 10.0, "bytes_per_s": 1e10}],
            "models": {"Q8_0": {"n_layer": 2}, "F16": {"n_layer": 1}},
            "prefill": [{"type": "Q8_0", "threads": 2, "tok_s": tok_s(6e7, 2), "n_params": 1e8,
                         "n_params_prefill": 6e7},
                        {"type": "F16", "threads": 2, "tok_s": tok_s(2e7, 1, 2.0, 6e7), "n_params": 5e7,
                         "n_params_prefill": 2e7, "one_token_bytes": 6e7}],
            "prefill_fixed": [{"threads": 2, "type": "Q8_0", "n_layer": n, "n_params_prefill": p,
                               "tok_s": tok_s(p, n)} for n, p in ((64, 5.4e7), (1, 1.5e5))]}


def test_prefill_rates_take_out_the_per_layer_cost():
    """Rows made from known costs give those costs back: the thin layers' cost per layer and per token, and each
    type's rate once its layers and its output token's reads are taken out (F16 here twice Q8_0's)."""
    r = HostRates.from_doc(_doc(r_s=1e-11, layer_s=2e-5, token_s=1e-5))
    assert r.prefill_layer_s(2) == pytest.approx(2e-5, rel=0.02)
    assert r.prefill_token_s(2) == pytest.approx(1e-5, rel=0.1)
    assert r.prefill_params_per_s({"Q8_0": 1}, 2) == pytest.approx(1e11, rel=0.02)
    assert r.prefill_params_per_s({"F16": 1}, 2) == pytest.approx(2e11, rel=0.02)
    assert r.prefill_layer_s(1) == pytest.approx(4e-5, rel=0.02)  # compute-bound below the threads measured


def test_older_documents_keep_their_rates():
    """Without thin-layer rows or batch parameters (calibration/2) the rate is all parameters x tok/s."""
    doc = _doc(1e-11, 2e-5, 1e-5)
    del doc["prefill_fixed"]
    for p in doc["prefill"]:
        del p["n_params_prefill"]
    r = HostRates.from_doc(doc)
    assert r.prefill_layer_s(2) == 0.0 and r.prefill_token_s(2) == 0.0
    assert r.prefill_params_per_s({"Q8_0": 1}, 2) == pytest.approx(1e8 * doc["prefill"][0]["tok_s"])
