"""Errors to one line and an exit code. The codes live once, in gpcrun/exits.py (README.md "Exit codes")."""
from __future__ import annotations

import os
import sys
import traceback

from ..errors import GpcrunError
from ..exits import Exit


def exit_code_for(err: BaseException) -> int:
    return err.exit.code if isinstance(err, GpcrunError) else Exit.INTERNAL.code


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
