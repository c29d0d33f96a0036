"""Unattended batches: a TOML job file -> models x settings matrix -> plan, serve, bench, receipt per job.

State lives in OUT/state.sqlite (WAL, one transaction per state change) so a batch run again resumes: finished
jobs are not redone, a job that was running when gpcrun died is retried once, and two gpcrun processes on the
same output directory are refused (an flock on OUT/batch.lock). Sharding (--shard I/N, Slurm job arrays,
Kubernetes Indexed Jobs) takes every N-th job of the deterministic expansion order.

jobs (job file parsing and matrix expansion), shards, state (SQLite state and the output lock), report
(summary rows and their renderings), loop (BatchRunner).
"""
from __future__ import annotations

from ..errors import BatchError, BatchLocked
from .jobs import BATCH_KEYS, JOB_DEFAULTS, MATRIX_KEYS, MODEL_KEYS, STATES, Job, parse_jobs
from .loop import BatchRunner
from .report import (SUMMARY_COLUMNS, collect, job_summary, render_csv, render_markdown, render_table, summary_row,
                     write_reports)
from .shards import parse_shard, select_shard, shard_from_env
from .state import BatchState, OutputLock

__all__ = ["BATCH_KEYS", "JOB_DEFAULTS", "MATRIX_KEYS", "MODEL_KEYS", "STATES", "SUMMARY_COLUMNS", "BatchError",
           "BatchLocked", "BatchRunner", "BatchState", "Job", "OutputLock", "collect", "job_summary", "parse_jobs",
           "parse_shard", "render_csv", "render_markdown", "render_table", "select_shard", "shard_from_env",
           "summary_row", "write_reports"]
