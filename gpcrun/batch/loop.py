"""The batch loop: take the output directory, resume its state, run each pending job, write the summaries."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..exits import Exit
from ..errors import GpcrunError
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
        with OutputLock(self.out_dir):
            if self.banner:
                self.echo(self.banner)
            st = BatchState(self.out_dir)
            try:
                st.sync(self.jobs)
                for note in st.recover():
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
                    except KeyboardInterrupt:  # SIGINT/SIGTERM (scancel, a time limit): stop, resume later
                        st.mark_interrupted(job.id)
                        self.echo(f"gpcrun batch: interrupted; job {job.index} ({job.label}) runs again on resume")
                        raise
                    except GpcrunError as e:  # bad input for this job (no such file, hub ref ...): its own code
                        res = {"ok": False, "receipt": None, "outcome": "error", "exit_code": e.exit.code,
                               "summary": {"error": str(e)}}
                    except Exception as e:  # noqa: BLE001 - one job's bug must not end the batch
                        res = {"ok": False, "receipt": None, "outcome": "error", "exit_code": Exit.INTERNAL.code,
                               "summary": {"error": f"internal error: {type(e).__name__}: {e}"}}
                    if res["outcome"] == "error":
                        self.echo(f"gpcrun batch:   error: {res['summary'].get('error')}")
                    st.mark_finished(job.id, res["ok"], res.get("receipt"), res["outcome"], res["exit_code"],
                                     res.get("summary") or {})
                    self.echo(f"gpcrun batch:   -> {res['outcome']}")
                rows = [summary_row(st.get(j.id)) for j in self.jobs]
                write_reports(self.out_dir, rows)
                return rows
            finally:
                st.close()
