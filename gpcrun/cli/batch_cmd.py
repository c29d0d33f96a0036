"""gpcrun batch JOBS.toml [--out DIR] [--dry-run] [--shard I/N] | gpcrun batch report DIR..."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import GpcrunError
from .main import emit_json, main


@main.command("batch", context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="Output directory (default: next to JOBS.toml, <name>-out;"
              " a shard gets shard-I-of-N inside it).")
@click.option("--dry-run", is_flag=True, help="Expand and plan every job; start nothing.")
@click.option("--shard", default=None, help="Run only shard I of N (I/N). Default: from SLURM_ARRAY_TASK_ID/"
              "SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/GPCRUN_SHARD_COUNT when set.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--markdown", is_flag=True, help="Print the summary as a Markdown table.")
def batch_cmd(args, out_dir, dry_run, shard, as_json, markdown):
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
        text = jobs_path.read_text()
    except OSError as e:
        raise BatchError(f"{jobs_path}: cannot read ({e.strerror or e})") from None
    batch, jobs = parse_jobs(text, jobs_path.resolve().parent, str(jobs_path))
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
    from ..receipt import ReceiptStore
    from ..runner import RunSpec, job_summary, measured_run

    store = ReceiptStore(out / "receipts")
    global_store = ReceiptStore()

    def run_job(job, out_dir):
        s = job.settings
        model = job.model  # a hub ref is planned from its header and downloaded only if it ships
        spec = RunSpec(model=model, ctx=s["ctx"], kv_type=s["kv_type"], parallel=s["parallel"],
                       server_args=s["server_args"], concurrency=s["concurrency"], prompt_tokens=s["prompt_tokens"],
                       gen_tokens=s["gen_tokens"], repetitions=s["repetitions"], timeout_s=float(s["timeout_s"]))
        doc, path = measured_run(spec, store, runs_root=out_dir / "runs")
        global_store.save(doc)  # the batch's receipts calibrate later plans too
        o = doc["outcome"]
        return {"ok": o["kind"] == "clean_stop", "receipt": str(path), "outcome": o["kind"],
                "exit_code": o["exit_code"], "summary": job_summary(doc)}

    banner = (f"gpcrun batch: {len(mine)} job(s)" + (f" (shard {sh[0]}/{sh[1]} of {len(jobs)})" if sh else "")
              + f" -> {out}")
    import signal
    # SIGTERM (scancel, a scheduler's time limit) stops like Ctrl-C: the running job is stopped, reaped and
    # left pending for the next run (exit 130)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    rows = BatchRunner(mine, out, run_job, banner=banner).run()
    _print(rows, as_json, markdown, render_table, render_markdown)
    click.echo(f"gpcrun batch: summary written to {out}/summary.{{csv,json,md}}", err=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _print(rows, as_json, markdown, render_table, render_markdown):
    if as_json:
        emit_json(rows)
    elif markdown:
        click.echo(render_markdown(rows))
    else:
        click.echo(render_table(rows) if rows else "no jobs")


def _dry_run(jobs, as_json):
    from ..fmt import table
    from ..plan import make_plan
    from .plan_cmd import build_request, build_target, load_calibration

    target = build_target((), (), False)
    rows = []
    for job in jobs:
        s = job.settings
        try:
            info = _header_info(job.model)
            req = build_request(s["ctx"], s["kv_type"], max(s["parallel"], max(s["concurrency"] or [1])), 1.0,
                                None, s["server_args"])
            plan = make_plan(info, target, req, load_calibration(info, target, req.pinned))
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


def _header_info(spec: str):
    """ModelInfo from a local file, or (hub refs) from ranged header reads, for planning without the weights."""
    from ..hub import is_hub_ref, load_ref_header
    from ..model import load_model
    if is_hub_ref(spec):
        return load_ref_header(spec)[0]
    return load_model(spec)
