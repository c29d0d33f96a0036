"""gpcrun receipt ls | show | validate | reindex."""
from __future__ import annotations

import click

from ..errors import ReceiptError
from ..fmt import table
from .main import emit_json, main


@main.group("receipt")
def receipt_group() -> None:
    """Receipts stored under $GPCRUN_HOME/receipts."""


@receipt_group.command("ls")
@click.option("--model", default=None, help="Substring of the model file name, or its header sha256.")
@click.option("--since", default=None, help="ISO time, e.g. 2026-11-01 or 2026-11-27T05:00:00Z.")
@click.option("--json", "as_json", is_flag=True, help="The rows as one JSON list.")
def ls_cmd(model, since, as_json):
    """Stored receipts, newest first: id, time, kind, model, outcome, measured vs forecast decode speed, context."""
    from ..receipt import ReceiptStore
    store = ReceiptStore()
    rows = store.query(model=model, since=since)
    _report_skipped(store)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no receipts")
        return
    click.echo(table([[r["id"], r["created_utc"], r["kind"], r["model_name"] or "", r["outcome"] or "",
                       f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "null",
                       f"{r['forecast_decode_tok_s']:.1f}" if r["forecast_decode_tok_s"] else "null",
                       str(r["ctx"])] for r in rows],
                     ["id", "created", "kind", "model", "outcome", "decode tok/s", "forecast", "ctx"], "lllllrrr"))


@receipt_group.command("show")
@click.argument("receipt_id")
@click.option("--json", "as_json", is_flag=True, help="The receipt document as stored.")
@click.option("--markdown", is_flag=True, help="A GitHub-ready block for bug reports.")
def show_cmd(receipt_id, as_json, markdown):
    """One receipt (an id or a unique prefix): its summary, or --markdown / --json."""
    from ..receipt import ReceiptStore, to_markdown
    doc = ReceiptStore().get(receipt_id)
    if markdown:
        click.echo(to_markdown(doc))
    else:
        emit_json(doc) if as_json else click.echo(to_markdown(doc).split("<details>")[0].rstrip())


@receipt_group.command("validate")
@click.argument("path")
def validate_cmd(path):
    """Check a receipt file against the shipped JSON Schema (exit 6 when it does not match)."""
    from ..receipt import read_receipt, validate
    errors = validate(read_receipt(path))
    if errors:
        for e in errors:  # one line each
            click.echo(f"{path}: {e}", err=True)
        raise ReceiptError(f"{path}: {len(errors)} schema error(s)")
    click.echo(f"{path}: valid gpcrun.receipt/1")


@receipt_group.command("reindex")
def reindex_cmd():
    """Rebuild the SQLite index from the JSON files."""
    from ..receipt import ReceiptStore
    store = ReceiptStore()
    n = store.reindex()
    _report_skipped(store)
    click.echo(f"indexed {n} receipt(s)")


def _report_skipped(store) -> None:
    skipped = list(dict.fromkeys(store.skipped))
    for p in skipped[:5]:
        click.echo(f"gpcrun: warning: skipped {p}: not a readable gpcrun receipt", err=True)
    if len(skipped) > 5:
        click.echo(f"gpcrun: warning: ... and {len(skipped) - 5} more", err=True)


__all__ = ["receipt_group", "ReceiptError"]
