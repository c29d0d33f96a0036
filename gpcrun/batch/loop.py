"""The batch loop: take the output directory, resume its state, run each pending job, write the summaries."""
from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..exits import Exit
from ..errors import GpcrunError, StorageError, storage_problem
from .jobs import Job
from .report import summary_row, write_reports
from .state import BatchState, OutputLock


@dataclass
class BatchRunner:
    jobs: list[Job]
    out_dir: Path
    run_job: Callable[[Job, Path], dict]  # -> {"ok", "receipt", "outcome", "exit_code", "summary"}
    echo: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))
    banner: str = ""  # echoed once the output directory is ours (a refused second gpcrun prints only its error)

    def run(self) -> list[dict]:
        with OutputLock(self.out_dir) as lock:
            if self.banner:
                self.echo(self.banner)
            st = BatchState(self.out_dir)
            try:
                st.sync(self.jobs)
                failed = lock.previous_storage_failure
                for note in st.recover(storage_failed=[failed] if failed else []):
                    self.echo(f"gpcrun batch: {note}")
                todo = [j for j in self.jobs if (st.get(j.id) or {}).get("state") == "pending"]
                done = len(self.jobs) - len(todo)
                if done:
                    self.echo(f"gpcrun batch: resuming: {done} of {len(self.jobs)} job(s) already finished")
                for k, job in enumerate(todo):
                    self.echo(f"gpcrun batch: [{done + k + 1}/{len(self.jobs)}] {job.label}: {job.describe()}")
                    st.mark_running(job.id)
                    try:
                        res = self.run_job(job, self.out_dir)
                    except (OSError, sqlite3.Error) as e:
                        if storage_problem(e) is None:
                            res = _internal(e)
                        else:
                            raise self._storage_failed(st, lock, job, e) from None
                    except KeyboardInterrupt:  # SIGINT/SIGTERM (scancel, a time limit): stop, resume later
                        st.mark_interrupted(job.id)
                        self.echo(f"gpcrun batch: interrupted; job {job.index} ({job.label}) runs again on resume")
                        raise
                    except GpcrunError as e:  # bad input for this job (no such file, hub ref ...): its own code
                        res = {"ok": False, "receipt": None, "outcome": "error", "exit_code": e.exit.code,
                               "summary": {"error": str(e)}}
                    except Exception as e:  # noqa: BLE001 - one job's bug must not end the batch
                        res = _internal(e)
                    if res["outcome"] == "error":
                        self.echo(f"gpcrun batch:   error: {res['summary'].get('error')}")
                    try:
                        st.mark_finished(job.id, res["ok"], res.get("receipt"), res["outcome"], res["exit_code"],
                                         res.get("summary") or {})
                    except (OSError, sqlite3.Error) as e:
                        if storage_problem(e) is None:
                            raise
                        raise self._storage_failed(st, lock, job, e) from None
                    self.echo(f"gpcrun batch:   -> {res['outcome']}")
                lock.clear_note()
                rows = [summary_row(st.get(j.id)) for j in self.jobs]
                try:
                    write_reports(self.out_dir, rows)
                except OSError as e:
                    if storage_problem(e) is None:
                        raise
                    raise StorageError(f"every job is finished and recorded in {self.out_dir}/state.sqlite, but"
                                       f" the summary files could not be written ({storage_problem(e)}); `gpcrun"
                                       f" batch report {self.out_dir}` prints them") from None
                return rows
            finally:
                st.close()

    def _storage_failed(self, st: BatchState, lock: OutputLock, job: Job, err: BaseException) -> StorageError:
        """A full or read-only disk stopped this job: the attempt is not counted. Said in the state database when
        it can still be written, else in the lock file's own blocks (read back by the next run)."""
        try:
            st.mark_interrupted(job.id)
            lock.clear_note()
        except (OSError, sqlite3.Error):
            lock.note_storage_failure(job.id)
        return StorageError(f"job {job.index} ({job.label}) stopped: {storage_problem(err)}; it is not counted as"
                            f" an attempt: free space (or make {self.out_dir} writable) and run the same command"
                            " again to resume with it")


def _internal(e: BaseException) -> dict:
    return {"ok": False, "receipt": None, "outcome": "error", "exit_code": Exit.INTERNAL.code,
            "summary": {"error": f"internal error: {type(e).__name__}: {e}"}}
