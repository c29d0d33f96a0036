"""Receipts: one JSON document per bench/serve run (schema gpcrun/schemas/receipt.schema.json), written
atomically, indexed in SQLite (WAL), rendered as Markdown for bug reports, and read back to calibrate forecasts.

schema (validation, reading a file), redact, build (the document, forecast comparison), store (files + index),
calibration, markdown; docs holds the typed readers of plan and receipt documents.
"""
from __future__ import annotations

from ..errors import ReceiptError
from .build import build_receipt, compare_with_forecast, new_id
from .calibration import argv_threads, calibrate, load_calibration
from .docs import (EnvelopeDoc, EvaluationDoc, ForecastDoc, HardwareDoc, MeasuredDoc, ModelDoc, OutcomeDoc,
                   PlacementDoc, PlanDoc, ReceiptDoc, StatsDoc)
from .markdown import to_markdown
from ..redact import REDACTED, redact_argv, redact_env, redact_paths, scrub, secret_values
from .schema import SCHEMA_ID, load_schema, read_receipt, validate
from .store import ReceiptStore

__all__ = ["REDACTED", "SCHEMA_ID", "EnvelopeDoc", "EvaluationDoc", "ForecastDoc", "HardwareDoc", "MeasuredDoc",
           "ModelDoc", "OutcomeDoc", "PlacementDoc", "PlanDoc", "ReceiptDoc", "ReceiptError", "ReceiptStore",
           "StatsDoc", "argv_threads", "build_receipt", "calibrate", "compare_with_forecast", "load_calibration",
           "load_schema", "new_id", "read_receipt", "redact_argv", "redact_env", "redact_paths", "scrub",
           "secret_values", "to_markdown", "validate"]
