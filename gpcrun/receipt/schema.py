"""The receipt schema (gpcrun/schemas/receipt.schema.json, package data), validation, and reading a receipt file."""
from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ReceiptError

SCHEMA_ID = "gpcrun.receipt/1"
ID_RE = re.compile(r"^r[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")  # as in the schema


def load_schema() -> dict:
    return json.loads(resources.files("gpcrun").joinpath("schemas/receipt.schema.json").read_text())


def validate(doc: Any) -> list[str]:
    """Schema errors as 'path: message' lines (empty when valid)."""
    import jsonschema  # validation only: keep it off the import path of every other command

    v = jsonschema.Draft202012Validator(load_schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {_one_line(e.message)}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def _one_line(msg: str, limit: int = 300) -> str:
    # jsonschema quotes the offending instance: a whole sub-document can follow "is not of type"
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def read_receipt(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_bytes()  # json decodes UTF-8 itself: bad bytes are "not JSON", not a crash
    except FileNotFoundError:
        raise ReceiptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReceiptError(f"{path}: is a directory") from None
    except OSError as e:
        raise ReceiptError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as e:  # UnicodeDecodeError included
        raise ReceiptError(f"{path}: not JSON ({_one_line(str(e))})") from None
