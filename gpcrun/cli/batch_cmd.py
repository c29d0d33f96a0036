"""gpcrun batch JOBS.toml [--out DIR] [--dry-run] [--shard I/N] | gpcrun batch report DIR..."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import GpcrunError
from .main import emit_json, main


_REPORT_HELP = """Usage: gpcrun batch report [OPTIONS] DIR...

  Merge the summaries of one or more batch output directories (shards of one batch, or several batches) into
  one table: job, model, config, verdict, forecast / prefill / decode tok/s, forecast error, peak VRAM and RAM,
  outcome. Read-only.

Options:
  --json      Print the merged rows as JSON.
  --markdown  Print them as a Markdown table.
  -h, --help  Show this message and exit.
"""


class _BatchCommand(click.Command):
    """`gpcrun batch report --help` is the report's help, not the batch runner's."""

    def parse_args(self, ctx, args):
        if args[:1] == ["report"] and any(a in ("-h", "--help") for a in args[1:]):
            click.echo(_REPORT_HELP, nl=False)
            ctx.exit(0)
        return super().parse_args(ctx, args)


@main.command("batch", cls=_BatchCommand, context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="Output directory (default: next to JOBS.toml, <name>-out;"
              " a shard gets shard-I-of-N inside it).")
@click.option("--dry-run", is_flag=True, help="Expand and plan every job; start nothing.")
@click.option("--shard", default=None, help="Run only shard I of N (I/N). Default: from SLURM_ARRAY_TASK_ID/"
              "SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/GPCRUN_SHARD_COUNT when set.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--markdown", is_flag=True, help="Print the summary as a Markdown table.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None,
              help="Allow a matrix of up to this many jobs (default 10000).")
def batch_cmd(args, out_dir, dry_run, shard, as_json, markdown, max_jobs):
    """Run many models x settings unattended (plan -> serve -> bench -> receipt per job); resumable.

    `gpcrun batch report DIR...` merges the summaries of one or more output directories."""
    from ..batch import BatchError, collect, parse_jobs, parse_shard, render_markdown, render_table, select_shard, \
        shard_from_env

    if args[0] == "report":
        if len(args) < 2:
            raise click.UsageError("gpcrun batch report DIR [DIR...]")
        rows = collect([Path(d) for d in args[1:]])
        _print(rows, as_json, markdown, render_table, render_markdown)
        return
    if len(args) != 1:
        raise click.UsageError("gpcrun batch JOBS.toml (or: gpcrun batch report DIR...)")
    jobs_path = Path(args[0])
    try:
        text = jobs_path.read_text(encoding="utf-8")
    except OSError as e:
        raise BatchError(f"{jobs_path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise BatchError(f"{jobs_path}: not a text file (TOML is UTF-8; byte {e.start} is not)") from None
    from ..batch.jobs import MAX_JOBS
    batch, jobs = parse_jobs(text, jobs_path.resolve().parent, str(jobs_path), max_jobs=max_jobs or MAX_JOBS)
    sh = parse_shard(shard) if shard else shard_from_env(os.environ)
    mine = select_shard(jobs, sh)
    out = Path(out_dir or batch.get("output") or jobs_path.with_name(jobs_path.stem + "-out"))
    if not out.is_absolute() and not out_dir and batch.get("output"):
        out = jobs_path.resolve().parent / out
    if sh is not None:
        out = out / f"shard-{sh[0]}-of-{sh[1]}"
    if dry_run:
        _dry_run(mine, as_json)
        return
    from ..batch import BatchRunner
    from ..batch import job_summary
    from ..bench import BenchConfig
    from ..pipeline import RunConfig, attach, run
    from ..receipt import ReceiptStore

    store = ReceiptStore(out / "receipts")
    global_store = ReceiptStore()

    def run_job(job, out_dir):
        s = job.settings
        model = job.model  # a hub ref is planned from its header and downloaded only if it ships
        bench = BenchConfig(s["prompt_tokens"], s["gen_tokens"], s["repetitions"], True, tuple(s["concurrency"]))
        if s.get("url"):  # a running server, or one model behind a router: measured, nothing started
            res = attach(s["url"], bench, floor_tok_s=1.0, store=store, model=s.get("router_model"))
        else:
            res = run(RunConfig(model=model, command="batch", server_args=s["server_args"], ctx=s["ctx"],
                                kv_type=s["kv_type"], parallel=s["parallel"], bench=bench,
                                timeout_s=float(s["timeout_s"]), quiet=True, echo=lambda m: None,
                                runs_root=out_dir / "runs", store=store, write_receipt=True, auto_port=True,
                                handle_signals=False))
        global_store.save(res.receipt)  # the batch's receipts calibrate later plans too
        o = res.outcome
        return {"ok": o.kind == "clean_stop", "receipt": str(res.receipt_path), "outcome": o.kind,
                "exit_code": o.exit_code, "summary": job_summary(res.receipt)}

    banner = (f"gpcrun batch: {len(mine)} job(s)" + (f" (shard {sh[0]}/{sh[1]} of {len(jobs)})" if sh else "")
              + f" -> {out}")
    # SIGTERM (scancel, a scheduler's time limit), SIGHUP (a closed terminal) ... stop like Ctrl-C (the command
    # group's handler, cli/main.py): the running job is stopped, reaped and left pending for the next run (exit 130)
    rows = BatchRunner(mine, out, run_job, banner=banner).run()
    _print(rows, as_json, markdown, render_table, render_markdown)
    click.echo(f"gpcrun batch: summary written to {out}/summary.{{csv,json,md}}", err=True)
    bad = [r for r in rows if r.get("outcome") != "clean_stop"]
    if bad:
        from ..exits import Exit
        click.echo(f"gpcrun batch: {len(bad)} of {len(rows)} job(s) did not succeed"
                   f" ({', '.join(sorted({str(r.get('outcome')) for r in bad}))})", err=True)
        sys.exit(Exit.BATCH_INCOMPLETE.code)


def _print(rows, as_json, markdown, render_table, render_markdown):
    if as_json:
        emit_json(rows)
    elif markdown:
        click.echo(render_markdown(rows))
    else:
        click.echo(render_table(rows) if rows else "no jobs")


def _dry_run(jobs, as_json):
    from ..fmt import table
    from ..planning import build_request, build_target, plan_model, resolve_model

    import time
    target = build_target((), (), False)
    rows = []
    models: dict = {}  # each model's header read once
    plans: dict = {}  # jobs that differ only in what does not change the plan (concurrency, tokens...) share it
    t_say = time.monotonic() + 2
    for i, job in enumerate(jobs):
        s = job.settings
        if time.monotonic() >= t_say and not as_json:
            click.echo(f"gpcrun batch: planned {i} of {len(jobs)} job(s) ({len(plans)} distinct plans)", err=True)
            t_say = time.monotonic() + 2
        try:
            slots = max(s["parallel"], max(s["concurrency"] or [1]))
            key = (job.model, s["ctx"], s["kv_type"], slots, tuple(s["server_args"]))
            if key not in plans:
                req = build_request(s["ctx"], s["kv_type"], slots, 1.0, None, s["server_args"], env=os.environ)
                if job.model not in models:
                    models[job.model] = resolve_model(job.model)
                plans[key] = plan_model(models[job.model], req, target)
            plan = plans[key]
            ev = plan.chosen or plan.nearest
            fc = ev.forecast.decode_tok_s if ev else None
            rows.append({"job": job.index, "model": job.label, "config": job.describe(), "verdict": plan.verdict,
                         "forecast_tok_s": round(fc, 2) if fc else None, "reasons": list(plan.reasons)})
        except GpcrunError as e:
            rows.append({"job": job.index, "model": job.label, "config": job.describe(), "verdict": "error",
                         "forecast_tok_s": None, "reasons": [str(e)]})
    if as_json:
        emit_json(rows)
        return
    click.echo(table([[r["job"], r["model"], r["config"], r["verdict"],
                       "null" if r["forecast_tok_s"] is None else f"{r['forecast_tok_s']:.1f}",
                       (r["reasons"] or [""])[0][:80]] for r in rows],
                     ["job", "model", "config", "verdict", "forecast tok/s", "reason"], "llllrl"))
