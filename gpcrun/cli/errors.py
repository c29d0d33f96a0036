"""Errors to one line and an exit code. The codes live once, in gpcrun/exits.py (README.md "Exit codes")."""
from __future__ import annotations

import os
import sys
import traceback

from ..errors import GpcrunError, storage_problem
from ..exits import Exit


def exit_code_for(err: BaseException) -> int:
    if isinstance(err, GpcrunError):
        return err.exit.code
    return Exit.STORAGE.code if storage_problem(err) else Exit.INTERNAL.code


def report(err: BaseException) -> int:
    """Print one line (a traceback too with GPCRUN_DEBUG=1) and return the exit code."""
    if os.environ.get("GPCRUN_DEBUG") == "1":
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    storage = None if isinstance(err, GpcrunError) else storage_problem(err)
    if isinstance(err, GpcrunError):
        print(f"gpcrun: error: {err}", file=sys.stderr)
    elif storage:
        print(f"gpcrun: error: {storage}", file=sys.stderr)
    else:
        print(f"gpcrun: internal error: {type(err).__name__}: {err} (GPCRUN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
    return exit_code_for(err)
