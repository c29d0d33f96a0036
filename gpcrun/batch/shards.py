"""Sharding: every N-th job of the expansion order, from --shard I/N, a Slurm job array or a Kubernetes Indexed Job."""
from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import BatchError
from .jobs import Job


def shard_from_env(env: Mapping[str, str]) -> tuple[int, int] | None:
    """Slurm job arrays (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, with SLURM_ARRAY_TASK_MIN as offset and
    SLURM_ARRAY_TASK_STEP as stride: --array=0-3, 1-4 and 0-6:2 all give shards 0..3 of 4) or Kubernetes Indexed
    Jobs (JOB_COMPLETION_INDEX with GPCRUN_SHARD_COUNT, which the manifest sets)."""
    def num(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise BatchError(f"${name}={env[name]!r} is not an integer") from None

    if env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
        if not env.get("SLURM_ARRAY_TASK_COUNT"):
            raise BatchError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        tid, count = num("SLURM_ARRAY_TASK_ID"), num("SLURM_ARRAY_TASK_COUNT")
        offset = num("SLURM_ARRAY_TASK_MIN") if env.get("SLURM_ARRAY_TASK_MIN") else 0
        step = num("SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
        k, rem = divmod(tid - offset, max(step, 1))
        if rem or not 0 <= k < count:
            raise BatchError(f"Slurm array task {tid} (min {offset}, step {step}, count {count}) is not one of "
                             f"{count} evenly spaced tasks: use --array=0-{count - 1}, or pass --shard I/N")
        return k, count
    if env.get("JOB_COMPLETION_INDEX") not in (None, ""):
        if not env.get("GPCRUN_SHARD_COUNT"):
            raise BatchError("JOB_COMPLETION_INDEX is set: also set GPCRUN_SHARD_COUNT to the Job's completions")
        i, n = num("JOB_COMPLETION_INDEX"), num("GPCRUN_SHARD_COUNT")
        if n < 1 or not 0 <= i < n:
            raise BatchError(f"JOB_COMPLETION_INDEX={i} is outside 0..GPCRUN_SHARD_COUNT-1 ({n}): set "
                             "GPCRUN_SHARD_COUNT to the Job's completions")
        return i, n
    return None


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BatchError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BatchError(f"--shard {text}: need 0 <= I < N")
    return i, n


def select_shard(jobs: Sequence[Job], shard: tuple[int, int] | None) -> list[Job]:
    if shard is None:
        return list(jobs)
    i, n = shard
    return [j for j in jobs if j.index % n == i]
