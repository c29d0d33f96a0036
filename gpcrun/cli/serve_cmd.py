"""gpcrun serve MODEL [-- llama-server args]: plan, then a supervised, watched llama-server."""
from __future__ import annotations

import json
import sys
import time

import click

from ..fmt import plan_summary, render_changes
from ..model import KV_CACHE_TYPES
from .main import main
from .params import FiniteFloat


@main.command("serve", context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@click.option("--no-plan", is_flag=True, help="Pass the llama-server args through untouched (no planning).")
@click.option("--force", is_flag=True, help="Start even when the plan refuses.")
@click.option("--quiet", is_flag=True, help="Do not echo llama-server's log (it is still written to the run dir).")
@click.option("--server-bin", default=None, help="llama-server binary (default: $GPCRUN_LLAMA_SERVER, cache, PATH).")
@click.option("--ctx", type=click.IntRange(min=0), default=None,
              help="Context to plan for (-c); default: the largest that fits, >= 4096.")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default=None,
              help="KV cache type to plan with; default: f16, then q8_0 when f16 does not fit.")
@click.option("--floor", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Refuse plans forecast below this many tokens/s (exit 10).")
@click.option("--margin", type=FiniteFloat(min=0), default=None, help="GPU margin MiB (default 1024).")
@click.option("--restart", type=click.Choice(["no", "on-failure"]), default="no", show_default=True,
              help="Restart llama-server after a failure (not after a watchdog stop, an OOM kill or a bad flag).")
@click.option("--max-restarts", type=click.IntRange(min=0), default=3, show_default=True,
              help="Restarts --restart on-failure may make; the delay doubles from 1 s.")
@click.option("--ready-timeout", type=FiniteFloat(min=0), default=None,
              help="Seconds to wait for readiness (default: 30 s + model size at 100 MB/s).")
@click.option("--grace", type=FiniteFloat(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when stopping.")
@click.option("--liveness-timeout", type=FiniteFloat(min=0), default=60.0, show_default=True,
              help="After ready: stop the server (exit 17) when /health gets no answer for this many seconds"
                   " (stopped or deadlocked); 0 turns it off.")
@click.option("--log-max-mib", type=click.IntRange(min=1), default=128, show_default=True,
              help="server.log in the run dir never grows past this: the first quarter and the newest output are"
                   " kept, the middle is left out with a line saying how much.")
@click.option("--min-host-available", type=click.IntRange(min=0), default=None,
              help="Watchdog: SIGTERM when effective host memory available falls below this many MiB"
                   " (default max(5 %, min(1 GiB, 12.5 %)) of the limit; the plan keeps the same margin).")
@click.option("--kill-host-available", type=click.IntRange(min=0), default=None,
              help="Watchdog: SIGKILL below this many MiB (default 2.5 % of the limit).")
@click.option("--min-gpu-free", type=click.IntRange(min=0), default=256, show_default=True,
              help="Watchdog: SIGTERM when a GPU's free VRAM stays below this many MiB for 3 samples.")
@click.option("--max-temp", type=click.IntRange(min=0), default=None, help="Watchdog: abort when a GPU stays at/above this C.")
@click.option("--max-power", type=FiniteFloat(min=0), default=None,
              help="Watchdog: abort when a GPU stays at/above this % of its enforced power limit.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve the watchdog's figures for Prometheus at http://127.0.0.1:PORT/metrics (gpcrun_* names).")
@click.option("--metrics-textfile", default=None, metavar="PATH",
              help="Write them for node_exporter's textfile collector (PATH ends in .prom; every 5 s, atomic).")
@click.option("--json", "as_json", is_flag=True,
              help="Events as JSON lines on stdout: planned, loading, ready (with the URL), stopping, stopped (with"
                   " the outcome); human lines stay on stderr.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(no_plan, force, quiet, server_bin, ctx, kv_type, floor, margin, restart, max_restarts, ready_timeout,
              grace, liveness_timeout, log_max_mib, min_host_available, kill_host_available, min_gpu_free, max_temp,
              max_power, metrics_port, metrics_textfile, as_json, server_args):
    """gpcrun serve [OPTIONS] [MODEL] [--] LLAMA_SERVER_ARGS: your llama-server command line, planned first,
    then supervised and watched.

    Put `gpcrun serve` in front of the llama-server arguments you already use: the model comes from -m/--model,
    -hf/--hf-repo[:quant] (+ -hff), LLAMA_ARG_MODEL, or a leading MODEL (a path, a split model's first shard, or
    a hub ref: hf://OWNER/REPO[@REV]/FILE.gguf, OWNER/REPO[:QUANT]). Every flag and LLAMA_ARG_* you set is kept;
    gpcrun adds only what the plan must, and prints each addition with its reason. `gpcrun serve -- --help`
    shows llama-server's own help."""
    from ..hardware.host import read_host_memory
    from ..launch.watchdog import MIB, Limits
    from ..pipeline import RunConfig, run

    model, server_args = split_model(server_args)
    if any(a in ("--help", "-h", "--usage") for a in server_args):  # llama-server's help, with or without MODEL
        _llama_server_help(server_bin)

    base = Limits.defaults(read_host_memory().effective_limit_bytes)
    kw = {"gpu_min_free_bytes": min_gpu_free * MIB, "temp_abort_c": max_temp,
          "power_abort_frac": None if max_power is None else max_power / 100}
    if min_host_available is not None:
        kw["host_term_available_bytes"] = min_host_available * MIB
    if kill_host_available is not None:
        kw["host_kill_available_bytes"] = kill_host_available * MIB

    def event(doc: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps({"event": doc.pop("state", doc.get("event")), "t_unix": round(time.time(), 3),
                                         **{k: v for k, v in doc.items() if k != "event"}}) + "\n")
            sys.stdout.flush()

    def on_plan(plan, changes):
        event({"event": "planned", "verdict": plan.verdict, "reasons": list(plan.reasons), "argv": list(plan.argv),
               "changes": changes, **({"models": [m.to_json() for m in plan.models]} if hasattr(plan, "models")
                                      else {})})
        if hasattr(plan, "models"):  # a router: every model's plan (router/serve.py)
            from ..router.serve import render_router_plan
            click.echo(render_router_plan(plan), err=True)
        else:
            click.echo(plan_summary(plan), err=True)
            click.echo(render_changes(changes), err=True)
        if plan.verdict != "ship":
            for r in plan.reasons:
                click.echo(f"  - {r}", err=True)
            if not force:
                click.echo("gpcrun: refused (use --force to start anyway)", err=True)

    res = run(RunConfig(model=model, server_args=server_args, ctx=ctx, kv_type=kv_type, parallel=None,
                        floor_tok_s=floor, margin_mib=margin, plan=not no_plan, force=force, server_bin=server_bin,
                        ready_timeout_s=ready_timeout, grace_s=grace,
                        liveness_timeout_s=liveness_timeout, restart=restart, max_restarts=max_restarts,
                        limits=Limits(**{**base.to_json(), **kw}), quiet=quiet, on_plan=on_plan,
                        log_max_bytes=log_max_mib * MIB, metrics_port=metrics_port,
                        metrics_textfile=metrics_textfile, on_event=event if as_json else None))
    o = res.outcome
    event({"event": "stopped", "outcome": o.to_json(), "run_dir": str(res.run_dir) if res.run_dir else None})
    if o.kind != "refused":
        click.echo(f"gpcrun: {o.kind}: {o.reason} (run dir {res.run_dir})", err=True)
    sys.exit(o.exit_code)


def split_model(args: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """A leading MODEL (anything but a flag) kept for convenience; the rest is llama-server's command line."""
    if args and not args[0].startswith("-"):
        return args[0], tuple(args[1:])
    return None, tuple(args)


def _llama_server_help(server_bin) -> None:
    """`gpcrun serve -- --help`: llama-server's own help, its exit status."""
    import subprocess

    from ..launch.binary import find_tool
    sys.exit(subprocess.run([str(find_tool("llama-server", server_bin)), "--help"]).returncode)
