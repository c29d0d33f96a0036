"""The one table that maps error types to exit codes. Documented in README.md (Exit codes)."""
from __future__ import annotations

import os
import sys
import traceback

from ..errors import (BatchError, BatchLocked, GGUFError, GpcrunError, HubError, ModelFileError, ReceiptError,
                      ServerBinaryNotFound, UnknownGpuError)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # click's own code for bad options
EXIT_REFUSED = 10  # a plan (or serve) refused: it would not fit or would run below the floor

# Most specific first: the first isinstance match wins.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (ModelFileError, 3),
    (GGUFError, 4),  # MissingShardError included
    (ServerBinaryNotFound, 5),
    (UnknownGpuError, 2),
    (ReceiptError, 6),
    (BatchLocked, 8),
    (BatchError, 7),
    (HubError, 9),
    (GpcrunError, 1),
]


def exit_code_for(err: BaseException) -> int:
    for etype, code in EXIT_CODES:
        if isinstance(err, etype):
            return code
    return EXIT_INTERNAL


def report(err: BaseException) -> int:
    """Print one line (a traceback too with GPCRUN_DEBUG=1) and return the exit code."""
    if os.environ.get("GPCRUN_DEBUG") == "1":
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    if isinstance(err, GpcrunError):
        print(f"gpcrun: error: {err}", file=sys.stderr)
    else:
        print(f"gpcrun: internal error: {type(err).__name__}: {err} (GPCRUN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
    return exit_code_for(err)
