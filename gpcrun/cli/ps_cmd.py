"""gpcrun ps | logs | stop: the supervised servers on this machine (library: gpcrun/runs.py)."""
from __future__ import annotations

import sys
import time

import click

from ..fmt import table
from .main import emit_json, main

MIB = 1 << 20


def _mib(n) -> str:
    return f"{n / MIB:.0f}" if isinstance(n, (int, float)) else "-"


def _uptime(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _host_line(sample: dict) -> str:
    avail = sample.get("host_available_seen_bytes", sample.get("host_available_bytes"))
    term = sample.get("host_term_line_bytes")
    if avail is None:
        return "-"
    return f"{_mib(avail)}" + (f" (SIGTERM at {_mib(term)})" if term is not None else "")


@main.command("ps")
@click.option("--all", "show_all", is_flag=True,
              help="Also list the 10 newest finished runs under $GPCRUN_HOME/runs, with their outcome.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: every run with its figures.")
def ps_cmd(show_all, as_json):
    """Supervised llama-servers on this machine (serve, bench and batch runs), with state, address, uptime,
    the server's RSS against the plan and the watchdog's last host reading. A run whose gpcrun died shows as
    `dead` once, and its run.json is completed."""
    from ..runs import list_runs
    runs = list_runs(include_finished=show_all)
    if as_json:
        emit_json({"schema": "gpcrun.ps/1", "runs": [r.to_json() for r in runs]})
        return
    if not runs:
        click.echo("no supervised llama-server is running")
        return
    rows = []
    for r in runs:
        planned = r.planned.get("CPU")
        state = r.state if not r.outcome else f"{r.state}: {r.outcome.get('kind')}"
        rows.append([r.run_id, r.command or "-", state, (r.model or "-")[-40:], r.url or "-", _uptime(r.uptime_s),
                     f"{_mib(r.server_rss_bytes)}/{_mib(planned)}", _host_line(r.last_sample),
                     str(r.server_pid or "-")])
        for m in r.models:  # a router: each of its models, running or not
            rows.append(["", "", f"  model {'running' if m['running'] else 'not loaded'}", str(m["model"])[-40:],
                         "", "", f"{_mib(m['rss_bytes'])}/{_mib((m['planned_bytes'] or {}).get('CPU'))}", "",
                         str(m["pid"] or "")])
    click.echo(table(rows, ["run", "cmd", "state", "model", "url", "up", "RSS/plan MiB", "host avail MiB", "pid"],
                     "lllllrrrr"))


@main.command("logs")
@click.argument("run")
@click.option("-n", "--lines", default=50, show_default=True, help="How many of the last lines to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what llama-server writes until the run ends.")
def logs_cmd(run, lines, follow):
    """llama-server's log of RUN (a run id or a unique prefix, as `gpcrun ps` prints it)."""
    from ..runs import find_run, log_since, log_tail, view
    run_dir = find_run(run)
    text, offset = log_tail(run_dir, lines)
    sys.stdout.write(text)
    sys.stdout.flush()
    while follow:
        time.sleep(0.25)
        more, offset = log_since(run_dir, offset)
        if more:
            sys.stdout.write(more)
            sys.stdout.flush()
        elif view(run_dir).state in ("finished", "dead"):
            break


@main.command("stop")
@click.argument("run")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True,
              help="Seconds to wait for the run to end (gpcrun stops llama-server within its --grace).")
@click.option("--json", "as_json", is_flag=True, help="The run as `ps --json` shows it, after the stop.")
def stop_cmd(run, timeout_s, as_json):
    """Stop RUN cleanly: its gpcrun gets SIGTERM, stops llama-server, writes run.json (and a bench's receipt)."""
    from ..runs import find_run, stop_run
    v = stop_run(find_run(run), timeout_s)
    if as_json:
        emit_json(v.to_json())
        return
    outcome = v.outcome or {}
    click.echo(f"{v.run_id}: {v.state}" + (f" ({outcome.get('kind')}: {outcome.get('reason')})" if outcome else ""))
    if v.state not in ("finished", "dead"):
        from ..exits import Exit
        sys.exit(Exit.TIMEOUT.code)


@main.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell):
    """Print the shell completion script for SHELL. Install: `gpcrun completion bash > ~/.local/share/bash-completion/
    completions/gpcrun` (zsh: a file named _gpcrun on $fpath; fish: ~/.config/fish/completions/gpcrun.fish), or
    `eval "$(gpcrun completion bash)"` in your shell's rc file."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    comp = cls(main, {}, "gpcrun", "_GPCRUN_COMPLETE")
    click.echo(comp.source())
