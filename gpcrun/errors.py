"""Error types. Each carries its data and names its exit code in the one table (exits.py); the CLI prints
str(err) as one line and exits with `err.exit.code` (cli/errors.py)."""
from __future__ import annotations

import errno
import sqlite3

from .exits import Exit

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
_SQLITE_STORAGE = ("disk is full", "readonly database", "unable to open database file", "disk i/o error")


def storage_problem(err: BaseException) -> str | None:
    """One line for a write gpcrun's own files could not make (a full or read-only disk), else None. Model files
    and inputs are read earlier, with their own errors: an OSError of these kinds reaching here is a write."""
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        where = f" {err.filename}" if err.filename else ""
        return f"cannot write{where}: {err.strerror or err}"
    if isinstance(err, sqlite3.OperationalError) and any(m in str(err).lower() for m in _SQLITE_STORAGE):
        return f"cannot write a state database: {err}"
    return None


class GpcrunError(Exception):
    """Base class: str(err) is the one-line message shown to people."""

    exit = Exit.INTERNAL

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class UsageError(GpcrunError):
    """Bad command-line usage that only the library can see (a llama-server argument it cannot read ...)."""

    exit = Exit.USAGE


class RunNotFound(UsageError):
    """No run matches the id given to `gpcrun logs` / `gpcrun stop`."""


class ModelFileError(GpcrunError):
    """A model path that cannot be read at all (missing, a directory, permission)."""

    exit = Exit.MODEL_FILE

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", path=path, problem=problem)
        self.path = path
        self.problem = problem


class GGUFError(GpcrunError):
    """The file is readable but is not a valid GGUF (bad magic, truncated, absurd counts...)."""

    exit = Exit.GGUF

    def __init__(self, path: str, problem: str, offset: int | None = None) -> None:
        where = f" (at byte {offset})" if offset is not None else ""
        super().__init__(f"{path}: {problem}{where}", path=path, problem=problem, offset=offset)
        self.path = path
        self.problem = problem
        self.offset = offset


class MissingShardError(GGUFError):
    """A split model whose shard files are not all present."""


class ServerBinaryNotFound(GpcrunError):
    exit = Exit.NO_BINARY

    def __init__(self, tried: list[str], name: str = "llama-server") -> None:
        super().__init__(f"{name} not found; tried: " + "; ".join(tried)
                         + ". Build it with: python3 scripts/build_llama.py", tried=tried, name=name)
        self.tried = tried


class ReceiptError(GpcrunError):
    """A receipt file that is missing, not JSON, or does not match the schema."""

    exit = Exit.RECEIPT


class BatchError(GpcrunError):
    """A job file that cannot be used, or an output directory another gpcrun holds."""

    exit = Exit.BATCH_FILE


class BatchOutputUnsafe(BatchError):
    """Symbolic links planted where a batch writes in its output directory."""

    exit = Exit.BATCH_LOCKED


class BatchLocked(BatchError):
    exit = Exit.BATCH_LOCKED


class UnknownGpuError(UsageError):
    """--gpu NAME not in the spec table."""


class HubError(GpcrunError):
    """A Hugging Face Hub ref that cannot be resolved or read: no such repo, revision, file or quant; no
    network (or HF_HUB_OFFLINE=1) and nothing cached; access denied."""

    exit = Exit.HUB


class DeviceListError(GpcrunError):
    """llama.cpp could not list the devices the user's flags name (an RPC server that does not answer ...): the
    server would fail to load the same way."""

    exit = Exit.LOAD_FAILED


class BenchError(GpcrunError):
    """The server answered something the benchmark cannot use (an error status, missing timings, a cached prompt)."""

    exit = Exit.BENCH_FAILED


class StorageError(GpcrunError):
    """gpcrun's own files could not be written (disk full, read-only, not permitted), said with what it means for
    the work (a batch job not counted, to run again on resume)."""

    exit = Exit.STORAGE
