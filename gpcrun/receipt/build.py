"""Building a receipt document (redacted throughout) and comparing a measured decode speed with the forecast."""
from __future__ import annotations

import secrets
import time
from typing import Any, Mapping, Sequence

from .. import __version__
from .docs import PlanDoc
from ..redact import redact_argv, redact_env, redact_paths, scrub, secret_values
from .schema import SCHEMA_ID


def new_id() -> str:
    return "r" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


LOG_TAIL_CHARS = 16_000


def build_receipt(*, kind: str, hardware: dict | None, model: dict | None, plan: dict | None, argv: Sequence[str],
                  env: Mapping[str, str], llama_cpp: dict | None, measured: dict | None, envelope: dict | None,
                  outcome: dict, run_dir: str | None = None, redact_path_names: bool = False,
                  receipt_id: str | None = None, log_tail: str | None = None) -> dict:
    doc = {
        "schema": SCHEMA_ID,
        "id": receipt_id or new_id(),
        "gpcrun_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": kind,
        "hardware": hardware,
        "hardware_fingerprint": (hardware or {}).get("fingerprint"),
        "model": model,
        "plan": plan,
        "command": {"argv": redact_argv(argv), "env": redact_env(env)},
        "llama_cpp": llama_cpp,
        "measured": measured,
        "envelope": envelope,
        "outcome": outcome,
        "run_dir": run_dir,
        "log_tail": log_tail[-LOG_TAIL_CHARS:] if log_tail else None,  # llama-server's last lines (scrubbed below)
    }
    # the plan (its argv holds the user's pass-through args), an outcome reason quoting an argument...: a secret
    # must not survive anywhere in the document, not only in command.argv
    plan_argv = PlanDoc.from_json(plan).argv if isinstance(plan, dict) else ()
    rid = doc["id"]
    doc = scrub(doc, secret_values([*argv, *plan_argv], env))
    doc["id"] = rid  # the store's file name; never a secret
    return redact_paths(doc) if redact_path_names else doc


def compare_with_forecast(plan: dict | None, decode_mean: float | None, floor: float | None) -> dict:
    """Prediction error vs the calibrated forecast, efficiency vs the ceiling, in-band, cleared-floor."""
    f = PlanDoc.from_json(plan).forecast
    fc, ceil, band = f.decode_tok_s, f.ceiling_decode_tok_s, f.band_decode_tok_s
    out: dict[str, Any] = {"forecast_decode_tok_s": fc, "forecast_calibrated": f.calibrated,
                           "ceiling_decode_tok_s": ceil, "band_decode_tok_s": band,
                           "prediction_error_pct": None, "efficiency_vs_ceiling": None, "in_band": None,
                           "cleared_floor": None, "floor_tok_s": floor}
    if decode_mean is None:
        return out
    if fc:
        out["prediction_error_pct"] = round(100 * (fc - decode_mean) / decode_mean, 2)
    if ceil:
        out["efficiency_vs_ceiling"] = round(decode_mean / ceil, 4)
    if band:
        out["in_band"] = band[0] <= decode_mean <= band[1]
    if floor is not None:
        out["cleared_floor"] = decode_mean >= floor
    return out
