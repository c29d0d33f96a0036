"""Errors to one line and an exit code. The codes live once, in gpcrun/exits.py (README.md "Exit codes")."""
from __future__ import annotations

import errno
import os
import sqlite3
import sys
import traceback

from ..errors import GpcrunError
from ..exits import Exit


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
_SQLITE_STORAGE = ("disk is full", "readonly database", "unable to open database file", "disk i/o error")


def storage_problem(err: BaseException) -> str | None:
    """One line for a write gpcrun's own files could not make (a full or read-only disk), else None. Model files
    and inputs are read earlier, with their own errors: an OSError of these kinds reaching the CLI is a write."""
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        where = f" {err.filename}" if err.filename else ""
        return f"cannot write{where}: {err.strerror or err}"
    if isinstance(err, sqlite3.OperationalError) and any(m in str(err).lower() for m in _SQLITE_STORAGE):
        return f"cannot write a state database: {err}"
    return None


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
