"""The one exit-code table: every way gpcrun ends, its code, its one-line meaning (README.md "Exit codes" is
checked against it by tests/test_exits.py), and for a run's outcome the `kind` receipts and batch tables carry.

Errors name their member (`GpcrunError.exit`); the supervisor's classification, the pipeline, batch and the CLI
take codes and kinds from here, never from literals.
"""
from __future__ import annotations

from enum import Enum


class Exit(Enum):
    OK = (0, "success", "clean_stop")
    INTERNAL = (1, "internal error (a bug: please report it with `GPCRUN_DEBUG=1` output)", None)
    USAGE = (2, "bad command-line usage", None)
    MODEL_FILE = (3, "model file missing or unreadable (no such file, a directory, permission denied)", None)
    GGUF = (4, "not a valid GGUF file (bad magic, unsupported version, truncated, absurd counts, unknown type,"
               " missing shard)", None)
    NO_BINARY = (5, "llama-server (or another llama.cpp tool) not found", None)
    RECEIPT = (6, "a receipt file is missing, not JSON, or does not match the schema", None)
    BATCH_FILE = (7, "a batch job file that cannot be used (not TOML, unknown keys, bad values)", None)
    BATCH_LOCKED = (8, "another gpcrun batch holds this output directory (or it holds symbolic links planted where the"
                       " batch writes)", None)
    HUB = (9, "a hub ref that can't be resolved or read (no such repo/revision/file/quant; offline with nothing"
              " cached)", None)
    REFUSED = (10, "plan refused: it does not fit, or its forecast is below `--floor`", "refused")
    LOAD_FAILED = (11, "llama-server failed while loading (bad flag, missing/invalid model, allocation failure,"
                       " SIGILL)", "load_failed")
    CRASHED = (12, "llama-server crashed after it was ready (signal, kernel OOM kill, allocation failure)",
               "crashed")
    WATCHDOG = (13, "the watchdog stopped llama-server before memory ran out (see `incident.json`)",
                "watchdog_abort")
    TIMEOUT = (14, "llama-server did not become ready within the load timeout (or a batch job exceeded its"
                   " time limit, or the run `gpcrun stop` asked to end was still running at its --timeout)", "timeout")
    BENCH_FAILED = (15, "the benchmark itself failed (the server answered something unusable); a receipt is still"
                        " written", "bench_failed")
    BATCH_INCOMPLETE = (16, "a batch finished, but not every job succeeded (refused, failed or timed out: see its"
                            " summary; receipts are written)", None)
    UNRESPONSIVE = (17, "llama-server stopped answering after it was ready (stopped or deadlocked) and was stopped",
                    "unresponsive")
    STORAGE = (18, "gpcrun could not write its own files (disk full, read-only or not permitted): free space or fix"
                   " the permissions and run again", None)
    INTERRUPTED = (130, "interrupted (SIGINT, SIGTERM or another termination signal) before the work finished; a"
                        " batch leaves the running job pending", "interrupted")

    def __init__(self, code: int, meaning: str, kind: str | None) -> None:
        self.code = code
        self.meaning = meaning
        self.kind = kind

    @classmethod
    def for_kind(cls, kind: str) -> "Exit":
        for m in cls:
            if m.kind == kind:
                return m
        raise KeyError(kind)

    @classmethod
    def for_code(cls, code: int) -> "Exit":
        for m in cls:
            if m.code == code:
                return m
        raise KeyError(code)
