"""gpcrun bench MODEL [-- llama-server args] | gpcrun bench --url URL: measure, then write a receipt."""
from __future__ import annotations

import sys

import click

from ..model import KV_CACHE_TYPES
from .main import emit_json, main
from .params import FiniteFloat


def _csv_ints(ctx, param, value):
    if not value:
        return ()
    try:
        out = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,4") from None
    if any(x < 1 for x in out):
        raise click.BadParameter("concurrency levels must be >= 1")
    return out


@main.command("bench", context_settings={"ignore_unknown_options": True})
@click.argument("model", required=False)
@click.option("--url", default=None, help="Attach to a running llama-server instead of starting one.")
@click.option("-p", "--prompt-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-n", "--gen-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-r", "--repetitions", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--concurrency", callback=_csv_ints, default="", help="Concurrency levels, e.g. 1,4.")
@click.option("--no-warmup", is_flag=True)
@click.option("--ctx", type=click.IntRange(min=0), default=None)
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default=None)
@click.option("--parallel", type=click.IntRange(min=1), default=None, help="Slots (default: max concurrency, or 1).")
@click.option("--floor", type=FiniteFloat(min=0), default=1.0, show_default=True)
@click.option("--force", is_flag=True, help="Bench even when the plan refuses.")
@click.option("--server-bin", default=None)
@click.option("--redact-paths", is_flag=True, help="Replace the home directory and host name in the receipt.")
@click.option("--markdown", is_flag=True, help="Print the receipt as a GitHub-ready Markdown block.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(model, url, prompt_tokens, gen_tokens, repetitions, concurrency, no_warmup, ctx, kv_type, parallel,
              floor, force, server_bin, redact_paths, markdown, as_json, quiet, server_args):
    """Prefill/decode speed, TTFT and inter-token latency through the HTTP API; writes a receipt.

    MODEL is a path, a split model's first shard, or a hub ref (planned from its header, downloaded only when the
    plan ships); or --url of a running server."""
    from ..bench import BenchConfig
    from ..pipeline import RunConfig, attach, run
    from ..planning import server_args as parse_args
    from ..server_args import settings
    from .serve_cmd import plan_summary

    if not model and not url:
        raise click.UsageError("give a MODEL to start, or --url of a running server")
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"gpcrun bench: {m}", err=True))
    cfg = BenchConfig(prompt_tokens, gen_tokens, repetitions, not no_warmup, concurrency)
    if url is not None:
        say(f"benchmarking {url}: {repetitions} x prefill {prompt_tokens} + decode {gen_tokens}")
        res = attach(url, cfg, api_key=settings.api_key(parse_args(server_args)), floor_tok_s=floor,
                     redact_paths=redact_paths, echo=say)
    else:
        def on_plan(plan, changes):
            say(plan_summary(plan))
            for c in changes:
                say(f"  + {c['flag']} {c['value']}: {c['reason']}")
            if plan.verdict != "ship" and not force:
                for r in plan.reasons:
                    click.echo(f"  - {r}", err=True)

        res = run(RunConfig(model=model, command="bench", server_args=server_args, ctx=ctx, kv_type=kv_type,
                            parallel=parallel, floor_tok_s=floor, force=force, server_bin=server_bin, bench=cfg,
                            quiet=True, echo=say, on_plan=on_plan, write_receipt=True, redact_paths=redact_paths, auto_port=True))
    _print(res, as_json, markdown)
    sys.exit(res.exit_code)


def _print(res, as_json: bool, markdown: bool) -> None:
    from ..receipt import to_markdown
    doc = res.receipt
    if as_json:
        emit_json(doc)
    elif markdown:
        click.echo(to_markdown(doc))
    else:
        m = res.measured or {}
        d, p = m.get("decode_tok_s") or {}, m.get("prefill_tok_s") or {}
        if d:
            click.echo(f"prefill {p.get('mean'):.1f} ± {p.get('sd'):.1f} tok/s; decode {d.get('mean'):.1f} ±"
                       f" {d.get('sd'):.1f} tok/s; forecast {m.get('forecast_decode_tok_s')}"
                       f" (error {m.get('prediction_error_pct')} %)")
        click.echo(f"outcome: {res.outcome.kind}: {res.outcome.reason}")
    click.echo(f"receipt: {res.receipt_path}", err=True)
