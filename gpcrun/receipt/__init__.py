"""Receipts: one JSON document per bench/serve run (schema gpcrun/schemas/receipt.schema.json), written
atomically, indexed in SQLite (WAL), rendered as Markdown for bug reports, and read back to calibrate forecasts.

schema (validation, reading a file), redact, build (the document, forecast comparison), store (files + index),
calibration, markdown; docs holds the typed readers of plan and receipt documents.
"""
from __future__ import annotations

import importlib

# The package's names, loaded on first use (PEP 562): `gpcrun serve` needs only the calibration reader at start,
# not the schema, Markdown and typed documents (~15 ms of imports on the start-up path).
_WHERE = {
    "ReceiptError": "..errors", "build_receipt": ".build", "compare_with_forecast": ".build", "new_id": ".build",
    "argv_threads": ".calibration", "calibrate": ".calibration", "load_calibration": ".calibration",
    **{n: ".docs" for n in ("EnvelopeDoc", "EvaluationDoc", "ForecastDoc", "HardwareDoc", "MeasuredDoc", "ModelDoc",
                            "OutcomeDoc", "PlacementDoc", "PlanDoc", "ReceiptDoc", "StatsDoc")},
    "to_markdown": ".markdown",
    **{n: "..redact" for n in ("REDACTED", "redact_argv", "redact_env", "redact_paths", "scrub", "secret_values")},
    "SCHEMA_ID": ".schema", "load_schema": ".schema", "read_receipt": ".schema", "validate": ".schema",
    "ReceiptStore": ".store",
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


__all__ = ["REDACTED", "SCHEMA_ID", "EnvelopeDoc", "EvaluationDoc", "ForecastDoc", "HardwareDoc", "MeasuredDoc",
           "ModelDoc", "OutcomeDoc", "PlacementDoc", "PlanDoc", "ReceiptDoc", "ReceiptError", "ReceiptStore",
           "StatsDoc", "argv_threads", "build_receipt", "calibrate", "compare_with_forecast", "load_calibration",
           "load_schema", "new_id", "read_receipt", "redact_argv", "redact_env", "redact_paths", "scrub",
           "secret_values", "to_markdown", "validate"]
